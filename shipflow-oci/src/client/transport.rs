//! Transport: URLs, one request with auth, retries and cancellation, and the
//! error a step makes of a response it did not expect.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use shipflow_core::{Context, ImageRef};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::{Endpoint, RegistryClient};
use crate::error::{ConnectFailure, OciError, Step};
use crate::progress::BlobProgress;

/// What a request body is made of; rebuilt for every attempt.
#[derive(Debug, Clone)]
pub(super) enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of the file at `path` from `offset`, streamed.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
        progress: BlobProgress,
    },
    /// A stream that can be sent once (a blob copied from another registry):
    /// a second attempt fails, and the caller starts the copy over.
    Once(Arc<Mutex<Option<reqwest::Body>>>),
}

/// One conversation's fixed facts: which reference, what access it needs, and the
/// request counter it adds to.
pub(super) struct Call<'a> {
    pub(super) reference: &'a ImageRef,
    push: bool,
    /// The repository (same registry) a blob mount reads from: it needs pull there too.
    mount_from: Option<&'a str>,
    pub(super) requests: &'a AtomicU32,
    pub(super) ctx: &'a Context,
}

impl<'a> Call<'a> {
    /// A call on `reference`, pulling or (with `push`) pushing, counting its requests
    /// in `requests`.
    pub(super) fn new(
        reference: &'a ImageRef,
        push: bool,
        requests: &'a AtomicU32,
        ctx: &'a Context,
    ) -> Self {
        Call {
            reference,
            push,
            mount_from: None,
            requests,
            ctx,
        }
    }

    pub(super) fn name(&self) -> String {
        self.reference.to_string()
    }

    /// This call, for a blob mount from `from`.
    pub(super) fn mounting(&self, from: &'a str) -> Self {
        Call {
            mount_from: Some(from),
            ..*self
        }
    }

    /// The token scopes the call needs: its repository's, plus pull on the mount
    /// source (Distribution checks both on `POST …/blobs/uploads/?mount=…&from=…`).
    pub(super) fn scopes(&self) -> Vec<String> {
        let actions = if self.push { "pull,push" } else { "pull" };
        let mut scopes = vec![format!(
            "repository:{}:{actions}",
            self.reference.repository()
        )];
        if let Some(from) = self.mount_from {
            scopes.push(format!("repository:{from}:pull"));
        }
        scopes
    }
}

impl RegistryClient {
    /// `https://<host>`, or `http://<host>` once a loopback or insecure registry
    /// was found not to speak TLS.
    pub(super) fn base_url(&self, reference: &ImageRef) -> String {
        let plain = lock(&self.inner.endpoints)
            .get(reference.registry())
            .is_some_and(|e| e.plain_http);
        let scheme = if plain { "http" } else { "https" };
        let host = match reference.registry() {
            "docker.io" => "registry-1.docker.io",
            other => other,
        };
        format!("{scheme}://{host}")
    }

    pub(super) fn url(&self, reference: &ImageRef, path: &str) -> Result<Url, OciError> {
        let raw = format!(
            "{}/v2/{}/{path}",
            self.base_url(reference),
            reference.repository()
        );
        Url::parse(&raw).map_err(|e| OciError::Protocol {
            reference: reference.to_string(),
            step: Step::Ping,
            reason: format!("invalid URL {raw}: {e}"),
        })
    }

    /// Whether the registry may be spoken to over plain HTTP when it does not
    /// speak TLS: loopback registries, and all of them when insecure.
    pub(super) fn may_use_plain_http(&self, reference: &ImageRef) -> bool {
        self.inner.config.insecure || reference.is_loopback()
    }

    /// How this client talks to `registry`, set up at first use.
    pub(super) fn endpoint(&self, registry: &str) -> Result<Endpoint, OciError> {
        if let Some(endpoint) = lock(&self.inner.endpoints).get(registry) {
            return Ok(endpoint.clone());
        }
        let rejected = super::tls::Rejected::default();
        let http = self.inner.config.http_client(registry, &rejected)?;
        if self.inner.config.insecure {
            tracing::warn!(%registry, "TLS certificate verification is off for this registry (insecure)");
        }
        let endpoint = Endpoint {
            http,
            rejected,
            plain_http: false,
        };
        Ok(lock(&self.inner.endpoints)
            .entry(registry.to_owned())
            .or_insert(endpoint)
            .clone())
    }

    /// Speaks plain HTTP to `registry` from now on.
    pub(super) fn use_plain_http(&self, registry: &str) {
        if let Some(endpoint) = lock(&self.inner.endpoints).get_mut(registry) {
            endpoint.plain_http = true;
        }
    }

    /// The [`OciError::Connect`] (or, for a certificate the registry's trust
    /// rejects, [`OciError::Certificate`]) for a transport error. A connection
    /// that failed for no reason its sources name is checked for a host name that
    /// does not resolve, so that the message can say so.
    pub(super) async fn connect_error(
        &self,
        call: &Call<'_>,
        step: Step,
        attempts: u32,
        failure: ConnectFailure,
        source: reqwest::Error,
    ) -> OciError {
        if let Some(problem) = find_rustls_error(&source).and_then(super::tls::certificate_problem)
        {
            let certificate = lock(&self.inner.endpoints)
                .get(call.reference.registry())
                .and_then(|e| lock(&e.rejected).clone())
                .and_then(|der| super::tls::describe(&der));
            return OciError::Certificate {
                reference: call.name(),
                registry: call.reference.registry().to_owned(),
                step,
                problem,
                certificate,
                source: Box::new(source.without_url()),
            };
        }
        connect_error(call, step, attempts, failure, source).await
    }

    /// The registry's own origin (scheme, host and port): the only place its
    /// credentials and tokens are sent, and the only one whose challenges count.
    pub(super) fn origin(&self, reference: &ImageRef) -> Result<Url, OciError> {
        let raw = self.base_url(reference);
        Url::parse(&raw).map_err(|e| OciError::Protocol {
            reference: reference.to_string(),
            step: Step::Ping,
            reason: format!("invalid registry URL {raw}: {e}"),
        })
    }

    /// Checks that `url`, which the registry named (an upload `Location`, a tag
    /// list `Link`), keeps HTTPS when the registry uses it.
    pub(super) fn check_no_downgrade(
        &self,
        call: &Call<'_>,
        step: Step,
        url: &Url,
    ) -> Result<(), OciError> {
        let origin = self.origin(call.reference)?;
        if origin.scheme() == "https" && url.scheme() != "https" {
            return Err(OciError::Protocol {
                reference: call.name(),
                step,
                reason: format!(
                    "the registry sent this client to {}://{}, off HTTPS; refusing to downgrade",
                    url.scheme(),
                    url.host_str().unwrap_or_default()
                ),
            });
        }
        Ok(())
    }

    /// Sends one request with auth, retries and cancellation. Returns any response
    /// that is not a retryable failure; callers map statuses to errors.
    pub(super) async fn send(
        &self,
        call: &Call<'_>,
        step: Step,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Body,
    ) -> Result<reqwest::Response, OciError> {
        let attempts = self.inner.config.max_attempts;
        self.send_with(call, step, method, url, headers, body, attempts)
            .await
    }

    /// [`Self::send`] with at most `max_attempts` attempts (1: no retry, for requests
    /// that must not be repeated blindly, such as a chunk `PATCH`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_with(
        &self,
        call: &Call<'_>,
        step: Step,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Body,
        max_attempts: u32,
    ) -> Result<reqwest::Response, OciError> {
        let config = &self.inner.config;
        let http = self.endpoint(call.reference.registry())?.http;
        let origin = self.origin(call.reference)?;
        self.check_no_downgrade(call, step, &url)?;
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            if call.ctx.cancelled() {
                return Err(OciError::Cancelled {
                    reference: call.name(),
                    step,
                    source: shipflow_core::Cancelled,
                });
            }
            let mut request = http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            request = match &body {
                Body::Empty => request,
                Body::Once(slot) => match lock(slot).take() {
                    Some(stream) => request.body(stream),
                    None => {
                        return Err(OciError::Protocol {
                            reference: call.name(),
                            step,
                            reason:
                                "a streamed body cannot be sent twice (the request was retried)"
                                    .into(),
                        });
                    }
                },
                Body::Bytes(bytes) => request.body(bytes.clone()),
                Body::File {
                    path,
                    offset,
                    len,
                    progress,
                } => {
                    let read_err = |source| OciError::ReadBlob {
                        reference: call.name(),
                        path: path.clone(),
                        source,
                    };
                    let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
                    if *offset > 0 {
                        file.seek(std::io::SeekFrom::Start(*offset))
                            .await
                            .map_err(read_err)?;
                    }
                    request
                        .header(CONTENT_LENGTH, *len)
                        .body(reqwest::Body::wrap_stream(
                            tokio_util::io::ReaderStream::with_capacity(
                                progress.reader(file.take(*len)),
                                256 * 1024,
                            ),
                        ))
                }
            };
            // Credentials go to the registry's own origin only: never to an upload
            // host, a storage backend or a link it names elsewhere.
            let own_origin = same_origin(&url, &origin);
            if own_origin {
                request = self.authorize(call, request).await?;
            }
            tracing::debug!(reference = %call.reference, %step, %method, url = %redacted(&url), attempt, authorized = own_origin, "request");
            call.requests.fetch_add(1, Ordering::Relaxed);
            let sent = tokio::select! {
                sent = request.send() => sent,
                () = call.ctx.cancellation().cancelled() => {
                    return Err(OciError::Cancelled { reference: call.name(), step, source: shipflow_core::Cancelled });
                }
            };
            let delay = match sent {
                Err(source) => {
                    let failure = classify(&source);
                    // A TLS failure (an untrusted certificate above all) is the same
                    // on every attempt: it is reported at once.
                    let retryable =
                        (source.is_connect() || source.is_timeout() || source.is_request())
                            && !matches!(
                                failure,
                                ConnectFailure::Tls | ConnectFailure::ClientCertificate
                            );
                    if attempt >= max_attempts || !retryable {
                        return Err(self
                            .connect_error(call, step, attempt, failure, source)
                            .await);
                    }
                    tracing::debug!(reference = %call.reference, %step, attempt, error = %source, "retrying after transport error");
                    self.backoff(attempt)
                }
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED && !reauthenticated =>
                {
                    reauthenticated = true;
                    // Only the registry's own answers say how it wants auth: a 401
                    // from a redirect target or an upload host teaches nothing.
                    if same_origin(response.url(), &origin)
                        && self.learn_challenge(call.reference, response.headers())
                    {
                        attempt -= 1;
                        continue;
                    }
                    return Ok(response);
                }
                Ok(response)
                    if (response.status() == StatusCode::TOO_MANY_REQUESTS
                        || response.status().is_server_error())
                        && attempt < max_attempts =>
                {
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(config.max_delay));
                    tracing::debug!(reference = %call.reference, %step, attempt, status = %response.status(), "retrying");
                    retry_after.unwrap_or_else(|| self.backoff(attempt))
                }
                Ok(response) => {
                    tracing::debug!(reference = %call.reference, %step, status = %response.status(), "response");
                    return Ok(response);
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = call.ctx.cancellation().cancelled() => {
                    return Err(OciError::Cancelled { reference: call.name(), step, source: shipflow_core::Cancelled });
                }
            }
        }
    }

    /// Exponential backoff with jitter: a delay in [d/2, d), where d starts at the base
    /// delay, doubles each attempt and is capped at the maximum delay.
    pub(super) fn backoff(&self, attempt: u32) -> Duration {
        let config = &self.inner.config;
        let exp = config
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(config.max_delay);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = f64::from(nanos % 1000) / 1000.0;
        exp.mul_f64(0.5 + jitter / 2.0)
    }

    /// The error for a response a step did not expect: `Unauthorized` on 401 (its
    /// message says which user to check), else `Status`; both carry the registry's
    /// own error code and message.
    pub(super) async fn failure(
        &self,
        call: &Call<'_>,
        step: Step,
        response: reqwest::Response,
    ) -> OciError {
        let status = response.status();
        let (code, message) = registry_error(response).await;
        let reference = call.name();
        if status == StatusCode::UNAUTHORIZED {
            OciError::Unauthorized {
                reference,
                step,
                username: self.username(call.reference.registry()),
                code,
                message,
            }
        } else {
            OciError::Status {
                reference,
                step,
                status: status.as_u16(),
                code,
                message,
            }
        }
    }
}

/// What kind of transport failure `error` is, as far as its sources tell (a
/// failed name lookup is told apart by [`connect_error`]).
pub(super) fn classify(error: &reqwest::Error) -> ConnectFailure {
    if error.is_timeout() {
        return ConnectFailure::Timeout;
    }
    match find_rustls_error(error) {
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA,
        )) => return ConnectFailure::ClientCertificate,
        Some(_) => return ConnectFailure::Tls,
        None => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return ConnectFailure::Refused,
                std::io::ErrorKind::TimedOut => return ConnectFailure::Timeout,
                _ => {}
            }
        }
        source = cause.source();
    }
    ConnectFailure::Other
}

/// The rustls error among `error`'s sources. (An `io::Error` wrapping another
/// error hands on that error's source, not the error itself: each is unwrapped.)
fn find_rustls_error(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let mut inner = Some(cause);
        while let Some(candidate) = inner {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            inner = candidate
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|e| e as &(dyn std::error::Error + 'static));
        }
        source = cause.source();
    }
    None
}

/// The [`OciError::Connect`] for a transport error. A connection that failed for
/// no reason its sources name is checked for a host name that does not resolve,
/// so that the message can say so.
async fn connect_error(
    call: &Call<'_>,
    step: Step,
    attempts: u32,
    mut failure: ConnectFailure,
    source: reqwest::Error,
) -> OciError {
    let registry = call.reference.registry().to_owned();
    if failure == ConnectFailure::Other && source.is_connect() {
        let host = source
            .url()
            .and_then(|u| Some((u.host_str()?.to_owned(), u.port_or_known_default()?)));
        if let Some((host, port)) = host
            && tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .is_err()
        {
            failure = ConnectFailure::Dns;
        }
    }
    OciError::Connect {
        reference: call.name(),
        registry,
        step,
        failure,
        attempts,
        source: Box::new(source.without_url()),
    }
}

/// Whether `a` and `b` have the same scheme, host and port.
pub(super) fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `url` without its query, which may carry upload state or tokens of another host.
pub(super) fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    let _ = url.set_password(None);
    url.to_string()
}

/// At most this much of an error body is read: enough for the registry's message.
pub(super) const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// At most this much of a manifest, index, token answer or tag page is read (as
/// containerd limits manifests).
pub(super) const DOCUMENT_LIMIT: usize = 4 * 1024 * 1024;

/// Reads `response`'s body, failing once it passes `limit` bytes: a registry
/// cannot make this client hold more than that.
pub(super) async fn read_limited(
    call: &Call<'_>,
    step: Step,
    what: &'static str,
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, OciError> {
    let too_large = || OciError::TooLarge {
        reference: call.name(),
        step,
        what,
        limit: limit as u64,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = tokio::select! {
            chunk = response.chunk() => chunk,
            () = call.ctx.cancellation().cancelled() => {
                return Err(OciError::Cancelled { reference: call.name(), step, source: shipflow_core::Cancelled });
            }
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(source) => {
                let failure = classify(&source);
                return Err(connect_error(call, step, 1, failure, source).await);
            }
        };
        match chunk {
            Some(chunk) if body.len() + chunk.len() > limit => return Err(too_large()),
            Some(chunk) => body.extend_from_slice(&chunk),
            None => return Ok(body),
        }
    }
}

/// The first bytes of `response`'s body, at most `limit`; the rest is left unread.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    body
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a plain map behind: still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first `{code, message}` of a distribution-spec error body.
pub(super) async fn registry_error(
    response: reqwest::Response,
) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    // An error body is read only so far: a registry sending gigabytes of it
    // cannot make the client hold them.
    let bytes = read_prefix(response, ERROR_BODY_LIMIT).await;
    match serde_json::from_slice::<Body>(&bytes) {
        Ok(body) => body
            .errors
            .into_iter()
            .next()
            .map_or((None, None), |e| (e.code, e.message)),
        Err(_) => (None, None),
    }
}
