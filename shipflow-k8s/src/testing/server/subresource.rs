//! Subresources: `deployments/<name>/scale`, `<kind>/<name>/status`, `pods/<name>/log`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::write::{Write, apply_patch, has_status, store};
use super::{
    Body, Call, conflict, invalid, json_response, not_found, path_not_found, respond, status,
};
use crate::testing::controller::kubelet;
use crate::testing::resources::Kind;
use crate::testing::schema;
use crate::testing::selector::LabelSelector;
use crate::testing::store::{Shared, str_at};

pub(super) fn subresource(
    shared: &Arc<Shared>,
    call: &Call,
    method: &Method,
    kind: Kind,
    ns: &str,
    name: &str,
    sub: &str,
) -> Response<Body> {
    match (kind, sub, method) {
        (Kind::Pod, "log", &Method::GET) => pod_log(shared, call, ns, name),
        (Kind::Deployment, "scale", _) => scale(shared, call, method, ns, name),
        (k, "status", _) if has_status(k) => {
            status_subresource(shared, call, method, kind, ns, name)
        }
        _ => path_not_found(&call.path).into_response(),
    }
}

fn scale_of(dep: &Value) -> Value {
    let selector = LabelSelector::from_object(&dep["spec"]["selector"])
        .map(|s| s.to_query())
        .unwrap_or_default();
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": dep["metadata"]["name"], "namespace": dep["metadata"]["namespace"],
            "uid": dep["metadata"]["uid"], "resourceVersion": dep["metadata"]["resourceVersion"],
            "creationTimestamp": dep["metadata"]["creationTimestamp"]},
        "spec": {"replicas": dep["spec"]["replicas"]},
        "status": {"replicas": dep["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector}})
}

/// `deployments/<name>/scale`: reads and writes `spec.replicas` through an
/// `autoscaling/v1` Scale.
fn scale(
    shared: &Arc<Shared>,
    call: &Call,
    method: &Method,
    ns: &str,
    name: &str,
) -> Response<Body> {
    let mut st = shared.lock();
    let Some(dep) = st.get(Kind::Deployment, ns, name).cloned() else {
        return not_found(Kind::Deployment, name).into_response();
    };
    let current = scale_of(&dep);
    let wanted = match *method {
        Method::GET => return json_response(StatusCode::OK, &current),
        Method::PUT => match call.json() {
            Ok(s) => s,
            Err(res) => return res.into_response(),
        },
        Method::PATCH => {
            let mut s = current.clone();
            if let Err(res) = apply_patch(call, &mut s) {
                return res.into_response();
            }
            s
        }
        _ => {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {}", call.path),
            )
            .into_response();
        }
    };
    let want_rv = str_at(&wanted, "/metadata/resourceVersion");
    if !want_rv.is_empty() && want_rv != str_at(&dep, "/metadata/resourceVersion") {
        return conflict(Kind::Deployment, name).into_response();
    }
    let Some(replicas) = wanted["spec"]["replicas"].as_i64() else {
        return invalid(
            Kind::Deployment,
            name,
            &[("spec.replicas".into(), "Required value".into())],
        )
        .into_response();
    };
    let mut next = dep.clone();
    next["spec"]["replicas"] = replicas.into();
    match store(
        shared,
        &mut st,
        call,
        Kind::Deployment,
        ns,
        name,
        Write::Update(&dep),
        next,
        None,
    ) {
        Ok((code, stored)) => json_response(code, &scale_of(&stored)),
        Err(res) => res.into_response(),
    }
}

/// `<kind>/<name>/status`: reads the object, or writes only its status.
fn status_subresource(
    shared: &Arc<Shared>,
    call: &Call,
    method: &Method,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Response<Body> {
    let mut st = shared.lock();
    let Some(current) = st.get(kind, ns, name).cloned() else {
        return not_found(kind, name).into_response();
    };
    let wanted = match *method {
        Method::GET => return json_response(StatusCode::OK, &current),
        Method::PUT => match call.json() {
            Ok(o) => o,
            Err(res) => return res.into_response(),
        },
        Method::PATCH => {
            let mut o = current.clone();
            if let Err(res) = apply_patch(call, &mut o) {
                return res.into_response();
            }
            o
        }
        _ => {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not supported on {}", call.path),
            )
            .into_response();
        }
    };
    let want_rv = str_at(&wanted, "/metadata/resourceVersion");
    if !want_rv.is_empty() && want_rv != str_at(&current, "/metadata/resourceVersion") {
        return conflict(kind, name).into_response();
    }
    let mut next = current.clone();
    next["status"] = wanted["status"].clone();
    if let Err(e) = schema::check_schema(kind, &next) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("strict decoding error: {e}"),
        )
        .into_response();
    }
    if next == current || call.dry_run() {
        return json_response(StatusCode::OK, &next);
    }
    let stored = shared.put(&mut st, kind, ns, next);
    json_response(StatusCode::OK, &stored)
}

/// `pods/<name>/log`: the container's log as plain text, with `container`,
/// `previous`, `tailLines`, `limitBytes` and `timestamps`.
fn pod_log(shared: &Arc<Shared>, call: &Call, ns: &str, name: &str) -> Response<Body> {
    let st = shared.lock();
    let Some(pod) = st.get(Kind::Pod, ns, name) else {
        return not_found(Kind::Pod, name).into_response();
    };
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| str_at(c, "/name"))
        .collect();
    let container = match call.param("container") {
        Some(c) => c.to_owned(),
        None if containers.len() == 1 => containers[0].to_owned(),
        None => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                ),
            )
            .into_response();
        }
    };
    let lines = match kubelet::logs(
        &st,
        str_at(pod, "/metadata/uid"),
        name,
        &container,
        call.flag("previous"),
    ) {
        Ok(lines) => lines,
        Err(message) => {
            return status(StatusCode::BAD_REQUEST, "BadRequest", message).into_response();
        }
    };
    let tail = call
        .param("tailLines")
        .and_then(|t| t.parse::<usize>().ok());
    let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
    let stamp = call
        .flag("timestamps")
        .then(crate::testing::store::now_micro);
    let mut text = String::new();
    for line in &lines[skip..] {
        if let Some(s) = &stamp {
            text.push_str(s);
            text.push(' ');
        }
        text.push_str(line);
        text.push('\n');
    }
    if let Some(limit) = call
        .param("limitBytes")
        .and_then(|l| l.parse::<usize>().ok())
    {
        let mut cut = limit.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    respond(StatusCode::OK, "text/plain", Bytes::from(text))
}
