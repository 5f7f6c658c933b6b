//! [`RegistryClient`]: a native client of the OCI distribution API that pushes only
//! the blobs a registry lacks.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use shipflow_core::{
    Blob, BoxError, Context, Digest, ImageLocation, ImageRef, LocalImage, PushReport, Registry,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::{Credentials, Scheme, TokenResponse, parse_challenge};
use crate::error::{OciError, Step};
use crate::layout::OciLayout;
use crate::progress::{BlobProgress, Progress};

/// The manifest media types this client asks for.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const DIGEST_HEADER: &str = "docker-content-digest";

/// Builds a [`RegistryClient`].
#[derive(Debug, Clone)]
pub struct RegistryClientBuilder {
    insecure: bool,
    credentials: Option<Credentials>,
    max_concurrent_uploads: usize,
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    timeout: Option<Duration>,
    mount_from: Vec<String>,
}

impl Default for RegistryClientBuilder {
    fn default() -> Self {
        Self {
            insecure: false,
            credentials: None,
            max_concurrent_uploads: 4,
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            timeout: None,
            mount_from: Vec::new(),
        }
    }
}

impl RegistryClientBuilder {
    /// Talks plain HTTP to every registry. Without it, only loopback registries
    /// (`127.0.0.1`, `localhost`, `[::1]`) are spoken to over HTTP; all others use HTTPS.
    pub fn insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// Authenticates with `credentials`: as HTTP basic auth, or to obtain bearer
    /// tokens when the registry asks for them.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// How many blobs are checked and uploaded at once (default 4, at least 1).
    pub fn max_concurrent_uploads(mut self, n: usize) -> Self {
        self.max_concurrent_uploads = n.max(1);
        self
    }

    /// How many times a request is tried on connection errors, 5xx and 429
    /// (default 4, at least 1), and the first backoff delay (default 200 ms,
    /// doubled each attempt, with jitter, capped at 10 s).
    pub fn retries(mut self, max_attempts: u32, base_delay: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.base_delay = base_delay;
        self
    }

    /// A timeout for each HTTP request (default: none).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Repositories of the same registry to mount missing blobs from before
    /// uploading them (cross-repository blob mount).
    pub fn mount_from(mut self, repositories: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.mount_from = repositories.into_iter().map(Into::into).collect();
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<RegistryClient, OciError> {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("shipflow-oci/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(timeout) = self.timeout {
            http = http.timeout(timeout);
        }
        let http = http.build().map_err(OciError::Client)?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                config: self,
                schemes: Mutex::default(),
                tokens: Mutex::default(),
            }),
        })
    }
}

/// A native OCI distribution client, and a [`Registry`] for shipflow's pipeline.
///
/// Cheap to clone: clones share the HTTP connection pool, the learned auth
/// schemes and the token cache.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    config: RegistryClientBuilder,
    /// Per registry: how it wants requests authenticated.
    schemes: Mutex<HashMap<String, Scheme>>,
    /// Per (registry, scope): a bearer token. `Token`'s Debug redacts it.
    tokens: Mutex<HashMap<(String, String), Token>>,
}

#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What a request body is made of; rebuilt for every attempt.
#[derive(Debug, Clone)]
enum Body {
    Empty,
    Bytes(Vec<u8>),
    File {
        path: PathBuf,
        size: u64,
        progress: BlobProgress,
    },
}

/// One conversation's fixed facts: which reference, what access it needs, and the
/// request counter it adds to.
struct Call<'a> {
    reference: &'a ImageRef,
    push: bool,
    requests: &'a AtomicU32,
    ctx: &'a Context,
}

impl Call<'_> {
    fn name(&self) -> String {
        self.reference.to_string()
    }
}

impl RegistryClient {
    /// A builder with the defaults: HTTPS except on loopback, anonymous, 4 uploads
    /// at once, 4 attempts per request.
    pub fn builder() -> RegistryClientBuilder {
        RegistryClientBuilder::default()
    }

    fn base_url(&self, reference: &ImageRef) -> String {
        let scheme = if self.inner.config.insecure || reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        let host = match reference.registry() {
            "docker.io" => "registry-1.docker.io",
            other => other,
        };
        format!("{scheme}://{host}")
    }

    fn url(&self, reference: &ImageRef, path: &str) -> Result<Url, OciError> {
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

    /// Sends one request with auth, retries and cancellation. Returns any response
    /// that is not a retryable failure; callers map statuses to errors.
    async fn send(
        &self,
        call: &Call<'_>,
        step: Step,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Body,
    ) -> Result<reqwest::Response, OciError> {
        let config = &self.inner.config;
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            if call.ctx.cancelled() {
                return Err(OciError::Cancelled {
                    reference: call.name(),
                    step,
                });
            }
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            request = match &body {
                Body::Empty => request,
                Body::Bytes(bytes) => request.body(bytes.clone()),
                Body::File {
                    path,
                    size,
                    progress,
                } => {
                    let file =
                        tokio::fs::File::open(path)
                            .await
                            .map_err(|source| OciError::ReadBlob {
                                reference: call.name(),
                                path: path.clone(),
                                source,
                            })?;
                    request
                        .header(CONTENT_LENGTH, *size)
                        .body(reqwest::Body::wrap_stream(
                            tokio_util::io::ReaderStream::with_capacity(
                                progress.reader(file),
                                256 * 1024,
                            ),
                        ))
                }
            };
            request = self.authorize(call, request).await?;
            call.requests.fetch_add(1, Ordering::Relaxed);
            let sent = tokio::select! {
                sent = request.send() => sent,
                () = call.ctx.cancellation().cancelled() => {
                    return Err(OciError::Cancelled { reference: call.name(), step });
                }
            };
            let delay = match sent {
                Err(source) => {
                    if attempt >= config.max_attempts
                        || !(source.is_connect() || source.is_timeout() || source.is_request())
                    {
                        return Err(OciError::Connect {
                            reference: call.name(),
                            step,
                            attempts: attempt,
                            source: source.without_url(),
                        });
                    }
                    tracing::debug!(reference = %call.reference, %step, attempt, error = %source, "retrying after transport error");
                    self.backoff(attempt)
                }
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED && !reauthenticated =>
                {
                    reauthenticated = true;
                    if self.learn_challenge(call.reference, response.headers()) {
                        attempt -= 1;
                        continue;
                    }
                    return Ok(response);
                }
                Ok(response)
                    if (response.status() == StatusCode::TOO_MANY_REQUESTS
                        || response.status().is_server_error())
                        && attempt < config.max_attempts =>
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
                Ok(response) => return Ok(response),
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = call.ctx.cancellation().cancelled() => {
                    return Err(OciError::Cancelled { reference: call.name(), step });
                }
            }
        }
    }

    /// Exponential backoff with jitter: a delay in [d/2, d), where d starts at the base
    /// delay, doubles each attempt and is capped at the maximum delay.
    fn backoff(&self, attempt: u32) -> Duration {
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

    /// Records the scheme a 401's challenge asks for. Returns whether a retry can
    /// do better (the scheme changed, or a token can be fetched).
    fn learn_challenge(&self, reference: &ImageRef, headers: &HeaderMap) -> bool {
        let Some(scheme) = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge)
        else {
            return false;
        };
        let registry = reference.registry().to_owned();
        let can_retry = match &scheme {
            Scheme::Basic => self.inner.config.credentials.is_some(),
            Scheme::Bearer { .. } => true,
            Scheme::Anonymous => false,
        };
        // A fresh challenge invalidates the tokens we hold for this registry.
        lock(&self.inner.tokens).retain(|(r, _), _| r != &registry);
        lock(&self.inner.schemes).insert(registry, scheme);
        can_retry
    }

    /// Adds the Authorization header the registry's scheme asks for.
    async fn authorize(
        &self,
        call: &Call<'_>,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, OciError> {
        let scheme = lock(&self.inner.schemes)
            .get(call.reference.registry())
            .cloned()
            .unwrap_or(Scheme::Anonymous);
        match scheme {
            Scheme::Anonymous => Ok(request),
            Scheme::Basic => Ok(match &self.inner.config.credentials {
                Some(c) => request.basic_auth(c.username(), Some(c.password())),
                None => request,
            }),
            Scheme::Bearer { realm, service, .. } => {
                let actions = if call.push { "pull,push" } else { "pull" };
                let scope = format!("repository:{}:{actions}", call.reference.repository());
                let key = (call.reference.registry().to_owned(), scope.clone());
                let cached = lock(&self.inner.tokens).get(&key).cloned();
                let token = match cached {
                    Some(token) => token,
                    None => {
                        let token = self
                            .fetch_token(call, &realm, service.as_deref(), &scope)
                            .await?;
                        lock(&self.inner.tokens).insert(key, token.clone());
                        token
                    }
                };
                Ok(request.bearer_auth(&token.0))
            }
        }
    }

    async fn fetch_token(
        &self,
        call: &Call<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token, OciError> {
        let protocol = |reason: String| OciError::Protocol {
            reference: call.name(),
            step: Step::Auth,
            reason,
        };
        let mut url =
            Url::parse(realm).map_err(|e| protocol(format!("token realm {realm:?}: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        let mut request = self.inner.http.get(url);
        if let Some(c) = &self.inner.config.credentials {
            request = request.basic_auth(c.username(), Some(c.password()));
        }
        call.requests.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await.map_err(|source| OciError::Connect {
            reference: call.name(),
            step: Step::Auth,
            attempts: 1,
            source: source.without_url(),
        })?;
        if response.status() == StatusCode::UNAUTHORIZED
            || response.status() == StatusCode::FORBIDDEN
        {
            let (code, message) = registry_error(response).await;
            return Err(OciError::Unauthorized {
                reference: call.name(),
                step: Step::Auth,
                username: self.username(),
                code,
                message,
            });
        }
        if !response.status().is_success() {
            return Err(self.failure(call, Step::Auth, response).await);
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| protocol(format!("token response: {}", e.without_url())))?;
        let body: TokenResponse =
            serde_json::from_slice(&bytes).map_err(|e| protocol(format!("token response: {e}")))?;
        body.token
            .or(body.access_token)
            .map(Token)
            .ok_or_else(|| protocol("token response has neither token nor access_token".into()))
    }

    fn username(&self) -> Option<String> {
        self.inner
            .config
            .credentials
            .as_ref()
            .map(|c| c.username().to_owned())
    }

    /// `GET /v2/`: checks the registry answers the distribution API and learns how
    /// it wants requests authenticated.
    pub async fn ping(&self, reference: &ImageRef, ctx: &Context) -> Result<(), OciError> {
        let requests = AtomicU32::new(0);
        let call = Call {
            reference,
            push: false,
            requests: &requests,
            ctx,
        };
        self.ping_call(&call).await
    }

    /// `GET` the manifest of `reference` (by digest, else tag, else `latest`): its
    /// bytes, media type and digest. A digest reference is verified against the content.
    pub async fn fetch_manifest(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<(Vec<u8>, String, Digest), OciError> {
        let requests = AtomicU32::new(0);
        let call = Call {
            reference,
            push: false,
            requests: &requests,
            ctx,
        };
        self.ensure_pinged(&call).await?;
        let by = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let (bytes, media_type) = self.get_manifest(&call, &by).await?;
        let actual = Digest::sha256(&bytes);
        if let Some(expected) = reference.digest()
            && expected != &actual
        {
            return Err(OciError::DigestMismatch {
                reference: reference.to_string(),
                step: Step::ManifestGet,
                expected: expected.clone(),
                actual,
            });
        }
        Ok((bytes, media_type, actual))
    }

    /// `GET` the blob `digest` of the repository of `reference`, whole, verified
    /// against the digest. Meant for small blobs such as image configs.
    pub async fn fetch_blob(
        &self,
        reference: &ImageRef,
        digest: &Digest,
        ctx: &Context,
    ) -> Result<Vec<u8>, OciError> {
        let requests = AtomicU32::new(0);
        let call = Call {
            reference,
            push: false,
            requests: &requests,
            ctx,
        };
        self.ensure_pinged(&call).await?;
        let url = self.url(reference, &format!("blobs/{digest}"))?;
        let response = self
            .send(
                &call,
                Step::BlobGet,
                Method::GET,
                url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.failure(&call, Step::BlobGet, response).await);
        }
        let bytes = response.bytes().await.map_err(|source| OciError::Connect {
            reference: call.name(),
            step: Step::BlobGet,
            attempts: 1,
            source: source.without_url(),
        })?;
        let actual = Digest::sha256(&bytes);
        if &actual != digest {
            return Err(OciError::DigestMismatch {
                reference: call.name(),
                step: Step::BlobGet,
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    async fn ping_call(&self, call: &Call<'_>) -> Result<(), OciError> {
        let url = Url::parse(&format!("{}/v2/", self.base_url(call.reference))).map_err(|e| {
            OciError::Protocol {
                reference: call.name(),
                step: Step::Ping,
                reason: e.to_string(),
            }
        })?;
        let response = self
            .send(
                call,
                Step::Ping,
                Method::GET,
                url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => {
                lock(&self.inner.schemes)
                    .entry(call.reference.registry().to_owned())
                    .or_insert(Scheme::Anonymous);
                Ok(())
            }
            _ => Err(self.failure(call, Step::Ping, response).await),
        }
    }

    /// Pings the registry once per client, so that the first real request already
    /// carries the right auth.
    async fn ensure_pinged(&self, call: &Call<'_>) -> Result<(), OciError> {
        if lock(&self.inner.schemes).contains_key(call.reference.registry()) {
            return Ok(());
        }
        self.ping_call(call).await
    }

    /// Whether the repository of `reference` has the blob `digest`.
    async fn blob_exists(&self, call: &Call<'_>, digest: &Digest) -> Result<bool, OciError> {
        let url = self.url(call.reference, &format!("blobs/{digest}"))?;
        let response = self
            .send(
                call,
                Step::BlobHead,
                Method::HEAD,
                url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(call, Step::BlobHead, response).await),
        }
    }

    /// Tries to mount `digest` from `from` (same registry). Returns whether it did.
    async fn mount_blob(
        &self,
        call: &Call<'_>,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, OciError> {
        let mut url = self.url(call.reference, "blobs/uploads/")?;
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let response = self
            .send(
                call,
                Step::BlobMount,
                Method::POST,
                url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            // 202: the registry opened an ordinary upload instead; we start our own.
            s if s.is_success() => Ok(false),
            _ => Err(self.failure(call, Step::BlobMount, response).await),
        }
    }

    /// Uploads the blob file at `path` monolithically: `POST` an upload, then one `PUT`
    /// streaming the file.
    async fn upload_blob(
        &self,
        call: &Call<'_>,
        blob: &Blob,
        path: PathBuf,
        progress: &BlobProgress,
    ) -> Result<(), OciError> {
        let on_disk = tokio::fs::metadata(&path)
            .await
            .map_err(|source| OciError::ReadBlob {
                reference: call.name(),
                path: path.clone(),
                source,
            })?
            .len();
        if on_disk != blob.size {
            return Err(OciError::ReadBlob {
                reference: call.name(),
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the file has {on_disk} bytes, the manifest says {}",
                        blob.size
                    ),
                ),
            });
        }
        // A session the registry lost (404 BLOB_UPLOAD_UNKNOWN, e.g. after a 5xx
        // mid-PUT or a restart) is started over once.
        let mut restarted = false;
        loop {
            let put_url = self.start_upload(call, blob).await?;
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static("application/octet-stream"),
            );
            let body = Body::File {
                path: path.clone(),
                size: blob.size,
                progress: progress.clone(),
            };
            let response = self
                .send(call, Step::BlobUpload, Method::PUT, put_url, headers, body)
                .await?;
            match response.status() {
                StatusCode::CREATED => return Ok(()),
                StatusCode::NOT_FOUND if !restarted => {
                    tracing::debug!(reference = %call.reference, digest = %blob.digest, "upload session lost, starting over");
                    restarted = true;
                }
                _ => return Err(self.failure(call, Step::BlobUpload, response).await),
            }
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: opens an upload session and returns the URL
    /// that completes it with a `PUT` of the whole blob.
    async fn start_upload(&self, call: &Call<'_>, blob: &Blob) -> Result<Url, OciError> {
        let url = self.url(call.reference, "blobs/uploads/")?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, 0.into());
        let response = self
            .send(
                call,
                Step::BlobUpload,
                Method::POST,
                url.clone(),
                headers,
                Body::Empty,
            )
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.failure(call, Step::BlobUpload, response).await);
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| OciError::Protocol {
                reference: call.name(),
                step: Step::BlobUpload,
                reason: "upload started without a Location header".into(),
            })?;
        let mut put_url = url.join(location).map_err(|e| OciError::Protocol {
            reference: call.name(),
            step: Step::BlobUpload,
            reason: format!("upload Location {location:?}: {e}"),
        })?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &blob.digest.to_string());
        Ok(put_url)
    }

    /// The error for a response a step did not expect: `Unauthorized` on 401 (its
    /// message says which user to check), else `Status`; both carry the registry's
    /// own error code and message.
    async fn failure(&self, call: &Call<'_>, step: Step, response: reqwest::Response) -> OciError {
        let status = response.status();
        let (code, message) = registry_error(response).await;
        let reference = call.name();
        if status == StatusCode::UNAUTHORIZED {
            OciError::Unauthorized {
                reference,
                step,
                username: self.username(),
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

    /// `HEAD` the manifest `reference` (a tag or digest): its digest, or `None` on 404.
    async fn manifest_digest(
        &self,
        call: &Call<'_>,
        reference: &str,
    ) -> Result<Option<Digest>, OciError> {
        let url = self.url(call.reference, &format!("manifests/{reference}"))?;
        let response = self
            .send(
                call,
                Step::ManifestHead,
                Method::HEAD,
                url,
                accept_manifests(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.failure(call, Step::ManifestHead, response).await),
        }
        if let Some(digest) = header_digest(response.headers()) {
            return Ok(Some(digest));
        }
        // Some registries omit the header on HEAD: fetch and hash.
        let (bytes, _) = self.get_manifest(call, reference).await?;
        Ok(Some(Digest::sha256(&bytes)))
    }

    /// `GET` the manifest `reference`: its bytes and media type.
    async fn get_manifest(
        &self,
        call: &Call<'_>,
        reference: &str,
    ) -> Result<(Vec<u8>, String), OciError> {
        let url = self.url(call.reference, &format!("manifests/{reference}"))?;
        let response = self
            .send(
                call,
                Step::ManifestGet,
                Method::GET,
                url,
                accept_manifests(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => {}
            _ => return Err(self.failure(call, Step::ManifestGet, response).await),
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(crate::layout::OCI_MANIFEST_MEDIA_TYPE)
            .to_owned();
        let bytes = response.bytes().await.map_err(|source| OciError::Connect {
            reference: call.name(),
            step: Step::ManifestGet,
            attempts: 1,
            source: source.without_url(),
        })?;
        Ok((bytes.to_vec(), media_type))
    }

    async fn put_manifest(
        &self,
        call: &Call<'_>,
        reference: &str,
        bytes: Vec<u8>,
        media_type: &str,
        expected: &Digest,
    ) -> Result<(), OciError> {
        let url = self.url(call.reference, &format!("manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            media_type.parse().map_err(|_| OciError::Protocol {
                reference: call.name(),
                step: Step::ManifestPut,
                reason: format!("media type {media_type:?} is not a valid header value"),
            })?,
        );
        let response = self
            .send(
                call,
                Step::ManifestPut,
                Method::PUT,
                url,
                headers,
                Body::Bytes(bytes),
            )
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::OK => {}
            _ => return Err(self.failure(call, Step::ManifestPut, response).await),
        }
        match header_digest(response.headers()) {
            Some(actual) if &actual != expected => Err(OciError::DigestMismatch {
                reference: call.name(),
                step: Step::ManifestPut,
                expected: expected.clone(),
                actual,
            }),
            _ => Ok(()),
        }
    }

    /// Checks one blob and uploads (or mounts) it when the registry lacks it.
    async fn sync_blob(
        &self,
        call: &Call<'_>,
        blob: &Blob,
        path: PathBuf,
        progress: &Arc<Progress>,
        base_repository: Option<&str>,
    ) -> Result<BlobOutcome, OciError> {
        if self.blob_exists(call, &blob.digest).await? {
            progress.add(blob.size);
            return Ok(BlobOutcome::Skipped);
        }
        if call.ctx.dry_run() {
            progress.add(blob.size);
            return Ok(BlobOutcome::Uploaded);
        }
        let mount_from = base_repository
            .into_iter()
            .chain(self.inner.config.mount_from.iter().map(String::as_str));
        for from in mount_from {
            if from != call.reference.repository()
                && self.mount_blob(call, &blob.digest, from).await?
            {
                progress.add(blob.size);
                return Ok(BlobOutcome::Mounted);
            }
        }
        // The upload's reader counts the bytes as they stream.
        self.upload_blob(call, blob, path, &BlobProgress::new(progress.clone()))
            .await?;
        Ok(BlobOutcome::Uploaded)
    }

    async fn push_image(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, OciError> {
        let ImageLocation::OciLayout { path } = &image.location else {
            return Err(OciError::UnsupportedLocation {
                reference: target.to_string(),
                app: image.app.clone(),
                location: format!("{:?}", image.location),
            });
        };
        let layout_error = |source| OciError::Layout {
            reference: target.to_string(),
            step: Step::ReadLocal,
            source: Box::new(source),
        };
        let layout = OciLayout::open(path).map_err(layout_error)?;
        let manifest = layout.read_blob(&image.digest).map_err(layout_error)?;
        let requests = Arc::new(AtomicU32::new(0));
        let call = Call {
            reference: target,
            push: true,
            requests: &requests,
            ctx,
        };
        self.ensure_pinged(&call).await?;
        let base_repository = base_repository(&manifest, target);

        // Config and layers, each digest once.
        let mut seen = BTreeSet::new();
        let blobs: Vec<Blob> = std::iter::once(&image.config)
            .chain(&image.layers)
            .filter(|b| seen.insert(b.digest.clone()))
            .cloned()
            .collect();
        let total: u64 = blobs.iter().map(|b| b.size).sum();
        let progress = Arc::new(Progress::new(ctx.clone(), total));
        let uploaded_bytes = Arc::new(AtomicU64::new(0));
        let permits = Arc::new(Semaphore::new(self.inner.config.max_concurrent_uploads));
        let mut tasks = JoinSet::new();
        for blob in blobs {
            let client = self.clone();
            let target = target.clone();
            let ctx = ctx.clone();
            let path = layout.blob_path(&blob.digest);
            let permits = permits.clone();
            let requests = requests.clone();
            let progress = progress.clone();
            let uploaded_bytes = uploaded_bytes.clone();
            let base_repository = base_repository.clone();
            tasks.spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .map_err(|_| OciError::Cancelled {
                        reference: target.to_string(),
                        step: Step::BlobUpload,
                    })?;
                let call = Call {
                    reference: &target,
                    push: true,
                    requests: &requests,
                    ctx: &ctx,
                };
                let outcome = client
                    .sync_blob(&call, &blob, path, &progress, base_repository.as_deref())
                    .await?;
                if outcome == BlobOutcome::Uploaded {
                    uploaded_bytes.fetch_add(blob.size, Ordering::Relaxed);
                }
                // One event per finished blob, besides those while bytes stream.
                progress.emit();
                Ok::<_, OciError>(outcome)
            });
        }
        let mut report = PushReport {
            digest: Some(image.digest.clone()),
            ..PushReport::default()
        };
        while let Some(joined) = tasks.join_next().await {
            let outcome = match joined {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => {
                    tasks.abort_all();
                    return Err(e);
                }
                Err(join) => {
                    tasks.abort_all();
                    if join.is_panic() {
                        std::panic::resume_unwind(join.into_panic());
                    }
                    return Err(OciError::Cancelled {
                        reference: target.to_string(),
                        step: Step::BlobUpload,
                    });
                }
            };
            match outcome {
                BlobOutcome::Skipped => report.blobs_skipped += 1,
                BlobOutcome::Mounted => report.blobs_mounted += 1,
                BlobOutcome::Uploaded => report.blobs_uploaded += 1,
            }
        }
        report.bytes_uploaded = uploaded_bytes.load(Ordering::Relaxed);

        let tag = target
            .tag()
            .map(str::to_owned)
            .unwrap_or_else(|| image.digest.to_string());
        let current = self.manifest_digest(&call, &tag).await?;
        if current.as_ref() != Some(&image.digest) {
            report.manifest_written = true;
            report.bytes_uploaded += image.manifest_size;
            if !ctx.dry_run() {
                self.put_manifest(&call, &tag, manifest, &image.media_type, &image.digest)
                    .await?;
            }
        }
        report.requests = requests.load(Ordering::Relaxed);
        Ok(report)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobOutcome {
    Skipped,
    Mounted,
    Uploaded,
}

/// The repository of the image's base (the `org.opencontainers.image.base.name`
/// annotation the native builder writes) when it is on the target's registry: the
/// base's layers are not in the local layout and are mounted from there.
fn base_repository(manifest: &[u8], target: &ImageRef) -> Option<String> {
    let manifest: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let base = manifest
        .get("annotations")?
        .get(crate::builder::ANNOTATION_BASE_NAME)?
        .as_str()?;
    let base: ImageRef = base.parse().ok()?;
    (base.registry() == target.registry()).then(|| base.repository().to_owned())
}

fn accept_manifests() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        ACCEPT,
        reqwest::header::HeaderValue::from_static(MANIFEST_ACCEPT),
    );
    headers
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves a plain map behind: still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The first `{code, message}` of a distribution-spec error body.
async fn registry_error(response: reqwest::Response) -> (Option<String>, Option<String>) {
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
    let Ok(bytes) = response.bytes().await else {
        return (None, None);
    };
    match serde_json::from_slice::<Body>(&bytes) {
        Ok(body) => body
            .errors
            .into_iter()
            .next()
            .map_or((None, None), |e| (e.code, e.message)),
        Err(_) => (None, None),
    }
}

#[async_trait]
impl Registry for RegistryClient {
    async fn resolve(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<Option<Digest>, BoxError> {
        let requests = AtomicU32::new(0);
        let call = Call {
            reference,
            push: false,
            requests: &requests,
            ctx,
        };
        self.ensure_pinged(&call).await?;
        let by = match (reference.digest(), reference.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        Ok(self.manifest_digest(&call, &by).await?)
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        Ok(self.push_image(image, target, ctx).await?)
    }

    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError> {
        let requests = AtomicU32::new(0);
        let call = Call {
            reference: target,
            push: true,
            requests: &requests,
            ctx,
        };
        self.ensure_pinged(&call).await?;
        let (bytes, media_type) = self.get_manifest(&call, &digest.to_string()).await?;
        let actual = Digest::sha256(&bytes);
        if &actual != digest {
            return Err(OciError::DigestMismatch {
                reference: target.to_string(),
                step: Step::ManifestGet,
                expected: digest.clone(),
                actual,
            }
            .into());
        }
        if ctx.dry_run() {
            return Ok(());
        }
        let tag = target.tag().ok_or_else(|| OciError::Protocol {
            reference: target.to_string(),
            step: Step::ManifestPut,
            reason: "the target has no tag to point at the manifest".into(),
        })?;
        self.put_manifest(&call, tag, bytes, &media_type, digest)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_of(client: &RegistryClient, reference: &str) -> String {
        let reference: ImageRef = reference.parse().expect("valid reference");
        client
            .url(&reference, "blobs/uploads/")
            .expect("url")
            .to_string()
    }

    #[test]
    fn plain_http_only_on_loopback_or_when_insecure() {
        let client = RegistryClient::builder().build().expect("client");
        assert_eq!(
            url_of(&client, "127.0.0.1:5000/team/api:v1"),
            "http://127.0.0.1:5000/v2/team/api/blobs/uploads/"
        );
        assert_eq!(
            url_of(&client, "localhost:5000/api"),
            "http://localhost:5000/v2/api/blobs/uploads/"
        );
        assert_eq!(
            url_of(&client, "registry.example.com/team/api"),
            "https://registry.example.com/v2/team/api/blobs/uploads/"
        );
        assert_eq!(
            url_of(&client, "nginx"),
            "https://registry-1.docker.io/v2/library/nginx/blobs/uploads/"
        );
        let insecure = RegistryClient::builder()
            .insecure(true)
            .build()
            .expect("client");
        assert_eq!(
            url_of(&insecure, "registry.lan:5000/api"),
            "http://registry.lan:5000/v2/api/blobs/uploads/"
        );
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let client = RegistryClient::builder()
            .retries(10, Duration::from_millis(100))
            .build()
            .expect("client");
        for attempt in 1..=4u32 {
            let d = client.backoff(attempt);
            let full = Duration::from_millis(100 * 2u64.pow(attempt - 1));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(client.backoff(30) <= Duration::from_secs(10));
    }
}
