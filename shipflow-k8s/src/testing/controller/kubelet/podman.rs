//! The kubelet's side of pods run as real Podman containers: each step it reads
//! what the [`Runtime`]'s background tasks found (pulled, started, ready, exited)
//! and moves the container's state as for a scripted one (back-offs, restart counts,
//! events), never waiting for Podman.

use serde_json::Value;

use super::{Exit, FIRST_BACKOFF, MAX_BACKOFF, Phase, Run, exited};
use crate::testing::controller::events::Type;
use crate::testing::podman::{ContainerSpec, RunState, Runtime};
use crate::testing::store::{State, now, str_at};

/// What the kubelet says about a pod this step: (type, reason, message).
type Said = Vec<(Type, String, String)>;

/// The exit code a container that could not be started gets (as from containerd).
const START_ERROR: i32 = 128;

/// The pod's address and its node's: its own loopback address (the host's for a
/// `hostNetwork` pod), `None` when no address is left.
pub(super) fn address(runtime: &Runtime, pod: &Value) -> Option<(String, &'static str)> {
    runtime.place(pod).map(|ip| (ip, "127.0.0.1"))
}

/// One step of container `c` of `pod`. `missing` is why its configuration cannot
/// be built (a ConfigMap, Secret or key it needs is missing), if so.
pub(super) fn advance(
    runtime: &Runtime,
    st: &State,
    pod: &Value,
    c: &mut Run,
    missing: Option<String>,
    said: &mut Said,
) {
    let tick = st.tick;
    let uid = str_at(pod, "/metadata/uid");
    for e in runtime.take_events(uid, &c.name) {
        let ty = if e.warning {
            Type::Warning
        } else {
            Type::Normal
        };
        said.push((ty, e.reason.to_owned(), e.message));
    }
    c.real_ready = Some(runtime.ready(uid, &c.name));
    if matches!(c.state, Phase::Terminated { .. }) {
        return;
    }
    let Some((state, acknowledged)) = runtime.state(uid, &c.name) else {
        if let Some(message) = missing {
            if !matches!(&c.state, Phase::Waiting { reason, .. } if reason == "CreateContainerConfigError")
            {
                said.push((Type::Warning, "Failed".into(), format!("Error: {message}")));
            }
            c.state = Phase::waiting("CreateContainerConfigError", message, 0);
            return;
        }
        if let Some(container) = container_json(pod, &c.name) {
            runtime.ensure(pod, &c.name, ContainerSpec::new(st, pod, container));
        }
        c.state = Phase::waiting("ContainerCreating", "", 0);
        return;
    };
    match state {
        // Keep showing why it waits (ContainerCreating, or the back-off it ends).
        RunState::Pulling | RunState::Starting => {}
        RunState::Running { started_at } => {
            if !c.pulled {
                c.pulled = true;
                c.backoff = FIRST_BACKOFF;
            }
            if !matches!(c.state, Phase::Running { .. }) {
                c.state = Phase::Running {
                    since: tick,
                    started_at,
                };
            }
        }
        RunState::PullFailed { reason, message } if !acknowledged => {
            runtime.acknowledge(uid, &c.name);
            c.pull_failures += 1;
            c.state = Phase::waiting(reason, message, 0);
        }
        RunState::Exited {
            code,
            message,
            started_at,
            tail,
        } if !acknowledged => {
            runtime.acknowledge(uid, &c.name);
            let exit = Exit {
                code,
                message,
                last_words: tail,
            };
            ended(pod, c, tick, exit, started_at, said);
        }
        RunState::StartFailed { message } if !acknowledged => {
            runtime.acknowledge(uid, &c.name);
            let exit = Exit {
                code: START_ERROR,
                message,
                last_words: Vec::new(),
            };
            ended(pod, c, tick, exit, now(), said);
            // The runtime could not start it: containerd's reason for that.
            match &mut c.state {
                Phase::Terminated { reason, .. } => "StartError".clone_into(reason),
                _ => {
                    if let Some(t) = c.last.as_mut().and_then(|l| l.get_mut("terminated")) {
                        t["reason"] = "StartError".into();
                    }
                }
            }
        }
        // A failure already counted: back off, then try again.
        RunState::PullFailed { .. } | RunState::Exited { .. } | RunState::StartFailed { .. } => {
            match &c.state {
                Phase::Waiting { until, .. } if *until > tick => {}
                Phase::Waiting { reason, .. } if reason == "ErrImagePull" => {
                    let message = format!("Back-off pulling image \"{}\"", c.image);
                    c.state = Phase::waiting("ImagePullBackOff", message.clone(), tick + c.backoff);
                    said.push((Type::Normal, "BackOff".into(), message));
                    c.backoff = (c.backoff * 2).min(MAX_BACKOFF);
                }
                Phase::Waiting {
                    reason, message, ..
                } if matches!(
                    reason.as_str(),
                    "ImagePullBackOff" | "CrashLoopBackOff" | "CreateContainerConfigError"
                ) =>
                {
                    // The configuration is read again at every start.
                    if let Some(missing) = missing {
                        if reason != "CreateContainerConfigError" {
                            said.push((
                                Type::Warning,
                                "Failed".into(),
                                format!("Error: {missing}"),
                            ));
                        }
                        c.state = Phase::waiting("CreateContainerConfigError", missing, 0);
                        return;
                    }
                    let Some(container) = container_json(pod, &c.name) else {
                        return;
                    };
                    c.state = match reason.as_str() {
                        "CreateContainerConfigError" => Phase::waiting("ContainerCreating", "", 0),
                        _ => Phase::waiting(reason, message.clone(), 0),
                    };
                    let spec = ContainerSpec::new(st, pod, container);
                    runtime.restart(uid, &c.name, spec);
                }
                _ => {}
            }
        }
    }
}

/// The container's run ended with `exit`: restarted after a back-off as the pod's
/// `restartPolicy` says, or terminated for good, as for a scripted container (its
/// termination message falling back to its log's tail as its policy says).
fn ended(pod: &Value, c: &mut Run, tick: u64, exit: Exit, started_at: String, said: &mut Said) {
    // Only this run's lines: the fallback reads the tail of the run that ended.
    c.logs.clear();
    let policy = str_at(pod, "/spec/restartPolicy");
    c.state = exited(
        c,
        exit,
        policy,
        started_at,
        tick,
        str_at(pod, "/metadata/name"),
    );
    if matches!(c.state, Phase::Waiting { .. }) {
        said.push((
            Type::Warning,
            "BackOff".into(),
            "Back-off restarting failed container".into(),
        ));
    }
}

/// The spec of container `name` of `pod`.
fn container_json<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod["spec"][*l].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
}

/// The real log of container `c` of the pod `pod` (uid `uid`): `previous`, of its
/// last terminated run; else of its current run (of the last one while it waits to
/// restart), or why there is none.
pub(super) fn logs(
    runtime: &Runtime,
    c: &Run,
    uid: &str,
    pod: &str,
    previous: bool,
) -> Result<Vec<String>, String> {
    if previous {
        return (c.restarts > 0)
            .then(|| runtime.logs(uid, &c.name, true))
            .flatten()
            .ok_or_else(|| {
                format!(
                    "previous terminated container \"{}\" in pod \"{pod}\" not found",
                    c.name
                )
            });
    }
    match &c.state {
        Phase::Waiting { reason, .. } => runtime.logs(uid, &c.name, false).ok_or_else(|| {
            let why = match reason.as_str() {
                "ErrImagePull" => "image can't be pulled",
                "ImagePullBackOff" => "trying and failing to pull image",
                other => other,
            };
            format!(
                "container \"{}\" in pod \"{pod}\" is waiting to start: {why}",
                c.name
            )
        }),
        _ => Ok(runtime.logs(uid, &c.name, false).unwrap_or_default()),
    }
}
