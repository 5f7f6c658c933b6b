//! [`PolicyError`]: what went wrong with an image policy, naming the policy, the
//! repository, the step and the cause.

use std::sync::Arc;

use crate::OciError;

/// What went wrong with an [`ImagePolicy`](super::ImagePolicy): at construction
/// (an invalid setting), listing tags, choosing one, or resolving it to a digest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A setting of the policy is invalid; refused when the policy is made (or
    /// deserialized), before any registry is asked.
    #[error("image policy `{policy}`: {setting} {value:?} is invalid: {reason}")]
    Invalid {
        /// The policy's name.
        policy: String,
        /// Which setting: `repository`, `semver range`, `filter pattern` or
        /// `extract template`.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Listing the repository's tags failed (the registry's error says why).
    #[error("image policy `{policy}`: listing the tags of {repository} failed: {source}")]
    TagList {
        /// The policy's name.
        policy: String,
        /// `registry/repository`.
        repository: String,
        /// The registry client's error, shared by every policy on the repository.
        #[source]
        source: Arc<OciError>,
    },
    /// No tag of the repository is one the policy takes.
    #[error("image policy `{policy}`: no tag of {repository} is chosen ({listed} listed): {why}")]
    NoMatch {
        /// The policy's name.
        policy: String,
        /// `registry/repository`.
        repository: String,
        /// How many tags the repository has.
        listed: usize,
        /// Why none was taken: what the filter and the rule left.
        why: String,
    },
    /// Resolving the chosen tag to its digest failed.
    #[error("image policy `{policy}`: resolving {reference} to its digest failed: {source}")]
    Resolve {
        /// The policy's name.
        policy: String,
        /// `registry/repository:tag`.
        reference: String,
        /// The registry client's error.
        #[source]
        source: Arc<OciError>,
    },
    /// The chosen tag was listed but has no manifest now: it was deleted in
    /// between. The next poll lists the tags again.
    #[error(
        "image policy `{policy}`: {reference} was listed but has no manifest now (deleted since?); the next poll lists the tags again"
    )]
    TagGone {
        /// The policy's name.
        policy: String,
        /// `registry/repository:tag`.
        reference: String,
    },
}
