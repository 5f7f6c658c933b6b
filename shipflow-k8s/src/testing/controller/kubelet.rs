//! The simulated kubelet (and scheduler): it places pods on one node and moves each
//! container through pulling, starting, running and back-off as its image's scripted
//! [`Outcome`] says, checks the ConfigMaps and Secrets a container refers to, runs
//! init containers first, keeps each container's logs, restarts or keeps exited
//! containers as the pod's restart policy says (a pod whose containers all exited
//! for good has `Succeeded` or `Failed`), and finishes deleted pods. What a started
//! container does is its [`Runtime`]'s to say; with a Podman runtime
//! ([`podman`]), containers run for real instead of by script.

mod podman;

use serde_json::{Value, json};

use super::events::{self, Type};
use super::runtime::{Exit, Runtime, Scripted, Started, termination_message};
use crate::testing::Outcome;
use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, ensure_object, now, str_at};

/// The node every pod runs on.
pub(crate) const NODE: &str = "sim-node";
/// The first crash or pull back-off, in steps; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: u64 = 10;
const MAX_BACKOFF: u64 = 300;

/// The kubelet's state of one pod.
#[derive(Debug, Clone)]
pub(crate) struct PodRun {
    containers: Vec<Run>,
    /// The pod's `restartPolicy`: `Always`, `OnFailure` or `Never`.
    restart_policy: String,
    scheduled: bool,
    /// The step the pod became ready in, while it is.
    pub(crate) ready_since: Option<u64>,
    /// Whether its containers were stopped after it was deleted.
    stopped: bool,
}

/// The kubelet's state of one container.
#[derive(Debug, Clone)]
struct Run {
    name: String,
    image: String,
    init: bool,
    behaviour: Outcome,
    state: Phase,
    restarts: u32,
    last: Option<Value>,
    pulled: bool,
    pull_failures: u32,
    backoff: u64,
    /// Steps after starting before the readiness probe first passes.
    ready_after: u64,
    logs: Vec<String>,
    previous: Option<Vec<String>>,
    /// The container's `terminationMessagePolicy`.
    message_policy: String,
    /// Readiness as a real probe finds it (containers run by Podman).
    real_ready: Option<bool>,
}

impl Run {
    /// This container's run that started at step `since`, for the runtime.
    fn started(&self, since: u64) -> Started<'_> {
        Started {
            image: &self.image,
            init: self.init,
            behaviour: self.behaviour,
            restarts: self.restarts,
            since,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Waiting {
        reason: String,
        message: String,
        until: u64,
    },
    Running {
        since: u64,
        started_at: String,
    },
    Terminated {
        exit: i32,
        reason: String,
        message: String,
        started_at: String,
        finished_at: String,
    },
}

impl Phase {
    fn waiting(reason: &str, message: impl Into<String>, until: u64) -> Self {
        Self::Waiting {
            reason: reason.into(),
            message: message.into(),
            until,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Waiting {
                reason, message, ..
            } if message.is_empty() => {
                json!({"waiting": {"reason": reason}})
            }
            Self::Waiting {
                reason, message, ..
            } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            Self::Running { started_at, .. } => json!({"running": {"startedAt": started_at}}),
            Self::Terminated {
                exit,
                reason,
                message,
                started_at,
                finished_at,
            } => {
                let mut t = json!({"exitCode": exit, "reason": reason, "startedAt": started_at,
                    "finishedAt": finished_at, "containerID": format!("containerd://{:064x}", exit)});
                if !message.is_empty() {
                    t["message"] = message.clone().into();
                }
                json!({"terminated": t})
            }
        }
    }
}

/// What the scripts say containers running `image` in a pod of `pod` do.
fn behaviour(st: &State, pod: &Value, image: &str, init: bool, template_images: &str) -> Outcome {
    if let Some(o) = st.scripts.images.get(image) {
        return *o;
    }
    if init {
        return Outcome::Healthy;
    }
    let ns = str_at(pod, "/metadata/namespace");
    let Some(deployment) = deployment_of(st, pod) else {
        return Outcome::Healthy;
    };
    let key = (
        ns.to_owned(),
        deployment.clone(),
        template_images.to_owned(),
    );
    if st.scripts.good.contains(&key) {
        return Outcome::Healthy;
    }
    st.scripts
        .deployments
        .get(&(ns.to_owned(), deployment))
        .copied()
        .unwrap_or_default()
}

/// The Deployment that owns the pod's ReplicaSet.
fn deployment_of(st: &State, pod: &Value) -> Option<String> {
    let (kind, rs, _) = super::controller_of(pod)?;
    if kind != "ReplicaSet" {
        return None;
    }
    let rs = st.get(Kind::ReplicaSet, str_at(pod, "/metadata/namespace"), rs)?;
    let (kind, dep, _) = super::controller_of(rs)?;
    (kind == "Deployment").then(|| dep.to_owned())
}

/// The images of a pod spec's app containers, in order, as one key.
pub(crate) fn images_key(spec: &Value) -> String {
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| str_at(c, "/image"))
        .collect::<Vec<_>>()
        .join(",")
}

impl PodRun {
    /// When this pod next changes without anything else changing: a back-off ends,
    /// a container starts, exits or gets ready; `None` when it is settled.
    fn next_wake(&self, tick: u64, runtime: &dyn Runtime) -> Option<u64> {
        if self.stopped || !self.scheduled {
            return (!self
                .containers
                .iter()
                .any(|c| c.behaviour == Outcome::Unschedulable))
            .then_some(tick + 1);
        }
        if exited_for_good(self).is_some() {
            return None;
        }
        self.containers
            .iter()
            .filter_map(|c| match &c.state {
                Phase::Waiting { until, .. } if *until > tick => Some(*until),
                Phase::Waiting { reason, .. } if reason == "CreateContainerConfigError" => None,
                Phase::Waiting { .. } => Some(tick + 1),
                Phase::Running { since, .. } => {
                    let exits = runtime.next_change(&c.started(*since), tick);
                    let ready = *since + c.ready_after;
                    let readies =
                        (c.behaviour != Outcome::NeverReady && tick < ready).then_some(ready);
                    exits.into_iter().chain(readies).min()
                }
                Phase::Terminated { .. } => None,
            })
            .min()
    }

    fn new(st: &State, pod: &Value) -> Self {
        let spec = &pod["spec"];
        let key = images_key(spec);
        let mut containers = Vec::new();
        for (list, init) in [("initContainers", true), ("containers", false)] {
            for c in spec[list].as_array().into_iter().flatten() {
                let image = str_at(c, "/image").to_owned();
                containers.push(Run {
                    name: str_at(c, "/name").to_owned(),
                    behaviour: behaviour(st, pod, &image, init, &key),
                    image,
                    init,
                    state: Phase::waiting("ContainerCreating", "", 0),
                    restarts: 0,
                    last: None,
                    pulled: false,
                    pull_failures: 0,
                    backoff: FIRST_BACKOFF,
                    ready_after: c["readinessProbe"]["initialDelaySeconds"]
                        .as_u64()
                        .unwrap_or(0),
                    logs: Vec::new(),
                    previous: None,
                    message_policy: str_at(c, "/terminationMessagePolicy").to_owned(),
                    real_ready: None,
                });
            }
        }
        Self {
            restart_policy: str_at(spec, "/restartPolicy").to_owned(),
            containers,
            scheduled: false,
            ready_since: None,
            stopped: false,
        }
    }
}

/// The runtime the kubelet asks what its containers do: the one place that picks
/// it (the scripts, for now).
fn runtime(st: &State) -> Scripted<'_> {
    Scripted(&st.scripts)
}

/// Deletes a pod gracefully: it gets a deletion timestamp; the kubelet stops its
/// containers at its next step and removes it at the one after.
pub(crate) fn terminate(shared: &Shared, st: &mut State, ns: &str, name: &str) {
    let Some(mut pod) = st.get(Kind::Pod, ns, name).cloned() else {
        return;
    };
    if pod["metadata"].get("deletionTimestamp").is_some() {
        return;
    }
    pod["metadata"]["deletionTimestamp"] = now().into();
    pod["metadata"]["deletionGracePeriodSeconds"] =
        pod["spec"]["terminationGracePeriodSeconds"].clone();
    shared.put(st, Kind::Pod, ns, pod);
}

/// Moves every pod in `ns` one step forward.
pub(crate) fn step(shared: &Shared, st: &mut State, ns: &str) {
    let names: Vec<String> = st
        .iter(Kind::Pod, ns)
        .map(|p| str_at(p, "/metadata/name").to_owned())
        .collect();
    for name in names {
        let Some(pod) = st.get(Kind::Pod, ns, &name).cloned() else {
            continue;
        };
        let uid = str_at(&pod, "/metadata/uid").to_owned();
        let run = match st.pods.get(&uid) {
            Some(run) => run.clone(),
            None => PodRun::new(st, &pod),
        };
        match advance(shared, st, &pod, run) {
            Some(run) => {
                // Real containers change on their own: look at them every step.
                let next = match st.podman {
                    Some(_) => Some(st.tick + 1),
                    None => run.next_wake(st.tick, &runtime(st)),
                };
                if let Some(at) = next {
                    st.wake(ns, at);
                }
                st.pods.insert(uid, run);
            }
            None => {
                st.pods.remove(&uid);
                if let Some(runtime) = &st.podman {
                    runtime.stop(&uid);
                }
            }
        }
    }
}

/// One step of one pod; `None` once it is gone.
fn advance(shared: &Shared, st: &mut State, pod: &Value, mut run: PodRun) -> Option<PodRun> {
    let ns = str_at(pod, "/metadata/namespace").to_owned();
    let name = str_at(pod, "/metadata/name").to_owned();
    let tick = st.tick;
    if pod["metadata"].get("deletionTimestamp").is_some() {
        if run.stopped || !run.scheduled || finished(pod) {
            shared.delete(st, Kind::Pod, &ns, &name);
            return None;
        }
        for c in &mut run.containers {
            if let Phase::Running { started_at, .. } = &c.state {
                c.state = Phase::Terminated {
                    exit: 0,
                    reason: "Completed".into(),
                    message: String::new(),
                    started_at: started_at.clone(),
                    finished_at: now(),
                };
            }
        }
        run.stopped = true;
        run.ready_since = None;
        if let Some(runtime) = &st.podman {
            runtime.stop(str_at(pod, "/metadata/uid"));
        }
        events::record(
            shared,
            st,
            pod,
            Type::Normal,
            "Killing",
            "Stopping container",
            "kubelet",
        );
        write_status(shared, st, pod, &run);
        return Some(run);
    }
    if !run.scheduled {
        if run
            .containers
            .iter()
            .any(|c| c.behaviour == Outcome::Unschedulable)
        {
            let mut next = pod.clone();
            next["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable", "lastTransitionTime": now(),
                "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."}]});
            if next != *pod {
                shared.put(st, Kind::Pod, &ns, next.clone());
                events::record(
                    shared,
                    st,
                    &next,
                    Type::Warning,
                    "FailedScheduling",
                    "0/1 nodes are available: 1 Insufficient cpu.",
                    "default-scheduler",
                );
            }
            return Some(run);
        }
        let (ip, host_ip) = match st.podman.clone() {
            Some(runtime) => match podman::address(&runtime, pod) {
                Some(address) => address,
                // No loopback address left: not scheduled (yet).
                None => return Some(run),
            },
            None => (st.next_ip("10.244"), "172.18.0.2"),
        };
        run.scheduled = true;
        let mut placed = pod.clone();
        placed["spec"]["nodeName"] = NODE.into();
        placed["status"] = json!({"phase": "Pending", "hostIP": host_ip, "podIP": ip,
            "podIPs": [{"ip": ip}], "startTime": now(), "qosClass": "BestEffort"});
        let placed = shared.put(st, Kind::Pod, &ns, placed);
        events::record(
            shared,
            st,
            &placed,
            Type::Normal,
            "Scheduled",
            &format!("Successfully assigned {ns}/{name} to {NODE}"),
            "default-scheduler",
        );
        write_status(shared, st, &placed, &run);
        return Some(run);
    }
    let first_pending_init = run
        .containers
        .iter()
        .position(|c| c.init && !matches!(c.state, Phase::Terminated { exit: 0, .. }));
    let mut said: Vec<(Type, String, String)> = Vec::new();
    let mut runtime = runtime(st);
    for i in 0..run.containers.len() {
        let c = &run.containers[i];
        let blocked = first_pending_init.is_some_and(|first| i != first);
        if blocked {
            continue;
        }
        let missing = missing_config(st, &ns, &pod["spec"], &c.name);
        let c = &mut run.containers[i];
        if let Some(runtime) = st.podman.clone() {
            podman::advance(&runtime, st, pod, c, missing, &mut said);
            continue;
        }
        let mut next = c.state.clone();
        match &c.state {
            Phase::Waiting { reason, until, .. } => {
                if *until > tick {
                    // Backing off.
                } else if reason == "CrashLoopBackOff" {
                    next = start(&mut runtime, c, tick, &mut said);
                } else if let Some(message) = missing {
                    if !matches!(&c.state, Phase::Waiting { reason, .. } if reason == "CreateContainerConfigError")
                    {
                        said.push((Type::Warning, "Failed".into(), format!("Error: {message}")));
                    }
                    next = Phase::waiting("CreateContainerConfigError", message, 0);
                } else if reason == "ErrImagePull" {
                    // A failed pull is retried after a back-off.
                    next = Phase::waiting(
                        "ImagePullBackOff",
                        format!("Back-off pulling image \"{}\"", c.image),
                        tick + c.backoff,
                    );
                    said.push((
                        Type::Normal,
                        "BackOff".into(),
                        format!("Back-off pulling image \"{}\"", c.image),
                    ));
                    c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
                } else if !c.pulled && pull_fails(c) {
                    c.pull_failures += 1;
                    let message = pull_error(c);
                    said.push((
                        Type::Warning,
                        "Failed".into(),
                        format!("Failed to pull image \"{}\": {message}", c.image),
                    ));
                    next = Phase::waiting("ErrImagePull", message, 0);
                } else {
                    if !c.pulled {
                        c.pulled = true;
                        c.backoff = FIRST_BACKOFF;
                        said.push((
                            Type::Normal,
                            "Pulled".into(),
                            format!("Successfully pulled image \"{}\"", c.image),
                        ));
                    }
                    next = start(&mut runtime, c, tick, &mut said);
                }
            }
            Phase::Running { since, started_at } => {
                if let Some(exit) = runtime.poll(&c.started(*since), tick) {
                    let started_at = started_at.clone();
                    next = exited(c, exit, &run.restart_policy, started_at, tick, &name);
                    if matches!(next, Phase::Waiting { .. }) {
                        said.push((
                            Type::Warning,
                            "BackOff".into(),
                            "Back-off restarting failed container".into(),
                        ));
                    }
                }
            }
            Phase::Terminated { .. } => {}
        }
        c.state = next;
    }
    for (ty, reason, message) in said {
        events::record(shared, st, pod, ty, &reason, &message, "kubelet");
    }
    let ready = pod_ready(&run, tick);
    match (ready, run.ready_since) {
        (true, None) => run.ready_since = Some(tick),
        (false, Some(_)) => run.ready_since = None,
        _ => {}
    }
    write_status(shared, st, pod, &run);
    Some(run)
}

fn start(
    runtime: &mut dyn Runtime,
    c: &mut Run,
    tick: u64,
    said: &mut Vec<(Type, String, String)>,
) -> Phase {
    c.logs = runtime.start(&c.started(tick));
    said.push((
        Type::Normal,
        "Created".into(),
        format!("Created container: {}", c.name),
    ));
    said.push((
        Type::Normal,
        "Started".into(),
        format!("Started container {}", c.name),
    ));
    Phase::Running {
        since: tick,
        started_at: now(),
    }
}

/// What becomes of container `c` of pod `pod` whose run (started at `started_at`)
/// ended with `exit`: restarted after a back-off if the restart policy says so
/// (`Always`: any app container; otherwise only a failed one, and never under
/// `Never`), else terminated for good.
fn exited(
    c: &mut Run,
    exit: Exit,
    policy: &str,
    started_at: String,
    tick: u64,
    pod: &str,
) -> Phase {
    c.logs.extend(exit.last_words.iter().cloned());
    let message = termination_message(&exit, &c.message_policy, &c.logs);
    let reason = if exit.code == 0 { "Completed" } else { "Error" };
    let restart = match policy {
        "Never" => false,
        "OnFailure" => exit.code != 0,
        _ => !c.init || exit.code != 0,
    };
    if !restart {
        return Phase::Terminated {
            exit: exit.code,
            reason: reason.into(),
            message,
            started_at,
            finished_at: now(),
        };
    }
    c.restarts += 1;
    let mut terminated = json!({"exitCode": exit.code, "reason": reason,
        "startedAt": started_at, "finishedAt": now(),
        "containerID": format!("containerd://{:064x}", c.restarts)});
    if !message.is_empty() {
        terminated["message"] = message.into();
    }
    c.last = Some(json!({ "terminated": terminated }));
    c.previous = Some(std::mem::take(&mut c.logs));
    let next = Phase::waiting(
        "CrashLoopBackOff",
        format!(
            "back-off {}s restarting failed container={} pod={pod}",
            c.backoff, c.name
        ),
        tick + c.backoff,
    );
    c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
    next
}

/// Whether the pod has finished: `Succeeded` or `Failed`.
pub(crate) fn finished(pod: &Value) -> bool {
    matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

fn pull_fails(c: &Run) -> bool {
    match c.behaviour {
        Outcome::ImagePullFailure => true,
        Outcome::PullRetried => c.pull_failures < 1,
        _ => false,
    }
}

fn pull_error(c: &Run) -> String {
    match c.behaviour {
        Outcome::PullRetried => format!(
            "failed to pull and unpack image \"{}\": failed to copy: httpReadSeeker: failed open: unexpected status code 429 Too Many Requests",
            c.image
        ),
        _ => format!(
            "rpc error: code = NotFound desc = failed to pull and unpack image \"{0}\": failed to resolve reference \"{0}\": {0}: not found",
            c.image
        ),
    }
}

/// Why the container `name` of `spec` cannot be created: a ConfigMap, Secret or key
/// it needs (and does not mark optional) is missing.
fn missing_config(st: &State, ns: &str, spec: &Value, name: &str) -> Option<String> {
    let container = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)?;
    let lookup = |kind: Kind, object: &str, key: Option<&str>, optional: bool| -> Option<String> {
        if optional {
            return None;
        }
        let what = if kind == Kind::Secret {
            "secret"
        } else {
            "configmap"
        };
        let Some(found) = st.get(kind, ns, object) else {
            return Some(format!("{what} \"{object}\" not found"));
        };
        let key = key?;
        let has = found["data"].get(key).is_some() || found["binaryData"].get(key).is_some();
        (!has).then(|| format!("couldn't find key {key} in {} {ns}/{object}", kind.name()))
    };
    for from in container["envFrom"].as_array().into_iter().flatten() {
        for (field, kind) in [
            ("configMapRef", Kind::ConfigMap),
            ("secretRef", Kind::Secret),
        ] {
            if let Some(r) = from.get(field) {
                let optional = r["optional"] == true;
                if let Some(m) = lookup(kind, str_at(r, "/name"), None, optional) {
                    return Some(m);
                }
            }
        }
    }
    for env in container["env"].as_array().into_iter().flatten() {
        for (field, kind) in [
            ("configMapKeyRef", Kind::ConfigMap),
            ("secretKeyRef", Kind::Secret),
        ] {
            if let Some(r) = env["valueFrom"].get(field) {
                let optional = r["optional"] == true;
                if let Some(m) = lookup(kind, str_at(r, "/name"), Some(str_at(r, "/key")), optional)
                {
                    return Some(m);
                }
            }
        }
    }
    None
}

fn container_ready(c: &Run, tick: u64) -> bool {
    match c.state {
        Phase::Running { .. } if let Some(ready) = c.real_ready => ready,
        // A crash-looping container dies while starting: never seen ready.
        Phase::Running { since, .. } => {
            !matches!(c.behaviour, Outcome::NeverReady | Outcome::CrashLoop)
                && tick >= since + c.ready_after
        }
        _ => false,
    }
}

fn pod_ready(run: &PodRun, tick: u64) -> bool {
    !run.stopped
        && run
            .containers
            .iter()
            .filter(|c| !c.init)
            .all(|c| container_ready(c, tick))
}

fn status_of(c: &Run, tick: u64) -> Value {
    let mut s = json!({"name": c.name, "image": c.image, "imageID": "",
        "ready": container_ready(c, tick), "restartCount": c.restarts,
        "started": matches!(c.state, Phase::Running { .. }),
        "state": c.state.to_json(), "lastState": c.last.clone().unwrap_or(json!({}))});
    if c.pulled {
        s["imageID"] = format!(
            "{}@sha256:{:064x}",
            c.image.split('@').next().unwrap_or_default(),
            c.image.len()
        )
        .into();
    }
    if !matches!(c.state, Phase::Waiting { .. }) || c.restarts > 0 {
        s["containerID"] = format!("containerd://{:032x}{:032x}", c.restarts, c.name.len()).into();
    }
    s
}

/// Writes the pod's status from the kubelet's view (only when it changed).
fn write_status(shared: &Shared, st: &mut State, pod: &Value, run: &PodRun) {
    let Some(current) = st
        .get(
            Kind::Pod,
            str_at(pod, "/metadata/namespace"),
            str_at(pod, "/metadata/name"),
        )
        .cloned()
    else {
        return;
    };
    let tick = st.tick;
    let init_done = run
        .containers
        .iter()
        .filter(|c| c.init)
        .all(|c| matches!(c.state, Phase::Terminated { exit: 0, .. }));
    let ready = pod_ready(run, tick);
    let any_running = run
        .containers
        .iter()
        .any(|c| !c.init && (matches!(c.state, Phase::Running { .. }) || c.restarts > 0));
    let phase = if finished(&current) {
        // Finished is for good.
        str_at(&current, "/status/phase")
    } else if let Some(done) = exited_for_good(run) {
        done
    } else if run.stopped || (init_done && any_running) {
        "Running"
    } else {
        "Pending"
    };
    let old = &current["status"];
    let condition = |ty: &str, ok: bool| {
        let status = if ok { "True" } else { "False" };
        let since = old["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == ty && c["status"] == status)
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| now().into());
        let mut c = json!({"type": ty, "status": status, "lastTransitionTime": since, "lastProbeTime": null});
        if !ok && phase == "Succeeded" && (ty == "Ready" || ty == "ContainersReady") {
            c["reason"] = "PodCompleted".into();
        } else if !ok && (ty == "Ready" || ty == "ContainersReady") {
            let waiting: Vec<&str> = run
                .containers
                .iter()
                .filter(|c| !c.init && !container_ready(c, tick))
                .map(|c| c.name.as_str())
                .collect();
            c["reason"] = "ContainersNotReady".into();
            c["message"] =
                format!("containers with unready status: [{}]", waiting.join(" ")).into();
        }
        if !ok && ty == "Initialized" {
            c["reason"] = "ContainersNotInitialized".into();
        }
        c
    };
    let mut status = ensure_object(&mut old.clone()).clone();
    status.insert("phase".into(), phase.into());
    status.insert(
        "conditions".into(),
        json!([
            condition("PodReadyToStartContainers", true),
            condition("Initialized", init_done),
            condition("Ready", ready),
            condition("ContainersReady", ready),
            condition("PodScheduled", true),
        ]),
    );
    let inits: Vec<Value> = run
        .containers
        .iter()
        .filter(|c| c.init)
        .map(|c| status_of(c, tick))
        .collect();
    if !inits.is_empty() {
        status.insert("initContainerStatuses".into(), inits.into());
    }
    status.insert(
        "containerStatuses".into(),
        run.containers
            .iter()
            .filter(|c| !c.init)
            .map(|c| status_of(c, tick))
            .collect::<Vec<_>>()
            .into(),
    );
    let status = Value::Object(status);
    if strip_times(&status) != strip_times(old) {
        let mut next = current.clone();
        next["status"] = status;
        shared.put(st, Kind::Pod, str_at(pod, "/metadata/namespace"), next);
    }
}

/// `Succeeded` or `Failed` once no container of the pod will run again: every app
/// container exited for good (all with 0: `Succeeded`), or an init container failed
/// for good.
fn exited_for_good(run: &PodRun) -> Option<&'static str> {
    if run.stopped {
        return None;
    }
    let failed = |c: &Run| matches!(c.state, Phase::Terminated { exit, .. } if exit != 0);
    if run.containers.iter().any(|c| c.init && failed(c)) {
        return Some("Failed");
    }
    let apps: Vec<&Run> = run.containers.iter().filter(|c| !c.init).collect();
    if apps.is_empty()
        || !apps
            .iter()
            .all(|c| matches!(c.state, Phase::Terminated { .. }))
    {
        return None;
    }
    Some(if apps.iter().any(|c| failed(c)) {
        "Failed"
    } else {
        "Succeeded"
    })
}

/// `status` without the volatile timestamps of conditions, for change detection.
fn strip_times(status: &Value) -> Value {
    let mut s = status.clone();
    for c in s["conditions"].as_array_mut().into_iter().flatten() {
        if let Some(c) = c.as_object_mut() {
            c.remove("lastTransitionTime");
        }
    }
    s
}

/// The log of container `container` of pod `uid` (`previous`: of its last terminated
/// run), or why there is none.
pub(crate) fn logs(
    st: &State,
    uid: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<Vec<String>, String> {
    let run = st
        .pods
        .get(uid)
        .ok_or_else(|| format!("pod \"{pod}\" is not running yet"))?;
    let c = run
        .containers
        .iter()
        .find(|c| c.name == container)
        .ok_or_else(|| format!("container \"{container}\" is not valid for pod \"{pod}\""))?;
    if let Some(runtime) = &st.podman {
        return podman::logs(runtime, c, uid, pod, previous);
    }
    if previous {
        return c.previous.clone().ok_or_else(|| {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        });
    }
    // As the kubelet: a running or finished container's own log; while waiting, the
    // last terminated run's; never started, why not.
    match &c.state {
        Phase::Waiting { reason, .. } => c.previous.clone().ok_or_else(|| {
            let why = match reason.as_str() {
                "ErrImagePull" => "image can't be pulled",
                "ImagePullBackOff" => "trying and failing to pull image",
                other => other,
            };
            format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {why}")
        }),
        _ => Ok(c.logs.clone()),
    }
}

/// The step the pod with `uid` became ready in, while it is.
pub(crate) fn ready_since(st: &State, uid: &str) -> Option<u64> {
    st.pods.get(uid).and_then(|r| r.ready_since)
}

/// The readiness of the pod with `uid` for `min_ready` steps: (ready, available).
pub(crate) fn readiness(st: &State, uid: &str, min_ready: u64) -> (bool, bool) {
    match st.pods.get(uid).and_then(|r| r.ready_since) {
        Some(since) => (true, st.tick >= since + min_ready),
        None => (false, false),
    }
}
