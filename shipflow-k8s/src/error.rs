//! [`KubeError`]: what went wrong in a Kubernetes rollout, and what to do next.

use std::time::Duration;

use shipflow_core::Cancelled;

/// Why a [`KubeDeployer`](crate::KubeDeployer) call failed. Every variant names the app,
/// the workload (`namespace/deployment`), the step, the cause and the next move.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// No Kubernetes configuration could be inferred (kubeconfig or in-cluster).
    #[error(
        "cannot load a Kubernetes configuration: {source}; set KUBECONFIG or run inside a cluster"
    )]
    Config {
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The app's `deploy.kubernetes` section has a bad value.
    #[error("app {app}: {source}")]
    Settings {
        /// The app.
        app: String,
        /// What is wrong, with the key and line.
        #[source]
        source: shipflow_core::ConfigError,
    },

    /// The app has no `deploy.kubernetes` section.
    #[error(
        "app {app}: no Kubernetes target; add `deploy.kubernetes = {{}}` to [apps.{app}] in shipflow.toml"
    )]
    NoTarget {
        /// The app.
        app: String,
    },

    /// The Deployment does not exist.
    #[error(
        "app {app}: {step}: deployment {workload} not found; create it first (shipflow rolls existing Deployments) or fix deploy.kubernetes"
    )]
    NotFound {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
    },

    /// The Deployment has no container of the configured name.
    #[error(
        "app {app}: {step}: deployment {workload} has no container {container:?} (it has {available:?}); set deploy.kubernetes.container"
    )]
    NoContainer {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// The container shipflow looked for.
        container: String,
        /// The containers the Deployment has.
        available: Vec<String>,
    },

    /// A request to the API server failed.
    #[error(
        "app {app}: {step}: deployment {workload}: Kubernetes API request failed: {source}; check access (kubectl auth can-i) and the cluster, then retry"
    )]
    Api {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step, e.g. `patch image`.
        step: &'static str,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },

    /// The Deployment changed between reading it and patching it.
    #[error(
        "app {app}: {step}: deployment {workload} was changed by someone else meanwhile; look at `shipflow history` and run again"
    )]
    Conflict {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// The API server's answer.
        #[source]
        source: Box<kube::Error>,
    },

    /// A new pod failed in a way that will not heal by waiting.
    #[error(
        "app {app}: {step}: deployment {workload}: {pod}; {next}",
        next = next_move(&pod.reason)
    )]
    PodFailed {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// The pod, its container and why.
        pod: Box<FailedPod>,
    },

    /// The Deployment's progress deadline passed.
    #[error(
        "app {app}: {step}: deployment {workload}: progress deadline exceeded: {message}; look at `kubectl -n {namespace} describe deployment {deployment}` and the new pods' events",
        namespace = workload.split('/').next().unwrap_or_default(),
        deployment = workload.split('/').nth(1).unwrap_or_default()
    )]
    DeadlineExceeded {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// The condition's message.
        message: String,
    },

    /// The Deployment's controller could not create pods (condition `ReplicaFailure`).
    #[error(
        "app {app}: {step}: deployment {workload}: the controller cannot create pods: {message}; check quotas, limits and admission policies"
    )]
    ReplicaFailure {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// The condition's message.
        message: String,
    },

    /// shipflow's own wait ran out before the rollout finished.
    #[error(
        "app {app}: {step}: deployment {workload}: still rolling after {waited:?} ({ready}/{desired} replicas ready and updated); raise KubeDeployer::timeout or check the pods"
    )]
    Timeout {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// How long shipflow waited.
        waited: Duration,
        /// Updated replicas that were available.
        ready: u64,
        /// Replicas wanted.
        desired: u64,
    },

    /// The revision to roll back to does not exist.
    #[error(
        "app {app}: rollback: deployment {workload} has no revision {wanted} (it has {available:?}); pick one from `shipflow history`"
    )]
    NoRevision {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// What was asked for: a number or `previous`.
        wanted: String,
        /// The revisions that exist.
        available: Vec<u64>,
    },

    /// A request about an object other than the app's Deployment (a Lease, a
    /// ConfigMap, an applied manifest) failed.
    #[error(
        "app {app}: {step}: {object}: Kubernetes API request failed: {source}; check access (kubectl auth can-i) and the cluster, then retry"
    )]
    Request {
        /// The app, or what is being deployed (a ConfigMap, a manifest directory).
        app: String,
        /// What the request was about, e.g. `lease default/shipflow-lock-api`.
        object: String,
        /// The step.
        step: &'static str,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },

    /// Another pipeline held the app's deploy lock for longer than shipflow would wait.
    #[error(
        "app {app}: take deploy lock: lease {lease} is held by {holder} until {expires} (waited {waited:?}); wait for that pipeline to finish, or if it died, delete the lease (kubectl -n {namespace} delete lease {name}) or let it expire",
        namespace = lease.split('/').next().unwrap_or_default(),
        name = lease.split('/').nth(1).unwrap_or_default()
    )]
    Locked {
        /// The app.
        app: String,
        /// The Lease, `namespace/name`.
        lease: String,
        /// Its holder's identity.
        holder: String,
        /// When it expires unless renewed (RFC 3339).
        expires: String,
        /// How long shipflow waited.
        waited: std::time::Duration,
    },

    /// An env file could not be read or has a line that is not `KEY=VALUE`.
    #[error("config map {name}: read {path}{at}: {message}; fix the file", at = line.map(|l| format!(" line {l}")).unwrap_or_default())]
    EnvFile {
        /// The ConfigMap's base name.
        name: String,
        /// The file.
        path: std::path::PathBuf,
        /// The 1-based line, when one line is at fault.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },

    /// A manifest could not be read, parsed or applied.
    #[error("apply {path} document {document}: {message}; fix the manifest")]
    Manifest {
        /// The file.
        path: std::path::PathBuf,
        /// The 0-based index of the YAML document in the file.
        document: usize,
        /// What is wrong.
        message: String,
    },

    /// Applying one manifest's object was refused by the API server.
    #[error(
        "apply {path} document {document}: {object}: Kubernetes API request failed: {source}; fix the manifest, or apply with force if another field manager owns the fields"
    )]
    Apply {
        /// The file.
        path: std::path::PathBuf,
        /// The 0-based index of the YAML document in the file.
        document: usize,
        /// `Kind namespace/name`.
        object: String,
        /// The client's error.
        #[source]
        source: Box<kube::Error>,
    },

    /// The run was cancelled while waiting.
    #[error(
        "app {app}: {step}: deployment {workload}: cancelled; the rollout continues in the cluster, check it with `kubectl rollout status`"
    )]
    Cancelled {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// Always [`Cancelled`], so the pipeline sees a cancellation.
        #[source]
        source: Cancelled,
    },
}

/// A new pod's container that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPod {
    /// The pod.
    pub pod: String,
    /// Its failing container.
    pub container: String,
    /// The reason Kubernetes gives, e.g. `ImagePullBackOff`.
    pub reason: String,
    /// Kubernetes' message for it.
    pub message: String,
    /// The container's last termination (exit code and message), if it ran and exited.
    pub last_termination: Option<String>,
    /// How often the container restarted.
    pub restarts: u32,
}

impl std::fmt::Display for FailedPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pod {} container {}: {}: {}",
            self.pod, self.container, self.reason, self.message
        )?;
        if self.restarts > 0 {
            write!(f, " ({} restarts)", self.restarts)?;
        }
        if let Some(last) = &self.last_termination {
            write!(f, "; last termination: {last}")?;
        }
        Ok(())
    }
}

fn next_move(reason: &str) -> &'static str {
    match reason {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => {
            "check that the image was pushed and the cluster can pull it (imagePullSecrets)"
        }
        "CreateContainerConfigError" => "check the ConfigMaps and Secrets the pod references",
        _ => "read the container's logs (kubectl logs --previous) and fix the app",
    }
}
