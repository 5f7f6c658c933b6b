//! [`PolicyBinding`]: an image policy and the files of the app it feeds.

use serde::Deserialize;
use shipflow_git::gitops::{FileTarget, Format, GitOpsTarget};
use shipflow_oci::ImagePolicy;

use super::error::AutomationError;

/// One app of the config repository kept at what an [`ImagePolicy`] chooses: the
/// policy, and the files (and fields) holding the app's image, as in
/// `[apps.<app>.deploy.gitops]`.
///
/// In configuration (TOML shown):
///
/// ```toml
/// [[bindings]]
/// app = "api"
/// policy = { name = "api", repository = "ghcr.io/acme/api", policy = { semver = { range = ">=1.0.0" } } }
/// files = [{ path = "apps/api/deployment.yaml", setter = "flux-system:api" }]
/// format = "name:tag@digest"   # the default; or "digest", or "tag"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyBinding {
    /// The app, as commit messages and logs name it; one binding per app.
    pub app: String,
    /// The policy choosing its image.
    pub policy: ImagePolicy,
    /// The files holding its image, each with where in it the image is.
    pub files: Vec<FileTarget>,
    /// How the image is written; default `name:tag@digest`.
    #[serde(default)]
    pub format: Format,
}

impl PolicyBinding {
    /// `app`'s image, chosen by `policy`, written into `files`.
    pub fn new(app: impl Into<String>, policy: ImagePolicy, files: Vec<FileTarget>) -> Self {
        Self {
            app: app.into(),
            policy,
            files,
            format: Format::default(),
        }
    }

    /// Written in `format`.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Where the deployer writes the image.
    pub(crate) fn target(&self) -> GitOpsTarget {
        GitOpsTarget::new(self.files.clone()).with_format(self.format)
    }

    /// Refuses a binding that could never write anything.
    pub(crate) fn check(&self) -> Result<(), AutomationError> {
        let bad = |what: String| AutomationError::Config {
            message: format!("app {}: {what}", self.app),
        };
        if self.app.trim().is_empty() {
            return Err(AutomationError::Config {
                message: format!(
                    "the binding of policy `{}` names no app",
                    self.policy.name()
                ),
            });
        }
        if self.files.is_empty() {
            return Err(bad(
                "list at least one file that holds the app's image".into()
            ));
        }
        for file in &self.files {
            let locators = [
                file.setter.is_some(),
                file.kustomize.is_some(),
                file.helm.is_some(),
            ];
            if locators.iter().filter(|l| **l).count() != 1 {
                return Err(bad(format!(
                    "{}: give exactly one of setter, kustomize or helm",
                    file.path
                )));
            }
            if file.path.is_empty()
                || file.path.starts_with('/')
                || file.path.split('/').any(|s| s.is_empty() || s == "..")
            {
                return Err(bad(format!(
                    "{:?} is not a path inside the config repository",
                    file.path
                )));
            }
        }
        Ok(())
    }
}
