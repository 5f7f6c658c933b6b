//! [`BuildJobError`]: why a build in the cluster failed.

use shipflow_core::{BoxError, Cancelled};

/// Why a [`KubeJobBuilder`](crate::KubeJobBuilder) build failed. Every variant names
/// the app and, once there is one, the Job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildJobError {
    /// The app is not built `type = "native"`: the cluster builder runs shipflow's
    /// native builder only.
    #[error(
        "app {app}: build job: its build type is {build_type:?}; build Jobs run native builds only (build = {{ type = \"native\", ... }}); build it locally with the engine builder"
    )]
    NotNative {
        /// The app.
        app: String,
        /// Its build type.
        build_type: String,
    },
    /// The app's build settings or the build Jobs' settings are wrong.
    #[error("app {app}: build job: {source}")]
    Settings {
        /// The app.
        app: String,
        /// What is wrong.
        #[source]
        source: BoxError,
    },
    /// The build context could not be packed or pushed.
    #[error("app {app}: build job: {step}: {source}")]
    Context {
        /// The app.
        app: String,
        /// `pack context` or `push context`.
        step: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A request to the API server failed.
    #[error(
        "app {app}: build job {job}: {step}: Kubernetes API request failed: {source}; check access (kubectl auth can-i create jobs) and the cluster"
    )]
    Api {
        /// The app.
        app: String,
        /// The Job, `namespace/name`.
        job: String,
        /// The step.
        step: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The build failed in the cluster: the Job failed, or its pod cannot start.
    #[error("app {app}: build job {job} failed: {reason}: {message}{}", tail(logs))]
    Failed {
        /// The app.
        app: String,
        /// The Job, `namespace/name`.
        job: String,
        /// Why, as Kubernetes says it (`BackoffLimitExceeded`, `DeadlineExceeded`,
        /// `ErrImagePull`, ...).
        reason: String,
        /// Kubernetes' message.
        message: String,
        /// The last lines of the builder's log (at most 50).
        logs: Vec<String>,
    },
    /// The Job finished but its result is not a digest.
    #[error("app {app}: build job {job}: the builder's result {result:?} is not an image digest")]
    BadResult {
        /// The app.
        app: String,
        /// The Job, `namespace/name`.
        job: String,
        /// What the builder left (cut to 200 characters).
        result: String,
    },
    /// The image the Job pushed could not be read back.
    #[error("app {app}: build job {job}: read the pushed image: {source}")]
    Image {
        /// The app.
        app: String,
        /// The Job.
        job: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// The run was cancelled; the Job was deleted.
    #[error("app {app}: build job {job}: cancelled")]
    Cancelled {
        /// The app.
        app: String,
        /// The Job.
        job: String,
        /// Always [`Cancelled`], so the pipeline sees a cancellation.
        #[source]
        source: Cancelled,
    },
}

fn tail(logs: &[String]) -> String {
    if logs.is_empty() {
        return String::new();
    }
    format!("; the builder's last log lines:\n  {}", logs.join("\n  "))
}
