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

mod config;
mod deployer;
mod edit;
mod error;
mod repo;
mod transport;
mod yaml;

pub use config::{FileTarget, GITOPS_TARGET, GitOpsRepository, GitOpsTarget, Identity, schema};
pub use deployer::{DEFAULT_MESSAGE, GitOpsDeployer, GitOpsDeployerBuilder};
pub use edit::{EditError, Format};
pub use error::GitOpsError;
pub use transport::{GitCli, PushOutcome, Transport, TransportError};
pub use yaml::{Part, YamlError};
