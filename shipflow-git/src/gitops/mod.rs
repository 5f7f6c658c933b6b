//! GitOps: deploy by committing an app's image into a config repository that Flux or
//! Argo CD applies. [`GitOpsDeployer`] is the [`Deployer`](shipflow_core::Deployer);
//! its settings are [`GitOpsRepository`] (`[workspace.gitops]`) and, per app,
//! [`GitOpsTarget`] (`[apps.<app>.deploy.gitops]`); register [`schema`] so loading
//! checks them.
//!
//! Images are written in place: only the bytes of the value change, never a comment,
//! key order, quoting or indentation. Flux setter markers (`# {"$imagepolicy":
//! "ns:policy"}` and its `:tag`, `:name`, `:digest` variants), kustomization `images:`
//! entries and Helm values paths are supported.
//!
//! ```no_run
//! use shipflow_core::{Context, DeployMeta, Deployer, ImageRef, RollbackTarget, Workspace};
//! use shipflow_git::gitops::{self, GitOpsDeployer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let workspace = Workspace::loader().schema(gitops::schema()).load("shipflow.toml")?;
//! let deployer = GitOpsDeployer::from_workspace(&workspace)?.build();
//! let api = workspace.app("api").ok_or("no app api")?;
//! let image: ImageRef = "ghcr.io/acme/api:1.4.0@sha256:4e8e6b7c1d0c5a6f8e1d2b3c4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f"
//!     .parse()?;
//! let ctx = Context::new();
//! // What would be committed, then the commit (pushed when this returns).
//! print!("{}", deployer.preview(api, &image).await?);
//! deployer.deploy(api, &image, &DeployMeta::default(), &ctx).await?;
//! for revision in deployer.history(api, &ctx).await? {
//!     println!("{} {} {:?}", revision.number, revision.image, revision.change_cause);
//! }
//! deployer.rollback(api, RollbackTarget::Previous, &ctx).await?;
//! # Ok(())
//! # }
//! ```

mod config;
mod deployer;
mod edit;
mod error;
mod repo;
mod transport;
mod yaml;

pub use config::{FileTarget, GITOPS_TARGET, GitOpsRepository, GitOpsTarget, Identity, schema};
pub use deployer::{
    DEFAULT_MESSAGE, GitOpsDeployer, GitOpsDeployerBuilder, ImageFields, ImageUpdate, Written,
};
pub use edit::{EditError, Format};
pub use error::GitOpsError;
pub use transport::{GitCli, PushOutcome, Transport, TransportError};
pub use yaml::{Part, YamlError};
