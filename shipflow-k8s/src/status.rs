//! Reading rollout state from a Deployment, as `kubectl rollout status` does, plus
//! what kubectl does not check: whose template is rolling, a paused Deployment, and
//! a progress-deadline condition left over from an earlier rollout. Pure functions.

use crate::compat::{Field, is};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};
use serde_json::Value;

/// The annotation the Deployment controller keeps the revision in.
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label that ties pods to their ReplicaSet's template.
pub(crate) const HASH_LABEL: &str = "pod-template-hash";

/// Where a Deployment's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still going: about `ready` of `desired` new replicas are available.
    Rolling { ready: u64, desired: u64 },
    /// Every replica runs the expected template and is available, as kubectl judges.
    Complete,
    /// `spec.paused`: the controller rolls nothing.
    Paused,
    /// The pod template is no longer the expected one: someone else changed it.
    Superseded,
    /// `Progressing=False` with `ProgressDeadlineExceeded`, set for this rollout.
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

/// What a rollout is expected to end in: the pod template it rolls, and the
/// progress-deadline condition that was there before it (which says nothing about it).
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    template: Value,
    stale_deadline: Option<DeploymentCondition>,
    /// Whether the completed rollout is watched through the stabilization window:
    /// not when it goes back to a revision that ran before (a rollback).
    pub(crate) stabilize: bool,
}

impl Expected {
    /// What the rollout a write started is expected to end in; `written` is the
    /// write's answer, whose progress-deadline condition (if any) is an earlier
    /// rollout's.
    pub(crate) fn after_write(written: &Deployment) -> Self {
        Self {
            template: template_of(written),
            stale_deadline: deadline_condition(written).cloned(),
            stabilize: true,
        }
    }

    /// The same, for a rollout back to a revision that ran before: it is not
    /// watched through the stabilization window, so a rollback (after a cancel
    /// too) ends as soon as it is complete.
    pub(crate) fn going_back(mut self) -> Self {
        self.stabilize = false;
        self
    }

    /// What the rollout under way in `dep` is expected to end in: its own template,
    /// whose deadline condition is its own.
    pub(crate) fn current(dep: &Deployment) -> Self {
        Self {
            template: template_of(dep),
            stale_deadline: None,
            stabilize: true,
        }
    }

    /// The expected pod template, as JSON.
    pub(crate) fn template(&self) -> &Value {
        &self.template
    }
}

/// A Deployment's pod template, as JSON.
pub(crate) fn template_of(dep: &Deployment) -> Value {
    dep.spec
        .opt()
        .and_then(|s| serde_json::to_value(&s.template).ok())
        .unwrap_or(Value::Null)
}

fn deadline_condition(dep: &Deployment) -> Option<&DeploymentCondition> {
    dep.status.as_ref()?.conditions.iter().flatten().find(|c| {
        is(&c.type_, "Progressing")
            && is(&c.status, "False")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    })
}

/// Judges `dep`'s rollout toward `expected`. Complete means what `kubectl rollout
/// status` calls complete (the current generation observed, every replica updated
/// and available, no old one left), and with the expected template.
pub(crate) fn judge(dep: &Deployment, expected: &Expected) -> Verdict {
    let spec = dep.spec.opt();
    let desired = count(spec.and_then(|s| s.replicas).or(Some(1)));
    if spec.and_then(|s| s.paused) == Some(true) {
        return Verdict::Paused;
    }
    if template_of(dep) != expected.template {
        return Verdict::Superseded;
    }
    let Some(status) = &dep.status else {
        return Verdict::Rolling { ready: 0, desired };
    };
    if status.observed_generation.unwrap_or(0) < dep.metadata.generation.unwrap_or(0) {
        return Verdict::Rolling { ready: 0, desired };
    }
    if let Some(c) = deadline_condition(dep)
        && expected.stale_deadline.as_ref() != Some(c)
    {
        return Verdict::DeadlineExceeded(c.message.clone().unwrap_or_default());
    }
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| is(&c.type_, "ReplicaFailure") && is(&c.status, "True"))
    {
        return Verdict::ReplicaFailure(c.message.clone().unwrap_or_default());
    }
    let updated = count(status.updated_replicas);
    let total = count(status.replicas);
    let available = count(status.available_replicas);
    if updated >= desired && total <= updated && available >= updated {
        return Verdict::Complete;
    }
    // Available new replicas: all available ones but the old ones, at most.
    let old = total.saturating_sub(updated);
    Verdict::Rolling {
        ready: available.saturating_sub(old).min(updated),
        desired,
    }
}

/// What a rollout waits for, in `kubectl rollout status` words; `None` when it waits
/// for nothing (done).
pub(crate) fn waiting_for(dep: &Deployment) -> Option<String> {
    let status = dep.status.as_ref()?;
    if status.observed_generation.unwrap_or(0) < dep.metadata.generation.unwrap_or(0) {
        return Some("waiting for the deployment controller to see the new spec".into());
    }
    let desired = count(dep.spec.opt().and_then(|s| s.replicas).or(Some(1)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dep(status: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "api", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": status,
        }))
        .expect("valid deployment")
    }

    fn expect(d: &Deployment) -> Expected {
        Expected::after_write(d)
    }

    #[test]
    fn complete_as_kubectl_says_it() {
        let done = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
            "readyReplicas": 2, "availableReplicas": 2});
        let d = dep(done.clone());
        assert_eq!(judge(&d, &expect(&d)), Verdict::Complete);
        let mut stale = done.clone();
        stale["observedGeneration"] = json!(1);
        let d = dep(stale);
        assert_eq!(
            judge(&d, &expect(&d)),
            Verdict::Rolling {
                ready: 0,
                desired: 2
            }
        );
        let mut old_left = done;
        old_left["replicas"] = json!(3);
        let d = dep(old_left);
        assert_eq!(
            judge(&d, &expect(&d)),
            Verdict::Rolling {
                ready: 1,
                desired: 2
            },
            "one of the two available replicas may be the old one"
        );
    }

    #[test]
    fn someone_elses_template_is_not_ours() {
        let d = dep(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        );
        let expected = expect(&d);
        let mut theirs = d.clone();
        theirs.spec.as_mut().expect("spec").template.metadata = Some(Default::default());
        theirs.spec.as_mut().expect("spec").template.spec = Some(Default::default());
        assert_eq!(judge(&theirs, &expected), Verdict::Superseded);
        let mut paused = d;
        paused.spec.as_mut().expect("spec").paused = Some(true);
        assert_eq!(judge(&paused, &expected), Verdict::Paused);
    }

    #[test]
    fn a_deadline_condition_from_before_the_rollout_is_not_its_failure() {
        let timed_out = json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet \"api-old\" has timed out progressing.", "lastUpdateTime": "2026-01-01T00:00:00Z"});
        let before = dep(json!({"observedGeneration": 1, "conditions": [timed_out.clone()]}));
        let expected = expect(&before);
        let observed = dep(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 0,
            "availableReplicas": 2, "conditions": [timed_out]}),
        );
        assert!(matches!(
            judge(&observed, &expected),
            Verdict::Rolling { .. }
        ));
        let fresh = dep(
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"api-new\" has timed out progressing.",
            "lastUpdateTime": "2026-01-01T00:10:00Z"}]}),
        );
        assert_eq!(
            judge(&fresh, &expected),
            Verdict::DeadlineExceeded("ReplicaSet \"api-new\" has timed out progressing.".into())
        );
    }

    #[test]
    fn waiting_for_speaks_like_kubectl() {
        let at = |status: Value| waiting_for(&dep(status));
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
}
