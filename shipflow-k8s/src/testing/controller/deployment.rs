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
use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, ensure_object, int_at, now, str_at};

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

    /// `rolloutRolling`.
    fn rollout_rolling(&mut self) {
        let (new, old) = self.sync_revision(true);
        let Some(new) = new else { return };
        let new = self.current(&new);
        let mut all = old.clone();
        all.push(new.clone());
        if self.reconcile_new(&all, &new) {
            return self.sync_rollout_status(Some(&new));
        }
        let new = self.current(&new);
        let old: Vec<Value> = old.iter().map(|rs| self.current(rs)).collect();
        if self.reconcile_old(&old, &new) {
            return self.sync_rollout_status(Some(&new));
        }
        if self.complete() {
            self.clean_up(&old);
        }
        self.sync_rollout_status(Some(&new));
    }

    /// The stored version of `rs`.
    fn current(&self, rs: &Value) -> Value {
        self.st
            .get(Kind::ReplicaSet, &self.ns, name(rs))
            .cloned()
            .unwrap_or_else(|| rs.clone())
    }

    fn reconcile_new(&mut self, all: &[Value], new: &Value) -> bool {
        let desired = replicas(&self.d);
        let have = replicas(new);
        if have == desired {
            return false;
        }
        if have > desired {
            return self.scale(new, desired).is_some();
        }
        let count = self.new_rs_new_replicas(all, new);
        self.scale(new, count).is_some()
    }

    fn reconcile_old(&mut self, old: &[Value], new: &Value) -> bool {
        let old_pods: i64 = old.iter().map(replicas).sum();
        if old_pods == 0 {
            return false;
        }
        let all_pods = old_pods + replicas(new);
        let min_available = replicas(&self.d) - max_unavailable(&self.d);
        let new_unavailable = replicas(new) - available(new);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        // Unhealthy old replicas first: they would block the rollout.
        let mut cleaned = 0;
        let mut old: Vec<Value> = old.to_vec();
        for rs in &mut old {
            if cleaned >= max_scaled_down {
                break;
            }
            let (want, avail) = (replicas(rs), available(rs));
            if want == 0 || want == avail {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(want - avail);
            if let Some(scaled) = self.scale(rs, want - down) {
                *rs = scaled;
            }
            cleaned += down;
        }
        // Then as many available old replicas as availability allows.
        let available_now: i64 = old.iter().chain(std::iter::once(new)).map(available).sum();
        let mut scaled_down = 0;
        if available_now > min_available {
            let total = available_now - min_available;
            for rs in &old {
                if scaled_down >= total {
                    break;
                }
                let want = replicas(rs);
                if want == 0 {
                    continue;
                }
                let down = want.min(total - scaled_down);
                self.scale(rs, want - down);
                scaled_down += down;
            }
        }
        cleaned + scaled_down > 0
    }

    /// `rolloutRecreate`.
    fn rollout_recreate(&mut self) {
        let (new, old) = self.sync_revision(false);
        let active: Vec<Value> = old.iter().filter(|rs| replicas(rs) > 0).cloned().collect();
        let mut scaled_down = false;
        for rs in &active {
            scaled_down |= self.scale(rs, 0).is_some();
        }
        if scaled_down {
            return self.sync_rollout_status(new.as_ref());
        }
        if self.old_pods_running(new.as_ref(), &old) {
            return self.sync_rollout_status(new.as_ref());
        }
        let (new, old) = match new {
            Some(n) => (n, old),
            None => match self.sync_revision(true) {
                (Some(n), o) => (n, o),
                (None, _) => return,
            },
        };
        let new = self.current(&new);
        self.scale(&new, replicas(&self.d));
        if self.complete() {
            self.clean_up(&old);
        }
        let new = self.current(&new);
        self.sync_rollout_status(Some(&new));
    }

    fn old_pods_running(&self, new: Option<&Value>, old: &[Value]) -> bool {
        if old.iter().map(status_replicas).sum::<i64>() > 0 {
            return true;
        }
        let new_uid = new.map(|n| str_at(n, "/metadata/uid").to_owned());
        old.iter().any(|rs| {
            Some(str_at(rs, "/metadata/uid").to_owned()) != new_uid
                && controlled(self.st, Kind::Pod, &self.ns, str_at(rs, "/metadata/uid"))
                    .iter()
                    .any(|p| !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed"))
        })
    }

    /// `isScalingEvent`: an active ReplicaSet was sized for another replica count.
    fn is_scaling_event(&mut self) -> bool {
        let (new, old) = self.sync_revision(false);
        let desired = replicas(&self.d);
        new.iter()
            .chain(old.iter())
            .filter(|rs| replicas(rs) > 0)
            .any(|rs| {
                rs["metadata"]["annotations"][DESIRED_REPLICAS]
                    .as_str()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v != desired)
            })
    }

    /// `sync`: scaling (proportionally while a rollout is under way), and the
    /// clean-up of a paused Deployment.
    fn sync_scale(&mut self) {
        let (new, old) = self.sync_revision(false);
        let new = new.map(|n| self.current(&n));
        let old: Vec<Value> = old.iter().map(|rs| self.current(rs)).collect();
        self.scale_replica_sets(new.as_ref(), &old);
        if self.d["spec"]["paused"] == true {
            let old: Vec<Value> = old.iter().map(|rs| self.current(rs)).collect();
            self.clean_up(&old);
        }
        let new = new.map(|n| self.current(&n));
        let status = self.calculate_status(new.as_ref());
        if status != self.d["status"] {
            self.d["status"] = status;
            self.write_deployment_status();
        }
    }

    fn scale_replica_sets(&mut self, new: Option<&Value>, old: &[Value]) {
        let desired = replicas(&self.d);
        let mut all: Vec<Value> = new
            .into_iter()
            .cloned()
            .chain(old.iter().cloned())
            .collect();
        let active: Vec<Value> = all.iter().filter(|rs| replicas(rs) > 0).cloned().collect();
        // One active (or, with none, the newest): it takes the whole size.
        let only = match active.len() {
            0 => new.cloned().or_else(|| old.last().cloned()),
            1 => active.first().cloned(),
            _ => None,
        };
        if let Some(rs) = only {
            if replicas(&rs) != desired {
                self.scale(&rs, desired);
            }
            return;
        }
        let saturated = new.is_some_and(|n| {
            replicas(n) == desired
                && n["metadata"]["annotations"][DESIRED_REPLICAS].as_str()
                    == Some(desired.to_string().as_str())
                && available(n) == desired
        });
        if saturated {
            for rs in old.iter().filter(|rs| replicas(rs) > 0) {
                self.scale(rs, 0);
            }
            return;
        }
        if !rolling(&self.d) {
            return;
        }
        all.retain(|rs| replicas(rs) > 0);
        let allowed = if desired > 0 {
            desired + max_surge(&self.d)
        } else {
            0
        };
        let to_add = allowed - all.iter().map(replicas).sum::<i64>();
        if to_add == 0 {
            return;
        }
        // Larger first; among equals the newer (scaling up) or the older (down).
        all.sort_by(|a, b| {
            let by_size = replicas(b).cmp(&replicas(a));
            let by_age = str_at(a, "/metadata/creationTimestamp")
                .cmp(str_at(b, "/metadata/creationTimestamp"));
            by_size.then(if to_add > 0 { by_age.reverse() } else { by_age })
        });
        let mut added = 0;
        let mut sizes: Vec<i64> = Vec::new();
        for rs in &all {
            let proportion = self.proportion(rs, to_add, added);
            sizes.push(replicas(rs) + proportion);
            added += proportion;
        }
        if let Some(first) = sizes.first_mut() {
            *first = (*first + to_add - added).max(0);
        }
        for (rs, size) in all.iter().zip(sizes) {
            self.scale(rs, size);
        }
    }

    /// `GetProportion`.
    fn proportion(&self, rs: &Value, to_add: i64, added: i64) -> i64 {
        if replicas(rs) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let desired = replicas(&self.d);
        let fraction = if desired == 0 {
            -replicas(rs)
        } else {
            let max = desired + max_surge(&self.d);
            let before = rs["metadata"]["annotations"][MAX_REPLICAS]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|v| *v != 0)
                .unwrap_or_else(|| int_at(&self.d, "/status/replicas").unwrap_or(0));
            if before == 0 {
                0
            } else {
                ((replicas(rs) * max) as f64 / before as f64).round() as i64 - replicas(rs)
            }
        };
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
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

    /// `calculateStatus`.
    fn calculate_status(&self, new: Option<&Value>) -> Value {
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
    fn sync_rollout_status(&mut self, new: Option<&Value>) {
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

    fn set_condition(&mut self, ty: &str, status: &str, reason: &str, message: &str) {
        if ProbeConditions(&mut self.d).set(ty, status, reason, message) && ty == "Progressing" {
            let tick = self.st.tick;
            self.st.progress_at.insert(self.uid(), tick);
        }
    }

    /// Remembers when a generation completed and that its images run.
    fn record_complete(&mut self) {
        let key = (
            self.ns.clone(),
            name(&self.d).to_owned(),
            int_at(&self.d, "/metadata/generation").unwrap_or(0) as u64,
        );
        self.st
            .ready_at
            .entry(key)
            .or_insert_with(std::time::Instant::now);
        let images = super::kubelet::images_key(&self.d["spec"]["template"]["spec"]);
        self.st
            .scripts
            .good
            .insert((self.ns.clone(), name(&self.d).to_owned(), images));
    }
}

/// `DeploymentComplete` for `status`.
fn complete_status(d: &Value, status: &Value) -> bool {
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

fn condition<'v>(d: &'v Value, ty: &str) -> Option<&'v Value> {
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
struct ProbeConditions<'a>(&'a mut Value);

impl ProbeConditions<'_> {
    /// Sets the condition; an unchanged status and reason change nothing. Returns
    /// whether it wrote.
    fn set(&mut self, ty: &str, status: &str, reason: &str, message: &str) -> bool {
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
