//! The HTTP side of the simulated API server: routing, discovery, and the verbs GET,
//! LIST, WATCH, POST, PUT, PATCH and DELETE with the API server's semantics
//! (resourceVersion preconditions, generations, status and scale subresources,
//! field managers, dry runs, Tables, bounded watch history with 410 Gone, bookmarks).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::controller::kubelet;
use super::fields::Managers;
use super::resources::Kind;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Change, Shared, State, ensure_object, str_at};
use super::{discovery, patch, schema, table};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The largest request body the server reads (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// A streaming body fed by a channel: one watch event per chunk.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn respond(code: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(body).boxed());
    *res.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        res.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    res
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    respond(code, "application/json", Bytes::from(value.to_string()))
}

fn status_body(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Refusal {
    Refusal(status_body(code, reason, &message.into(), None))
}

/// A request the server refuses, with the Status it answers.
pub(crate) struct Refusal(Value);

impl Refusal {
    fn into_response(self) -> Response<Body> {
        let code = self.0["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.0)
    }
}

fn not_found(kind: Kind, name: &str) -> Refusal {
    Refusal(status_body(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.group_resource()),
        Some(json!({"name": name, "group": kind.resource().group, "kind": kind.resource().plural})),
    ))
}

fn conflict(kind: Kind, name: &str) -> Refusal {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.group_resource()
        ),
    )
}

fn invalid(kind: Kind, name: &str, errors: &[schema::Invalid]) -> Refusal {
    let causes: Vec<Value> = errors
        .iter()
        .map(|(field, message)| json!({"reason": "FieldValueInvalid", "message": message, "field": field}))
        .collect();
    let text = errors
        .iter()
        .map(|(f, m)| format!("{f}: {m}"))
        .collect::<Vec<_>>()
        .join(", ");
    Refusal(status_body(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        &format!(
            "{}.{} \"{name}\" is invalid: {text}",
            kind.name(),
            kind.resource().group
        )
        .replace(". \"", " \""),
        Some(
            json!({"name": name, "group": kind.resource().group, "kind": kind.name(), "causes": causes}),
        ),
    ))
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request, read into what the handlers need.
struct Call {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
}

impl Call {
    fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    /// The field manager: the `fieldManager` parameter, else the user agent's
    /// program name, as the API server derives it.
    fn manager(&self) -> String {
        self.param("fieldManager")
            .map(str::to_owned)
            .unwrap_or_else(|| {
                let ua = self.user_agent.split('/').next().unwrap_or_default();
                if ua.is_empty() {
                    "unknown".into()
                } else {
                    ua.to_owned()
                }
            })
    }

    fn json(&self) -> Result<Value, Refusal> {
        serde_json::from_slice(&self.body).map_err(|e| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid JSON: {e}"),
            )
        })
    }

    /// A JSON or YAML body (apply patches are YAML, of which JSON is a part).
    fn json_or_yaml(&self) -> Result<Value, Refusal> {
        serde_json::from_slice(&self.body).or_else(|_| {
            serde_yaml::from_slice(&self.body).map_err(|e| {
                status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("invalid YAML: {e}"),
                )
            })
        })
    }
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    server: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let query: HashMap<String, String> = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect();
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = parts.uri.path().to_owned();
    let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = if watch {
        "WATCH".to_owned()
    } else {
        parts.method.to_string()
    };
    let key = format!("{verb} {path}");
    let fault = {
        let mut st = shared.lock();
        *st.requests.entry(key.clone()).or_default() += 1;
        let at = st.faults.iter().position(|(k, _)| *k == key);
        at.map(|i| st.faults.remove(i).1)
    };
    if let Some(code) = fault {
        if code == 0 {
            return Ok(broken_response());
        }
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let reason = match code.as_u16() {
            409 => "Conflict",
            410 => "Expired",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "Unknown",
        };
        return Ok(status(code, reason, format!("injected {code} for {key}")).into_response());
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("cannot read the request body: {e}"),
            )
            .into_response());
        }
    };
    let call = Call {
        method: parts.method.clone(),
        path,
        query,
        accept: header(hyper::header::ACCEPT),
        content_type: header(hyper::header::CONTENT_TYPE),
        user_agent: header(hyper::header::USER_AGENT),
        body,
    };
    Ok(route(&shared, &server, &call, watch))
}

fn route(shared: &Arc<Shared>, server: &str, call: &Call, watch: bool) -> Response<Body> {
    let segments: Vec<&str> = call.path.trim_matches('/').split('/').collect();
    let get = call.method == Method::GET;
    match segments.as_slice() {
        ["version"] if get => return json_response(StatusCode::OK, &discovery::version()),
        ["api"] | ["apis"] if get => {
            let legacy = segments[0] == "api";
            if discovery::wants_aggregated(&call.accept) {
                return respond(
                    StatusCode::OK,
                    discovery::AGGREGATED,
                    Bytes::from(discovery::aggregated(legacy).to_string()),
                );
            }
            let doc = if legacy {
                discovery::api_versions(server)
            } else {
                discovery::api_groups()
            };
            return json_response(StatusCode::OK, &doc);
        }
        ["api", version] if get => {
            return discovery::resource_list("", version).map_or_else(
                || path_not_found(&call.path).into_response(),
                |d| json_response(StatusCode::OK, &d),
            );
        }
        ["apis", group, version] if get => {
            return discovery::resource_list(group, version).map_or_else(
                || path_not_found(&call.path).into_response(),
                |d| json_response(StatusCode::OK, &d),
            );
        }
        ["openapi", "v3"] if get => {
            return json_response(StatusCode::OK, &discovery::openapi_index());
        }
        ["openapi", "v3", rest @ ..] if get => {
            return discovery::openapi_document(&rest.join("/")).map_or_else(
                || path_not_found(&call.path).into_response(),
                |d| json_response(StatusCode::OK, &d),
            );
        }
        _ => {}
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return path_not_found(&call.path).into_response(),
    };
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (Some(*ns), *plural, Some(*name), Some(*sub)),
        [plural] => (None, *plural, None, None),
        _ => return path_not_found(&call.path).into_response(),
    };
    let Some(kind) = Kind::from_path(group, version, plural) else {
        return path_not_found(&call.path).into_response();
    };
    match (&call.method, ns, name, sub) {
        (&Method::GET, ns, None, None) if watch => watch_response(shared, call, kind, ns),
        (&Method::GET, ns, None, None) => list(shared, call, kind, ns),
        (m, Some(ns), Some(name), Some(sub)) => subresource(shared, call, m, kind, ns, name, sub),
        (&Method::GET, Some(ns), Some(name), None) => {
            let st = shared.lock();
            match st.get(kind, ns, name) {
                Some(o) if table::wanted(&call.accept) => json_response(
                    StatusCode::OK,
                    &table::table(kind, std::slice::from_ref(o), &st.rv.to_string()),
                ),
                Some(o) => json_response(StatusCode::OK, o),
                None => not_found(kind, name).into_response(),
            }
        }
        (&Method::POST, Some(ns), None, None) => match call.json() {
            Ok(obj) => create(shared, call, kind, ns, obj),
            Err(res) => res.into_response(),
        },
        (&Method::PUT, Some(ns), Some(name), None) => match call.json() {
            Ok(obj) => replace(shared, call, kind, ns, name, obj),
            Err(res) => res.into_response(),
        },
        (&Method::PATCH, Some(ns), Some(name), None) => patch_object(shared, call, kind, ns, name),
        (&Method::DELETE, Some(ns), Some(name), None) => delete(shared, call, kind, ns, name),
        (m, _, _, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{m} is not supported on {}", call.path),
        )
        .into_response(),
    }
}

fn path_not_found(path: &str) -> Refusal {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    )
}

/// A response that promises a body it never sends, so the client sees the
/// connection break mid-answer (a transient network error).
fn broken_response() -> Response<Body> {
    let (_, rx) = mpsc::channel(1);
    let mut res = Response::new(ChannelBody(rx).boxed());
    res.headers_mut().insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from_static("1000"),
    );
    res
}

type Filter = Box<dyn Fn(&Value) -> bool + Send + Sync>;

fn filter(call: &Call) -> Result<Filter, Refusal> {
    let bad = |e: String| status(StatusCode::BAD_REQUEST, "BadRequest", e);
    let labels =
        LabelSelector::parse(call.param("labelSelector").unwrap_or_default()).map_err(bad)?;
    let fields =
        FieldSelector::parse(call.param("fieldSelector").unwrap_or_default()).map_err(bad)?;
    Ok(Box::new(move |o: &Value| {
        labels.matches(&o["metadata"]["labels"]) && fields.matches(o)
    }))
}

fn list(shared: &Shared, call: &Call, kind: Kind, ns: Option<&str>) -> Response<Body> {
    let keep = match filter(call) {
        Ok(f) => f,
        Err(res) => return res.into_response(),
    };
    let st = shared.lock();
    let items: Vec<Value> = match ns {
        Some(ns) => st.list(kind, ns),
        None => st.list_all(kind),
    }
    .into_iter()
    .filter(|o| keep(o))
    .collect();
    let rv = st.rv.to_string();
    if table::wanted(&call.accept) {
        return json_response(StatusCode::OK, &table::table(kind, &items, &rv));
    }
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.name()),
            "metadata": {"resourceVersion": rv}, "items": items}),
    )
}

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_response(
    shared: &Arc<Shared>,
    call: &Call,
    kind: Kind,
    ns: Option<&str>,
) -> Response<Body> {
    let keep = match filter(call) {
        Ok(f) => f,
        Err(res) => return res.into_response(),
    };
    let from = call.param("resourceVersion").unwrap_or_default();
    let timeout = call
        .param("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800u64);
    let bookmarks = call.flag("allowWatchBookmarks");
    let ns = ns.map(str::to_owned);
    let wanted = move |c: &Change| {
        c.kind == kind && ns.as_ref().is_none_or(|n| *n == c.namespace) && keep(&c.object)
    };
    let (tx, rx) = mpsc::channel(1024);
    let (mut changes, backlog, mut last, limit, bookmark_every) = {
        let st = shared.lock();
        let changes = shared.changes.subscribe();
        let backlog: Vec<Bytes> = match from {
            "" | "0" => st
                .objects
                .iter()
                .filter(|((k, n, _), v)| {
                    wanted(&Change {
                        rv: 0,
                        kind: *k,
                        namespace: n.clone(),
                        event: "ADDED",
                        object: (*v).clone(),
                        tick: 0,
                    })
                })
                .map(|(_, v)| event_line("ADDED", v))
                .collect(),
            rv => match rv.parse::<u64>() {
                Ok(rv) if rv >= st.history_floor() => st
                    .log
                    .iter()
                    .filter(|c| c.rv > rv && wanted(c))
                    .map(|c| event_line(c.event, &c.object))
                    .collect(),
                Ok(rv) => {
                    let gone = status_body(
                        StatusCode::GONE,
                        "Expired",
                        &format!("too old resource version: {rv} ({})", st.history_floor()),
                        None,
                    );
                    vec![event_line("ERROR", &gone)]
                }
                Err(_) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("invalid resourceVersion {rv:?}"),
                    )
                    .into_response();
                }
            },
        };
        let expired = backlog.len() == 1 && backlog[0].starts_with(b"{\"type\":\"ERROR\"");
        let last = if expired { u64::MAX } else { st.rv };
        (
            changes,
            backlog,
            last,
            st.watch_limit,
            shared.step * u32::try_from(st.bookmark_every).unwrap_or(60),
        )
    };
    let api_version = kind.api_version();
    let shared = shared.clone();
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if last == u64::MAX {
            return; // 410: the client must list again.
        }
        let asked = Duration::from_secs(timeout);
        let deadline = tokio::time::sleep(limit.map_or(asked, |l| l.min(asked)));
        tokio::pin!(deadline);
        let mut bookmark =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        let mut marked = last;
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        if wanted(&c) && tx.send(event_line(c.event, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = status_body(StatusCode::GONE, "Expired", "too old resource version", None);
                        let _ = tx.send(event_line("ERROR", &gone)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = bookmark.tick(), if bookmarks => {
                    // Everything up to the newest change has been seen: say so.
                    let newest = shared.lock().rv;
                    if newest == last && last > marked {
                        marked = last;
                        let mark = json!({"kind": kind.name(), "apiVersion": api_version,
                            "metadata": {"resourceVersion": last.to_string()}});
                        if tx.send(event_line("BOOKMARK", &mark)).await.is_err() {
                            return;
                        }
                    }
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            }
        }
    });
    let mut res = Response::new(ChannelBody(rx).boxed());
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

/// Kinds whose status only their `status` subresource (or a controller) writes.
fn has_status(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Deployment | Kind::ReplicaSet | Kind::Pod | Kind::Service
    )
}

/// How a write came in.
enum Write<'a> {
    Create,
    Update(&'a Value),
}

/// Stores `next` after what the API server does on every write: identity and
/// status kept, the resourceVersion precondition checked, field managers tracked
/// (`managers`: already computed by server-side apply), defaults, generation,
/// schema and validation; a write that changes nothing stores nothing.
#[allow(clippy::too_many_arguments)]
fn store(
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
    if matches!(kind, Kind::Deployment | Kind::ReplicaSet) {
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

fn create(
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
                    super::controller::safe_chars(st.rv ^ 0xc0ffee, 5)
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
fn replace(
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
fn apply_patch(call: &Call, target: &mut Value) -> Result<(), Refusal> {
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

fn patch_object(
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
    c
}

fn delete(shared: &Arc<Shared>, call: &Call, kind: Kind, ns: &str, name: &str) -> Response<Body> {
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
    shared.delete(&mut st, kind, ns, name);
    st.pods.remove(str_at(&current, "/metadata/uid"));
    json_response(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": kind.resource().group, "kind": kind.resource().plural,
                "uid": current["metadata"]["uid"]}}),
    )
}

fn subresource(
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
    let stamp = call.flag("timestamps").then(super::store::now_micro);
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
