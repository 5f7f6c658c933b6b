//! [`NotificationServer`]: the HTTP endpoint a registry's `notifications.endpoints`
//! posts its events to; a push wakes the loop for that repository.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use shipflow_core::CancellationToken;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::envelope::tag_events;
use super::error::AutomationError;
use super::trigger::Trigger;

/// The largest body read by default: 1 MiB (a registry's batches are a few KiB).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// How long a client has to send its headers, then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;

/// The endpoint CNCF Distribution (`docker-registry`), Harbor or Zot post their
/// push notifications to. Configure the registry with, for example:
///
/// ```yaml
/// notifications:
///   endpoints:
///     - name: shipflow
///       url: http://127.0.0.1:8085/events
///       headers:
///         Authorization: [Bearer <token>]
///       timeout: 2s
///       threshold: 3
///       backoff: 1s
///       ignore:
///         actions: [pull]
/// ```
///
/// A `POST` to the path with a valid envelope answers 200 and, for each manifest
/// pushed by tag (or deleted), wakes the loop for that repository. A body over the
/// size cap answers 413, one that is not an envelope 400, a missing or wrong token
/// or header 401, another path 404 and another method 405; none of them wakes
/// anything. Bodies are read with a cap and a timeout; the token never appears in
/// logs or in `Debug`.
pub struct NotificationServer {
    listener: TcpListener,
    config: Config,
}

#[derive(Clone)]
struct Config {
    path: String,
    token: Option<String>,
    header: Option<(HeaderName, HeaderValue)>,
    max_body: usize,
}

impl fmt::Debug for NotificationServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationServer")
            .field("addr", &self.listener.local_addr().ok())
            .field("path", &self.config.path)
            .field("token", &self.config.token.as_ref().map(|_| "***"))
            .field(
                "header",
                &self.config.header.as_ref().map(|(name, _)| (name, "***")),
            )
            .field("max_body", &self.config.max_body)
            .finish()
    }
}

impl NotificationServer {
    /// Listens on `addr` (port 0 picks a free one), for `POST /events`.
    pub async fn bind(addr: SocketAddr) -> Result<Self, AutomationError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AutomationError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        Ok(Self {
            listener,
            config: Config {
                path: "/events".to_owned(),
                token: None,
                header: None,
                max_body: DEFAULT_MAX_BODY,
            },
        })
    }

    /// Serves at `path` instead of `/events`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.config.path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        self
    }

    /// Requires `Authorization: Bearer <token>` (the registry sends it from its
    /// endpoint's `headers`).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.config.token = Some(token.into());
        self
    }

    /// Requires the header `name` with exactly `value`.
    pub fn require_header(mut self, name: &str, value: &str) -> Result<Self, AutomationError> {
        let bad = |what: &str| AutomationError::Config {
            message: format!("the required notification header: {what}"),
        };
        let name = HeaderName::try_from(name).map_err(|_| bad("not a header name"))?;
        let value = HeaderValue::try_from(value).map_err(|_| bad("not a header value"))?;
        self.config.header = Some((name, value));
        Ok(self)
    }

    /// Reads bodies of at most `bytes`; default [`DEFAULT_MAX_BODY`].
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes.max(1);
        self
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `cancel` fires, waking `trigger` for each push notified.
    pub async fn serve(self, trigger: Trigger, cancel: CancellationToken) {
        let config = Arc::new(self.config);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a notification connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (config, trigger, cancel) = (config.clone(), trigger.clone(), cancel.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let (config, trigger) = (config.clone(), trigger.clone());
                    async move { Ok::<_, Infallible>(handle(req, &config, &trigger, peer).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .keep_alive(true);
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    done = connection => if let Err(e) = done {
                        tracing::debug!(%peer, error = %e, "notification connection ended");
                    },
                    () = cancel.cancelled() => {}
                }
            });
        }
    }
}

fn reply(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *response.status_mut() = status;
    response
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, config: &Config) -> bool {
    if let Some(token) = &config.token {
        let expected = format!("Bearer {token}");
        let given = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
        if !given.is_some_and(|g| same(g, expected.as_bytes())) {
            return false;
        }
    }
    if let Some((name, value)) = &config.header {
        let given = req.headers().get(name).map(HeaderValue::as_bytes);
        if !given.is_some_and(|g| same(g, value.as_bytes())) {
            return false;
        }
    }
    true
}

async fn handle(
    req: Request<Incoming>,
    config: &Config,
    trigger: &Trigger,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.uri().path() != config.path {
        return reply(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != Method::POST {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "POST only");
        response
            .headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if !authorized(&req, config) {
        tracing::warn!(%peer, "registry notification refused: missing or wrong credentials");
        return reply(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body as u64) {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    }
    let body = Limited::new(req.into_body(), config.max_body);
    let bytes = match tokio::time::timeout(READ_TIMEOUT, body.collect()).await {
        Err(_) => return reply(StatusCode::REQUEST_TIMEOUT, "body too slow"),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "reading a notification failed");
            return reply(StatusCode::BAD_REQUEST, "unreadable body");
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    match tag_events(&bytes) {
        Err(reason) => {
            tracing::warn!(%peer, %reason, "registry notification refused: not an event envelope");
            reply(
                StatusCode::BAD_REQUEST,
                "not a registry notification envelope",
            )
        }
        Ok(events) => {
            for event in &events {
                tracing::info!(
                    action = %event.action,
                    repository = %event.repository,
                    tag = event.tag.as_deref().unwrap_or(""),
                    digest = event.digest.as_deref().unwrap_or(""),
                    "registry notified a change"
                );
                trigger.pushed_repository(&event.repository);
            }
            reply(StatusCode::OK, "ok")
        }
    }
}
