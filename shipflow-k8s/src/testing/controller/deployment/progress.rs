//! progress.go and the status: counts from the ReplicaSets, the `Available`,
//! `Progressing` and `ReplicaFailure` conditions, and the progress deadline.

use serde_json::{Map, Value, json};

use super::{Sync, available, max_unavailable, name, replicas, status_replicas};
use crate::testing::store::{int_at, now, str_at};

impl Sync<'_> {
    /// `calculateStatus`.
    pub(super) fn calculate_status(&self, new: Option<&Value>) -> Value {
        let all: Vec<Value> = self.replica_sets();
        let sum = |f: &dyn Fn(&Value) -> i64| all.iter().map(f).sum::<i64>();
        let available_count = sum(&available);
        let total = sum(&replicas);
        let updated = new.map(|n| status_replicas(&self.current(n))).unwrap_or(0);
        let mut status = Map::new();
        status.insert(
            "observedGeneration".into(),
            self.d["metadata"]["generation"].clone(),
        );
        for (k, v) in [
            ("replicas", sum(&status_replicas)),
            ("updatedReplicas", updated),
            (
                "readyReplicas",
                sum(&|rs: &Value| int_at(rs, "/status/readyReplicas").unwrap_or(0)),
            ),
            ("availableReplicas", available_count),
            ("unavailableReplicas", (total - available_count).max(0)),
        ] {
            if v != 0 {
                status.insert(k.into(), v.into());
            }
        }
        if let Some(c) = self.d["status"].get("collisionCount") {
            status.insert("collisionCount".into(), c.clone());
        }
        let mut status = Value::Object(status);
        status["conditions"] = self.d["status"]["conditions"].clone();
        if status["conditions"].is_null() {
            status.as_object_mut().map(|m| m.remove("conditions"));
        }
        let mut probe = self.d.clone();
        probe["status"] = status;
        let mut sync = ProbeConditions(&mut probe);
        if available_count >= replicas(&self.d) - max_unavailable(&self.d) {
            sync.set(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            );
        } else {
            sync.set(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            );
        }
        probe["status"].clone()
    }

    /// `syncRolloutStatus`: the status, with progress judged against the deadline.
    pub(super) fn sync_rollout_status(&mut self, new: Option<&Value>) {
        let new = new.map(|n| self.current(n));
        let mut status = self.calculate_status(new.as_ref());
        let has_deadline = self.d["spec"].get("progressDeadlineSeconds").is_some();
        let current = condition(&self.d, "Progressing").cloned();
        if !has_deadline {
            remove_condition(&mut status, "Progressing");
        }
        let complete_before = int_at(&status, "/replicas") == int_at(&status, "/updatedReplicas")
            && current
                .as_ref()
                .is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
        let mut progress_update = false;
        if has_deadline && !complete_before {
            let rs_name = new.as_ref().map(|n| name(n).to_owned());
            let mut probe = self.d.clone();
            probe["status"] = status.clone();
            if complete_status(&self.d, &status) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has successfully progressed."),
                    None => format!(
                        "Deployment \"{}\" has successfully progressed.",
                        name(&self.d)
                    ),
                };
                progress_update |= ProbeConditions(&mut probe).set(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &msg,
                );
            } else if progressing(&self.d, &status) {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet \"{n}\" is progressing."),
                    None => format!("Deployment \"{}\" is progressing.", name(&self.d)),
                };
                let since = current
                    .as_ref()
                    .filter(|c| c["status"] == "True")
                    .map(|c| c["lastTransitionTime"].clone());
                remove_condition(&mut probe["status"], "Progressing");
                ProbeConditions(&mut probe).set("Progressing", "True", "ReplicaSetUpdated", &msg);
                if let Some(since) = since {
                    set_transition_time(&mut probe["status"], "Progressing", since);
                }
                progress_update = true;
            } else if self.timed_out() {
                let msg = match &rs_name {
                    Some(n) => format!("ReplicaSet \"{n}\" has timed out progressing."),
                    None => format!(
                        "Deployment \"{}\" has timed out progressing.",
                        name(&self.d)
                    ),
                };
                progress_update |= ProbeConditions(&mut probe).set(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &msg,
                );
            } else if let Some(at) = self.deadline() {
                // No progress yet: look again when the deadline passes.
                let ns = self.ns.clone();
                self.st.wake(&ns, at);
            }
            status = probe["status"].clone();
        }
        // A ReplicaSet's failure to create pods, the new one's first.
        let sets = self.replica_sets();
        let new_uid = new.as_ref().map(|n| str_at(n, "/metadata/uid").to_owned());
        let failure = sets
            .iter()
            .filter(|rs| Some(str_at(rs, "/metadata/uid").to_owned()) == new_uid)
            .chain(sets.iter())
            .find_map(|rs| {
                rs["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "ReplicaFailure")
                    .cloned()
            });
        let mut probe = self.d.clone();
        probe["status"] = status;
        match failure {
            Some(c) => {
                ProbeConditions(&mut probe).set(
                    "ReplicaFailure",
                    str_at(&c, "/status"),
                    str_at(&c, "/reason"),
                    str_at(&c, "/message"),
                );
            }
            None => remove_condition(&mut probe["status"], "ReplicaFailure"),
        }
        let status = probe["status"].clone();
        if status != self.d["status"] {
            if progress_update {
                let tick = self.st.tick;
                self.st.progress_at.insert(self.uid(), tick);
            }
            self.d["status"] = status;
            self.write_deployment_status();
        }
        if complete_status(&self.d, &self.d["status"].clone()) {
            self.record_complete();
        }
    }

    /// The step after which the rollout has timed out, unless it progresses.
    fn deadline(&self) -> Option<u64> {
        let deadline = int_at(&self.d, "/spec/progressDeadlineSeconds")?.max(0) as u64;
        let since = self.st.progress_at.get(&self.uid()).copied().unwrap_or(0);
        Some(since + deadline + 1)
    }

    /// `DeploymentTimedOut`: no progress for `progressDeadlineSeconds` steps.
    fn timed_out(&self) -> bool {
        let Some(c) = condition(&self.d, "Progressing") else {
            return false;
        };
        match str_at(c, "/reason") {
            "ProgressDeadlineExceeded" => true,
            "NewReplicaSetAvailable" => false,
            _ => {
                let deadline = int_at(&self.d, "/spec/progressDeadlineSeconds")
                    .unwrap_or(600)
                    .max(0) as u64;
                let since = self.st.progress_at.get(&self.uid()).copied().unwrap_or(0);
                self.st.tick > since + deadline
            }
        }
    }

    pub(super) fn set_condition(&mut self, ty: &str, status: &str, reason: &str, message: &str) {
        if ProbeConditions(&mut self.d).set(ty, status, reason, message) && ty == "Progressing" {
            let tick = self.st.tick;
            self.st.progress_at.insert(self.uid(), tick);
        }
    }

    /// Remembers when a generation completed and that its images run.
    pub(super) fn record_complete(&mut self) {
        let key = (
            self.ns.clone(),
            name(&self.d).to_owned(),
            int_at(&self.d, "/metadata/generation").unwrap_or(0) as u64,
        );
        self.st
            .ready_at
            .entry(key)
            .or_insert_with(std::time::Instant::now);
        let images =
            crate::testing::controller::kubelet::images_key(&self.d["spec"]["template"]["spec"]);
        self.st
            .scripts
            .good
            .insert((self.ns.clone(), name(&self.d).to_owned(), images));
    }
}

/// `DeploymentComplete` for `status`.
pub(super) fn complete_status(d: &Value, status: &Value) -> bool {
    let desired = replicas(d);
    int_at(status, "/updatedReplicas").unwrap_or(0) == desired
        && int_at(status, "/replicas").unwrap_or(0) == desired
        && int_at(status, "/availableReplicas").unwrap_or(0) == desired
        && int_at(status, "/observedGeneration").unwrap_or(0)
            >= int_at(d, "/metadata/generation").unwrap_or(0)
}

/// `DeploymentProgressing`: more updated, ready or available replicas, or fewer old ones.
fn progressing(d: &Value, new: &Value) -> bool {
    let old = &d["status"];
    let get = |s: &Value, f: &str| int_at(s, &format!("/{f}")).unwrap_or(0);
    let old_old = get(old, "replicas") - get(old, "updatedReplicas");
    let new_old = get(new, "replicas") - get(new, "updatedReplicas");
    get(new, "updatedReplicas") > get(old, "updatedReplicas")
        || new_old < old_old
        || get(new, "readyReplicas") > get(old, "readyReplicas")
        || get(new, "availableReplicas") > get(old, "availableReplicas")
}

pub(super) fn condition<'v>(d: &'v Value, ty: &str) -> Option<&'v Value> {
    d["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

fn remove_condition(status: &mut Value, ty: &str) {
    if let Some(list) = status["conditions"].as_array_mut() {
        list.retain(|c| c["type"] != ty);
    }
}

fn set_transition_time(status: &mut Value, ty: &str, since: Value) {
    for c in status["conditions"].as_array_mut().into_iter().flatten() {
        if c["type"] == ty {
            c["lastTransitionTime"] = since.clone();
        }
    }
}

/// `SetDeploymentCondition` on an object's status.
pub(super) struct ProbeConditions<'a>(&'a mut Value);

impl ProbeConditions<'_> {
    /// Sets the condition; an unchanged status and reason change nothing. Returns
    /// whether it wrote.
    pub(super) fn set(&mut self, ty: &str, status: &str, reason: &str, message: &str) -> bool {
        let conditions = &mut self.0["status"]["conditions"];
        if !conditions.is_array() {
            *conditions = json!([]);
        }
        let Some(list) = conditions.as_array_mut() else {
            return false;
        };
        let current = list.iter().find(|c| c["type"] == ty).cloned();
        if let Some(c) = &current
            && c["status"] == status
            && c["reason"] == reason
        {
            return false;
        }
        let transition = match &current {
            Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
            _ => now().into(),
        };
        list.retain(|c| c["type"] != ty);
        list.push(
            json!({"type": ty, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": now(), "lastTransitionTime": transition}),
        );
        true
    }
}
