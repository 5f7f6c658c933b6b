//! The simulated Deployment controller: a new ReplicaSet per pod template, pods that
//! become ready or fail as the deployment's [`Outcome`] scripts, and the Deployment's
//! status moved forward one step at a time.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::{Value, json};

use super::Outcome;
use super::store::{Kind, Shared, State, ensure_object};

/// The annotation holding a ReplicaSet's (and its Deployment's) revision.
pub(crate) const REVISION: &str = "deployment.kubernetes.io/revision";
/// The label holding the pod template hash.
pub(crate) const HASH_LABEL: &str = "pod-template-hash";

/// The pod template hash of a Deployment's template.
pub(crate) fn template_hash(template: &Value) -> String {
    let mut hasher = DefaultHasher::new();
    template.to_string().hash(&mut hasher);
    format!("{:010x}", hasher.finish() & 0xff_ffff_ffff)
}

fn dep_key(ns: &str, name: &str) -> (Kind, String, String) {
    (Kind::Deployment, ns.to_owned(), name.to_owned())
}

fn owned_by(object: &Value, uid: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
}

fn revision_of(object: &Value) -> u64 {
    object["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The objects of `kind` in `ns` owned by the object with `owner_uid` (a Deployment's
/// ReplicaSets, a ReplicaSet's pods).
fn owned(st: &State, kind: Kind, ns: &str, owner_uid: &str) -> Vec<Value> {
    st.objects
        .iter()
        .filter(|((k, n, _), v)| *k == kind && n == ns && owned_by(v, owner_uid))
        .map(|(_, v)| v.clone())
        .collect()
}

fn owner(kind: &str, object: &Value) -> Value {
    json!([{
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": object["metadata"]["name"],
        "uid": object["metadata"]["uid"],
        "controller": true,
    }])
}

/// Finds or creates the ReplicaSet for the Deployment's current template, gives it the
/// next revision, and stamps that revision on the Deployment. Returns the ReplicaSet.
pub(crate) fn sync_new_replica_set(shared: &Shared, st: &mut State, ns: &str, name: &str) -> Value {
    let mut dep = st.objects[&dep_key(ns, name)].clone();
    let uid = dep["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let hash = template_hash(&dep["spec"]["template"]);
    let sets = owned(st, Kind::ReplicaSet, ns, &uid);
    let max = sets.iter().map(revision_of).max().unwrap_or(0);
    let existing = sets
        .iter()
        .find(|rs| rs["metadata"]["labels"][HASH_LABEL].as_str() == Some(&hash));
    let mut rs = match existing {
        Some(rs) => rs.clone(),
        None => {
            let mut template = dep["spec"]["template"].clone();
            ensure_object(&mut template["metadata"]["labels"])
                .insert(HASH_LABEL.into(), hash.clone().into());
            let mut selector = dep["spec"]["selector"].clone();
            ensure_object(&mut selector["matchLabels"])
                .insert(HASH_LABEL.into(), hash.clone().into());
            json!({
                "metadata": {
                    "name": format!("{name}-{hash}"),
                    "labels": template["metadata"]["labels"].clone(),
                    "ownerReferences": owner("Deployment", &dep),
                },
                "spec": {"replicas": 0, "selector": selector, "template": template},
                "status": {"replicas": 0},
            })
        }
    };
    let current = revision_of(&rs);
    let revision = if current == max && current > 0 {
        max
    } else {
        max + 1
    };
    // Like the real controller: the Deployment's annotations travel to its ReplicaSet.
    let annotations = ensure_object(&mut rs["metadata"]["annotations"]);
    for (k, v) in dep["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if k != REVISION && !k.starts_with("kubectl.kubernetes.io/") {
            annotations.insert(k.clone(), v.clone());
        }
    }
    annotations.insert(REVISION.into(), revision.to_string().into());
    let rs = shared.put(st, Kind::ReplicaSet, ns, rs);

    ensure_object(&mut dep["metadata"]["annotations"])
        .insert(REVISION.into(), revision.to_string().into());
    dep["status"]["observedGeneration"] = dep["metadata"]["generation"].clone();
    set_condition(
        &mut dep,
        "Progressing",
        "True",
        "NewReplicaSetCreated",
        &format!(
            "Created new replica set \"{}\"",
            rs["metadata"]["name"].as_str().unwrap_or_default()
        ),
    );
    // Status counts change in the same write as observedGeneration, as in Kubernetes:
    // a watcher never sees the new generation with the old counts.
    let rs_name = rs["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    refresh(shared, st, ns, &mut dep, &rs_name);
    shared.put(st, Kind::Deployment, ns, dep);
    rs
}

fn set_condition(dep: &mut Value, ty: &str, status: &str, reason: &str, message: &str) {
    let conditions = &mut dep["status"]["conditions"];
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let list = conditions.as_array_mut().expect("just made an array");
    list.retain(|c| c["type"].as_str() != Some(ty));
    list.push(json!({
        "type": ty, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z",
    }));
}

/// How a new pod's containers look.
#[derive(Clone, Copy)]
enum PodState<'a> {
    Ready,
    Starting,
    Waiting {
        reason: &'a str,
        message: &'a str,
        restarts: u64,
        last_message: Option<&'a str>,
    },
}

fn pod_status(template: &Value, state: PodState<'_>) -> Value {
    let ready = matches!(state, PodState::Ready);
    let statuses: Vec<Value> = template["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut s = json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": ready, "restartCount": 0});
            match state {
                PodState::Ready | PodState::Starting => {
                    s["state"] = json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}});
                }
                PodState::Waiting { reason, message, restarts, last_message } => {
                    s["state"] = json!({"waiting": {"reason": reason, "message": message}});
                    s["restartCount"] = restarts.into();
                    if let Some(m) = last_message {
                        s["lastState"] = json!({"terminated": {"exitCode": 2, "reason": "Error", "message": m}});
                    }
                }
            }
            s
        })
        .collect();
    json!({
        "phase": if matches!(state, PodState::Waiting { .. }) { "Pending" } else { "Running" },
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        "containerStatuses": statuses,
    })
}

fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Adds a pod to `rs`, returning its name.
fn add_pod(shared: &Shared, st: &mut State, ns: &str, rs: &Value, state: PodState<'_>) -> String {
    let rs_name = rs["metadata"]["name"].as_str().unwrap_or_default();
    let name = format!("{rs_name}-{:05x}", (st.rv * 7919) & 0xfffff);
    let template = &rs["spec"]["template"];
    let pod = json!({
        "metadata": {
            "name": name,
            "labels": template["metadata"]["labels"],
            "ownerReferences": owner("ReplicaSet", rs),
        },
        "spec": template["spec"],
        "status": pod_status(template, state),
    });
    shared.put(st, Kind::Pod, ns, pod);
    name
}

fn set_pod(shared: &Shared, st: &mut State, ns: &str, pod: &str, rs: &Value, state: PodState<'_>) {
    if let Some(mut p) = st
        .objects
        .get(&(Kind::Pod, ns.to_owned(), pod.to_owned()))
        .cloned()
    {
        p["status"] = pod_status(&rs["spec"]["template"], state);
        shared.put(st, Kind::Pod, ns, p);
    }
}

/// Recomputes the ReplicaSets' and the Deployment's status from their pods.
fn sync_status(shared: &Shared, st: &mut State, ns: &str, name: &str, new_rs: &str) {
    let Some(mut dep) = st.objects.get(&dep_key(ns, name)).cloned() else {
        return;
    };
    refresh(shared, st, ns, &mut dep, new_rs);
    shared.put(st, Kind::Deployment, ns, dep);
}

/// Brings the ReplicaSets' status up to date and writes the counts into `dep`'s status
/// (which the caller stores).
fn refresh(shared: &Shared, st: &mut State, ns: &str, dep: &mut Value, new_rs: &str) {
    let uid = dep["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (mut total, mut updated, mut ready, mut updated_ready) = (0u64, 0u64, 0u64, 0u64);
    for mut rs in owned(st, Kind::ReplicaSet, ns, &uid) {
        let rs_uid = rs["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let pods = owned(st, Kind::Pod, ns, &rs_uid);
        let n = pods.len() as u64;
        let r = pods.iter().filter(|p| pod_ready(p)).count() as u64;
        total += n;
        ready += r;
        if rs["metadata"]["name"].as_str() == Some(new_rs) {
            updated += n;
            updated_ready += r;
        }
        let status = json!({"replicas": n, "readyReplicas": r, "availableReplicas": r});
        if rs["status"] != status || rs["spec"]["replicas"] != json!(n) {
            rs["status"] = status;
            rs["spec"]["replicas"] = n.into();
            shared.put(st, Kind::ReplicaSet, ns, rs);
        }
    }
    let status = ensure_object(&mut dep["status"]);
    status.insert("replicas".into(), total.into());
    status.insert("updatedReplicas".into(), updated.into());
    status.insert("readyReplicas".into(), ready.into());
    status.insert("availableReplicas".into(), ready.into());
    status.insert(
        "unavailableReplicas".into(),
        total.saturating_sub(ready).into(),
    );
    let desired = dep["spec"]["replicas"].as_u64().unwrap_or(1);
    if updated_ready == desired && total == updated {
        let generation = dep["metadata"]["generation"].as_u64().unwrap_or(1);
        let key = (
            ns.to_owned(),
            dep["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            generation,
        );
        st.ready_at
            .entry(key)
            .or_insert_with(std::time::Instant::now);
        clean_up_history(shared, st, ns, dep, new_rs);
        let images = template_images(dep);
        st.good_images.insert((
            ns.to_owned(),
            dep["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            images,
        ));
        set_condition(
            dep,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        );
        set_condition(
            dep,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_rs}\" has successfully progressed."),
        );
    }
}

/// Like the controller once a rollout is complete: deletes the oldest of the
/// Deployment's scaled-down ReplicaSets beyond `spec.revisionHistoryLimit` (default 10).
fn clean_up_history(shared: &Shared, st: &mut State, ns: &str, dep: &Value, new_rs: &str) {
    let limit = dep["spec"]["revisionHistoryLimit"].as_u64().unwrap_or(10);
    let uid = dep["metadata"]["uid"].as_str().unwrap_or_default();
    let mut old: Vec<Value> = owned(st, Kind::ReplicaSet, ns, uid)
        .into_iter()
        .filter(|rs| {
            rs["metadata"]["name"].as_str() != Some(new_rs)
                && owned(
                    st,
                    Kind::Pod,
                    ns,
                    rs["metadata"]["uid"].as_str().unwrap_or_default(),
                )
                .is_empty()
        })
        .collect();
    old.sort_by_key(revision_of);
    let excess = old
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
    for rs in &old[..excess] {
        let name = rs["metadata"]["name"].as_str().unwrap_or_default();
        shared.delete(st, Kind::ReplicaSet, ns, name);
    }
}

/// Seeds a Deployment that is already rolled out: revision 1, all pods ready.
pub(crate) fn seed(shared: &Shared, st: &mut State, ns: &str, name: &str, dep: Value) {
    shared.put(st, Kind::Deployment, ns, dep);
    let rs = sync_new_replica_set(shared, st, ns, name);
    let replicas = st.objects[&dep_key(ns, name)]["spec"]["replicas"]
        .as_u64()
        .unwrap_or(1);
    for _ in 0..replicas {
        add_pod(shared, st, ns, &rs, PodState::Ready);
    }
    let rs_name = rs["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    sync_status(shared, st, ns, name, &rs_name);
}

/// Runs one rollout of `ns/name` at `generation` as its scripted outcome says.
/// Stops as soon as a newer generation takes over.
pub(crate) async fn rollout(shared: Arc<Shared>, ns: String, name: String, generation: u64) {
    let step = shared.step;
    // Each step: wait, then act under the lock if this rollout is still the newest one.
    macro_rules! step {
        (|$st:ident| $body:expr) => {{
            tokio::time::sleep(step).await;
            let mut guard = shared.lock();
            let $st: &mut State = &mut guard;
            match $st.objects.get(&dep_key(&ns, &name)) {
                Some(d) if d["metadata"]["generation"].as_u64() == Some(generation) => {}
                _ => return,
            }
            $body
        }};
    }
    let outcome = {
        let st = shared.lock();
        let images = st
            .objects
            .get(&dep_key(&ns, &name))
            .map(template_images)
            .unwrap_or_default();
        if st.good_images.contains(&(ns.clone(), name.clone(), images)) {
            Outcome::Healthy
        } else {
            st.outcomes
                .get(&(ns.clone(), name.clone()))
                .cloned()
                .unwrap_or_default()
        }
    };
    let rs = step!(|st| sync_new_replica_set(&shared, st, &ns, &name));
    let rs_name = rs["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let rs_uid = rs["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let desired = step!(|st| st.objects[&dep_key(&ns, &name)]["spec"]["replicas"]
        .as_u64()
        .unwrap_or(1));
    match outcome {
        Outcome::Healthy => {
            loop {
                let done = step!(|st| {
                    let have = owned(st, Kind::Pod, &ns, &rs_uid).len() as u64;
                    if have < desired {
                        add_pod(&shared, st, &ns, &rs, PodState::Ready);
                    }
                    sync_status(&shared, st, &ns, &name, &rs_name);
                    have + 1 >= desired
                });
                // Scale an old ReplicaSet down by one pod.
                let old_left = step!(|st| {
                    let uid = st.objects[&dep_key(&ns, &name)]["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let old: Vec<Value> = owned(st, Kind::ReplicaSet, &ns, &uid)
                        .into_iter()
                        .filter(|r| r["metadata"]["name"].as_str() != Some(&rs_name))
                        .flat_map(|r| {
                            owned(
                                st,
                                Kind::Pod,
                                &ns,
                                r["metadata"]["uid"].as_str().unwrap_or_default(),
                            )
                        })
                        .collect();
                    if let Some(p) = old.first() {
                        let pod = p["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        shared.delete(st, Kind::Pod, &ns, &pod);
                    }
                    sync_status(&shared, st, &ns, &name, &rs_name);
                    old.len() > 1
                });
                if done && !old_left {
                    break;
                }
            }
        }
        Outcome::ImagePullFailure => {
            let pod = step!(|st| {
                let pod = add_pod(
                    &shared,
                    st,
                    &ns,
                    &rs,
                    PodState::Waiting {
                        reason: "ErrImagePull",
                        message: "rpc error: code = NotFound desc = failed to pull and unpack image: not found",
                        restarts: 0,
                        last_message: None,
                    },
                );
                sync_status(&shared, st, &ns, &name, &rs_name);
                pod
            });
            step!(|st| {
                let image = rs["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                set_pod(
                    &shared,
                    st,
                    &ns,
                    &pod,
                    &rs,
                    PodState::Waiting {
                        reason: "ImagePullBackOff",
                        message: &format!("Back-off pulling image \"{image}\""),
                        restarts: 0,
                        last_message: None,
                    },
                );
            });
        }
        Outcome::CrashLoop => {
            let pod = step!(|st| {
                let pod = add_pod(&shared, st, &ns, &rs, PodState::Starting);
                sync_status(&shared, st, &ns, &name, &rs_name);
                pod
            });
            for restarts in 1..=50 {
                step!(|st| set_pod(
                    &shared,
                    st,
                    &ns,
                    &pod,
                    &rs,
                    PodState::Waiting {
                        reason: "CrashLoopBackOff",
                        message: "back-off restarting failed container",
                        restarts,
                        last_message: Some("panic: boom"),
                    }
                ));
            }
        }
        Outcome::DeadlineExceeded => {
            step!(|st| {
                add_pod(&shared, st, &ns, &rs, PodState::Starting);
                sync_status(&shared, st, &ns, &name, &rs_name);
            });
            for _ in 0..3 {
                step!(|_st| ());
            }
            step!(|st| {
                let mut dep = st.objects[&dep_key(&ns, &name)].clone();
                set_condition(
                    &mut dep,
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                );
                shared.put(st, Kind::Deployment, &ns, dep);
            });
        }
        Outcome::Stuck => {}
    }
}

/// The images of a Deployment's pod template, in container order, as one key.
fn template_images(dep: &Value) -> String {
    dep["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|containers| {
            containers
                .iter()
                .map(|c| c["image"].as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}
