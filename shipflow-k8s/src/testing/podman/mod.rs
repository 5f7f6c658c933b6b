//! Pods as real Podman containers, for
//! [`SimCluster::start_with_podman`](crate::testing::SimCluster::start_with_podman).
//!
//! The kubelet is synchronous (each controller step runs under the store's lock), so
//! nothing here blocks it: [`Runtime::ensure`] and [`Runtime::restart`] start a
//! background task (pull, run, wait for the exit), and the kubelet reads each step
//! what the tasks found ([`Runtime::state`], [`Runtime::ready`],
//! [`Runtime::take_events`], [`Runtime::logs`]).
//!
//! - Images are pulled for real (`podman pull --tls-verify=false`) into the
//!   runtime's own storage; a failed pull's message is Podman's.
//! - Each pod gets its own loopback address (see [`net`]), on which its containers'
//!   TCP ports are published; `hostNetwork` pods share the host's network.
//! - Logs are Podman's `k8s-file` logs, one file per run, read bounded.
//! - A per-run host file is mounted at the container's `terminationMessagePath`
//!   and read after the exit (at most 4096 bytes); the kubelet falls back to the
//!   log's tail as its termination-message policy says.

mod engine;
mod lifecycle;
mod logs;
mod net;
mod probe;
mod spec;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::task::AbortHandle;

pub(crate) use net::HOST_ALIAS;
pub(crate) use spec::ContainerSpec;

use crate::testing::store::str_at;

/// How a [`SimCluster`](crate::testing::SimCluster) runs its pods as real Podman
/// containers: see
/// [`SimCluster::start_with_podman`](crate::testing::SimCluster::start_with_podman).
#[derive(Debug, Clone)]
pub struct PodmanPods {
    pull_timeout: Duration,
}

impl Default for PodmanPods {
    fn default() -> Self {
        Self {
            pull_timeout: Duration::from_secs(120),
        }
    }
}

impl PodmanPods {
    /// The defaults: a pull may take two minutes.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one image pull may take before it counts as failed.
    #[must_use]
    pub fn pull_timeout(mut self, timeout: Duration) -> Self {
        self.pull_timeout = timeout;
        self
    }
}

/// A container of a pod: (pod uid, container name).
pub(crate) type Key = (String, String);
/// The runtime's view of every container, shared with the background tasks.
pub(crate) type Slots = Arc<Mutex<HashMap<Key, Slot>>>;

/// Where a container's current (or last) run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunState {
    /// The image is being pulled.
    Pulling,
    /// The pull failed (`reason` `ErrImagePull` or `ErrImageNeverPull`).
    PullFailed {
        reason: &'static str,
        message: String,
    },
    /// Pulled (or present): being created and started.
    Starting,
    /// Podman could not create or start it.
    StartFailed { message: String },
    /// Running since `started_at` (RFC 3339).
    Running { started_at: String },
    /// It exited with `code`; `message` is what it wrote as its termination
    /// message, `tail` the last lines of its log.
    Exited {
        code: i32,
        message: String,
        started_at: String,
        tail: Vec<String>,
    },
}

/// Something the kubelet reports as an Event of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub(crate) warning: bool,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl Event {
    fn normal(reason: &'static str, message: String) -> Self {
        Self {
            warning: false,
            reason,
            message,
        }
    }

    fn warning(reason: &'static str, message: String) -> Self {
        Self {
            warning: true,
            reason,
            message,
        }
    }
}

/// The pod a container belongs to, as its runs need it.
#[derive(Debug, Clone)]
pub(crate) struct Pod {
    namespace: String,
    name: String,
    /// The pod's address (its `podIP`).
    ip: String,
    host_network: bool,
}

/// One container's runs.
#[derive(Debug)]
pub(crate) struct Slot {
    spec: ContainerSpec,
    pod: Pod,
    /// The current run's number (0 first, one more per retry or restart).
    run: u32,
    state: RunState,
    /// Whether the kubelet has acted on the current state (a failure or an exit it
    /// counted); false again at every change.
    acknowledged: bool,
    events: Vec<Event>,
    ready: Arc<AtomicBool>,
    task: Option<AbortHandle>,
    prober: Option<AbortHandle>,
    /// The log files of the runs that started, oldest first.
    started: Vec<PathBuf>,
}

/// The container runtime: Podman with its own storage, and the state of every
/// container it runs.
#[derive(Debug)]
pub(crate) struct Runtime {
    engine: Arc<engine::Engine>,
    slots: Slots,
    /// Per pod uid: its address, if it has one of its own.
    pods: Mutex<HashMap<String, (String, Option<Ipv4Addr>)>>,
    addresses: Mutex<net::Addresses>,
    handle: tokio::runtime::Handle,
    pull_timeout: Duration,
}

impl Runtime {
    /// A runtime whose background tasks run on the current Tokio runtime. Fails when
    /// `podman`, `runc` or `slirp4netns` is missing, or there is no Tokio runtime.
    pub(crate) fn new(options: &PodmanPods) -> std::io::Result<Self> {
        let handle = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        Ok(Self {
            engine: Arc::new(engine::Engine::new()?),
            slots: Arc::default(),
            pods: Mutex::default(),
            addresses: Mutex::new(net::Addresses::new()),
            handle,
            pull_timeout: options.pull_timeout,
        })
    }

    /// A blocking `podman` command pointed at the runtime's storage.
    pub(crate) fn command(&self) -> std::process::Command {
        self.engine.command()
    }

    /// The address of the pod `pod` (its `podIP`), given once per pod: the host's
    /// `127.0.0.1` for `hostNetwork` pods, else a loopback address of its own on
    /// which all its containers' ports are free. `None` when none is left.
    pub(crate) fn place(&self, pod: &Value) -> Option<String> {
        let uid = str_at(pod, "/metadata/uid").to_owned();
        let mut pods = lock(&self.pods);
        if let Some((ip, _)) = pods.get(&uid) {
            return Some(ip.clone());
        }
        if pod["spec"]["hostNetwork"] == true {
            pods.insert(uid, ("127.0.0.1".to_owned(), None));
            return Some("127.0.0.1".to_owned());
        }
        let ports: Vec<u16> = ["initContainers", "containers"]
            .iter()
            .flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten())
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| p["containerPort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        let ip = lock(&self.addresses).take(&ports)?;
        pods.insert(uid, (ip.to_string(), Some(ip)));
        Some(ip.to_string())
    }

    /// Starts container `spec` (named `container`) of `pod`, once: later calls for
    /// the same container do nothing. The pod must have been [`place`](Self::place)d.
    pub(crate) fn ensure(&self, pod: &Value, container: &str, spec: ContainerSpec) {
        let uid = str_at(pod, "/metadata/uid").to_owned();
        let key = (uid.clone(), container.to_owned());
        let mut slots = lock(&self.slots);
        if slots.contains_key(&key) {
            return;
        }
        let Some(ip) = lock(&self.pods).get(&uid).map(|(ip, _)| ip.clone()) else {
            return;
        };
        let pod = Pod {
            namespace: str_at(pod, "/metadata/namespace").to_owned(),
            name: str_at(pod, "/metadata/name").to_owned(),
            ip,
            host_network: pod["spec"]["hostNetwork"] == true,
        };
        slots.insert(
            key.clone(),
            Slot {
                spec,
                pod,
                run: 0,
                state: RunState::Starting,
                acknowledged: false,
                events: Vec::new(),
                ready: Arc::default(),
                task: None,
                prober: None,
                started: Vec::new(),
            },
        );
        self.spawn_run(&mut slots, &key, None);
    }

    /// Runs container `container` of pod `uid` again, as `spec` says now (the
    /// kubelet resolves the environment at every start), after a failed pull, a
    /// failed start or an exit: a new pull if the last failed, a new container
    /// otherwise.
    pub(crate) fn restart(&self, uid: &str, container: &str, spec: ContainerSpec) {
        let key = (uid.to_owned(), container.to_owned());
        let mut slots = lock(&self.slots);
        let Some(slot) = slots.get_mut(&key) else {
            return;
        };
        if matches!(
            slot.state,
            RunState::Pulling | RunState::Starting | RunState::Running { .. }
        ) {
            return;
        }
        let previous = (!slot.started.is_empty()).then(|| container_name(&key, slot.run));
        slot.spec = spec;
        slot.run += 1;
        slot.state = RunState::Starting;
        slot.acknowledged = false;
        self.spawn_run(&mut slots, &key, previous);
    }

    fn spawn_run(&self, slots: &mut HashMap<Key, Slot>, key: &Key, previous: Option<String>) {
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        let dir = self.engine.dir();
        let file = format!("{}-{}-{}", key.0, key.1, slot.run);
        let plan = lifecycle::RunPlan {
            engine: self.engine.clone(),
            slots: self.slots.clone(),
            key: key.clone(),
            run: slot.run,
            pod: slot.pod.clone(),
            name: container_name(key, slot.run),
            previous,
            log: dir.join("logs").join(format!("{file}.log")),
            termination: dir.join("termination").join(file),
            volumes: dir.join("volumes").join(&key.0),
            pull_timeout: self.pull_timeout,
        };
        if let Some(old) = slot.task.take() {
            old.abort();
        }
        slot.task = Some(self.handle.spawn(lifecycle::run(plan)).abort_handle());
    }

    /// Where container `container` of pod `uid` is, if it was ever
    /// [`ensure`](Self::ensure)d, and whether the kubelet
    /// [`acknowledge`](Self::acknowledge)d that state.
    pub(crate) fn state(&self, uid: &str, container: &str) -> Option<(RunState, bool)> {
        lock(&self.slots)
            .get(&(uid.to_owned(), container.to_owned()))
            .map(|s| (s.state.clone(), s.acknowledged))
    }

    /// Marks the container's current state as acted on (until it changes).
    pub(crate) fn acknowledge(&self, uid: &str, container: &str) {
        if let Some(slot) = lock(&self.slots).get_mut(&(uid.to_owned(), container.to_owned())) {
            slot.acknowledged = true;
        }
    }

    /// Whether the container's readiness check passes now (false unless running).
    pub(crate) fn ready(&self, uid: &str, container: &str) -> bool {
        lock(&self.slots)
            .get(&(uid.to_owned(), container.to_owned()))
            .is_some_and(|s| {
                matches!(s.state, RunState::Running { .. }) && s.ready.load(Ordering::SeqCst)
            })
    }

    /// The events the container's runs produced since the last call.
    pub(crate) fn take_events(&self, uid: &str, container: &str) -> Vec<Event> {
        lock(&self.slots)
            .get_mut(&(uid.to_owned(), container.to_owned()))
            .map(|s| std::mem::take(&mut s.events))
            .unwrap_or_default()
    }

    /// The log of the container's last run that started (running or not), or with
    /// `previous` of its last run that exited. `None` when there is no such run.
    pub(crate) fn logs(&self, uid: &str, container: &str, previous: bool) -> Option<Vec<String>> {
        let path = {
            let slots = lock(&self.slots);
            let slot = slots.get(&(uid.to_owned(), container.to_owned()))?;
            let running = matches!(slot.state, RunState::Running { .. });
            let back = usize::from(previous && running);
            slot.started.iter().rev().nth(back)?.clone()
        };
        Some(logs::read(&path))
    }

    /// Stops and removes every container of pod `uid` (in the background, killed at
    /// once) and gives its address back.
    pub(crate) fn stop(&self, uid: &str) {
        let mut names = Vec::new();
        {
            let mut slots = lock(&self.slots);
            let keys: Vec<Key> = slots.keys().filter(|(u, _)| u == uid).cloned().collect();
            for key in keys {
                if let Some(slot) = slots.remove(&key) {
                    for task in [slot.task, slot.prober].into_iter().flatten() {
                        task.abort();
                    }
                    for run in 0..=slot.run {
                        names.push(container_name(&key, run));
                    }
                }
            }
        }
        if let Some((_, Some(ip))) = lock(&self.pods).remove(uid) {
            lock(&self.addresses).release(ip);
        }
        if names.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        self.handle.spawn(async move {
            let mut args: Vec<String> = ["rm", "-f", "-i", "-t", "0"].map(str::to_owned).into();
            args.extend(names);
            let _ = engine.run(&args, Duration::from_secs(120)).await;
        });
    }

    /// Stops every task and removes every container, blocking: when the cluster is
    /// dropped.
    pub(crate) fn shutdown(&self) {
        for slot in lock(&self.slots).drain().map(|(_, s)| s) {
            for task in [slot.task, slot.prober].into_iter().flatten() {
                task.abort();
            }
        }
        self.engine.remove_all();
    }
}

/// The Podman name of run `run` of a container: unique within the runtime's storage.
fn container_name((uid, container): &Key, run: u32) -> String {
    let short: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("k8s_{container}_{short}_{run}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
