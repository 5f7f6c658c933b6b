//! [`GitError`]: everything that can go wrong while asking git what changed.

use std::path::PathBuf;

/// What went wrong while reading the repository, with the user's next move in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    /// No git repository contains `path`.
    #[error(
        "{} is not inside a git repository: run shipflow from a clone of your monorepo (or `git init` one)",
        path.display()
    )]
    NotARepository {
        /// The directory the search started from.
        path: PathBuf,
    },
    /// The revision names nothing in this repository.
    #[error("unknown revision \"{rev}\": check the name, or fetch it (git fetch origin {rev})")]
    UnknownRevision {
        /// The revision as given.
        rev: String,
    },
    /// The repository is a shallow clone and lacks the history `rev` needs.
    #[error("history is shallow and lacks {rev}: fetch with --depth N or --unshallow")]
    ShallowHistory {
        /// The revision (or merge base) that could not be resolved.
        rev: String,
    },
    /// `HEAD` points to a branch without commits.
    #[error("HEAD has no commit yet: commit something first")]
    UnbornHead,
    /// Two revisions share no history, so `A...B` has no merge base.
    #[error(
        "{base} and {head} have no common ancestor: pass a base revision on {head}'s history instead of {base}...{head}"
    )]
    NoMergeBase {
        /// The left side of `A...B`.
        base: String,
        /// The right side of `A...B`.
        head: String,
    },
    /// An input glob does not parse.
    #[error("input glob \"{glob}\" is invalid ({message}): fix it in shipflow.toml")]
    InvalidGlob {
        /// The glob as written.
        glob: String,
        /// Why it does not parse.
        message: String,
    },
    /// Any other failure of the git library, with the step that failed.
    #[error("git failed while {step}: {message}; check the repository with `git fsck`")]
    Git {
        /// What shipflow was doing, e.g. "diffing trees".
        step: &'static str,
        /// The underlying error.
        message: String,
    },
}

impl GitError {
    /// A catch-all error for `step` caused by `err`.
    pub(crate) fn git(step: &'static str, err: impl std::fmt::Display) -> Self {
        GitError::Git {
            step,
            message: err.to_string(),
        }
    }
}
