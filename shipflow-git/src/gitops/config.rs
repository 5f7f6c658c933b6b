//! This module's sections of `shipflow.toml`: the config repository in
//! `[workspace.gitops]`, and per app the files holding its image in
//! `[apps.<app>.deploy.gitops]`.
//!
//! ```toml
//! [workspace.gitops]
//! repository = "git@github.com:acme/fleet.git"   # or a local path, relative to the workspace
//! branch = "main"
//! message = "deploy {apps}"                      # the subject; the body lists every change
//! author = { name = "shipflow", email = "ci@acme.dev" }
//!
//! [apps.api.deploy.gitops]
//! format = "name:tag@digest"                     # or "digest", or "tag"
//! files = [
//!   { path = "apps/api/deployment.yaml", setter = "flux-system:api" },
//!   { path = "clusters/prod/kustomization.yaml", kustomize = "ghcr.io/acme/api" },
//!   { path = "charts/api/values.yaml", helm = "image.tag", part = "tag" },
//! ]
//! ```

use serde::{Deserialize, Serialize};
use shipflow_core::{ConfigSection, Schema, SectionContext, SectionError};

use super::edit::Format;
use super::yaml::{Locator, Part};

/// The deploy target and `[workspace]` key this module reads.
pub const GITOPS_TARGET: &str = "gitops";

/// The sections this module reads: `[workspace.gitops]` and `deploy.gitops`.
pub fn schema() -> Schema {
    Schema::new()
        .deploy_target::<GitOpsTarget>(GITOPS_TARGET)
        .workspace_key::<GitOpsRepository>(GITOPS_TARGET)
}

/// The config repository: `[workspace.gitops]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GitOpsRepository {
    /// A URL `git` can fetch and push (`https://…`, `ssh://…`, `git@host:path`,
    /// `file://…`), or a local path, relative to the workspace root.
    pub repository: String,
    /// The branch to commit to; default `main`.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Where the repository is cloned; default a directory under the system's
    /// temporary directory named after the repository and branch.
    pub cache_dir: Option<String>,
    /// The commit subject, with `{apps}` (the apps changed, comma separated) and
    /// `{count}`; the body always lists each app's old and new image.
    pub message: Option<String>,
    /// Who the commits are by; default `shipflow <shipflow@localhost>`.
    pub author: Option<Identity>,
    /// Who commits; default the author.
    pub committer: Option<Identity>,
}

fn default_branch() -> String {
    "main".to_owned()
}

/// A name and an email, for commits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The name.
    pub name: String,
    /// The email.
    pub email: String,
}

impl Identity {
    /// `name <email>`.
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            email: email.into(),
        }
    }
}

impl Default for Identity {
    fn default() -> Self {
        Self::new("shipflow", "shipflow@localhost")
    }
}

/// Where an app's image is written: `[apps.<app>.deploy.gitops]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GitOpsTarget {
    /// The files, each with where in it the image is.
    pub files: Vec<FileTarget>,
    /// How the image is written; default `name:tag@digest`.
    #[serde(default)]
    pub format: Format,
}

impl GitOpsTarget {
    /// The image is in `files`, written in the default format.
    pub fn new(files: Vec<FileTarget>) -> Self {
        Self {
            files,
            format: Format::default(),
        }
    }

    /// Written in `format`.
    pub fn with_format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }
}

/// A file of the config repository and where in it the app's image is: give one of
/// `setter`, `kustomize` or `helm`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FileTarget {
    /// The file, relative to the config repository's root.
    pub path: String,
    /// The Flux image policy, `namespace:name`, of the setter markers
    /// (`# {"$imagepolicy": "namespace:name"}`, and `:tag`, `:name`, `:digest`).
    pub setter: Option<String>,
    /// The `name` of the kustomization's `images:` entry (its `newName`, `newTag` and
    /// `digest` are written).
    pub kustomize: Option<String>,
    /// A dotted path of mapping keys in a Helm values file, `image.tag`.
    pub helm: Option<String>,
    /// What the Helm value holds; default the whole reference.
    #[serde(default)]
    pub part: Part,
}

impl FileTarget {
    /// The fields of `path` carrying setter markers of `policy` (`namespace:name`).
    pub fn setter(path: impl Into<String>, policy: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            setter: Some(policy.into()),
            ..Self::default()
        }
    }

    /// The `images:` entry named `name` of the kustomization `path`.
    pub fn kustomize(path: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kustomize: Some(name.into()),
            ..Self::default()
        }
    }

    /// The value at `key_path` of the Helm values file `path`, holding `part`.
    pub fn helm(path: impl Into<String>, key_path: impl Into<String>, part: Part) -> Self {
        Self {
            path: path.into(),
            helm: Some(key_path.into()),
            part,
            ..Self::default()
        }
    }

    pub(crate) fn locator(&self) -> Option<Locator> {
        match (&self.setter, &self.kustomize, &self.helm) {
            (Some(p), None, None) => Some(Locator::Setter(p.clone())),
            (None, Some(n), None) => Some(Locator::Kustomize(n.clone())),
            (None, None, Some(h)) => Some(Locator::Helm(h.clone(), self.part)),
            _ => None,
        }
    }

    fn check(&self, at: &str) -> Result<(), SectionError> {
        let bad_path = self.path.is_empty()
            || self.path.starts_with('/')
            || self.path.contains('\\')
            || self
                .path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
        if bad_path {
            return Err(SectionError::new(
                format!("{at}.path"),
                format!(
                    "{:?} is not a path inside the config repository, like \"apps/api/deployment.yaml\"",
                    self.path
                ),
            ));
        }
        if self.locator().is_none() {
            return Err(SectionError::new(
                at,
                "give exactly one of setter, kustomize or helm",
            ));
        }
        if let Some(policy) = &self.setter {
            let parts: Vec<&str> = policy.split(':').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(SectionError::new(
                    format!("{at}.setter"),
                    format!(
                        "{policy:?} is not an image policy like \"flux-system:api\" (namespace:name, as in the file's $imagepolicy markers)"
                    ),
                ));
            }
        }
        if let Some(path) = &self.helm
            && path.split('.').any(str::is_empty)
        {
            return Err(SectionError::new(
                format!("{at}.helm"),
                format!("{path:?} is not a dotted key path like \"image.tag\""),
            ));
        }
        if self.part != Part::Image && self.helm.is_none() {
            return Err(SectionError::new(
                format!("{at}.part"),
                "part is for helm values; setter markers and kustomize entries say what they hold",
            ));
        }
        Ok(())
    }
}

impl ConfigSection for GitOpsTarget {
    fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        if self.files.is_empty() {
            return Err(SectionError::new(
                "files",
                "list at least one file that holds the app's image",
            ));
        }
        for (i, file) in self.files.iter().enumerate() {
            file.check(&format!("files[{i}]"))?;
        }
        Ok(())
    }
}

impl ConfigSection for GitOpsRepository {
    fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        if self.repository.trim().is_empty() {
            return Err(SectionError::new(
                "repository",
                "give the config repository's URL or path",
            ));
        }
        let bad_branch = self.branch.is_empty()
            || self.branch.starts_with(['-', '/'])
            || self.branch.ends_with(['/', '.'])
            || self.branch.contains("..")
            || self
                .branch
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
        if bad_branch {
            return Err(SectionError::new(
                "branch",
                format!("{:?} is not a branch name", self.branch),
            ));
        }
        for (key, who) in [("author", &self.author), ("committer", &self.committer)] {
            if let Some(who) = who
                && (who.name.trim().is_empty()
                    || !who.email.contains('@')
                    || who.name.contains(['<', '>', '\n'])
                    || who.email.contains(['<', '>', '\n', ' ']))
            {
                return Err(SectionError::new(
                    key,
                    "give a name and an email, like { name = \"ci\", email = \"ci@acme.dev\" }",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use shipflow_core::Workspace;

    fn load(app: &str, workspace: &str) -> Result<Workspace, String> {
        let toml = format!(
            "[workspace]\nregistry = \"r.io\"\n[workspace.gitops]\n{workspace}\n[apps.api]\ndeploy.gitops = {{ {app} }}\n"
        );
        Workspace::loader()
            .schema(schema())
            .from_toml(&toml, "/nonexistent-root")
            .map_err(|e| e.to_string())
    }

    #[rstest]
    #[case::no_files("files = []", "apps.api.deploy.gitops.files: list at least one file")]
    #[case::two_locators(
        "files = [{ path = \"a.yaml\", setter = \"ns:a\", helm = \"image\" }]",
        "apps.api.deploy.gitops.files[0]: give exactly one of setter, kustomize or helm"
    )]
    #[case::escaping_path(
        "files = [{ path = \"../a.yaml\", setter = \"ns:a\" }]",
        "apps.api.deploy.gitops.files[0].path: \"../a.yaml\" is not a path inside"
    )]
    #[case::policy(
        "files = [{ path = \"a.yaml\", setter = \"api\" }]",
        "apps.api.deploy.gitops.files[0].setter: \"api\" is not an image policy"
    )]
    #[case::format(
        "files = [{ path = \"a.yaml\", setter = \"ns:a\" }], format = \"latest\"",
        "apps.api.deploy.gitops"
    )]
    fn bad_app_sections_name_their_key(#[case] app: &str, #[case] start: &str) {
        let err = load(app, "repository = \"r\"").expect_err("fails");
        assert!(err.starts_with(start), "{err}");
    }

    #[test]
    fn bad_repository_sections_name_their_key() {
        let app = "files = [{ path = \"a.yaml\", setter = \"ns:a\" }]";
        let err = load(app, "repository = \"r\"\nbranch = \"a b\"").expect_err("fails");
        assert!(
            err.starts_with("workspace.gitops.branch: \"a b\" is not a branch name"),
            "{err}"
        );
        let err = load(
            app,
            "repository = \"r\"\nauthor = { name = \"x\", email = \"nope\" }",
        )
        .expect_err("fails");
        assert!(
            err.starts_with("workspace.gitops.author: give a name and an email"),
            "{err}"
        );
    }

    #[test]
    fn good_sections_read_with_defaults() {
        let ws = load(
            "files = [{ path = \"v.yaml\", helm = \"image.tag\", part = \"tag\" }], format = \"digest\"",
            "repository = \"../fleet\"",
        )
        .expect("loads");
        let repo = ws
            .section::<GitOpsRepository>(GITOPS_TARGET)
            .expect("reads")
            .expect("present");
        assert_eq!(repo.branch, "main");
        let target = ws
            .app("api")
            .expect("api")
            .deploy_target::<GitOpsTarget>(GITOPS_TARGET)
            .expect("reads")
            .expect("present");
        assert_eq!(target.format, Format::Digest);
        assert_eq!(
            target.files[0].locator(),
            Some(Locator::Helm("image.tag".into(), Part::Tag))
        );
    }
}
