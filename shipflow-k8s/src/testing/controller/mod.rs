//! The simulated control plane: the Deployment, ReplicaSet and Job controllers, a
//! kubelet, the endpoints controllers and the garbage collector, run one step at a
//! time.
//!
//! Each step stands for one second of cluster time: the kubelet moves every pod one
//! state forward, the garbage collector deletes what lost its owner, then the
//! ReplicaSet controller creates and deletes pods, the Deployment controller scales
//! ReplicaSets and writes its status, the Job controller runs Jobs' pods, then
//! Endpoints and EndpointSlices follow the pods. Timers (`progressDeadlineSeconds`,
//! `minReadySeconds`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`,
//! back-offs) count steps.

pub(crate) mod deployment;
pub(crate) mod endpoints;
pub(crate) mod events;
pub(crate) mod gc;
pub(crate) mod job;
pub(crate) mod kubelet;
pub(crate) mod replicaset;
pub(crate) mod runtime;

use std::sync::Arc;

use serde_json::{Value, json};

use self::events::Type;
use super::resources::Kind;
use super::schema;
use super::store::{Shared, State, str_at};

/// Runs the control plane: one step every `shared.step`, until the task is aborted.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(shared.step);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut st = shared.lock();
        step(&shared, &mut st);
    }
}

/// One step of every controller. Like the real ones, they act on change: only the
/// namespaces with changes since the last step, or a timer that ends now, are looked at.
pub(crate) fn step(shared: &Shared, st: &mut State) {
    st.tick += 1;
    let mut active = std::mem::take(&mut st.dirty);
    while let Some((tick, _)) = st.wakes.first() {
        if *tick > st.tick {
            break;
        }
        if let Some((_, ns)) = st.wakes.pop_first() {
            active.insert(ns);
        }
    }
    let mut phases: [fn(&Shared, &mut State, &str); 6] = [
        kubelet::step,
        gc::collect,
        replicaset::sync_all,
        deployment::sync_all,
        job::sync_all,
        endpoints::sync_all,
    ];
    for phase in &mut phases {
        active.extend(st.dirty.iter().cloned());
        for ns in &active {
            phase(shared, st, ns);
        }
    }
    st.trim_history();
}

/// The controller reference of `object`, if any: `(kind, name, uid)`.
pub(crate) fn controller_of(object: &Value) -> Option<(&str, &str, &str)> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .map(|r| (str_at(r, "/kind"), str_at(r, "/name"), str_at(r, "/uid")))
}

/// The objects of `kind` in `ns` that the object with `uid` controls.
pub(crate) fn controlled(st: &State, kind: Kind, ns: &str, uid: &str) -> Vec<Value> {
    st.iter(kind, ns)
        .filter(|o| controller_of(o).is_some_and(|(_, _, u)| u == uid))
        .cloned()
        .collect()
}

/// An owner reference to `owner` as its controller.
pub(crate) fn owner_ref(owner: &Value) -> Value {
    json!([{
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// `n` characters of the alphabet Kubernetes uses in generated names.
pub(crate) fn safe_chars(mut seed: u64, n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::with_capacity(n);
    for _ in 0..n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(char::from(
            ALPHABET[((seed >> 33) % ALPHABET.len() as u64) as usize],
        ));
    }
    out
}

/// Creates one pod from `owner`'s `spec.template`, named `<owner>-<5 characters>`
/// and controlled by it, unless a scripted quota refuses it (`Err`: why); records
/// `SuccessfulCreate` from `component`.
pub(crate) fn create_pod(
    shared: &Shared,
    st: &mut State,
    owner: &Value,
    component: &str,
) -> Result<Value, String> {
    let ns = str_at(owner, "/metadata/namespace").to_owned();
    let owner_name = str_at(owner, "/metadata/name");
    let name = format!("{owner_name}-{}", safe_chars(st.rv ^ 0x5eed, 5));
    if let Some(left) = st.scripts.refuse_pods.get_mut(&ns)
        && *left > 0
    {
        *left -= 1;
        return Err(format!(
            "pods \"{name}\" is forbidden: exceeded quota: compute-resources, requested: pods=1, used: pods=4, limited: pods=4"
        ));
    }
    let template = &owner["spec"]["template"];
    let mut pod = json!({
        "metadata": {
            "name": name,
            "generateName": format!("{owner_name}-"),
            "labels": template["metadata"]["labels"],
            "ownerReferences": owner_ref(owner),
        },
        "spec": template["spec"],
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    });
    if let Some(a) = template["metadata"].get("annotations") {
        pod["metadata"]["annotations"] = a.clone();
    }
    schema::default(st, Kind::Pod, &mut pod);
    let pod = shared.put(st, Kind::Pod, &ns, pod);
    events::record(
        shared,
        st,
        owner,
        Type::Normal,
        "SuccessfulCreate",
        &format!("Created pod: {}", str_at(&pod, "/metadata/name")),
        component,
    );
    Ok(pod)
}
