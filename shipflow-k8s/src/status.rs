//! Reading rollout state: is a Deployment done, failed, or still going, and has a new
//! pod failed in a way that waiting will not fix. Pure functions over API objects.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::FailedPod;

/// The annotation the Deployment controller keeps the revision in.
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label that ties pods to their ReplicaSet's template.
pub(crate) const HASH_LABEL: &str = "pod-template-hash";

/// Where a Deployment's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Still going: `ready` of `desired` new replicas are available.
    Rolling { ready: u64, desired: u64 },
    /// Every replica runs the new template and is available; no old replica is left.
    Complete,
    /// `Progressing=False` with `ProgressDeadlineExceeded`.
    DeadlineExceeded(String),
    /// `ReplicaFailure=True`.
    ReplicaFailure(String),
}

fn count(v: Option<i32>) -> u64 {
    u64::try_from(v.unwrap_or(0)).unwrap_or(0)
}

/// The revision a Deployment or ReplicaSet is annotated with.
pub(crate) fn revision(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<u64> {
    meta.annotations.as_ref()?.get(REVISION)?.parse().ok()
}

/// Judges `dep`'s rollout of generation `generation`, as `kubectl rollout status` does.
pub(crate) fn assess(dep: &Deployment, generation: i64) -> Progress {
    let desired = count(dep.spec.as_ref().and_then(|s| s.replicas).or(Some(1)));
    let Some(status) = &dep.status else {
        return Progress::Rolling { ready: 0, desired };
    };
    let observed = status.observed_generation.unwrap_or(0) >= generation;
    let updated = count(status.updated_replicas);
    let available = count(status.available_replicas);
    if observed {
        for c in status.conditions.iter().flatten() {
            if c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            {
                return Progress::DeadlineExceeded(c.message.clone().unwrap_or_default());
            }
            if c.type_ == "ReplicaFailure" && c.status == "True" {
                return Progress::ReplicaFailure(c.message.clone().unwrap_or_default());
            }
        }
        if updated == desired
            && count(status.ready_replicas) >= desired
            && available >= desired
            && count(status.replicas) == updated
        {
            return Progress::Complete;
        }
    }
    // Available new replicas: all available ones but the old ones, at most.
    let old = count(status.replicas).saturating_sub(updated);
    Progress::Rolling {
        ready: if observed {
            available.saturating_sub(old).min(updated)
        } else {
            0
        },
        desired,
    }
}

/// What a rollout waits for, in `kubectl rollout status` words; `None` when it waits
/// for nothing (done, or the controller has not seen the new generation yet).
pub(crate) fn waiting_for(dep: &Deployment, generation: i64) -> Option<String> {
    let status = dep.status.as_ref()?;
    if status.observed_generation.unwrap_or(0) < generation {
        return Some("waiting for the deployment controller to see the new spec".into());
    }
    let desired = count(dep.spec.as_ref().and_then(|s| s.replicas).or(Some(1)));
    let updated = count(status.updated_replicas);
    let total = count(status.replicas);
    let available = count(status.available_replicas);
    if updated < desired {
        Some(format!(
            "{updated} out of {desired} new replicas have been updated"
        ))
    } else if total > updated {
        Some(format!(
            "{} old replicas are pending termination",
            total - updated
        ))
    } else if available < updated {
        Some(format!(
            "{available} of {updated} updated replicas are available"
        ))
    } else {
        None
    }
}

/// Waiting reasons that do not heal by waiting.
const FATAL: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// The first container of `pod` that failed for good: a fatal waiting reason, or
/// `CrashLoopBackOff` after more than `restart_budget` restarts.
pub(crate) fn pod_failure(pod: &Pod, restart_budget: u32) -> Option<FailedPod> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.clone().unwrap_or_default();
        let restarts = u32::try_from(c.restart_count).unwrap_or(0);
        let fatal = FATAL.contains(&reason.as_str())
            || (reason == "CrashLoopBackOff" && restarts > restart_budget);
        if fatal {
            let last_termination = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    let text = t
                        .message
                        .clone()
                        .or_else(|| t.reason.clone())
                        .unwrap_or_default();
                    format!("exit code {}: {text}", t.exit_code)
                });
            return Some(FailedPod {
                pod: name,
                container: c.name.clone(),
                reason,
                message: waiting.message.clone().unwrap_or_default(),
                last_termination,
                restarts,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(status: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .expect("valid deployment")
    }

    #[test]
    fn complete_needs_the_new_generation_and_no_old_replicas() {
        let done = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2});
        assert_eq!(assess(&dep(done.clone()), 2), Progress::Complete);
        let mut stale = done.clone();
        stale["observedGeneration"] = json!(1);
        assert_eq!(
            assess(&dep(stale), 2),
            Progress::Rolling {
                ready: 0,
                desired: 2
            }
        );
        let mut old_left = done;
        old_left["replicas"] = json!(3);
        assert_eq!(
            assess(&dep(old_left), 2),
            Progress::Rolling {
                ready: 1,
                desired: 2
            },
            "one of the two available replicas may be the old one"
        );
    }

    #[test]
    fn waiting_for_speaks_like_kubectl() {
        let at = |status: serde_json::Value| waiting_for(&dep(status), 2);
        assert_eq!(
            at(json!({"observedGeneration": 1})).as_deref(),
            Some("waiting for the deployment controller to see the new spec")
        );
        assert_eq!(
            at(json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1})).as_deref(),
            Some("1 out of 2 new replicas have been updated")
        );
        assert_eq!(
            at(json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2})).as_deref(),
            Some("1 old replicas are pending termination")
        );
        assert_eq!(
            at(
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                "availableReplicas": 1})
            )
            .as_deref(),
            Some("1 of 2 updated replicas are available")
        );
        assert_eq!(
            at(
                json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
                "availableReplicas": 2})
            ),
            None
        );
    }

    #[test]
    fn crash_loop_within_budget_is_not_yet_a_failure() {
        let pod = |restarts: i32| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "api-1"},
                "status": {"containerStatuses": [{"name": "api", "image": "x", "imageID": "",
                    "ready": false, "restartCount": restarts,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    "lastState": {"terminated": {"exitCode": 2, "message": "panic: boom"}}}]}
            }))
            .expect("valid pod")
        };
        assert_eq!(pod_failure(&pod(2), 2), None);
        let failure = pod_failure(&pod(3), 2).expect("over budget");
        assert_eq!(failure.reason, "CrashLoopBackOff");
        assert_eq!(
            failure.last_termination.as_deref(),
            Some("exit code 2: panic: boom")
        );
    }
}
