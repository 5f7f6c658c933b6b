//! Field ownership, as server-side apply tracks it in `metadata.managedFields`: which
//! field manager set which field, conflicts between managers, and the removal of
//! fields an applier stops applying.
//!
//! A field set is a set of paths. Maps are walked field by field; lists whose items
//! have a merge key (containers by `name`, ports by `containerPort`, ...) are walked
//! item by item, an item path meaning "this item exists"; every other list, and a
//! Deployment's, ReplicaSet's or Service's `spec.selector` (`+mapType=atomic` in
//! the Kubernetes types), is one atomic value: applied whole, owned whole.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::patch::merge_key;
use super::resources::Kind;
use super::store::ensure_object;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    /// A map field.
    Field(String),
    /// A list item, by its merge key, as JSON (`{"name":"api"}`).
    Key(String),
    /// A member of a list of scalars kept as a set, as JSON.
    Member(String),
}

/// A field path.
pub(crate) type Path = Vec<Step>;

/// The fields one manager owns.
pub(crate) type FieldSet = BTreeSet<Path>;

/// Metadata fields the server owns; never part of a field set.
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

fn atomic(kind: Kind, path: &[Step]) -> bool {
    matches!(kind, Kind::Deployment | Kind::ReplicaSet | Kind::Service)
        && path == [Step::Field("spec".into()), Step::Field("selector".into())]
}

/// The field set of `object` (an applied configuration, or a whole object).
pub(crate) fn field_set(kind: Kind, object: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    for (key, value) in object.as_object().into_iter().flatten() {
        match key.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    if !SERVER_META.contains(&k.as_str()) {
                        walk(
                            kind,
                            v,
                            vec![Step::Field(key.clone()), Step::Field(k.clone())],
                            &mut set,
                        );
                    }
                }
            }
            _ => walk(kind, value, vec![Step::Field(key.clone())], &mut set),
        }
    }
    set
}

fn walk(kind: Kind, value: &Value, path: Path, set: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() && !atomic(kind, &path) => {
            for (k, v) in map {
                let mut p = path.clone();
                p.push(Step::Field(k.clone()));
                walk(kind, v, p, set);
            }
        }
        Value::Array(items) => {
            let field = match path.last() {
                Some(Step::Field(f)) => f.as_str(),
                _ => "",
            };
            if let Some(key) =
                merge_key(field, items).filter(|k| items.iter().all(|i| i.get(*k).is_some()))
            {
                for item in items {
                    let mut p = path.clone();
                    p.push(Step::Key(json!({key: item[key]}).to_string()));
                    set.insert(p.clone());
                    walk(kind, item, p, set);
                }
            } else if field == "finalizers" {
                for item in items {
                    let mut p = path.clone();
                    p.push(Step::Member(item.to_string()));
                    set.insert(p);
                }
            } else {
                set.insert(path);
            }
        }
        _ => {
            set.insert(path);
        }
    }
}

/// The value at `path` in `object`, if there is one.
pub(crate) fn value_at<'a>(object: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut at = object;
    for step in path {
        at = match step {
            Step::Field(f) => at.get(f)?,
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                at.as_array()?
                    .iter()
                    .find(|item| key.iter().all(|(k, v)| item.get(k) == Some(v)))?
            }
            Step::Member(m) => {
                let member: Value = serde_json::from_str(m).ok()?;
                at.as_array()?.iter().find(|v| **v == member)?
            }
        };
    }
    Some(at)
}

/// Removes the value at `path` from `object` (a map field, a list item or member).
fn remove_at(object: &mut Value, path: &[Step]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut parent = &mut *object;
    for step in parent_path {
        let next = match step {
            Step::Field(f) => parent.get_mut(f),
            Step::Key(_) | Step::Member(_) => {
                let found = value_at(parent, std::slice::from_ref(step)).cloned();
                parent
                    .as_array_mut()
                    .and_then(|items| items.iter_mut().find(|i| Some(&**i) == found.as_ref()))
            }
        };
        match next {
            Some(n) => parent = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(map) = parent.as_object_mut() {
                map.remove(f);
            }
        }
        Step::Key(_) | Step::Member(_) => {
            let found = value_at(parent, std::slice::from_ref(last)).cloned();
            if let (Some(items), Some(found)) = (parent.as_array_mut(), found) {
                items.retain(|i| *i != found);
            }
        }
    }
}

/// Merges an applied configuration into `target`: maps field by field, keyed lists
/// item by item, everything else replaced.
fn merge_applied(target: &mut Value, config: &Value, field: &str) {
    match config {
        // The atomic selectors (see `atomic`) replace what is there.
        Value::Object(_) if field == "selector" => *target = config.clone(),
        Value::Object(map) => {
            let t = ensure_object(target);
            for (k, v) in map {
                merge_applied(t.entry(k.clone()).or_insert(Value::Null), v, k);
            }
        }
        Value::Array(items) => match merge_key(field, items) {
            Some(key) if items.iter().all(|i| i.get(key).is_some()) => {
                if !target.is_array() {
                    *target = json!([]);
                }
                if let Value::Array(list) = target {
                    for item in items {
                        match list.iter_mut().find(|t| t.get(key) == item.get(key)) {
                            Some(existing) => merge_applied(existing, item, ""),
                            None => list.push(item.clone()),
                        }
                    }
                }
            }
            _ if field == "finalizers" => {
                if !target.is_array() {
                    *target = json!([]);
                }
                if let Value::Array(list) = target {
                    for item in items {
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                }
            }
            _ => *target = config.clone(),
        },
        other => *target = other.clone(),
    }
}

/// The managers of an object and what each owns: `(manager, operation)` → fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Managers(BTreeMap<(String, String), (String, FieldSet)>);

impl Managers {
    /// Reads `metadata.managedFields`.
    pub(crate) fn of(object: &Value) -> Self {
        let mut managers = BTreeMap::new();
        for entry in object["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let manager = entry["manager"].as_str().unwrap_or_default().to_owned();
            let operation = entry["operation"].as_str().unwrap_or("Update").to_owned();
            let api_version = entry["apiVersion"].as_str().unwrap_or_default().to_owned();
            let mut set = FieldSet::new();
            from_fields_v1(&entry["fieldsV1"], Vec::new(), &mut set);
            managers.insert((manager, operation), (api_version, set));
        }
        Self(managers)
    }

    /// Writes `metadata.managedFields` into `object`.
    pub(crate) fn write(&self, object: &mut Value) {
        let entries: Vec<Value> = self
            .0
            .iter()
            .filter(|(_, (_, set))| !set.is_empty())
            .map(|((manager, operation), (api_version, set))| {
                json!({"manager": manager, "operation": operation, "apiVersion": api_version,
                    "time": super::store::now(), "fieldsType": "FieldsV1",
                    "fieldsV1": to_fields_v1(set)})
            })
            .collect();
        let meta = ensure_object(&mut object["metadata"]);
        if entries.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
    }

    /// Records a non-apply write by `manager`: the fields it changed become its own,
    /// and no longer any other manager's.
    pub(crate) fn update(
        &mut self,
        kind: Kind,
        manager: &str,
        api_version: &str,
        old: &Value,
        new: &Value,
    ) {
        let before = field_set(kind, old);
        let after = field_set(kind, new);
        // A list item changes hands only when it is new; its fields, when they change.
        let changed: FieldSet = after
            .iter()
            .filter(|p| match p.last() {
                Some(Step::Key(_) | Step::Member(_)) => !before.contains(*p),
                _ => !before.contains(*p) || value_at(old, p) != value_at(new, p),
            })
            .cloned()
            .collect();
        let gone: FieldSet = before.difference(&after).cloned().collect();
        for (_, set) in self.0.values_mut() {
            set.retain(|p| !changed.contains(p) && !gone.contains(p));
        }
        if !changed.is_empty() {
            let entry = self
                .0
                .entry((manager.to_owned(), "Update".to_owned()))
                .or_insert_with(|| (api_version.to_owned(), FieldSet::new()));
            entry.0 = api_version.to_owned();
            entry.1.extend(changed);
        }
        self.0.retain(|_, (_, set)| !set.is_empty());
    }

    /// Server-side apply of `config` by `manager` onto `live` (`Value::Null` when the
    /// object does not exist yet). Returns the new object, or the conflicts when
    /// another manager owns a field `config` sets to another value and `force` is off.
    pub(crate) fn apply(
        &mut self,
        kind: Kind,
        manager: &str,
        live: &Value,
        config: &Value,
        force: bool,
    ) -> Result<Value, Vec<Conflict>> {
        let api_version = kind.api_version();
        let me = (manager.to_owned(), "Apply".to_owned());
        let applied = field_set(kind, config);
        let mut conflicts = Vec::new();
        for ((other, operation), (other_version, set)) in &self.0 {
            if (other, operation) == (&me.0, &me.1) {
                continue;
            }
            for path in set.intersection(&applied) {
                let leaf = !matches!(path.last(), Some(Step::Key(_) | Step::Member(_)));
                if leaf && value_at(live, path) != value_at(config, path) {
                    conflicts.push(Conflict {
                        manager: other.clone(),
                        api_version: other_version.clone(),
                        path: path.clone(),
                    });
                }
            }
        }
        if !conflicts.is_empty() && !force {
            return Err(conflicts);
        }
        for c in &conflicts {
            for ((other, _), (_, set)) in &mut self.0 {
                if *other == c.manager {
                    set.remove(&c.path);
                }
            }
        }
        let previous = self.0.get(&me).map(|(_, s)| s.clone()).unwrap_or_default();
        let mut result = if live.is_null() {
            json!({})
        } else {
            live.clone()
        };
        let others: Vec<&FieldSet> = self
            .0
            .iter()
            .filter(|(k, _)| **k != me)
            .map(|(_, (_, s))| s)
            .collect();
        let mut dropped: Vec<&Path> = previous.difference(&applied).collect();
        // Shallowest first: a dropped list item goes whole, with its fields.
        dropped.sort_by_key(|p| p.len());
        let mut removed: Vec<&Path> = Vec::new();
        for path in dropped {
            if removed.iter().any(|r| path.starts_with(r)) {
                continue;
            }
            let shared = others.iter().any(|s| s.iter().any(|p| p.starts_with(path)));
            if !shared {
                remove_at(&mut result, path);
                removed.push(path);
            }
        }
        merge_applied(&mut result, config, "");
        self.0.insert(me, (api_version, applied));
        self.0.retain(|_, (_, set)| !set.is_empty());
        Ok(result)
    }
}

/// A field another manager owns, with another value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    pub(crate) manager: String,
    pub(crate) api_version: String,
    pub(crate) path: Path,
}

impl Conflict {
    /// The field, as the API server writes it: `.spec.template.spec.containers[name="api"].image`.
    pub(crate) fn field(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            match step {
                Step::Field(f) => {
                    out.push('.');
                    out.push_str(f);
                }
                Step::Key(k) => {
                    let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                    let inner: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    out.push_str(&format!("[{}]", inner.join(",")));
                }
                Step::Member(m) => out.push_str(&format!("[={m}]")),
            }
        }
        out
    }
}

fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = json!({});
    for path in set {
        let mut at = &mut root;
        for step in path {
            let key = match step {
                Step::Field(f) => format!("f:{f}"),
                Step::Key(k) => format!("k:{k}"),
                Step::Member(m) => format!("v:{m}"),
            };
            at = ensure_object(at).entry(key).or_insert_with(|| json!({}));
        }
        // A list item is owned itself ("."); a leaf field is an empty node.
        if !matches!(path.last(), Some(Step::Field(_))) {
            ensure_object(at).insert(".".into(), json!({}));
        }
    }
    root
}

fn from_fields_v1(node: &Value, path: Path, set: &mut FieldSet) {
    let Some(map) = node.as_object() else {
        return;
    };
    if (map.is_empty() || map.contains_key(".")) && !path.is_empty() {
        set.insert(path.clone());
    }
    for (key, child) in map {
        let step = if let Some(f) = key.strip_prefix("f:") {
            Step::Field(f.to_owned())
        } else if let Some(k) = key.strip_prefix("k:") {
            Step::Key(k.to_owned())
        } else if let Some(v) = key.strip_prefix("v:") {
            Step::Member(v.to_owned())
        } else {
            continue;
        };
        let mut p = path.clone();
        p.push(step);
        from_fields_v1(child, p, set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(image: &str, env: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                "template": {"metadata": {"labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "api", "image": image, "env": env}]}}}})
    }

    #[test]
    fn a_field_another_manager_changed_conflicts_unless_forced() {
        let mut managers = Managers::default();
        let applied = deployment("r/api:v1", json!([{"name": "A", "value": "1"}]));
        let live = managers
            .apply(Kind::Deployment, "ops", &Value::Null, &applied, false)
            .expect("created");
        let mut patched = live.clone();
        patched["spec"]["template"]["spec"]["containers"][0]["image"] = "r/api@sha256:1".into();
        managers.update(Kind::Deployment, "shipflow", "apps/v1", &live, &patched);

        let conflicts = managers
            .apply(Kind::Deployment, "ops", &patched, &applied, false)
            .expect_err("the image is shipflow's now");
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].manager, "shipflow");
        assert_eq!(
            conflicts[0].field(),
            ".spec.template.spec.containers[name=\"api\"].image"
        );
        // Applying the value that is there is no conflict.
        let same = deployment("r/api@sha256:1", json!([{"name": "A", "value": "1"}]));
        managers
            .clone()
            .apply(Kind::Deployment, "ops", &patched, &same, false)
            .expect("same value, shared ownership");
        let forced = managers
            .apply(Kind::Deployment, "ops", &patched, &applied, true)
            .expect("forced");
        assert_eq!(
            forced["spec"]["template"]["spec"]["containers"][0]["image"],
            "r/api:v1"
        );
    }

    #[test]
    fn a_services_selector_is_applied_and_owned_whole() {
        let mut managers = Managers::default();
        let service = |selector: Value| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
                "spec": {"selector": selector, "ports": [{"port": 80}]}})
        };
        let live = managers
            .apply(
                Kind::Service,
                "helm",
                &Value::Null,
                &service(json!({"app": "a"})),
                false,
            )
            .expect("created");
        let mine = service(json!({"shipflow.dev/app": "api"}));
        let conflicts = managers
            .clone()
            .apply(Kind::Service, "shipflow", &live, &mine, false)
            .expect_err("another key is still another selector");
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].field(), ".spec.selector");
        let forced = managers
            .apply(Kind::Service, "shipflow", &live, &mine, true)
            .expect("forced");
        assert_eq!(
            forced["spec"]["selector"],
            json!({"shipflow.dev/app": "api"})
        );
    }

    #[test]
    fn a_field_the_applier_stops_applying_is_removed() {
        let mut managers = Managers::default();
        let first = deployment(
            "r/api:v1",
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
        );
        let live = managers
            .apply(Kind::Deployment, "ops", &Value::Null, &first, false)
            .expect("created");
        let second = deployment("r/api:v1", json!([{"name": "A", "value": "1"}]));
        let next = managers
            .apply(Kind::Deployment, "ops", &live, &second, false)
            .expect("applied");
        assert_eq!(
            next["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}])
        );
        // managedFields survive a round trip through their JSON form.
        let mut object = next.clone();
        managers.write(&mut object);
        assert_eq!(Managers::of(&object), managers);
    }
}
