//! Typed markers an adapter puts in an error's chain, so core (and layers) can tell
//! what kind of failure it is without reading message text.

use std::error::Error;

use crate::Cancelled;

/// The cause an adapter puts in a failed deploy's error chain when it has itself
/// brought back what ran before (say, restarted the old container after the new one
/// failed its health check). The pipeline then reports the app rolled back and does
/// not roll it back again.
///
/// When the deploy stopped because the run was cancelled, [`Restored::after_cancel`]
/// carries [`Cancelled`] as its source, so one error chain holds both markers and the
/// pipeline reports the app cancelled and restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, thiserror::Error)]
#[error("what ran before runs again")]
pub struct Restored {
    #[source]
    cancelled: Option<Cancelled>,
}

impl Restored {
    /// What ran before runs again, after a failure.
    pub const fn new() -> Self {
        Self { cancelled: None }
    }

    /// What ran before runs again, after the run was cancelled mid-deploy.
    pub const fn after_cancel() -> Self {
        Self {
            cancelled: Some(Cancelled),
        }
    }
}

/// The cause an adapter puts in an error's chain when the failure may pass on its
/// own (a connection reset, a 503, a 429): a retry may succeed. The retry layer
/// ([`Retry`](crate::Retry)) retries exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a passing failure")]
pub struct Transient;

/// What an adapter returns for an optional operation it does not offer (a deployer
/// without `rollback`, a registry without `tag`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {operation} is not supported by this adapter")]
pub struct Unsupported {
    /// What it was asked for: the app, or the image.
    pub subject: String,
    /// The operation, e.g. `rollback`.
    pub operation: &'static str,
}

impl Unsupported {
    /// `operation` is not offered for `subject` (the app, or the image).
    pub fn new(subject: impl Into<String>, operation: &'static str) -> Self {
        Self {
            subject: subject.into(),
            operation,
        }
    }
}

/// Whether `error` or one of its causes is an `E` (a marker such as [`Transient`],
/// [`Restored`] or [`Cancelled`](crate::Cancelled), or any typed cause).
pub fn caused_by<E: Error + 'static>(error: &(dyn Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| (*e).source()).any(|e| e.is::<E>())
}

/// The first of `error` and its causes that is an `E`, to read what a typed cause
/// carries (the per-target results of a [`TargetsFailed`](crate::TargetsFailed)).
pub fn find_cause<'a, E: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a E> {
    std::iter::successors(Some(error), |e| (*e).source()).find_map(|e| e.downcast_ref::<E>())
}

/// An error whose source is a marker, for adapters to wrap a message with one:
/// `Marked::transient("registry answered 503")`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Marked {
    message: String,
    #[source]
    marker: Box<dyn Error + Send + Sync>,
}

impl Marked {
    /// `message`, marked [`Transient`].
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            marker: Box::new(Transient),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_anywhere_in_the_chain() {
        let marked = Marked::transient("registry answered 503");
        assert!(caused_by::<Transient>(&marked));
        assert!(!caused_by::<Restored>(&marked));
        assert_eq!(marked.to_string(), "registry answered 503");
    }

    #[test]
    fn restored_after_a_cancel_carries_both_markers() {
        let both = Restored::after_cancel();
        assert!(caused_by::<Restored>(&both) && caused_by::<Cancelled>(&both));
        let plain = Restored::new();
        assert!(caused_by::<Restored>(&plain) && !caused_by::<Cancelled>(&plain));
    }
}
