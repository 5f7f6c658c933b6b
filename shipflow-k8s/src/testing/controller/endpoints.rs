//! The endpoints and EndpointSlice controllers: for every Service with a selector,
//! the pods it selects, ready ones as addresses and unready ones as not-ready
//! addresses (Endpoints), or as endpoints with `ready`, `serving` and `terminating`
//! conditions (one EndpointSlice); a terminating pod leaves the Endpoints at once and
//! stays in the slice as terminating until it is gone.

use serde_json::{Value, json};

use super::{controlled, owner_ref, safe_chars};
use crate::testing::resources::Kind;
use crate::testing::selector::LabelSelector;
use crate::testing::store::{Shared, State, str_at};

/// Syncs the Endpoints and EndpointSlice of every Service in `ns`.
pub(crate) fn sync_all(shared: &Shared, st: &mut State, ns: &str) {
    for svc in st.list(Kind::Service, ns) {
        sync(shared, st, &svc);
    }
    // Endpoints of Services that are gone.
    let stale: Vec<String> = st
        .iter(Kind::Endpoints, ns)
        .map(|e| str_at(e, "/metadata/name").to_owned())
        .filter(|name| st.get(Kind::Service, ns, name).is_none())
        .collect();
    for name in stale {
        shared.delete(st, Kind::Endpoints, ns, &name);
    }
}

/// The port a pod serves a Service port on: a number, or a container port's name.
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"]
            .as_array()?
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .find(|p| p["name"] == *name)
            .and_then(|p| p["containerPort"].as_i64()),
        _ => port["port"].as_i64(),
    }
}

fn sync(shared: &Shared, st: &mut State, svc: &Value) {
    let ns = str_at(svc, "/metadata/namespace").to_owned();
    let name = str_at(svc, "/metadata/name").to_owned();
    let Some(selector) = svc["spec"]["selector"]
        .as_object()
        .filter(|s| !s.is_empty())
    else {
        return;
    };
    let Ok(selector) = LabelSelector::from_object(&json!({"matchLabels": selector})) else {
        return;
    };
    let mut pods: Vec<Value> = st
        .iter(Kind::Pod, &ns)
        .filter(|p| {
            selector.matches(&p["metadata"]["labels"]) && !str_at(p, "/status/podIP").is_empty()
        })
        .cloned()
        .collect();
    pods.sort_by(|a, b| str_at(a, "/status/podIP").cmp(str_at(b, "/status/podIP")));
    let service_ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let ports_for = |pod: &Value| -> Vec<Value> {
        service_ports
            .iter()
            .filter_map(|p| {
                let mut port = json!({"port": target_port(p, pod)?, "protocol": p["protocol"]});
                if let Some(n) = p.get("name") {
                    port["name"] = n.clone();
                }
                Some(port)
            })
            .collect()
    };
    let target = |pod: &Value| json!({"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns, "uid": pod["metadata"]["uid"]});
    let ready = |pod: &Value| {
        pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    };
    let terminating = |pod: &Value| pod["metadata"].get("deletionTimestamp").is_some();

    let (mut addresses, mut not_ready) = (Vec::new(), Vec::new());
    for pod in pods.iter().filter(|p| !terminating(p)) {
        let address = json!({"ip": pod["status"]["podIP"], "nodeName": pod["spec"]["nodeName"], "targetRef": target(pod)});
        if ready(pod) {
            addresses.push(address);
        } else {
            not_ready.push(address);
        }
    }
    let mut subset = json!({});
    if !addresses.is_empty() {
        subset["addresses"] = addresses.into();
    }
    if !not_ready.is_empty() {
        subset["notReadyAddresses"] = not_ready.into();
    }
    let ports = pods.first().map(ports_for).unwrap_or_default();
    let subsets = if subset.as_object().is_some_and(|s| !s.is_empty()) {
        subset["ports"] = ports.clone().into();
        json!([subset])
    } else {
        json!([])
    };
    let mut endpoints = st.get(Kind::Endpoints, &ns, &name).cloned().unwrap_or_else(
        || json!({"metadata": {"name": name, "labels": svc["metadata"]["labels"]}}),
    );
    let had = endpoints.get("subsets").cloned().unwrap_or(json!([]));
    if had != subsets || endpoints["metadata"].get("uid").is_none() {
        endpoints["subsets"] = subsets;
        if endpoints["subsets"] == json!([]) {
            endpoints.as_object_mut().map(|e| e.remove("subsets"));
        }
        if endpoints["metadata"]["labels"].is_null() {
            endpoints["metadata"]
                .as_object_mut()
                .map(|m| m.remove("labels"));
        }
        shared.put(st, Kind::Endpoints, &ns, endpoints);
    }

    let list: Vec<Value> = pods
        .iter()
        .map(|pod| {
            let is_ready = ready(pod) && !terminating(pod);
            json!({"addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": is_ready, "serving": ready(pod), "terminating": terminating(pod)},
                "nodeName": pod["spec"]["nodeName"], "targetRef": target(pod)})
        })
        .collect();
    let uid = str_at(svc, "/metadata/uid").to_owned();
    let existing = controlled(st, Kind::EndpointSlice, &ns, &uid)
        .into_iter()
        .next();
    let mut slice = existing.clone().unwrap_or_else(|| {
        json!({"metadata": {
            "name": format!("{name}-{}", safe_chars(st.rv, 5)),
            "generateName": format!("{name}-"),
            "labels": {"kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": owner_ref(svc),
        }, "addressType": "IPv4"})
    });
    let new_ports: Value = pods.first().map(ports_for).unwrap_or_default().into();
    if slice.get("endpoints") != Some(&json!(list))
        || slice.get("ports") != Some(&new_ports)
        || existing.is_none()
    {
        slice["endpoints"] = list.into();
        slice["ports"] = new_ports;
        shared.put(st, Kind::EndpointSlice, &ns, slice);
    }
}
