//! The Deployment controller, following kube-controller-manager's
//! pkg/controller/deployment (sync.go, rolling.go, recreate.go, progress.go and
//! util/deployment_util.go): the new ReplicaSet is the one whose template equals the
//! Deployment's; an existing one gets the next revision in one write and the
//! Deployment's revision annotation follows in a later sync; rolling updates honour
//! maxSurge and maxUnavailable; Recreate scales the old ReplicaSets to zero and waits
//! for their pods before creating the new one; paused Deployments only scale;
//! `progressDeadlineSeconds` turns `Progressing` to `ProgressDeadlineExceeded`, which
//! stays until the rollout makes progress again; a ReplicaSet's `ReplicaFailure`
//! condition is copied while it lasts; old ReplicaSets beyond `revisionHistoryLimit`
//! are deleted once a rollout completes.

use serde_json::{Map, Value, json};

use super::events::{self, Type};
use super::{controlled, owner_ref, safe_chars};

mod progress;
mod recreate;
mod rolling;
mod scaling;

use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, ensure_object, int_at, str_at};
use progress::condition;

pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
pub(crate) const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub(crate) const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub(crate) const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub(crate) const HASH_LABEL: &str = "pod-template-hash";
/// Annotations the controller never copies from a Deployment to its ReplicaSets.
const SKIP_COPY: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
const COMPONENT: &str = "deployment-controller";

/// Syncs every Deployment in `ns`.
pub(crate) fn sync_all(shared: &Shared, st: &mut State, ns: &str) {
    let names: Vec<String> = st
        .iter(Kind::Deployment, ns)
        // One being deleted in the foreground waits for the garbage collector.
        .filter(|d| d["metadata"].get("deletionTimestamp").is_none())
        .map(|d| name(d).to_owned())
        .collect();
    for name in names {
        Sync::new(shared, st, ns, &name).run();
    }
}

fn replicas(object: &Value) -> i64 {
    int_at(object, "/spec/replicas").unwrap_or(1)
}

fn status_replicas(rs: &Value) -> i64 {
    int_at(rs, "/status/replicas").unwrap_or(0)
}

fn available(rs: &Value) -> i64 {
    int_at(rs, "/status/availableReplicas").unwrap_or(0)
}

fn revision(object: &Value) -> i64 {
    object["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn name(object: &Value) -> &str {
    str_at(object, "/metadata/name")
}

fn rolling(d: &Value) -> bool {
    str_at(d, "/spec/strategy/type") != "Recreate"
}

/// An int-or-percent of `total`, rounded up or down.
fn scaled(value: &Value, total: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(percent) if round_up => (percent * total + 99) / 100,
            Some(percent) => percent * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// `(maxSurge, maxUnavailable)` as numbers of pods, as `ResolveFenceposts` does.
fn fenceposts(d: &Value) -> (i64, i64) {
    let desired = replicas(d);
    let r = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = scaled(&r["maxSurge"], desired, true);
    let unavailable = scaled(&r["maxUnavailable"], desired, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn max_surge(d: &Value) -> i64 {
    if rolling(d) { fenceposts(d).0 } else { 0 }
}

fn max_unavailable(d: &Value) -> i64 {
    if !rolling(d) || replicas(d) == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas(d))
}

/// The template without the pod-template-hash label, for comparing templates.
fn template_without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
        if labels.is_empty()
            && let Some(m) = t["metadata"].as_object_mut()
        {
            m.remove("labels");
        }
    }
    if t["metadata"].as_object().is_some_and(Map::is_empty)
        && let Some(m) = t.as_object_mut()
    {
        m.remove("metadata");
    }
    t
}

/// The pod-template-hash of a template: FNV-1a over its JSON and the collision
/// count, in the alphabet Kubernetes uses.
fn template_hash(template: &Value, collisions: i64) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let text = template_without_hash(template).to_string();
    for b in text.bytes().chain(collisions.to_le_bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    safe_chars(u64::from(hash), 10)
}

/// One sync of one Deployment, with the ReplicaSets it controls.
struct Sync<'a> {
    shared: &'a Shared,
    st: &'a mut State,
    ns: String,
    d: Value,
}

impl<'a> Sync<'a> {
    fn new(shared: &'a Shared, st: &'a mut State, ns: &str, name: &str) -> Self {
        let d = st
            .get(Kind::Deployment, ns, name)
            .cloned()
            .unwrap_or(Value::Null);
        Self {
            shared,
            st,
            ns: ns.to_owned(),
            d,
        }
    }

    fn run(mut self) {
        if self.d.is_null() || self.d["metadata"].get("deletionTimestamp").is_some() {
            return;
        }
        if self.check_paused_conditions() {
            return;
        }
        if self.d["spec"]["paused"] == true {
            self.sync_scale();
            return;
        }
        if self.is_scaling_event() {
            self.sync_scale();
            return;
        }
        if rolling(&self.d) {
            self.rollout_rolling();
        } else {
            self.rollout_recreate();
        }
    }

    fn uid(&self) -> String {
        str_at(&self.d, "/metadata/uid").to_owned()
    }

    /// The controlled ReplicaSets, oldest first (by creation, then name).
    fn replica_sets(&self) -> Vec<Value> {
        let mut sets = controlled(self.st, Kind::ReplicaSet, &self.ns, &self.uid());
        sets.retain(|rs| rs["metadata"].get("deletionTimestamp").is_none());
        sets.sort_by(|a, b| {
            (
                str_at(a, "/metadata/creationTimestamp"),
                str_at(a, "/metadata/uid"),
            )
                .cmp(&(
                    str_at(b, "/metadata/creationTimestamp"),
                    str_at(b, "/metadata/uid"),
                ))
        });
        sets
    }

    /// The oldest ReplicaSet whose template equals the Deployment's (`FindNewReplicaSet`).
    fn find_new(&self, sets: &[Value]) -> Option<Value> {
        let want = template_without_hash(&self.d["spec"]["template"]);
        sets.iter()
            .find(|rs| template_without_hash(&rs["spec"]["template"]) == want)
            .cloned()
    }

    fn write_deployment_status(&mut self) {
        let stored = self
            .shared
            .put(self.st, Kind::Deployment, &self.ns, self.d.clone());
        self.d = stored;
    }

    fn write_rs(&mut self, rs: Value, spec_changed: bool) -> Value {
        let mut rs = rs;
        if spec_changed {
            let generation = int_at(&rs, "/metadata/generation").unwrap_or(1) + 1;
            rs["metadata"]["generation"] = generation.into();
        }
        self.shared.put(self.st, Kind::ReplicaSet, &self.ns, rs)
    }

    /// A paused Deployment gets `Progressing=Unknown/DeploymentPaused`, a resumed one
    /// `DeploymentResumed`; returns whether the sync stops here (the status changed).
    fn check_paused_conditions(&mut self) -> bool {
        if self.d["spec"].get("progressDeadlineSeconds").is_none() {
            return false;
        }
        let cond = condition(&self.d, "Progressing");
        let reason = cond
            .map(|c| str_at(c, "/reason").to_owned())
            .unwrap_or_default();
        if reason == "ProgressDeadlineExceeded" {
            return false;
        }
        let paused = self.d["spec"]["paused"] == true;
        let (status, new_reason, message) = if paused && reason != "DeploymentPaused" {
            ("Unknown", "DeploymentPaused", "Deployment is paused")
        } else if !paused && reason == "DeploymentPaused" {
            ("Unknown", "DeploymentResumed", "Deployment is resumed")
        } else {
            return false;
        };
        self.set_condition("Progressing", status, new_reason, message);
        self.write_deployment_status();
        false
    }

    /// `getNewReplicaSet`: finds (or with `create`, creates) the new ReplicaSet and
    /// syncs revisions. An existing one whose annotations change is written and the
    /// Deployment is left for a later sync; else the Deployment's revision follows.
    fn sync_revision(&mut self, create: bool) -> (Option<Value>, Vec<Value>) {
        let sets = self.replica_sets();
        let existing = self.find_new(&sets);
        let old: Vec<Value> = sets
            .iter()
            .filter(|rs| {
                Some(str_at(rs, "/metadata/uid"))
                    != existing.as_ref().map(|e| str_at(e, "/metadata/uid"))
            })
            .cloned()
            .collect();
        let max_old = old.iter().map(revision).max().unwrap_or(0);
        let new_revision = max_old + 1;
        if let Some(mut rs) = existing {
            let changed = self.set_new_rs_annotations(&mut rs, new_revision, true);
            let min_ready = self.d["spec"]["minReadySeconds"].clone();
            let min_ready_changed = rs["spec"]["minReadySeconds"] != min_ready
                && !(min_ready.is_null() && rs["spec"]["minReadySeconds"] == 0);
            if changed || min_ready_changed {
                if min_ready_changed {
                    rs["spec"]["minReadySeconds"] = min_ready;
                }
                let rs = self.write_rs(rs, min_ready_changed);
                return (Some(rs), old);
            }
            let mut needs_update = self.set_revision(&revision(&rs).to_string());
            if self.d["spec"].get("progressDeadlineSeconds").is_some()
                && condition(&self.d, "Progressing").is_none()
            {
                let msg = format!("Found new replica set \"{}\"", name(&rs));
                self.set_condition("Progressing", "True", "FoundNewReplicaSet", &msg);
                needs_update = true;
            }
            if needs_update {
                self.write_deployment_status();
            }
            return (Some(rs), old);
        }
        if !create {
            return (None, old);
        }
        let collisions = int_at(&self.d, "/status/collisionCount").unwrap_or(0);
        let hash = template_hash(&self.d["spec"]["template"], collisions);
        let mut template = self.d["spec"]["template"].clone();
        ensure_object(&mut template["metadata"]["labels"])
            .insert(HASH_LABEL.into(), hash.clone().into());
        let mut selector = self.d["spec"]["selector"].clone();
        ensure_object(&mut selector["matchLabels"]).insert(HASH_LABEL.into(), hash.clone().into());
        let mut rs = json!({
            "metadata": {
                "name": format!("{}-{hash}", name(&self.d)),
                "labels": template["metadata"]["labels"],
                "ownerReferences": owner_ref(&self.d),
                "generation": 1,
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        });
        if let Some(m) = self.d["spec"].get("minReadySeconds") {
            rs["spec"]["minReadySeconds"] = m.clone();
        }
        let mut all = old.clone();
        all.push(rs.clone());
        let count = self.new_rs_new_replicas(&all, &rs);
        rs["spec"]["replicas"] = count.into();
        self.set_new_rs_annotations(&mut rs, new_revision, false);
        let rs = self.shared.put(self.st, Kind::ReplicaSet, &self.ns, rs);
        if count > 0 {
            self.event(
                Type::Normal,
                "ScalingReplicaSet",
                &format!("Scaled up replica set {} from 0 to {count}", name(&rs)),
            );
        }
        let mut needs_update = self.set_revision(&new_revision.to_string());
        if self.d["spec"].get("progressDeadlineSeconds").is_some() {
            let msg = format!("Created new replica set \"{}\"", name(&rs));
            self.set_condition("Progressing", "True", "NewReplicaSetCreated", &msg);
            needs_update = true;
        }
        if needs_update {
            self.write_deployment_status();
        }
        (Some(rs), old)
    }

    fn set_revision(&mut self, revision: &str) -> bool {
        let annotations = ensure_object(&mut self.d["metadata"]["annotations"]);
        if annotations.get(REVISION).and_then(Value::as_str) == Some(revision) {
            return false;
        }
        annotations.insert(REVISION.into(), revision.into());
        true
    }

    /// `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, raises the
    /// revision (keeping the old ones in `revision-history`), and on creation sets
    /// the replica annotations.
    fn set_new_rs_annotations(&self, rs: &mut Value, new_revision: i64, exists: bool) -> bool {
        let mut changed = false;
        let from: Vec<(String, Value)> = self.d["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !SKIP_COPY.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let annotations = ensure_object(&mut rs["metadata"]["annotations"]);
        for (k, v) in from {
            if annotations.get(&k) != Some(&v) {
                annotations.insert(k, v);
                changed = true;
            }
        }
        let old = annotations
            .get(REVISION)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let old_number: i64 = old.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
        if old_number < new_revision {
            annotations.insert(REVISION.into(), new_revision.to_string().into());
            changed = true;
            if let Some(old) = old {
                let history = match annotations.get(REVISION_HISTORY).and_then(Value::as_str) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old,
                };
                annotations.insert(REVISION_HISTORY.into(), history.into());
            }
        }
        if !exists {
            let desired = replicas(&self.d);
            annotations.insert(DESIRED_REPLICAS.into(), desired.to_string().into());
            annotations.insert(
                MAX_REPLICAS.into(),
                (desired + max_surge(&self.d)).to_string().into(),
            );
            changed = true;
        }
        changed
    }

    /// `NewRSNewReplicas`: how big the new ReplicaSet may be now.
    fn new_rs_new_replicas(&self, all: &[Value], new: &Value) -> i64 {
        let desired = replicas(&self.d);
        if !rolling(&self.d) {
            return desired;
        }
        let current: i64 = all.iter().map(replicas).sum();
        let max_total = desired + max_surge(&self.d);
        if current >= max_total {
            return replicas(new);
        }
        let up = (max_total - current).min(desired - replicas(new));
        replicas(new) + up
    }

    /// Scales `rs` to `to` (and keeps its replica annotations current); returns
    /// whether it scaled.
    fn scale(&mut self, rs: &Value, to: i64) -> Option<Value> {
        let from = replicas(rs);
        let desired = replicas(&self.d);
        let max = desired + max_surge(&self.d);
        let mut next = rs.clone();
        let annotations = ensure_object(&mut next["metadata"]["annotations"]);
        let mut annotations_changed = false;
        for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
            if annotations.get(k).and_then(Value::as_str) != Some(v.to_string().as_str()) {
                annotations.insert(k.into(), v.to_string().into());
                annotations_changed = true;
            }
        }
        if from == to && !annotations_changed {
            return None;
        }
        next["spec"]["replicas"] = to.into();
        let written = self.write_rs(next, from != to);
        if from != to {
            let how = if to > from { "up" } else { "down" };
            self.event(
                Type::Normal,
                "ScalingReplicaSet",
                &format!("Scaled {how} replica set {} from {from} to {to}", name(rs)),
            );
        }
        Some(written).filter(|_| from != to)
    }

    fn event(&mut self, ty: Type, reason: &str, message: &str) {
        let d = self.d.clone();
        events::record(self.shared, self.st, &d, ty, reason, message, COMPONENT);
    }

    /// The stored version of `rs`.
    fn current(&self, rs: &Value) -> Value {
        self.st
            .get(Kind::ReplicaSet, &self.ns, name(rs))
            .cloned()
            .unwrap_or_else(|| rs.clone())
    }

    /// `DeploymentComplete` against the Deployment's current status.
    fn complete(&self) -> bool {
        let desired = replicas(&self.d);
        let s = &self.d["status"];
        int_at(s, "/updatedReplicas").unwrap_or(0) == desired
            && int_at(s, "/replicas").unwrap_or(0) == desired
            && int_at(s, "/availableReplicas").unwrap_or(0) == desired
            && int_at(s, "/observedGeneration").unwrap_or(0)
                >= int_at(&self.d, "/metadata/generation").unwrap_or(0)
    }

    /// `cleanupDeployment`: deletes the oldest scaled-down ReplicaSets beyond
    /// `revisionHistoryLimit`.
    fn clean_up(&mut self, old: &[Value]) {
        let Some(limit) = int_at(&self.d, "/spec/revisionHistoryLimit") else {
            return;
        };
        let mut old: Vec<Value> = old.iter().map(|rs| self.current(rs)).collect();
        old.sort_by_key(revision);
        let excess = old.len() as i64 - limit;
        for rs in old.iter().take(excess.max(0) as usize) {
            let generation = int_at(rs, "/metadata/generation").unwrap_or(0);
            let observed = int_at(rs, "/status/observedGeneration").unwrap_or(0);
            if status_replicas(rs) != 0 || replicas(rs) != 0 || generation > observed {
                continue;
            }
            self.shared
                .delete(self.st, Kind::ReplicaSet, &self.ns, name(rs));
        }
    }
}
