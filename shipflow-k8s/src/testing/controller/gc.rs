//! Deletion with a propagation policy, and the garbage collector that finishes it:
//! dependents of an owner deleted in the background are deleted once the owner is
//! gone, an owner deleted in the foreground waits (with a deletion timestamp and the
//! `foregroundDeletion` finalizer) until its dependents are gone, and an orphaning
//! delete leaves the dependents without their owner reference.

use std::collections::HashSet;

use serde_json::Value;

use super::{controller_of, kubelet};
use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, now, str_at};

/// The finalizer of an owner waiting for its dependents.
const FOREGROUND: &str = "foregroundDeletion";

/// The kinds that own others.
const OWNERS: [Kind; 4] = [Kind::Deployment, Kind::ReplicaSet, Kind::Service, Kind::Job];
/// The kinds that have owners.
const DEPENDENTS: [Kind; 3] = [Kind::ReplicaSet, Kind::Pod, Kind::EndpointSlice];

/// What a delete does to the objects the deleted one owns (`propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Propagation {
    /// The object goes now, its dependents after it.
    Background,
    /// The object stays until its dependents are gone.
    Foreground,
    /// The object goes now, its dependents stay, without their owner reference.
    Orphan,
}

impl Propagation {
    /// The policy a DELETE of `kind` asks for, from its options' `propagationPolicy`
    /// (or the older `orphanDependents`): `Err` names an unknown policy. Without
    /// one, `batch/v1` Jobs orphan their pods, as the API server keeps them for
    /// compatibility; everything else is deleted in the background.
    pub(crate) fn of(kind: Kind, options: &Value, param: Option<&str>) -> Result<Self, String> {
        let asked = options["propagationPolicy"].as_str().or(param);
        match asked {
            Some("Background") => Ok(Self::Background),
            Some("Foreground") => Ok(Self::Foreground),
            Some("Orphan") => Ok(Self::Orphan),
            Some(other) => Err(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )),
            None => Ok(match options["orphanDependents"].as_bool() {
                Some(true) => Self::Orphan,
                Some(false) => Self::Background,
                None if kind == Kind::Job => Self::Orphan,
                None => Self::Background,
            }),
        }
    }
}

/// Deletes `kind` `ns/name` as `policy` says; returns the object if it stays for
/// now (being deleted in the foreground), `None` once it is gone.
pub(crate) fn delete(
    shared: &Shared,
    st: &mut State,
    kind: Kind,
    ns: &str,
    name: &str,
    policy: Propagation,
) -> Option<Value> {
    let object = st.get(kind, ns, name)?.clone();
    let uid = str_at(&object, "/metadata/uid").to_owned();
    match policy {
        Propagation::Foreground => {
            if dependents(st, ns, &uid).is_empty() {
                shared.delete(st, kind, ns, name);
                return None;
            }
            let mut next = object;
            let marked = next["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == FOREGROUND));
            if marked {
                return Some(next);
            }
            if next["metadata"].get("deletionTimestamp").is_none() {
                next["metadata"]["deletionTimestamp"] = now().into();
                next["metadata"]["deletionGracePeriodSeconds"] = 0.into();
            }
            let mut finalizers = next["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            finalizers.push(FOREGROUND.into());
            next["metadata"]["finalizers"] = finalizers.into();
            Some(shared.put(st, kind, ns, next))
        }
        Propagation::Orphan => {
            for (dep_kind, dep_name) in dependents(st, ns, &uid) {
                let Some(mut dep) = st.get(dep_kind, ns, &dep_name).cloned() else {
                    continue;
                };
                let refs: Vec<Value> = dep["metadata"]["ownerReferences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["uid"] != uid.as_str())
                    .cloned()
                    .collect();
                match dep["metadata"].as_object_mut() {
                    Some(meta) if refs.is_empty() => {
                        meta.remove("ownerReferences");
                    }
                    Some(meta) => {
                        meta.insert("ownerReferences".into(), refs.into());
                    }
                    None => {}
                }
                shared.put(st, dep_kind, ns, dep);
            }
            shared.delete(st, kind, ns, name);
            None
        }
        Propagation::Background => {
            shared.delete(st, kind, ns, name);
            None
        }
    }
}

/// The objects in `ns` with an owner reference to `uid`: `(kind, name)`.
fn dependents(st: &State, ns: &str, uid: &str) -> Vec<(Kind, String)> {
    DEPENDENTS
        .iter()
        .flat_map(|k| st.iter(*k, ns).map(move |o| (*k, o)))
        .filter(|(_, o)| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"] == uid)
        })
        .map(|(k, o)| (k, str_at(o, "/metadata/name").to_owned()))
        .collect()
}

/// The garbage collector: objects whose controller is gone are deleted (pods
/// gracefully), as after a background delete; the dependents of owners deleted in
/// the foreground are deleted, and the owners once they are gone.
pub(crate) fn collect(shared: &Shared, st: &mut State, ns: &str) {
    let uids: HashSet<&str> = OWNERS
        .iter()
        .flat_map(|k| st.iter(*k, ns))
        .map(|o| str_at(o, "/metadata/uid"))
        .collect();
    let orphans: Vec<(Kind, String)> = DEPENDENTS
        .iter()
        .flat_map(|k| st.iter(*k, ns).map(move |o| (*k, o)))
        .filter(|(_, o)| controller_of(o).is_some_and(|(_, _, uid)| !uids.contains(uid)))
        .map(|(k, o)| (k, str_at(o, "/metadata/name").to_owned()))
        .collect();
    for (kind, name) in orphans {
        remove(shared, st, kind, ns, &name, Propagation::Background);
    }
    let waiting: Vec<(Kind, String, String)> = OWNERS
        .iter()
        .flat_map(|k| st.iter(*k, ns).map(move |o| (*k, o)))
        .filter(|(_, o)| {
            o["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == FOREGROUND))
        })
        .map(|(k, o)| {
            (
                k,
                str_at(o, "/metadata/name").to_owned(),
                str_at(o, "/metadata/uid").to_owned(),
            )
        })
        .collect();
    for (kind, name, uid) in waiting {
        let deps = dependents(st, ns, &uid);
        if deps.is_empty() {
            shared.delete(st, kind, ns, &name);
            continue;
        }
        for (dep_kind, dep_name) in deps {
            remove(shared, st, dep_kind, ns, &dep_name, Propagation::Foreground);
        }
    }
}

/// Deletes a dependent: a pod gracefully (through the kubelet), anything else as
/// `policy` says.
fn remove(shared: &Shared, st: &mut State, kind: Kind, ns: &str, name: &str, policy: Propagation) {
    if kind == Kind::Pod {
        kubelet::terminate(shared, st, ns, name);
    } else {
        delete(shared, st, kind, ns, name, policy);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn jobs_orphan_by_default_and_everything_else_goes_in_the_background() {
        let none = json!({});
        assert_eq!(
            Propagation::of(Kind::Job, &none, None),
            Ok(Propagation::Orphan)
        );
        assert_eq!(
            Propagation::of(Kind::Deployment, &none, None),
            Ok(Propagation::Background)
        );
        let asked = json!({"propagationPolicy": "Foreground"});
        assert_eq!(
            Propagation::of(Kind::Job, &asked, None),
            Ok(Propagation::Foreground)
        );
        assert_eq!(
            Propagation::of(Kind::Job, &none, Some("Background")),
            Ok(Propagation::Background)
        );
        let legacy = json!({"orphanDependents": false});
        assert_eq!(
            Propagation::of(Kind::Job, &legacy, None),
            Ok(Propagation::Background)
        );
        assert!(Propagation::of(Kind::Job, &none, Some("Later")).is_err());
    }
}
