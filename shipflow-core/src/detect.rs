//! [`ChangeDetector`]: what changed between two revisions, and what an app's inputs hash to.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{BoxError, Context};

/// How a path changed between two revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The path is new.
    Added,
    /// The path is gone.
    Deleted,
    /// The content changed.
    Modified,
    /// The type or mode changed (file to symlink, executable bit).
    TypeChanged,
    /// The path was renamed from [`ChangedPath::previous`].
    Renamed,
}

/// A path that changed, relative to the repository root with `/` separators.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangedPath {
    /// The path at the head revision (or the deleted path).
    pub path: String,
    /// How it changed.
    pub kind: ChangeKind,
    /// The path at the base revision, for renames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl ChangedPath {
    /// A change of `kind` at `path`.
    pub fn new(path: impl Into<String>, kind: ChangeKind) -> Self {
        Self {
            path: path.into(),
            kind,
            previous: None,
        }
    }

    /// A rename from `previous` to `path`.
    pub fn renamed(previous: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: ChangeKind::Renamed,
            previous: Some(previous.into()),
        }
    }

    /// Every path this change touches: both sides of a rename.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.path.as_str()).chain(self.previous.as_deref())
    }
}

/// The paths that changed between `base` and `head`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedPaths {
    /// The base revision as resolved (a commit id), or `None` when there is none.
    pub base: Option<String>,
    /// The head revision as resolved.
    pub head: String,
    /// The changes, sorted by path.
    pub paths: Vec<ChangedPath>,
}

/// A content hash of an app's inputs at a revision: equal inputs, equal fingerprint,
/// whatever the commit or branch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    /// The first 12 characters, for tags and people.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }

    /// This fingerprint and `settings` (an app's settings, say) in one: a change of
    /// either gives a new fingerprint.
    pub fn with_settings(&self, settings: &str) -> Self {
        use sha2::{Digest as _, Sha256};
        let digest = Sha256::digest(format!("{}\0settings\0{settings}", self.0).as_bytes());
        Self(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an app's image is built from: paths (files or directories) and globs,
/// relative to the repository root. Made by [`crate::Workspace::inputs`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInputs {
    /// The app.
    pub app: String,
    /// Files or directories, sorted: the app's own path, its dependencies' paths.
    pub paths: Vec<String>,
    /// Globs: the app's extra inputs and the workspace's shared globs.
    pub globs: Vec<String>,
}

/// Facts about a revision that tag templates use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// The full commit id.
    pub sha: String,
    /// The abbreviated commit id.
    pub short_sha: String,
    /// The branch, when known (CI's detached HEAD falls back to the CI's variables).
    pub branch: Option<String>,
    /// A tag pointing exactly at the commit.
    pub tag: Option<String>,
    /// Whether the work tree has uncommitted changes (only meaningful for the work tree).
    pub dirty: bool,
    /// Commit time, seconds since the Unix epoch.
    pub committed_at: Option<i64>,
}

/// Finds what changed. The git adapter is `shipflow_git::GitChangeDetector`.
#[async_trait]
pub trait ChangeDetector: Send + Sync {
    /// The paths that differ between `base` and `head`. `base` may use `A...B`
    /// (merge-base) syntax where the adapter supports it.
    async fn changed_paths(
        &self,
        base: &str,
        head: &str,
        ctx: &Context,
    ) -> Result<ChangedPaths, BoxError>;

    /// The fingerprint of `inputs` at revision `rev`.
    async fn fingerprint(
        &self,
        rev: &str,
        inputs: &AppInputs,
        ctx: &Context,
    ) -> Result<Fingerprint, BoxError>;

    /// Facts about `rev` for tag templates.
    async fn revision(&self, rev: &str, ctx: &Context) -> Result<RevisionInfo, BoxError>;
}
