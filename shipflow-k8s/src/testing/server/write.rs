//! What the API server does on a write (POST, PUT, PATCH in its four flavours,
//! DELETE): preconditions, identity and status kept, field managers, defaults,
//! generation, schema and validation; a write that changes nothing stores nothing.

use std::sync::Arc;

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{
    Body, Call, Refusal, conflict, invalid, json_response, not_found, status, status_body,
};
use crate::testing::controller::gc::{self, Propagation};
use crate::testing::controller::kubelet;
use crate::testing::fields::Managers;
use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, ensure_object, str_at};
use crate::testing::{patch, schema};

/// Kinds whose status only their `status` subresource (or a controller) writes.
pub(super) fn has_status(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Deployment | Kind::ReplicaSet | Kind::Pod | Kind::Service | Kind::Job
    )
}

/// How a write came in.
pub(super) enum Write<'a> {
    Create,
    Update(&'a Value),
}

/// Stores `next` after what the API server does on every write: identity and
/// status kept, the resourceVersion precondition checked, field managers tracked
/// (`managers`: already computed by server-side apply), defaults, generation,
/// schema and validation; a write that changes nothing stores nothing.
#[allow(clippy::too_many_arguments)]
pub(super) fn store(
    shared: &Shared,
    st: &mut State,
    call: &Call,
    kind: Kind,
    ns: &str,
    name: &str,
    write: Write<'_>,
    mut next: Value,
    managers: Option<Managers>,
) -> Result<(StatusCode, Value), Refusal> {
    if !next.is_object() {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body must be a JSON object",
        ));
    }
    // A null field is an absent one, as the API server's decoder reads it.
    strip_nulls(&mut next);
    for (key, want) in [
        ("apiVersion", kind.api_version()),
        ("kind", kind.name().to_owned()),
    ] {
        match next.get(key).and_then(Value::as_str) {
            Some(v) if v != want => {
                return Err(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!(
                        "the API version or kind in the body ({v}) does not match the {want} the request is for"
                    ),
                ));
            }
            _ => next[key] = want.into(),
        }
    }
    let meta = ensure_object(&mut next["metadata"]);
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| n != name)
    {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                str_at(&next, "/metadata/name")
            ),
        ));
    }
    if meta
        .get("namespace")
        .and_then(Value::as_str)
        .is_some_and(|n| n != ns)
    {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    meta.insert("name".into(), name.into());
    meta.insert("namespace".into(), ns.into());
    let manager = call.manager();
    let old = match write {
        Write::Create => None,
        Write::Update(old) => Some(old),
    };
    if let Some(old) = old {
        let want = str_at(&next, "/metadata/resourceVersion");
        if !want.is_empty() && want != str_at(old, "/metadata/resourceVersion") {
            return Err(conflict(kind, name));
        }
        for key in [
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(key) {
                Some(v) => next["metadata"][key] = v.clone(),
                None => {
                    if let Some(m) = next["metadata"].as_object_mut() {
                        m.remove(key);
                    }
                }
            }
        }
        if has_status(kind) {
            next["status"] = old["status"].clone();
        }
    } else {
        if let Some(m) = next["metadata"].as_object_mut() {
            for key in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
            ] {
                m.remove(key);
            }
        }
        if has_status(kind) {
            next["status"] = match kind {
                Kind::Pod => json!({"phase": "Pending", "qosClass": "BestEffort"}),
                Kind::Service => json!({"loadBalancer": {}}),
                _ => json!({}),
            };
        }
    }
    if next
        .get("status")
        .is_some_and(|s| s.is_null() || s.as_object().is_some_and(|m| m.is_empty()))
        && kind != Kind::Service
    {
        next.as_object_mut().map(|o| o.remove("status"));
    }
    schema::default(st, kind, &mut next);
    let managers = match managers {
        Some(m) => m,
        None => {
            let mut m = old.map(Managers::of).unwrap_or_default();
            m.update(
                kind,
                &manager,
                &kind.api_version(),
                old.unwrap_or(&json!({})),
                &next,
            );
            m
        }
    };
    managers.write(&mut next);
    if matches!(kind, Kind::Deployment | Kind::ReplicaSet | Kind::Job) {
        let generation = match old {
            None => 1,
            Some(old) => {
                let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                if old["spec"] != next["spec"] {
                    g + 1
                } else {
                    g
                }
            }
        };
        next["metadata"]["generation"] = generation.into();
    }
    if let Err(e) = schema::check_schema(kind, &next) {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {e}",
                kind.name(),
                kind.resource().version,
                kind.name()
            ),
        ));
    }
    let errors = schema::validate(kind, &next, old);
    if !errors.is_empty() {
        return Err(invalid(kind, name, &errors));
    }
    if let Some(old) = old
        && without_bookkeeping(old) == without_bookkeeping(&next)
    {
        return Ok((StatusCode::OK, old.clone()));
    }
    if call.dry_run() {
        return Ok((StatusCode::OK, next));
    }
    let stored = shared.put(st, kind, ns, next);
    Ok((
        if old.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        stored,
    ))
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// An object without what changes on every write (resourceVersion, managedFields' times).
fn without_bookkeeping(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    for entry in o["metadata"]["managedFields"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(e) = entry.as_object_mut() {
            e.remove("time");
        }
    }
    o
}

pub(super) fn create(
    shared: &Arc<Shared>,
    call: &Call,
    kind: Kind,
    ns: &str,
    mut obj: Value,
) -> Response<Body> {
    let mut st = shared.lock();
    let name = match obj["metadata"]["name"].as_str() {
        Some(n) => n.to_owned(),
        None => match obj["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let n = format!(
                    "{prefix}{}",
                    crate::testing::controller::safe_chars(st.rv ^ 0xc0ffee, 5)
                );
                obj["metadata"]["name"] = n.clone().into();
                n
            }
            None => {
                return invalid(
                    kind,
                    "",
                    &[(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                )
                .into_response();
            }
        },
    };
    if st.get(kind, ns, &name).is_some() {
        return json_response(
            StatusCode::CONFLICT,
            &status_body(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", kind.group_resource()),
                Some(
                    json!({"name": name, "group": kind.resource().group, "kind": kind.resource().plural}),
                ),
            ),
        );
    }
    match store(
        shared,
        &mut st,
        call,
        kind,
        ns,
        &name,
        Write::Create,
        obj,
        None,
    ) {
        Ok((code, stored)) => json_response(code, &stored),
        Err(res) => res.into_response(),
    }
}

/// PUT: replaces the object; a resourceVersion in the body must match the stored one.
pub(super) fn replace(
    shared: &Arc<Shared>,
    call: &Call,
    kind: Kind,
    ns: &str,
    name: &str,
    obj: Value,
) -> Response<Body> {
    let mut st = shared.lock();
    let Some(current) = st.get(kind, ns, name).cloned() else {
        return not_found(kind, name).into_response();
    };
    match store(
        shared,
        &mut st,
        call,
        kind,
        ns,
        name,
        Write::Update(&current),
        obj,
        None,
    ) {
        Ok((code, stored)) => json_response(code, &stored),
        Err(res) => res.into_response(),
    }
}

/// Applies the PATCH body of `call` to `target`, as its content type says.
pub(super) fn apply_patch(call: &Call, target: &mut Value) -> Result<(), Refusal> {
    let bad = |e: String| status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e);
    match call
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
    {
        "application/strategic-merge-patch+json" => {
            patch::strategic_patch(target, &call.json()?).map_err(bad)
        }
        "application/merge-patch+json" => {
            patch::merge_patch(target, &call.json()?);
            Ok(())
        }
        "application/json-patch+json" => patch::json_patch(target, &call.json()?).map_err(bad),
        other => Err(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ),
        )),
    }
}

fn is_apply(call: &Call) -> bool {
    call.content_type
        .starts_with("application/apply-patch+yaml")
}

pub(super) fn patch_object(
    shared: &Arc<Shared>,
    call: &Call,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Response<Body> {
    if is_apply(call) {
        return server_side_apply(shared, call, kind, ns, name);
    }
    let mut st = shared.lock();
    let Some(current) = st.get(kind, ns, name).cloned() else {
        return not_found(kind, name).into_response();
    };
    let mut next = current.clone();
    if let Err(res) = apply_patch(call, &mut next) {
        return res.into_response();
    }
    match store(
        shared,
        &mut st,
        call,
        kind,
        ns,
        name,
        Write::Update(&current),
        next,
        None,
    ) {
        Ok((code, stored)) => json_response(code, &stored),
        Err(res) => res.into_response(),
    }
}

/// Server-side apply: creates the object or merges the applied configuration into
/// it, tracking which field manager owns which field; a field another manager set
/// to another value is a 409 conflict unless `force`, and fields this manager
/// applied before and no longer applies are removed.
fn server_side_apply(
    shared: &Arc<Shared>,
    call: &Call,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Response<Body> {
    let Some(manager) = call.param("fieldManager").filter(|m| !m.is_empty()) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "PATCH, application/apply-patch+yaml: fieldManager: Required value: is required for apply patch",
        ).into_response();
    };
    let config = match call.json_or_yaml() {
        Ok(c) => c,
        Err(res) => return res.into_response(),
    };
    if let Err(e) = schema::check_schema(kind, &with_required(kind, &config)) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {e}",
                kind.name(),
                kind.resource().version,
                kind.name()
            ),
        )
        .into_response();
    }
    let mut st = shared.lock();
    let live = st.get(kind, ns, name).cloned();
    let mut managers = live.as_ref().map(Managers::of).unwrap_or_default();
    let merged = match managers.apply(
        kind,
        manager,
        live.as_ref().unwrap_or(&Value::Null),
        &config,
        call.flag("force"),
    ) {
        Ok(m) => m,
        Err(conflicts) => {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| {
                    json!({"reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                    "field": c.field()})
                })
                .collect();
            let listed: Vec<String> = conflicts
                .iter()
                .map(|c| {
                    format!(
                        "conflict with \"{}\" using {}: {}",
                        c.manager,
                        c.api_version,
                        c.field()
                    )
                })
                .collect();
            let n = conflicts.len();
            return json_response(
                StatusCode::CONFLICT,
                &status_body(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!(
                        "Apply failed with {n} conflict{}: {}",
                        if n == 1 { "" } else { "s" },
                        listed.join("\n")
                    ),
                    Some(
                        json!({"name": name, "group": kind.resource().group, "kind": kind.resource().plural, "causes": causes}),
                    ),
                ),
            );
        }
    };
    let write = match &live {
        Some(l) => Write::Update(l),
        None => Write::Create,
    };
    match store(
        shared,
        &mut st,
        call,
        kind,
        ns,
        name,
        write,
        merged,
        Some(managers),
    ) {
        Ok((code, stored)) => json_response(code, &stored),
        Err(res) => res.into_response(),
    }
}

/// An applied configuration with placeholders for what its type requires, so its
/// schema can be checked on its own (an apply may leave out required fields that
/// the live object has).
fn with_required(kind: Kind, config: &Value) -> Value {
    let mut c = config.clone();
    if matches!(kind, Kind::Deployment | Kind::ReplicaSet) && c.get("spec").is_some() {
        ensure_object(&mut c["spec"])
            .entry("selector")
            .or_insert(json!({}));
        if kind == Kind::Deployment {
            ensure_object(&mut c["spec"])
                .entry("template")
                .or_insert(json!({}));
        }
    }
    if kind == Kind::Job && c.get("spec").is_some() {
        ensure_object(&mut c["spec"])
            .entry("template")
            .or_insert(json!({}));
    }
    c
}

pub(super) fn delete(
    shared: &Arc<Shared>,
    call: &Call,
    kind: Kind,
    ns: &str,
    name: &str,
) -> Response<Body> {
    let options: Value = serde_json::from_slice(&call.body).unwrap_or(Value::Null);
    let mut st = shared.lock();
    let Some(current) = st.get(kind, ns, name).cloned() else {
        return not_found(kind, name).into_response();
    };
    for (pre, field) in [
        ("resourceVersion", "/metadata/resourceVersion"),
        ("uid", "/metadata/uid"),
    ] {
        if let Some(want) = options["preconditions"][pre].as_str()
            && want != str_at(&current, field)
        {
            return conflict(kind, name).into_response();
        }
    }
    if call.dry_run() {
        return json_response(StatusCode::OK, &current);
    }
    let grace = options["gracePeriodSeconds"].as_i64().or_else(|| {
        call.param("gracePeriodSeconds")
            .and_then(|g| g.parse().ok())
    });
    if kind == Kind::Pod && grace != Some(0) {
        kubelet::terminate(shared, &mut st, ns, name);
        let pod = st.get(kind, ns, name).cloned().unwrap_or(current);
        return json_response(StatusCode::OK, &pod);
    }
    let policy = match Propagation::of(kind, &options, call.param("propagationPolicy")) {
        Ok(p) => p,
        Err(message) => {
            return invalid(kind, name, &[("propagationPolicy".into(), message)]).into_response();
        }
    };
    let asked = options["propagationPolicy"].is_string()
        || options["orphanDependents"].is_boolean()
        || call.param("propagationPolicy").is_some();
    let mut res = match gc::delete(shared, &mut st, kind, ns, name, policy) {
        // Waiting for its dependents: the object as it is now.
        Some(object) => json_response(StatusCode::OK, &object),
        None => {
            st.pods.remove(str_at(&current, "/metadata/uid"));
            json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": kind.resource().group, "kind": kind.resource().plural,
                        "uid": current["metadata"]["uid"]}}),
            )
        }
    };
    if kind == Kind::Job && !asked {
        res.headers_mut().insert(
            hyper::header::WARNING,
            hyper::header::HeaderValue::from_static(ORPHAN_WARNING),
        );
    }
    res
}

/// What the API server warns a client that deletes a Job without a propagation
/// policy.
const ORPHAN_WARNING: &str = "299 - \"child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove them or set propagationPolicy=Orphan to suppress this warning\"";
