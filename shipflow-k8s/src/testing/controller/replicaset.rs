//! The ReplicaSet controller (pkg/controller/replicaset): keeps as many active pods
//! as `spec.replicas` asks for, deleting unready and young pods first, and writes the
//! ReplicaSet's status: replicas, ready and available pods (ready for
//! `minReadySeconds`), and a `ReplicaFailure` condition while pods cannot be created.

use serde_json::{Value, json};

use super::events::{self, Type};
use super::{controlled, create_pod, kubelet};
use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, int_at, now, str_at};

/// Whether a pod counts toward its ReplicaSet: not being deleted, not finished.
pub(crate) fn active(pod: &Value) -> bool {
    pod["metadata"].get("deletionTimestamp").is_none()
        && !matches!(str_at(pod, "/status/phase"), "Succeeded" | "Failed")
}

/// Syncs every ReplicaSet in `ns`.
pub(crate) fn sync_all(shared: &Shared, st: &mut State, ns: &str) {
    for rs in st.list(Kind::ReplicaSet, ns) {
        // One being deleted in the foreground waits for the garbage collector.
        if rs["metadata"].get("deletionTimestamp").is_some() {
            continue;
        }
        sync(shared, st, &rs);
    }
}

fn sync(shared: &Shared, st: &mut State, rs: &Value) {
    let ns = str_at(rs, "/metadata/namespace").to_owned();
    let uid = str_at(rs, "/metadata/uid").to_owned();
    let mut pods: Vec<Value> = controlled(st, Kind::Pod, &ns, &uid)
        .into_iter()
        .filter(active)
        .collect();
    let want = int_at(rs, "/spec/replicas").unwrap_or(1).max(0) as usize;
    let mut failure: Option<String> = None;
    if pods.len() < want {
        for _ in pods.len()..want {
            match create_pod(shared, st, rs, "replicaset-controller") {
                Ok(pod) => pods.push(pod),
                Err(message) => {
                    // A failed sync is retried (the controller requeues it).
                    let next = st.tick + 1;
                    st.wake(&ns, next);
                    events::record(
                        shared,
                        st,
                        rs,
                        Type::Warning,
                        "FailedCreate",
                        &format!("Error creating: {message}"),
                        "replicaset-controller",
                    );
                    failure = Some(message);
                    break;
                }
            }
        }
    } else if pods.len() > want {
        // Unready before ready, then the youngest first (the controller's ranking).
        let min_ready = min_ready(rs);
        pods.sort_by_key(|p| {
            let (ready, _) = kubelet::readiness(st, str_at(p, "/metadata/uid"), min_ready);
            (
                ready,
                std::cmp::Reverse(str_at(p, "/metadata/creationTimestamp").to_owned()),
                std::cmp::Reverse(str_at(p, "/metadata/uid").to_owned()),
            )
        });
        let extra = pods.len() - want;
        for pod in pods.drain(..extra) {
            let name = str_at(&pod, "/metadata/name").to_owned();
            kubelet::terminate(shared, st, &ns, &name);
            events::record(
                shared,
                st,
                rs,
                Type::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {name}"),
                "replicaset-controller",
            );
        }
    }
    write_status(shared, st, rs, &pods, failure);
}

fn min_ready(rs: &Value) -> u64 {
    int_at(rs, "/spec/minReadySeconds").unwrap_or(0).max(0) as u64
}

fn write_status(
    shared: &Shared,
    st: &mut State,
    rs: &Value,
    pods: &[Value],
    failure: Option<String>,
) {
    let min_ready = min_ready(rs);
    let (mut ready, mut available) = (0u64, 0u64);
    let mut wake = None;
    for p in pods {
        let (r, a) = kubelet::readiness(st, str_at(p, "/metadata/uid"), min_ready);
        ready += u64::from(r);
        available += u64::from(a);
        if r && !a {
            // Available once ready for minReadySeconds: look again then.
            wake = kubelet::ready_since(st, str_at(p, "/metadata/uid")).map(|s| s + min_ready);
        }
    }
    if let Some(at) = wake {
        st.wake(str_at(rs, "/metadata/namespace"), at);
    }
    let old = &rs["status"];
    let mut conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    let had = conditions.iter().any(|c| c["type"] == "ReplicaFailure");
    match failure {
        Some(message) if !had => conditions
            .push(json!({"type": "ReplicaFailure", "status": "True",
            "reason": "FailedCreate", "message": message, "lastTransitionTime": now()})),
        None if had => conditions.retain(|c| c["type"] != "ReplicaFailure"),
        _ => {}
    }
    let mut status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs["metadata"]["generation"],
    });
    if !conditions.is_empty() {
        status["conditions"] = conditions.into();
    }
    if status != *old {
        let mut next = rs.clone();
        next["status"] = status;
        shared.put(
            st,
            Kind::ReplicaSet,
            str_at(rs, "/metadata/namespace"),
            next,
        );
    }
}
