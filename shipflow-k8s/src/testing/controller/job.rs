//! The Job controller (pkg/controller/job) and the TTL-after-finished controller:
//! a Job's pods are created from its template (up to `parallelism`, until
//! `completions` succeeded), a failed pod (or one deleted before it succeeded) is
//! replaced after a back-off (10, 20, 40 … up to 600 steps) until more than
//! `backoffLimit` failed, `activeDeadlineSeconds`
//! ends it, and the status counts active, ready, terminating, succeeded and failed
//! pods. A Job that met its end first gets `SuccessCriteriaMet` or `FailureTarget`,
//! then, once none of its pods runs any more, `Complete` (with `completionTime`) or
//! `Failed`. `ttlSecondsAfterFinished` steps after that it is deleted in the
//! foreground, with its pods.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::events::{self, Type};
use super::gc::{self, Propagation};
use super::{controlled, create_pod, kubelet};
use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, int_at, now, str_at};

const COMPONENT: &str = "job-controller";
/// The back-off before a failed pod is replaced, in steps; it doubles per failure
/// in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: u64 = 10;
const MAX_BACKOFF: u64 = 600;

/// The Job controller's memory of one Job.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobRun {
    /// The pods whose end the status has counted.
    counted: HashSet<String>,
    /// The pods seen that have not ended yet: one that vanishes before it is seen
    /// to end has failed (what the real controller's tracking finalizer ensures).
    running: HashSet<String>,
    /// Pods failed since the last one succeeded (the back-off grows with them).
    failures_in_row: u32,
    /// The step of the last pod failure.
    last_failure: u64,
    /// The step the Job started (or was last resumed) in.
    started: Option<u64>,
    /// The step it finished in.
    finished: Option<u64>,
}

/// How a Job ends: its interim condition's type, the final one's, reason and message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    interim: &'static str,
    last: &'static str,
    reason: &'static str,
    message: &'static str,
}

const COMPLETE: End = End {
    interim: "SuccessCriteriaMet",
    last: "Complete",
    reason: "CompletionsReached",
    message: "Reached expected number of succeeded pods",
};
const BACKOFF_LIMIT: End = End {
    interim: "FailureTarget",
    last: "Failed",
    reason: "BackoffLimitExceeded",
    message: "Job has reached the specified backoff limit",
};
const DEADLINE: End = End {
    interim: "FailureTarget",
    last: "Failed",
    reason: "DeadlineExceeded",
    message: "Job was active longer than specified deadline",
};

/// Syncs every Job in `ns` that is not being deleted.
pub(crate) fn sync_all(shared: &Shared, st: &mut State, ns: &str) {
    let jobs = st.list(Kind::Job, ns);
    for job in &jobs {
        if job["metadata"].get("deletionTimestamp").is_none() {
            sync(shared, st, job);
        }
    }
    if !st.jobs.is_empty() {
        let live: HashSet<String> = st
            .list_all(Kind::Job)
            .iter()
            .map(|j| str_at(j, "/metadata/uid").to_owned())
            .collect();
        st.jobs.retain(|uid, _| live.contains(uid));
    }
}

/// Whether condition `ty` of `conditions` holds.
fn holds(conditions: &[Value], ty: &str) -> bool {
    conditions
        .iter()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

fn condition(ty: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({"type": ty, "status": if status { "True" } else { "False" }, "reason": reason,
        "message": message, "lastProbeTime": now(), "lastTransitionTime": now()})
}

fn sync(shared: &Shared, st: &mut State, job: &Value) {
    let ns = str_at(job, "/metadata/namespace").to_owned();
    let uid = str_at(job, "/metadata/uid").to_owned();
    let tick = st.tick;
    let mut run = st.jobs.get(&uid).cloned().unwrap_or_default();
    let spec = &job["spec"];
    let old = &job["status"];
    let mut conditions: Vec<Value> = old["conditions"].as_array().cloned().unwrap_or_default();
    let mut succeeded = int_at(old, "/succeeded").unwrap_or(0);
    let mut failed = int_at(old, "/failed").unwrap_or(0);
    let pods = controlled(st, Kind::Pod, &ns, &uid);
    for pod in &pods {
        let pod_uid = str_at(pod, "/metadata/uid");
        if run.counted.contains(pod_uid) {
            continue;
        }
        let terminating = pod["metadata"].get("deletionTimestamp").is_some();
        match str_at(pod, "/status/phase") {
            "Succeeded" => {
                succeeded += 1;
                run.failures_in_row = 0;
            }
            // A pod deleted before it succeeded has failed.
            _ if terminating => {
                failed += 1;
                run.failures_in_row += 1;
                run.last_failure = tick;
            }
            "Failed" => {
                failed += 1;
                run.failures_in_row += 1;
                run.last_failure = tick;
            }
            _ => {
                run.running.insert(pod_uid.to_owned());
                continue;
            }
        }
        run.running.remove(pod_uid);
        run.counted.insert(pod_uid.to_owned());
    }
    let present: HashSet<&str> = pods.iter().map(|p| str_at(p, "/metadata/uid")).collect();
    let vanished: Vec<String> = run
        .running
        .iter()
        .filter(|u| !present.contains(u.as_str()))
        .cloned()
        .collect();
    for pod_uid in vanished {
        failed += 1;
        run.failures_in_row += 1;
        run.last_failure = tick;
        run.running.remove(&pod_uid);
        run.counted.insert(pod_uid);
    }
    let mut active: Vec<Value> = pods
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none() && !kubelet::finished(p))
        .cloned()
        .collect();
    let finished = holds(&conditions, "Complete") || holds(&conditions, "Failed");
    let mut start_time = old.get("startTime").cloned();
    let mut completion_time = old.get("completionTime").cloned();
    if finished {
        run.finished.get_or_insert(tick);
    } else if spec["suspend"] == true {
        for pod in active.drain(..) {
            // Suspending is not failing: these pods count for nothing.
            let pod_uid = str_at(&pod, "/metadata/uid");
            run.running.remove(pod_uid);
            run.counted.insert(pod_uid.to_owned());
            delete_pod(shared, st, job, &pod);
        }
        run.started = None;
        if !holds(&conditions, "Suspended") {
            conditions.retain(|c| c["type"] != "Suspended");
            conditions.push(condition(
                "Suspended",
                true,
                "JobSuspended",
                "Job suspended",
            ));
            events::record(
                shared,
                st,
                job,
                Type::Normal,
                "Suspended",
                "Job suspended",
                COMPONENT,
            );
        }
    } else {
        if holds(&conditions, "Suspended") {
            conditions.retain(|c| c["type"] != "Suspended");
            conditions.push(condition("Suspended", false, "JobResumed", "Job resumed"));
            events::record(
                shared,
                st,
                job,
                Type::Normal,
                "Resumed",
                "Job resumed",
                COMPONENT,
            );
            start_time = None;
        }
        if run.started.is_none() || start_time.is_none() {
            run.started = Some(tick);
            start_time = Some(now().into());
        }
        let started = run.started.unwrap_or(tick);
        let end = [COMPLETE, BACKOFF_LIMIT, DEADLINE]
            .into_iter()
            .find(|e| {
                conditions
                    .iter()
                    .any(|c| c["type"] == e.interim && c["reason"] == e.reason)
            })
            .or_else(|| {
                let deadline =
                    int_at(spec, "/activeDeadlineSeconds").map(|d| started + d.max(0) as u64);
                if failed > int_at(spec, "/backoffLimit").unwrap_or(6)
                    || past_backoff_limit_on_failure(spec, &active)
                {
                    Some(BACKOFF_LIMIT)
                } else if deadline.is_some_and(|d| tick >= d) {
                    Some(DEADLINE)
                } else if succeeded >= int_at(spec, "/completions").unwrap_or(1) {
                    Some(COMPLETE)
                } else {
                    if let Some(d) = deadline {
                        st.wake(&ns, d);
                    }
                    None
                }
            });
        match end {
            Some(end) => {
                if !conditions.iter().any(|c| c["type"] == end.interim) {
                    conditions.push(condition(end.interim, true, end.reason, end.message));
                }
                for pod in active.drain(..) {
                    if end.last == "Failed" {
                        // A pod the controller ends counts as failed.
                        failed += 1;
                        let pod_uid = str_at(&pod, "/metadata/uid");
                        run.running.remove(pod_uid);
                        run.counted.insert(pod_uid.to_owned());
                    }
                    delete_pod(shared, st, job, &pod);
                }
                let terminating = controlled(st, Kind::Pod, &ns, &uid).iter().any(|p| {
                    p["metadata"].get("deletionTimestamp").is_some() && !kubelet::finished(p)
                });
                if !terminating {
                    conditions.push(condition(end.last, true, end.reason, end.message));
                    if end.last == "Complete" {
                        completion_time = Some(now().into());
                        events::record(
                            shared,
                            st,
                            job,
                            Type::Normal,
                            "Completed",
                            "Job completed",
                            COMPONENT,
                        );
                    } else {
                        events::record(
                            shared,
                            st,
                            job,
                            Type::Warning,
                            end.reason,
                            end.message,
                            COMPONENT,
                        );
                    }
                    run.finished = Some(tick);
                }
            }
            None => create_pods(shared, st, job, &mut run, &mut active, succeeded),
        }
    }
    let terminating = controlled(st, Kind::Pod, &ns, &uid)
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_some() && !kubelet::finished(p))
        .count();
    let ready = active
        .iter()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .is_some_and(|c| holds(c, "Ready"))
        })
        .count();
    let mut status =
        json!({"ready": ready, "terminating": terminating, "uncountedTerminatedPods": {}});
    for (field, n) in [
        ("active", active.len() as i64),
        ("succeeded", succeeded),
        ("failed", failed),
    ] {
        if n > 0 {
            status[field] = n.into();
        }
    }
    for (field, value) in [
        ("startTime", start_time),
        ("completionTime", completion_time),
    ] {
        if let Some(v) = value {
            status[field] = v;
        }
    }
    if !conditions.is_empty() {
        status["conditions"] = conditions.into();
    }
    let finished_at = run.finished;
    st.jobs.insert(uid, run);
    if let Some(current) = st.get(Kind::Job, &ns, str_at(job, "/metadata/name"))
        && current["status"] != status
    {
        let mut next = current.clone();
        next["status"] = status;
        shared.put(st, Kind::Job, &ns, next);
    }
    if let (Some(at), Some(ttl)) = (finished_at, int_at(spec, "/ttlSecondsAfterFinished")) {
        let due = at + ttl.max(0) as u64;
        if tick >= due {
            gc::delete(
                shared,
                st,
                Kind::Job,
                &ns,
                str_at(job, "/metadata/name"),
                Propagation::Foreground,
            );
        } else {
            st.wake(&ns, due);
        }
    }
}

/// With `restartPolicy: OnFailure`, whether the active pods' containers restarted
/// `backoffLimit` times (once, for a limit of 0).
fn past_backoff_limit_on_failure(spec: &Value, active: &[Value]) -> bool {
    if str_at(spec, "/template/spec/restartPolicy") != "OnFailure" {
        return false;
    }
    let restarts: i64 = active
        .iter()
        .flat_map(|p| {
            ["initContainerStatuses", "containerStatuses"]
                .into_iter()
                .flat_map(move |l| p["status"][l].as_array().into_iter().flatten())
        })
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    match int_at(spec, "/backoffLimit").unwrap_or(6) {
        0 => restarts > 0,
        limit => restarts >= limit,
    }
}

/// Creates the pods the Job still needs, after the back-off that follows a failure.
fn create_pods(
    shared: &Shared,
    st: &mut State,
    job: &Value,
    run: &mut JobRun,
    active: &mut Vec<Value>,
    succeeded: i64,
) {
    let ns = str_at(job, "/metadata/namespace").to_owned();
    let parallelism = int_at(job, "/spec/parallelism").unwrap_or(1).max(0);
    let wanted = match int_at(job, "/spec/completions") {
        Some(completions) => parallelism.min(completions - succeeded),
        // A work queue: no new pods once one succeeded.
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    let missing = wanted - active.len() as i64;
    if missing <= 0 {
        return;
    }
    // `podReplacementPolicy: Failed` replaces a deleted pod only once it is gone.
    if str_at(job, "/spec/podReplacementPolicy") == "Failed"
        && controlled(st, Kind::Pod, &ns, str_at(job, "/metadata/uid"))
            .iter()
            .any(|p| p["metadata"].get("deletionTimestamp").is_some() && !kubelet::finished(p))
    {
        return;
    }
    if run.failures_in_row > 0 {
        let doublings = (run.failures_in_row - 1).min(16);
        let backoff = (FIRST_BACKOFF << doublings).min(MAX_BACKOFF);
        let due = run.last_failure + backoff;
        if st.tick < due {
            st.wake(&ns, due);
            return;
        }
    }
    for _ in 0..missing {
        match create_pod(shared, st, job, COMPONENT) {
            Ok(pod) => {
                run.running.insert(str_at(&pod, "/metadata/uid").to_owned());
                active.push(pod);
            }
            Err(message) => {
                // A failed sync is retried.
                let next = st.tick + 1;
                st.wake(&ns, next);
                events::record(
                    shared,
                    st,
                    job,
                    Type::Warning,
                    "FailedCreate",
                    &format!("Error creating: {message}"),
                    COMPONENT,
                );
                break;
            }
        }
    }
}

fn delete_pod(shared: &Shared, st: &mut State, job: &Value, pod: &Value) {
    let name = str_at(pod, "/metadata/name").to_owned();
    kubelet::terminate(shared, st, str_at(job, "/metadata/namespace"), &name);
    events::record(
        shared,
        st,
        job,
        Type::Normal,
        "SuccessfulDelete",
        &format!("Deleted pod: {name}"),
        COMPONENT,
    );
}
