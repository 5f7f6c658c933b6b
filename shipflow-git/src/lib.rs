//! Git for shipflow on [gix](https://docs.rs/gix): change detection (which paths changed between
//! two revisions, and what an app's inputs hash to at a revision; no `git` process is spawned),
//! and [`gitops`], a deployer that commits image digests to a config repository.
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
//! [`GitChangeDetector::include_worktree`] adds uncommitted and untracked changes; without it
//! neither the index nor the work tree is read, and a plan costs about what the change
//! touches, not what the repository holds.
//!
//! The crate reads no environment variable: what CI knows (the branch of a detached `HEAD`)
//! comes from the caller, through [`GitChangeDetector::detached_head_branch`]. Every decision
//! and lookup is logged with `tracing` at debug level, under the `shipflow_git` target
//! (`RUST_LOG=shipflow=debug` with `tracing-subscriber`'s `EnvFilter`).

mod detector;
mod diff;
mod error;
mod fingerprint;
pub mod gitops;
mod revision;
mod tags;
mod trees;
mod worktree;

pub use detector::GitChangeDetector;
pub use error::GitError;
pub use gitops::{GitOpsDeployer, GitOpsError};
