//! What the loop reports: [`AutomationEvent`]s to an observer, and each [`Pass`].

use std::time::Duration;

use super::error::AutomationError;

/// What the loop tells an observer
/// ([`ImageAutomationBuilder::on_event`](super::ImageAutomationBuilder::on_event)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AutomationEvent {
    /// What a policy chose for an app, and what the loop does about it.
    Decision(Decision),
    /// A commit with new images is on the remote.
    Committed {
        /// The commit id.
        commit: String,
        /// The apps it changed.
        apps: Vec<String>,
    },
    /// Something failed; the loop keeps running.
    Failed {
        /// The error, as text (it names the app or policy, the step and the cause).
        error: String,
        /// Whether it is an outage that a retry may get past.
        transient: bool,
    },
    /// A pass ended.
    Pass {
        /// Whether it covered every policy (a poll) or only the repositories
        /// notified.
        full: bool,
        /// How many policies it resolved.
        policies: usize,
        /// How long it took.
        took: Duration,
        /// When the loop tries again after a failure, if it failed.
        retry_in: Option<Duration>,
    },
}

/// A policy's choice for an app.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision {
    /// The app.
    pub app: String,
    /// The policy.
    pub policy: String,
    /// `registry/repository:tag@digest`, what the policy chose.
    pub image: String,
    /// Why: the rule, the tag chosen and of how many.
    pub reason: String,
    /// What the loop does.
    pub action: Action,
}

/// What the loop does with a policy's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Nothing: the config repository names this digest already (or the loop wrote it).
    Keep,
    /// Writes it, replacing `from` (what the config repository named, if anything).
    Write {
        /// The image named before.
        from: Option<String>,
    },
}

/// What one pass did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Pass {
    /// The apps whose new image was committed.
    pub written: Vec<String>,
    /// The commit, when there was one.
    pub commit: Option<String>,
    /// What failed; the other apps went ahead.
    pub errors: Vec<AutomationError>,
    /// How many policies were resolved.
    pub policies: usize,
}
