//! shipflow: incremental build and deploy of monorepo apps.
//!
//! This facade re-exports the crates of the workspace behind features (all on by
//! default): everything of `shipflow-core` at the top level, and the adapters as
//! [`git`], [`oci`], [`k8s`] and [`docker`]. Depend on `shipflow-core` alone when you
//! bring your own adapters.
//!
//! ```
//! use shipflow_kit::Workspace;
//!
//! let ws = Workspace::from_toml(
//!     "[workspace]\nregistry = \"127.0.0.1:5000/acme\"\n[apps.api]",
//!     "."
//! )?;
//! assert_eq!(ws.apps().len(), 1);
//! # Ok::<(), shipflow_kit::ConfigError>(())
//! ```
//!
//! With the `automation` feature (on by default), [`automation`] keeps a GitOps config
//! repository at what image policies choose, woken by polls and by the registry's push
//! notifications; `examples/image_automation.rs` is its reference program.
//!
//! The reference command-line program is `examples/shipflow/`; `examples/README.md`
//! lists the others.

pub use shipflow_core::*;
#[cfg(feature = "docker")]
pub use shipflow_docker as docker;
#[cfg(feature = "git")]
pub use shipflow_git as git;
#[cfg(feature = "k8s")]
pub use shipflow_k8s as k8s;
#[cfg(feature = "oci")]
pub use shipflow_oci as oci;
#[cfg(feature = "automation")]
pub mod automation;
