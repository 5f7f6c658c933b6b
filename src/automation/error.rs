//! [`AutomationError`]: what can go wrong in the image automation loop.

use shipflow_git::gitops::GitOpsError;
use shipflow_oci::PolicyError;

/// Why the automation could not be set up, or why one pass left an app behind,
/// naming the app or policy, the step and the cause. The loop reports these and
/// keeps running; only [`ImageAutomationBuilder::build`](super::ImageAutomationBuilder::build)
/// and [`NotificationServer::bind`](super::NotificationServer::bind) return them to stop you.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AutomationError {
    /// The automation's settings are unusable.
    #[error("image automation: {message}")]
    Config {
        /// What is wrong and what to do.
        message: String,
    },
    /// An app's policy could not be resolved (the registry is down, or no tag fits).
    #[error("image automation: app {app}: {source}")]
    Policy {
        /// The app.
        app: String,
        /// The policy's error, naming the policy, repository and step.
        #[source]
        source: Box<PolicyError>,
    },
    /// Reading what the config repository names now failed.
    #[error("image automation: reading the config repository failed: {source}")]
    ReadRepository {
        /// Why (fetch, or reading files).
        #[source]
        source: Box<GitOpsError>,
    },
    /// Writing an app's new image into the config repository failed.
    #[error("image automation: app {app}: writing {image} failed: {source}")]
    Write {
        /// The app.
        app: String,
        /// The image that was to be written.
        image: String,
        /// Why (an edit, the commit or the push).
        #[source]
        source: Box<GitOpsError>,
    },
    /// The notification endpoint could not listen.
    #[error("image automation: listening for registry notifications on {addr} failed: {source}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl AutomationError {
    /// Whether trying again later may succeed (an outage of the registry or of git),
    /// as opposed to a setting that must be fixed (no tag matches, a file is missing).
    pub fn is_transient(&self) -> bool {
        match self {
            AutomationError::Policy { source, .. } => matches!(
                **source,
                PolicyError::TagList { .. }
                    | PolicyError::Resolve { .. }
                    | PolicyError::TagGone { .. }
            ),
            AutomationError::ReadRepository { source } | AutomationError::Write { source, .. } => {
                matches!(
                    **source,
                    GitOpsError::Transport { .. }
                        | GitOpsError::Rejected { .. }
                        | GitOpsError::Git { .. }
                        | GitOpsError::MissingBranch { .. }
                )
            }
            AutomationError::Config { .. } | AutomationError::Listen { .. } => false,
        }
    }
}
