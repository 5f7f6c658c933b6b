//! The simulated API server's object store: objects, resource versions, the bounded
//! event history that watches replay, and the cluster clock the controllers keep.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::broadcast;

use super::Outcome;
use super::resources::Kind;

/// One change, as a watch reports it.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) rv: u64,
    pub(crate) kind: Kind,
    pub(crate) namespace: String,
    pub(crate) event: &'static str,
    pub(crate) object: Value,
    /// The controller step it happened in, for trimming the history.
    pub(crate) tick: u64,
}

/// Object key: kind, namespace, name.
pub(crate) type Key = (Kind, String, String);

/// The scripted behaviour: how images and pod creations fail.
#[derive(Debug, Default)]
pub(crate) struct Scripts {
    /// Per Deployment: how pods of templates it never completed a rollout with behave.
    pub(crate) deployments: HashMap<(String, String), Outcome>,
    /// Per image: how every container running it behaves (wins over the above).
    pub(crate) images: HashMap<String, Outcome>,
    /// Per image: the log lines its containers print.
    pub(crate) logs: HashMap<String, Vec<String>>,
    /// Per image: what its containers write to their termination-message file.
    pub(crate) messages: HashMap<String, String>,
    /// The container images each Deployment completed a rollout with.
    pub(crate) good: HashSet<(String, String, String)>,
    /// Pod creations still to refuse per namespace (a quota that is full).
    pub(crate) refuse_pods: HashMap<String, u32>,
}

/// Everything behind the lock.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) rv: u64,
    uid: u64,
    ip: u32,
    pub(crate) objects: BTreeMap<Key, Value>,
    pub(crate) log: VecDeque<Arc<Change>>,
    /// Controller steps taken: the cluster clock, one step standing for one second.
    pub(crate) tick: u64,
    /// How many steps of changes watches can resume from (older: 410 Gone).
    pub(crate) history: u64,
    /// Every how many steps a watch that asked for bookmarks gets one.
    pub(crate) bookmark_every: u64,
    pub(crate) scripts: Scripts,
    pub(crate) requests: BTreeMap<String, u64>,
    /// The longest a watch may last, whatever the client asked for.
    pub(crate) watch_limit: Option<Duration>,
    /// Answers to give instead of serving: `("VERB /path", status code)`, first match once.
    pub(crate) faults: Vec<(String, u16)>,
    /// When each Deployment generation's rollout became complete: `(ns, name, generation)`.
    pub(crate) ready_at: HashMap<(String, String, u64), std::time::Instant>,
    /// The kubelet's private state per pod uid.
    pub(crate) pods: HashMap<String, super::controller::kubelet::PodRun>,
    /// The Job controller's private state per Job uid.
    pub(crate) jobs: HashMap<String, super::controller::job::JobRun>,
    /// Namespaces with changes the controllers have not looked at yet.
    pub(crate) dirty: std::collections::BTreeSet<String>,
    /// Steps at which a namespace needs a look even without changes (a timer ends).
    pub(crate) wakes: std::collections::BTreeSet<(u64, String)>,
    /// Per Deployment uid: the step of the last `Progressing` condition update, which
    /// the progress deadline counts from (the condition's own time has only whole
    /// seconds of wall time).
    pub(crate) progress_at: HashMap<String, u64>,
    /// The container runtime when pods run as real Podman containers.
    pub(crate) podman: Option<Arc<super::podman::Runtime>>,
}

impl State {
    /// A fresh uid.
    pub(crate) fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid)
    }

    /// A fresh IPv4 address in `prefix` (e.g. `10.244`).
    pub(crate) fn next_ip(&mut self, prefix: &str) -> String {
        self.ip += 1;
        format!(
            "{prefix}.{}.{}",
            (self.ip >> 8) & 0xff,
            (self.ip & 0xff).max(1)
        )
    }

    pub(crate) fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(kind, ns.to_owned(), name.to_owned()))
    }

    /// The objects of `kind` in `ns`.
    pub(crate) fn iter<'a>(
        &'a self,
        kind: Kind,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .range((kind, ns.to_owned(), String::new())..)
            .take_while(move |((k, n, _), _)| *k == kind && n == ns)
            .map(|(_, v)| v)
    }

    /// The objects of `kind` in `ns`, cloned.
    pub(crate) fn list(&self, kind: Kind, ns: &str) -> Vec<Value> {
        self.iter(kind, ns).cloned().collect()
    }

    /// The objects of `kind` in every namespace.
    pub(crate) fn list_all(&self, kind: Kind) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The oldest resource version a watch can start from without missing a change.
    pub(crate) fn history_floor(&self) -> u64 {
        self.log.front().map_or(self.rv, |c| c.rv - 1)
    }

    /// Makes the controllers look at `ns` at step `tick`.
    pub(crate) fn wake(&mut self, ns: &str, tick: u64) {
        self.wakes.insert((tick, ns.to_owned()));
    }

    /// Forgets the changes older than the history window.
    pub(crate) fn trim_history(&mut self) {
        let keep_from = self.tick.saturating_sub(self.history);
        while self.log.front().is_some_and(|c| c.tick < keep_from) {
            self.log.pop_front();
        }
    }
}

/// The store shared by the HTTP server and the controllers.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) changes: broadcast::Sender<Arc<Change>>,
    pub(crate) step: Duration,
}

impl Shared {
    pub(crate) fn new(step: Duration) -> Self {
        let (changes, _) = broadcast::channel(1 << 16);
        Self {
            state: Mutex::new(State {
                history: 75,
                bookmark_every: 60,
                ..State::default()
            }),
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

    /// Stores `object` (stamping kind, namespace, resourceVersion and, on create, uid
    /// and creationTimestamp) and tells the watchers. Returns what was stored.
    pub(crate) fn put(&self, st: &mut State, kind: Kind, ns: &str, mut object: Value) -> Value {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let key = (kind, ns.to_owned(), name);
        let existing = st.objects.get(&key);
        let created = existing.is_none();
        if let Some(obj) = object.as_object_mut() {
            obj.insert("apiVersion".into(), kind.api_version().into());
            obj.insert("kind".into(), kind.name().into());
        }
        let identity = existing.map(|e| {
            (
                e["metadata"]["uid"].clone(),
                e["metadata"]["creationTimestamp"].clone(),
            )
        });
        st.rv += 1;
        let rv = st.rv;
        // A new Job keeps the uid its defaults gave it (its generated selector names
        // it); any other new object gets a fresh one.
        let uid = match &identity {
            Some((uid, _)) => uid.clone(),
            None => match object["metadata"]["uid"].as_str() {
                Some(uid) if kind == Kind::Job && !uid.is_empty() => uid.into(),
                _ => st.next_uid().into(),
            },
        };
        let meta = ensure_object(&mut object["metadata"]);
        if kind != Kind::Event || !ns.is_empty() {
            meta.insert("namespace".into(), ns.into());
        }
        meta.insert("resourceVersion".into(), rv.to_string().into());
        meta.insert("uid".into(), uid);
        match identity {
            Some((_, created_at)) => {
                meta.insert("creationTimestamp".into(), created_at);
            }
            None => {
                meta.insert("creationTimestamp".into(), now().into());
            }
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

    /// Deletes an object and tells the watchers; returns it.
    pub(crate) fn delete(&self, st: &mut State, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let mut object = st.objects.remove(&(kind, ns.to_owned(), name.to_owned()))?;
        st.rv += 1;
        object["metadata"]["resourceVersion"] = st.rv.to_string().into();
        self.record(st, kind, ns, "DELETED", object.clone());
        Some(object)
    }

    fn record(&self, st: &mut State, kind: Kind, ns: &str, event: &'static str, object: Value) {
        if kind != Kind::Event && !st.dirty.contains(ns) {
            st.dirty.insert(ns.to_owned());
        }
        let change = Arc::new(Change {
            rv: st.rv,
            kind,
            namespace: ns.to_owned(),
            event,
            object,
            tick: st.tick,
        });
        st.log.push_back(change.clone());
        // No receiver is fine: nobody watches.
        let _ = self.changes.send(change);
    }
}

/// The wall-clock time as the API server writes it (RFC 3339, whole seconds).
pub(crate) fn now() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("{}Z", now.strftime("%Y-%m-%dT%H:%M:%S"))
}

/// The wall-clock time with microseconds, as `MicroTime` fields carry it.
pub(crate) fn now_micro() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    format!("{}Z", now.strftime("%Y-%m-%dT%H:%M:%S%.6f"))
}

/// `value` as an object, replacing anything else with `{}`.
pub(crate) fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// A string field of `object` at `pointer`, or `""`.
pub(crate) fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// An integer field of `object` at `pointer`.
pub(crate) fn int_at(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}
