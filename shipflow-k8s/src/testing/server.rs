//! The HTTP side of the simulated API server: routing, GET/LIST/WATCH/POST/PATCH.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::controller;
use super::store::{Change, Kind, Shared, State, ensure_object, fields_match, labels_match, merge};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

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

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *res.status_mut() = code;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let watch = query(&req, "watch").is_some_and(|w| w == "true" || w == "1");
    let verb = if watch {
        "WATCH".to_owned()
    } else {
        req.method().to_string()
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
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "Unknown",
        };
        return Ok(status(code, reason, format!("injected {code} for {key}")));
    }

    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, ns, plural, name) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, plural, rest @ ..] if rest.len() <= 1 => (
            "v1".to_owned(),
            ns.to_string(),
            *plural,
            rest.first().map(|s| s.to_string()),
        ),
        ["apis", group, "v1", "namespaces", ns, plural, rest @ ..] if rest.len() <= 1 => (
            format!("{group}/v1"),
            ns.to_string(),
            *plural,
            rest.first().map(|s| s.to_string()),
        ),
        _ => {
            return Ok(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the requested resource ({path})"),
            ));
        }
    };
    let Some(kind) = Kind::from_plural(plural).filter(|k| k.api_version() == group_version) else {
        return Ok(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        ));
    };
    let method = req.method().clone();
    let dry_run = query(&req, "dryRun").is_some_and(|d| d == "All");
    Ok(match (method, name) {
        (Method::GET, Some(name)) => get(&shared, kind, &ns, &name),
        (Method::GET, None) if watch => watch_response(&shared, &req, kind, &ns),
        (Method::GET, None) => list(&shared, &req, kind, &ns),
        (Method::POST, None) => match read_json(req).await {
            Ok(obj) => create(&shared, kind, &ns, obj),
            Err(res) => res,
        },
        (Method::PUT, Some(name)) => match read_json(req).await {
            Ok(obj) => replace(&shared, kind, &ns, &name, obj),
            Err(res) => res,
        },
        (Method::DELETE, Some(name)) => match read_body(req).await {
            Ok(body) => {
                let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                delete(&shared, kind, &ns, &name, &options)
            }
            Err(res) => res,
        },
        (Method::PATCH, Some(name)) => {
            let content = req
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let how = match content.as_str() {
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/merge-patch+json" => PatchKind::Merge,
                "application/apply-patch+yaml" => PatchKind::Apply,
                other => {
                    return Ok(status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("the simulated server does not support patch type {other:?}"),
                    ));
                }
            };
            match read_json(req).await {
                Ok(p) if how == PatchKind::Apply => apply(&shared, kind, &ns, &name, p, dry_run),
                Ok(p) => patch(&shared, kind, &ns, &name, &p, how == PatchKind::Strategic),
                Err(res) => res,
            }
        }
        (m, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{m} is not supported on {path}"),
        ),
    })
}

/// The PATCH content types the simulated server understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchKind {
    Strategic,
    Merge,
    Apply,
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

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    Ok(req
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("cannot read body: {e}"),
            )
        })?
        .to_bytes())
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let body = read_body(req).await?;
    serde_json::from_slice(&body).map_err(|e| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("invalid JSON: {e}"),
        )
    })
}

fn not_found(kind: Kind, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", kind.resource()),
    )
}

fn get(shared: &Shared, kind: Kind, ns: &str, name: &str) -> Response<Body> {
    match shared
        .lock()
        .objects
        .get(&(kind, ns.to_owned(), name.to_owned()))
    {
        Some(obj) => json_response(StatusCode::OK, obj),
        None => not_found(kind, name),
    }
}

fn matches(req: &Request<Incoming>) -> impl Fn(&Value) -> bool + Send + 'static {
    let labels = query(req, "labelSelector").unwrap_or_default();
    let fields = query(req, "fieldSelector").unwrap_or_default();
    move |obj: &Value| {
        labels_match(&obj["metadata"]["labels"], &labels) && fields_match(obj, &fields)
    }
}

fn list(shared: &Shared, req: &Request<Incoming>, kind: Kind, ns: &str) -> Response<Body> {
    let filter = matches(req);
    let st = shared.lock();
    let items: Vec<Value> = st
        .objects
        .iter()
        .filter(|((k, n, _), v)| *k == kind && n == ns && filter(v))
        .map(|(_, v)| v.clone())
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"apiVersion": kind.api_version(), "kind": format!("{}List", kind.name()),
            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_response(
    shared: &Arc<Shared>,
    req: &Request<Incoming>,
    kind: Kind,
    ns: &str,
) -> Response<Body> {
    let filter = matches(req);
    let from: u64 = query(req, "resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = query(req, "timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64);
    let ns = ns.to_owned();
    let wanted = move |c: &Change| c.kind == kind && c.namespace == ns && filter(&c.object);
    let (tx, rx) = mpsc::channel(1024);
    let (mut changes, backlog, mut last, limit) = {
        let st = shared.lock();
        let changes = shared.changes.subscribe();
        let backlog: Vec<Bytes> = if from == 0 {
            st.objects
                .iter()
                .filter(|((k, n, _), v)| {
                    wanted(&Change {
                        rv: 0,
                        kind: *k,
                        namespace: n.clone(),
                        kind_of_event: "ADDED",
                        object: (*v).clone(),
                    })
                })
                .map(|(_, v)| event_line("ADDED", v))
                .collect()
        } else {
            st.log
                .iter()
                .filter(|c| c.rv > from && wanted(c))
                .map(|c| event_line(c.kind_of_event, &c.object))
                .collect()
        };
        (changes, backlog, st.rv, st.watch_limit)
    };
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let asked = Duration::from_secs(timeout);
        let deadline = tokio::time::sleep(limit.map_or(asked, |l| l.min(asked)));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        if wanted(&c) && tx.send(event_line(c.kind_of_event, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "message": "too old resource version", "reason": "Expired", "code": 410});
                        let _ = tx.send(event_line("ERROR", &gone)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
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

fn create(shared: &Arc<Shared>, kind: Kind, ns: &str, mut obj: Value) -> Response<Body> {
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value".into(),
        );
    };
    let mut st = shared.lock();
    if st
        .objects
        .contains_key(&(kind, ns.to_owned(), name.clone()))
    {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.resource()),
        );
    }
    ensure_object(&mut obj["metadata"]).insert("generation".into(), 1.into());
    let stored = shared.put(&mut st, kind, ns, obj);
    drop(st);
    if kind == Kind::Deployment {
        tokio::spawn(controller::rollout(shared.clone(), ns.to_owned(), name, 1));
    }
    json_response(StatusCode::CREATED, &stored)
}

fn conflict(kind: Kind, name: &str) -> Response<Body> {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.resource()
        ),
    )
}

fn current(st: &State, kind: Kind, ns: &str, name: &str) -> Option<Value> {
    st.objects
        .get(&(kind, ns.to_owned(), name.to_owned()))
        .cloned()
}

fn patch(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: &str,
    name: &str,
    p: &Value,
    strategic: bool,
) -> Response<Body> {
    let st = shared.lock();
    let Some(current) = current(&st, kind, ns, name) else {
        return not_found(kind, name);
    };
    if let Some(want) = p["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(want)
    {
        return conflict(kind, name);
    }
    let mut next = current.clone();
    merge(&mut next, p, strategic);
    update(shared, st, kind, ns, name, &current, next)
}

/// Server-side apply, simplified: creates the object, or merges the applied fields
/// into it (containers by name). Field ownership and conflicts between managers are
/// not modelled; applying the same manifest again changes nothing. A dry run
/// answers with the merged object and stores nothing.
fn apply(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: &str,
    name: &str,
    p: Value,
    dry_run: bool,
) -> Response<Body> {
    let st = shared.lock();
    let now = current(&st, kind, ns, name);
    if dry_run {
        let mut next = now.unwrap_or_default();
        merge(&mut next, &p, true);
        return json_response(StatusCode::OK, &next);
    }
    match now {
        None => {
            drop(st);
            let mut obj = p;
            ensure_object(&mut obj["metadata"]).insert("name".into(), name.into());
            create(shared, kind, ns, obj)
        }
        Some(current) => {
            let mut next = current.clone();
            merge(&mut next, &p, true);
            update(shared, st, kind, ns, name, &current, next)
        }
    }
}

/// PUT: replaces the object; a resourceVersion in the body must match the stored one.
fn replace(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: &str,
    name: &str,
    mut obj: Value,
) -> Response<Body> {
    let st = shared.lock();
    let Some(current) = current(&st, kind, ns, name) else {
        return not_found(kind, name);
    };
    if let Some(want) = obj["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(want)
    {
        return conflict(kind, name);
    }
    // The main resource does not write status.
    if current.get("status").is_some() {
        obj["status"] = current["status"].clone();
    } else if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    update(shared, st, kind, ns, name, &current, obj)
}

/// DELETE, honouring `preconditions.resourceVersion` in the options body.
fn delete(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: &str,
    name: &str,
    options: &Value,
) -> Response<Body> {
    let mut st = shared.lock();
    let Some(current) = current(&st, kind, ns, name) else {
        return not_found(kind, name);
    };
    if let Some(want) = options["preconditions"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(want)
    {
        return conflict(kind, name);
    }
    shared.delete(&mut st, kind, ns, name);
    json_response(StatusCode::OK, &current)
}

/// Stores `next` in place of `current`: identity fields stay the server's, the
/// generation grows when the spec changes, a changed pod template starts a rollout,
/// and nothing at all happens (not even a new resourceVersion) when nothing changed.
fn update(
    shared: &Arc<Shared>,
    mut st: std::sync::MutexGuard<'_, State>,
    kind: Kind,
    ns: &str,
    name: &str,
    current: &Value,
    mut next: Value,
) -> Response<Body> {
    for key in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "generation",
        "resourceVersion",
    ] {
        next["metadata"][key] = current["metadata"][key].clone();
    }
    for key in ["apiVersion", "kind"] {
        next[key] = current[key].clone();
    }
    if next == *current {
        return json_response(StatusCode::OK, current);
    }
    let spec_changed = next["spec"] != current["spec"];
    if spec_changed {
        let generation = current["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
        next["metadata"]["generation"] = generation.into();
    }
    let template_changed = next["spec"]["template"] != current["spec"]["template"];
    let generation = next["metadata"]["generation"].as_u64().unwrap_or(1);
    let stored = shared.put(&mut st, kind, ns, next);
    drop(st);
    if kind == Kind::Deployment && template_changed {
        tokio::spawn(controller::rollout(
            shared.clone(),
            ns.to_owned(),
            name.to_owned(),
            generation,
        ));
    }
    json_response(StatusCode::OK, &stored)
}
