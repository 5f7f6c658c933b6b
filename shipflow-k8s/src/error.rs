//! [`KubeError`]: what went wrong in a Kubernetes rollout, and what to do next.

use std::time::Duration;

use shipflow_core::{BoxError, Cancelled};

/// Why a [`KubeDeployer`](crate::KubeDeployer) call failed. Every variant names the app,
/// the workload (`namespace/deployment`), the step, the cause and the next move. The
/// client library's errors are kept as boxed sources: no type of `kube` is part of
/// this one.
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
        source: BoxError,
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
        "app {app}: {step}: deployment {workload} not found; create it first, or give deploy.kubernetes workload settings (replicas, ports, ...) so shipflow creates it, or fix deploy.kubernetes"
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
        source: BoxError,
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
        source: BoxError,
    },

    /// An object an app's settings describe (its Service or image pull Secret) has
    /// fields another field manager owns: shipflow does not take it over.
    #[error(
        "app {app}: {step}: {object} is already managed by {managers} (conflicting fields: {fields}); shipflow does not take over what another tool manages: give this app's object another name (deploy.kubernetes.{key}), or remove the object from that tool (or delete it) and deploy again",
        key = if object.starts_with("secret ") { "image_pull_secret" } else { "deployment" }
    )]
    Taken {
        /// The app.
        app: String,
        /// The object, e.g. `service shop/api`.
        object: String,
        /// The other field managers, quoted.
        managers: String,
        /// The fields in conflict, as the API server names them.
        fields: String,
        /// The step.
        step: &'static str,
    },

    /// The Deployment is paused: its controller rolls nothing until it is resumed.
    #[error(
        "app {app}: {step}: deployment {workload} is paused, so nothing would roll; resume it (kubectl -n {namespace} rollout resume deployment/{deployment}) or leave it to whoever paused it",
        namespace = workload.split('/').next().unwrap_or_default(),
        deployment = workload.split('/').nth(1).unwrap_or_default()
    )]
    Paused {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
    },

    /// Someone else changed the Deployment's pod template while shipflow waited for
    /// its rollout: what rolls out now is not what shipflow deployed.
    #[error(
        "app {app}: {step}: deployment {workload} was changed by someone else during the rollout (generation {generation}, container images {images}); shipflow's change is no longer what rolls out: look at `kubectl -n {namespace} rollout history deployment/{deployment}` and deploy again",
        namespace = workload.split('/').next().unwrap_or_default(),
        deployment = workload.split('/').nth(1).unwrap_or_default()
    )]
    Superseded {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// The Deployment's generation now.
        generation: i64,
        /// The images its template names now, comma-separated.
        images: String,
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
        /// The pod, its container, why, and its last log lines.
        pod: Box<FailedPod>,
    },

    /// The Deployment's progress deadline passed.
    #[error(
        "app {app}: {step}: deployment {workload}: progress deadline exceeded: {message}{why}; look at `kubectl -n {namespace} describe deployment {deployment}` and the new pods' events",
        namespace = workload.split('/').next().unwrap_or_default(),
        deployment = workload.split('/').nth(1).unwrap_or_default(),
        why = pod.as_ref().map(|p| format!("; {p}")).unwrap_or_default()
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
        /// A new pod that is not ready, and why, if there is one.
        pod: Option<Box<FailedPod>>,
    },

    /// The Deployment's controller could not create pods (condition `ReplicaFailure`)
    /// for longer than [`KubeDeployer::failure_window`](crate::KubeDeployer::failure_window).
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

    /// The rollout completed, but its new pods did not stay healthy through the
    /// stabilization window ([`KubeDeployer::stable_for`](crate::KubeDeployer::stable_for)):
    /// one turned unready or restarted.
    #[error(
        "app {app}: {step}: deployment {workload}: the rollout completed but did not stay healthy: {reason}{why}; roll back, or look at `kubectl -n {namespace} describe deployment {deployment}`",
        namespace = workload.split('/').next().unwrap_or_default(),
        deployment = workload.split('/').nth(1).unwrap_or_default(),
        why = pod.as_ref().map(|p| format!("; {p}")).unwrap_or_default()
    )]
    Unstable {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The step.
        step: &'static str,
        /// What went wrong, and how long after the rollout completed.
        reason: String,
        /// A new pod that failed or is not ready, and why, if there is one.
        pod: Option<Box<FailedPod>>,
    },

    /// shipflow's own wait ran out before the rollout finished.
    #[error(
        "app {app}: {step}: deployment {workload}: still rolling after {waited:?} ({ready}/{desired} new replicas available){why}; raise KubeDeployer::timeout or check the pods",
        why = pod.as_ref().map(|p| format!("; {p}")).unwrap_or_default()
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
        /// New replicas that were available.
        ready: u64,
        /// Replicas wanted.
        desired: u64,
        /// A new pod that is not ready, and why, if there is one.
        pod: Option<Box<FailedPod>>,
    },

    /// A blue-green deploy or rollback stopped before or after the switch of the
    /// active Service: its endpoints did not come to hold only the new colour's
    /// ready pods in time, or a promotion check failed. The cause says where the
    /// active Service was left.
    #[error("app {app}: {step}: {workload}: {cause}")]
    BlueGreen {
        /// The app.
        app: String,
        /// `namespace/deployment` of the colour being switched to.
        workload: String,
        /// The step: `wait for preview endpoints`, `pre-promotion check`, ...
        step: &'static str,
        /// What happened, and what the active Service selects now.
        cause: String,
    },

    /// `deploy.kubernetes.image_pull_secret` is set, but the deployer was given no
    /// registry credentials to write into it.
    #[error(
        "app {app}: write image pull secret: deployment {workload}: image_pull_secret {secret:?} is set but no registry credentials were given for {registry}; set SHIPFLOW_REGISTRY_USER and SHIPFLOW_REGISTRY_PASSWORD (KubeDeployer::pull_credentials), or drop image_pull_secret"
    )]
    NoPullCredentials {
        /// The app.
        app: String,
        /// `namespace/deployment`.
        workload: String,
        /// The Secret's name.
        secret: String,
        /// The registry of the app's image.
        registry: String,
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
        source: BoxError,
    },

    /// Another pipeline held the app's deploy lock for longer than shipflow would wait.
    #[error(
        "app {app}: take deploy lock: lease {lease} is held by {holder} (seen unchanged for {unchanged:?} of its {duration:?}; waited {waited:?}); wait for that pipeline to finish, or if it died, delete the lease (kubectl -n {namespace} delete lease {name}) or let it expire",
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
        /// How long shipflow saw the lease without a renewal.
        unchanged: Duration,
        /// The lease duration its holder set.
        duration: Duration,
        /// How long shipflow waited.
        waited: Duration,
    },

    /// The deploy lock was lost while held (another holder took it over, or it could
    /// not be renewed in time): shipflow stopped before changing anything more.
    #[error(
        "app {app}: {step}: deploy lock {lease} was lost ({why}); another pipeline may be rolling this app: nothing more was changed, check `shipflow history` and run again"
    )]
    LockLost {
        /// The app.
        app: String,
        /// The Lease, `namespace/name`.
        lease: String,
        /// The step that noticed.
        step: &'static str,
        /// How it was lost.
        why: String,
    },

    /// An env file could not be read or has a line that is not `KEY=VALUE`. The
    /// line's text is never repeated (it may hold a secret): only its number.
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
        /// The 0-based index of the YAML document among the file's non-empty ones.
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
        source: BoxError,
    },

    /// The run was cancelled while waiting.
    #[error(
        "app {app}: {step}: {workload}: cancelled while under way (a pipeline rolls it back by its rollback policy; otherwise check it with `kubectl rollout status`)"
    )]
    Cancelled {
        /// The app.
        app: String,
        /// `namespace/deployment`, or the object waited for.
        workload: String,
        /// The step.
        step: &'static str,
        /// Always [`Cancelled`], so the pipeline sees a cancellation.
        #[source]
        source: Cancelled,
    },
}

/// A new pod's container that failed for good, or (for a deadline or a timeout)
/// one that is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The last lines (at most 20) of the container's log: of its previous run when it
    /// crashed and was restarted. Empty when it never ran or the log could not be read.
    pub logs: Vec<String>,
    /// Whether [`logs`](Self::logs) are of the previous run.
    pub previous_logs: bool,
}

impl FailedPod {
    /// A failure of `container` in `pod`.
    pub fn new(pod: &str, container: &str, reason: &str, message: &str) -> Self {
        Self {
            pod: pod.to_owned(),
            container: container.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_termination: None,
            restarts: 0,
            logs: Vec::new(),
            previous_logs: false,
        }
    }
}

impl std::fmt::Display for FailedPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pod {} container {}: {}",
            self.pod, self.container, self.reason
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if self.restarts > 0 {
            write!(f, " ({} restarts)", self.restarts)?;
        }
        if let Some(last) = &self.last_termination {
            write!(f, "; last termination: {last}")?;
        }
        if !self.logs.is_empty() {
            let which = if self.previous_logs {
                "previous run's "
            } else {
                ""
            };
            write!(f, "; last lines of its {which}log:")?;
            for line in &self.logs {
                write!(f, "\n    {line}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn next_move(reason: &str) -> &'static str {
    match reason {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            "check that the image was pushed and the cluster can pull it (imagePullSecrets)"
        }
        "CreateContainerConfigError" => "check the ConfigMaps and Secrets the pod references",
        "CreateContainerError" | "RunContainerError" => {
            "check the container's command, mounts and security settings (kubectl describe pod)"
        }
        _ => "read the container's logs (kubectl logs --previous) and fix the app",
    }
}
