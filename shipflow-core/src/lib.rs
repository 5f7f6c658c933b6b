//! The core of shipflow: the model, the four traits and the [`Pipeline`].
//!
//! shipflow finds the apps of a monorepo whose inputs changed, builds only those into
//! reproducible OCI images, pushes only the layers the registry lacks, rolls only their
//! workloads, watches each rollout, rolls back on failure, and reports what happened
//! and why. Each step is a trait, so any one can be replaced:
//!
//! | trait | does | adapters |
//! |---|---|---|
//! | [`ChangeDetector`] | changed paths, fingerprints | `shipflow-git` |
//! | [`ImageBuilder`] | app → local image | `shipflow-oci`, `shipflow-docker` |
//! | [`Registry`] | push what is missing, resolve, tag | `shipflow-oci` |
//! | [`Deployer`] | roll, watch, roll back, history | `shipflow-k8s`, `shipflow-docker` |
//!
//! `testing` (feature `testing`) holds in-memory implementations of all four, for
//! tests of your own pipelines. This example runs the whole flow on them:
//!
//! ```
//! use std::sync::Arc;
//! use shipflow_core::testing::{FakeBuilder, FakeDeployer, MemoryRegistry, ScriptedDetector};
//! use shipflow_core::{Pipeline, Outcome, Selection, Workspace};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let workspace = Workspace::from_toml(
//!     r#"
//!     [workspace]
//!     registry = "127.0.0.1:5000/acme"
//!     [apps.api]
//!     [apps.web]
//!     "#,
//!     "."
//! )?;
//! let detector = ScriptedDetector::new().with_change("apps/api/src/main.rs");
//! let registry = Arc::new(MemoryRegistry::new());
//! let pipeline = Pipeline::builder(workspace)
//!     .detector(Arc::new(detector))
//!     .builder(Arc::new(FakeBuilder::new()))
//!     .registry(registry.clone())
//!     .deployer(Arc::new(FakeDeployer::new()))
//!     .build()?;
//!
//! let plan = pipeline.plan(Some("main"), "HEAD", &Selection::default()).await?;
//! assert_eq!(plan.apps.len(), 1); // only api changed
//!
//! let report = pipeline.run(Some("main"), "HEAD", &Selection::default()).await?;
//! assert_eq!(report.apps[0].outcome, Outcome::Deployed);
//! assert!(report.apps[0].image.as_ref().unwrap().digest().is_some()); // deployed by digest
//! # Ok(())
//! # }
//! ```

mod backoff;
mod build;
mod context;
mod deploy;
mod detect;
mod environment;
mod hooks;
mod impact;
mod index;
mod layer;
mod markers;
mod paths;
mod pipeline;
mod promote;
mod reference;
mod registry;
pub mod section;
mod tag;
#[cfg(feature = "testing")]
pub mod testing;
mod workspace;

pub use backoff::Backoff;
pub use build::{
    Blob, BuildRequest, BuilderByType, ImageBuilder, ImageLocation, LocalImage, NoBuilder,
    PlatformImage,
};
pub use context::{Cancelled, Context, Event, EventKind, EventSink, Stage};
pub use deploy::{
    DeployItem, DeployMeta, Deployed, Deployer, Revision, RollbackTarget, Rollout, TargetRollout,
    TargetStatus, TargetsFailed,
};
pub use detect::{
    AppInputs, ChangeDetector, ChangeKind, ChangedPath, ChangedPaths, Fingerprint, RevisionInfo,
};
pub use environment::Environment;
pub use hooks::{
    CommandHooks, DEFAULT_HOOK_TIMEOUT_SECS, HookCommand, HookError, HookEvent, HookPoint, Hooks,
};
pub use impact::{ChangeSet, Reason, Selection, UnknownApp, analyze};
pub use layer::{Hook, HookAlsoFailed, Hooked, Retry};
pub use markers::{Marked, Restored, Transient, Unsupported, caused_by, find_cause};
pub use pipeline::{
    AppReport, FailurePolicy, Outcome, Pipeline, PipelineBuilder, PipelineError, Plan, PlannedApp,
    Report, RunStatus, StageTimings, error_chain,
};
pub use promote::{PromoteError, Promotion, Stop, promote};
pub use reference::{DOCKER_HUB, Digest, ImageRef, ReferenceError, is_valid_tag, sanitize_tag};
pub use registry::{Attachment, PushReport, Registry, RegistryByLocation};
pub use section::{ConfigSection, Schema, Section, SectionContext, SectionError};
pub use tag::{
    TAG_VARIABLES, TagTemplate, TagValues, TemplateError, rfc3339_timestamp, sortable_timestamp,
};
pub use workspace::{
    App, CONFIG_FILE, ConfigError, DEFAULT_BUILD_TYPE, Dependency, Workspace, WorkspaceLoader,
};

/// The error type adapters return through the traits: their own typed error, boxed.
/// Downcast it to the adapter's error enum when you need the details.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Re-exported so adapters and users share one cancellation token type.
pub use tokio_util::sync::CancellationToken;

/// Re-exported so that implementing a trait needs no dependency of your own:
/// `#[shipflow_core::async_trait] impl Deployer for Mine { … }`.
pub use async_trait::async_trait;
