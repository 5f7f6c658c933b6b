//! [`GitOpsError`]: what can go wrong while writing images into a config repository.

use super::edit::EditError;
use super::transport::TransportError;

/// Why a GitOps deploy, rollback or read failed, naming the app, the step and the
/// cause. Credentials never appear: repository URLs are shown without user information.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GitOpsError {
    /// The configuration is missing or unusable.
    #[error("{app}: gitops: {message}")]
    Config {
        /// The app, or `workspace`.
        app: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A file could not be edited for the app.
    #[error("{app}: gitops: {file}: {source}")]
    Edit {
        /// The app.
        app: String,
        /// The file, relative to the config repository.
        file: String,
        /// Why.
        #[source]
        source: Box<EditError>,
    },
    /// A file the app names is not on the branch.
    #[error("{app}: gitops: {file} is not on branch {branch}: check deploy.gitops.files")]
    MissingFile {
        /// The app.
        app: String,
        /// The file.
        file: String,
        /// The branch.
        branch: String,
    },
    /// The remote has no such branch.
    #[error("gitops: {url} has no branch {branch}: create it, or set branch in [workspace.gitops]")]
    MissingBranch {
        /// The repository, without credentials.
        url: String,
        /// The branch.
        branch: String,
    },
    /// Fetching or pushing failed.
    #[error("gitops: {source}")]
    Transport {
        /// Why.
        #[from]
        source: TransportError,
    },
    /// Every push was rejected (others kept pushing first).
    #[error(
        "gitops: {url} {branch}: push rejected {attempts} times, last: {reason}; the branch moves faster than the retries, raise the backoff's attempts"
    )]
    Rejected {
        /// The repository, without credentials.
        url: String,
        /// The branch.
        branch: String,
        /// Tries made.
        attempts: u32,
        /// The last refusal.
        reason: String,
    },
    /// A later deploy of the same app in the same commit replaced this one.
    #[error("{app}: gitops: superseded by a later deploy of {app} ({image}) in the same commit")]
    Superseded {
        /// The app.
        app: String,
        /// The image written instead.
        image: String,
    },
    /// The rollback target is not in the app's history.
    #[error("{app}: gitops: {wanted} is not in the history ({have} revisions): see `history`")]
    NoRevision {
        /// The app.
        app: String,
        /// What was asked for.
        wanted: String,
        /// How many revisions there are.
        have: usize,
    },
    /// The run was cancelled before the app's edit was committed; nothing was written.
    #[error("{app}: gitops: cancelled before the commit; nothing was written")]
    Cancelled {
        /// The app.
        app: String,
        /// The marker core recognises.
        #[source]
        source: shipflow_core::Cancelled,
    },
    /// The local clone could not be read or written.
    #[error("gitops: git failed while {step}: {message}")]
    Git {
        /// What was being done.
        step: &'static str,
        /// The library's message.
        message: String,
    },
}

impl GitOpsError {
    pub(crate) fn git(step: &'static str, err: impl std::fmt::Display) -> Self {
        GitOpsError::Git {
            step,
            message: err.to_string(),
        }
    }
}
