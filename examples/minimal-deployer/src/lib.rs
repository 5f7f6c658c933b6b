//! A deployer of one's own, in the fewest lines shipflow allows: it "deploys" an
//! app by writing its digest-pinned image into a file (a stand-in for any platform
//! shipflow has no adapter for), and reads where from its own section:
//!
//! ```toml
//! [apps.api.deploy.pinfile]
//! path = "deploy/api.image"
//! ```
//!
//! It implements only `current` and `deploy`; rollback and history fall back to
//! shipflow's "unsupported" defaults, which the pipeline reports as such.

use std::path::PathBuf;

use serde::Deserialize;
use shipflow_core::{
    App, BoxError, ConfigSection, Context, DeployMeta, Deployed, Deployer, ImageRef, Rollout,
    Schema, SectionContext, SectionError, async_trait,
};

/// The deploy target's name: `[apps.<app>.deploy.pinfile]`.
pub const TARGET: &str = "pinfile";

/// `[apps.<app>.deploy.pinfile]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinFile {
    /// The file, relative to the repository root.
    pub path: String,
}

impl ConfigSection for PinFile {
    fn validate(&mut self, ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        self.path = ctx.repo_path("path", &self.path)?;
        if self.path.is_empty() || self.path.ends_with('/') {
            return Err(SectionError::new("path", "must name a file"));
        }
        Ok(())
    }
}

/// The sections this deployer reads, for `Workspace::loader().schema(…)`.
pub fn schema() -> Schema {
    Schema::new().deploy_target::<PinFile>(TARGET)
}

/// What can go wrong, naming the app and the step.
#[derive(Debug, thiserror::Error)]
pub enum PinFileError {
    /// The app has no `deploy.pinfile` section.
    #[error("{app}: deploy: no [apps.{app}.deploy.pinfile] section")]
    NoTarget {
        /// The app.
        app: String,
    },
    /// The file could not be read or written.
    #[error("{app}: {step}: {path}: {source}")]
    Io {
        /// The app.
        app: String,
        /// The step.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Writes each app's pinned image into its file under `root`.
#[derive(Debug)]
pub struct PinFileDeployer {
    root: PathBuf,
}

impl PinFileDeployer {
    /// Files are relative to `root`, the repository root.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn file(&self, app: &App) -> Result<PathBuf, BoxError> {
        let section =
            app.deploy_target::<PinFile>(TARGET)?
                .ok_or_else(|| PinFileError::NoTarget {
                    app: app.name.clone(),
                })?;
        Ok(self.root.join(&section.path))
    }
}

#[async_trait]
impl Deployer for PinFileDeployer {
    async fn current(&self, app: &App, _ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        let path = self.file(app)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Deployed::new(text.trim()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PinFileError::Io {
                app: app.name.clone(),
                step: "current",
                path,
                source,
            }
            .into()),
        }
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        _meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let path = self.file(app)?;
        let workload = format!("pin file {}", path.display());
        let image = image.to_string();
        if std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == image) {
            return Ok(Rollout::new(image, workload, false));
        }
        if ctx.dry_run() {
            return Ok(Rollout::new(image, workload, true));
        }
        let io = |source| PinFileError::Io {
            app: app.name.clone(),
            step: "deploy",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&path, format!("{image}\n")).map_err(io)?;
        Ok(Rollout::new(image, workload, true))
    }

    fn target(&self) -> Option<&str> {
        Some(TARGET)
    }
}
