//! Change detection for shipflow on [gix](https://docs.rs/gix): which paths changed between two
//! revisions, and what an app's inputs hash to at a revision. No `git` process is spawned.
//!
//! ```no_run
//! use shipflow_core::AppInputs;
//! use shipflow_git::GitChangeDetector;
//!
//! # fn main() -> Result<(), shipflow_git::GitError> {
//! let git = GitChangeDetector::open(".")?;
//! let base = git.default_base()?.unwrap_or_else(|| "HEAD".to_owned());
//! for change in git.changed(&base, "HEAD")?.paths {
//!     println!("{:?} {}", change.kind, change.path);
//! }
//! let inputs = AppInputs {
//!     app: "api".into(),
//!     paths: vec!["apps/api".into(), "libs/common".into()],
//!     globs: vec!["*.lock".into()],
//! };
//! println!("api at HEAD: {}", git.fingerprint_at("HEAD", &inputs)?.short());
//! # Ok(())
//! # }
//! ```
//!
//! Revisions are anything `git rev-parse` takes (full or short ids, branches, `origin/develop`,
//! tags, `HEAD~3`); a base of `A...B` means the merge base of `A` and `B`. Renames are tracked
//! like `git diff -M`. A shallow clone that lacks the history a revision needs is reported as
//! [`GitError::ShallowHistory`], never guessed around. For local runs,
//! [`GitChangeDetector::include_worktree`] adds uncommitted and untracked changes.

mod detector;
mod diff;
mod error;
mod fingerprint;
mod revision;
mod trees;
mod worktree;

pub use detector::GitChangeDetector;
pub use error::GitError;
