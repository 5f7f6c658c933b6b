//! The simulated API server's object store: objects, resource versions, the event log
//! that watches replay, and the JSON merge rules of PATCH.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::Outcome;

/// The resource kinds the simulated server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Deployment,
    ReplicaSet,
    Pod,
    ConfigMap,
    Service,
    Lease,
}

impl Kind {
    pub(crate) fn from_plural(plural: &str) -> Option<Self> {
        match plural {
            "deployments" => Some(Kind::Deployment),
            "replicasets" => Some(Kind::ReplicaSet),
            "pods" => Some(Kind::Pod),
            "configmaps" => Some(Kind::ConfigMap),
            "services" => Some(Kind::Service),
            "leases" => Some(Kind::Lease),
            _ => None,
        }
    }

    pub(crate) fn api_version(self) -> &'static str {
        match self {
            Kind::Deployment | Kind::ReplicaSet => "apps/v1",
            Kind::Pod | Kind::ConfigMap | Kind::Service => "v1",
            Kind::Lease => "coordination.k8s.io/v1",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Pod => "Pod",
            Kind::ConfigMap => "ConfigMap",
            Kind::Service => "Service",
            Kind::Lease => "Lease",
        }
    }

    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments.apps",
            Kind::ReplicaSet => "replicasets.apps",
            Kind::Pod => "pods",
            Kind::ConfigMap => "configmaps",
            Kind::Service => "services",
            Kind::Lease => "leases.coordination.k8s.io",
        }
    }
}

/// One change, as a watch reports it.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) kind_of_event: &'static str,
    pub(crate) object: Value,
}

/// Object key: kind, namespace, name.
pub(crate) type Key = (Kind, String, String);

/// Everything behind the lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) rv: u64,
    uid: u64,
    pub(crate) objects: BTreeMap<Key, Value>,
    pub(crate) log: Vec<Arc<Change>>,
    pub(crate) outcomes: HashMap<(String, String), Outcome>,
    /// The container images each Deployment has completed a rollout with: a
    /// rollout back to them succeeds whatever the scripted outcome (an image that
    /// ran healthy runs healthy again, as a rollback to it does on a real cluster).
    pub(crate) good_images: std::collections::HashSet<(String, String, String)>,
    pub(crate) requests: BTreeMap<String, u64>,
    /// The longest a watch may last, whatever the client asked for.
    pub(crate) watch_limit: Option<Duration>,
    /// Answers to give instead of serving: `("VERB /path", status code)`, first match once.
    pub(crate) faults: Vec<(String, u16)>,
    /// When each Deployment generation's rollout became complete: `(ns, name, generation)`.
    pub(crate) ready_at: HashMap<(String, String, u64), std::time::Instant>,
}

/// The store shared by the HTTP server and the controller.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) changes: broadcast::Sender<Arc<Change>>,
    pub(crate) step: Duration,
}

impl Shared {
    pub(crate) fn new(step: Duration) -> Self {
        let (changes, _) = broadcast::channel(4096);
        Self {
            state: Mutex::new(State::default()),
            changes,
            step,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock only happens in a failing test; keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `object` (stamping kind, resourceVersion and, on create, uid and
    /// creationTimestamp) and tells the watchers.
    pub(crate) fn put(&self, st: &mut State, kind: Kind, ns: &str, mut object: Value) -> Value {
        st.rv += 1;
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (kind, ns.to_owned(), name);
        let created = !st.objects.contains_key(&key);
        if let Some(obj) = object.as_object_mut() {
            obj.insert("apiVersion".into(), kind.api_version().into());
            obj.insert("kind".into(), kind.name().into());
        }
        let meta = ensure_object(&mut object["metadata"]);
        meta.insert("namespace".into(), ns.into());
        meta.insert("resourceVersion".into(), st.rv.to_string().into());
        if created {
            st.uid += 1;
            meta.insert("uid".into(), format!("uid-{:08}", st.uid).into());
            meta.insert("creationTimestamp".into(), timestamp(st.rv).into());
        }
        st.objects.insert(key, object.clone());
        self.record(
            st,
            kind,
            ns,
            if created { "ADDED" } else { "MODIFIED" },
            object.clone(),
        );
        object
    }

    /// Deletes an object and tells the watchers.
    pub(crate) fn delete(&self, st: &mut State, kind: Kind, ns: &str, name: &str) {
        if let Some(mut object) = st.objects.remove(&(kind, ns.to_owned(), name.to_owned())) {
            st.rv += 1;
            object["metadata"]["resourceVersion"] = st.rv.to_string().into();
            self.record(st, kind, ns, "DELETED", object);
        }
    }

    fn record(&self, st: &mut State, kind: Kind, ns: &str, ty: &'static str, object: Value) {
        let change = Arc::new(Change {
            rv: st.rv,
            kind,
            namespace: ns.to_owned(),
            kind_of_event: ty,
            object,
        });
        st.log.push(change.clone());
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(change);
    }
}

/// A deterministic creation time: one second per resource version after a fixed epoch.
fn timestamp(rv: u64) -> String {
    let secs = rv % 60;
    let mins = (rv / 60) % 60;
    let hours = (rv / 3600) % 24;
    format!("2026-01-01T{hours:02}:{mins:02}:{secs:02}Z")
}

/// `value` as an object, replacing anything else with `{}`.
pub(crate) fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("just made an object")
}

/// Merges `patch` into `target`: RFC 7386 JSON merge patch, and with `strategic` the
/// strategic-merge rule that lists of containers merge by `name`.
pub(crate) fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    let target = ensure_object(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else if strategic
            && matches!(key.as_str(), "containers" | "initContainers")
            && value.is_array()
        {
            let list = target.entry(key.clone()).or_insert_with(|| json!([]));
            merge_by_name(list, value);
        } else {
            merge(
                target.entry(key.clone()).or_insert(Value::Null),
                value,
                strategic,
            );
        }
    }
}

fn merge_by_name(target: &mut Value, patch: &Value) {
    if !target.is_array() {
        *target = json!([]);
    }
    let items = target.as_array_mut().expect("just made an array");
    for item in patch.as_array().into_iter().flatten() {
        let name = item.get("name");
        match items.iter_mut().find(|t| t.get("name") == name) {
            Some(existing) => merge(existing, item, true),
            None => {
                let mut fresh = Value::Null;
                merge(&mut fresh, item, true);
                items.push(fresh);
            }
        }
    }
}

/// Whether `labels` satisfy a label selector (`a=b,c!=d,e`).
pub(crate) fn labels_match(labels: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).and_then(Value::as_str) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                let v = v.trim_start_matches('=');
                labels.get(k.trim()).and_then(Value::as_str) == Some(v.trim())
            } else {
                labels.get(term).is_some()
            }
        })
}

/// Whether `object` satisfies a field selector; only `metadata.name` and
/// `metadata.namespace` are known.
pub(crate) fn fields_match(object: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some((path, want)) => {
                let want = want.trim_start_matches('=');
                let got = match path {
                    "metadata.name" => &object["metadata"]["name"],
                    "metadata.namespace" => &object["metadata"]["namespace"],
                    _ => return false,
                };
                got.as_str() == Some(want)
            }
            None => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_replaces_one_containers_image() {
        let mut target = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}, "metadata": {"annotations": {"keep": "1", "drop": "1"}}});
        let patch = json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]},
            "metadata": {"annotations": {"drop": null, "new": "x"}}});
        merge(&mut target, &patch, true);
        assert_eq!(
            target,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "b:2"}
            ]}, "metadata": {"annotations": {"keep": "1", "new": "x"}}})
        );
        // A plain merge patch replaces the list.
        merge(&mut target, &patch, false);
        assert_eq!(target["spec"]["containers"], patch["spec"]["containers"]);
    }

    #[test]
    fn selectors() {
        let labels = json!({"app": "api", "pod-template-hash": "abc"});
        assert!(labels_match(&labels, "app=api,pod-template-hash=abc"));
        assert!(labels_match(&labels, "app==api"));
        assert!(!labels_match(&labels, "app=web"));
        assert!(labels_match(&labels, "app!=web,app"));
        assert!(fields_match(
            &json!({"metadata": {"name": "api"}}),
            "metadata.name=api"
        ));
    }
}
