//! The HTTP side of the simulated API server: routing, discovery, and the verbs GET,
//! LIST, WATCH, POST, PUT, PATCH and DELETE with the API server's semantics
//! (resourceVersion preconditions, generations, status and scale subresources,
//! field managers, dry runs, Tables, bounded watch history with 410 Gone, bookmarks).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::resources::Kind;
use super::selector::{FieldSelector, LabelSelector};
use super::store::Shared;
use super::{discovery, schema, table};

mod subresource;
mod watch;
mod write;

use subresource::subresource;
use watch::watch_response;
use write::{create, delete, patch_object, replace};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The largest request body the server reads (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// A streaming body fed by a channel: one watch event per chunk.
pub(super) struct ChannelBody(mpsc::Receiver<Bytes>);

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

pub(super) fn respond(code: StatusCode, content_type: &str, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(body).boxed());
    *res.status_mut() = code;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        res.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    res
}

pub(super) fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    respond(code, "application/json", Bytes::from(value.to_string()))
}

pub(super) fn status_body(
    code: StatusCode,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

pub(super) fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Refusal {
    Refusal(status_body(code, reason, &message.into(), None))
}

/// A request the server refuses, with the Status it answers.
pub(crate) struct Refusal(Value);

impl Refusal {
    pub(super) fn into_response(self) -> Response<Body> {
        let code = self.0["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.0)
    }
}

pub(super) fn not_found(kind: Kind, name: &str) -> Refusal {
    Refusal(status_body(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", kind.group_resource()),
        Some(json!({"name": name, "group": kind.resource().group, "kind": kind.resource().plural})),
    ))
}

pub(super) fn conflict(kind: Kind, name: &str) -> Refusal {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.group_resource()
        ),
    )
}

pub(super) fn invalid(kind: Kind, name: &str, errors: &[schema::Invalid]) -> Refusal {
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
pub(super) struct Call {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
}

impl Call {
    pub(super) fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub(super) fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("true" | "1"))
    }

    pub(super) fn dry_run(&self) -> bool {
        self.param("dryRun") == Some("All")
    }

    /// The field manager: the `fieldManager` parameter, else the user agent's
    /// program name, as the API server derives it.
    pub(super) fn manager(&self) -> String {
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

    pub(super) fn json(&self) -> Result<Value, Refusal> {
        if self.content_type.contains("protobuf") {
            return Err(status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "the simulated API server reads JSON and YAML bodies, not protobuf",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("invalid JSON: {e}"),
            )
        })
    }

    /// A JSON or YAML body (apply patches are YAML, of which JSON is a part).
    pub(super) fn json_or_yaml(&self) -> Result<Value, Refusal> {
        serde_json::from_slice(&self.body).or_else(|_| {
            serde_saphyr::from_slice::<Value>(&self.body).map_err(|e| {
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

pub(super) fn path_not_found(path: &str) -> Refusal {
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

pub(super) type Filter = Box<dyn Fn(&Value) -> bool + Send + Sync>;

pub(super) fn filter(call: &Call) -> Result<Filter, Refusal> {
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
