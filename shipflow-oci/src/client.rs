//! [`RegistryClient`]: a native client of the OCI distribution API that pushes only
//! the blobs a registry lacks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use shipflow_core::{
    Blob, BoxError, Context, Digest, ImageLocation, ImageRef, LocalImage, PushReport, Registry,
};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::auth::{Credentials, Scheme, TokenResponse, parse_challenge};
use crate::docker_config::DockerConfig;
use crate::error::{OciError, Step};
use crate::layout::OciLayout;
use crate::progress::{BlobProgress, Progress};

/// The manifest media types this client asks for.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const DIGEST_HEADER: &str = "docker-content-digest";
/// Default chunk threshold and chunk size of blob uploads.
const DEFAULT_CHUNK: u64 = 8 * 1024 * 1024;

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
    chunk_threshold: u64,
    chunk_size: u64,
    docker_config: DockerConfigSource,
}

/// Where credentials come from when none are given explicitly.
#[derive(Debug, Clone)]
enum DockerConfigSource {
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, read at build.
    Environment,
    /// This config.
    Given(DockerConfig),
    /// None: anonymous unless credentials are given.
    Disabled,
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
            chunk_threshold: DEFAULT_CHUNK,
            chunk_size: DEFAULT_CHUNK,
            docker_config: DockerConfigSource::Environment,
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
    /// tokens when the registry asks for them. Explicit credentials win over any
    /// docker config.
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

    /// A timeout for each whole HTTP request (default: none, as a layer upload may
    /// take long). Whatever this says, a connection attempt gives up after 30 s and
    /// a response that sends nothing for 60 s fails; both are retried.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Repositories of the same registry to mount missing blobs from before
    /// uploading them (cross-repository blob mount). Mounting needs pull on the
    /// source: where the registry refuses it, the blobs are uploaded instead, and
    /// this client does not ask again for that source and target.
    pub fn mount_from(mut self, repositories: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.mount_from = repositories.into_iter().map(Into::into).collect();
        self
    }

    /// Blobs larger than `threshold` bytes are uploaded in `PATCH` chunks of
    /// `chunk_size` bytes (defaults 8 MiB and 8 MiB), each streamed from the file;
    /// an interrupted chunk resumes from the range the registry reports. Smaller
    /// blobs go in one `PUT`.
    pub fn chunked_uploads(mut self, threshold: u64, chunk_size: u64) -> Self {
        self.chunk_threshold = threshold;
        self.chunk_size = chunk_size.max(1);
        self
    }

    /// Looks credentials up in `config` (per registry) instead of the docker config
    /// found through `DOCKER_CONFIG` or `~/.docker/config.json`, which is the default.
    pub fn docker_config(mut self, config: DockerConfig) -> Self {
        self.docker_config = DockerConfigSource::Given(config);
        self
    }

    /// Reads no docker config: requests are anonymous unless
    /// [`Self::credentials`] are given.
    pub fn without_docker_config(mut self) -> Self {
        self.docker_config = DockerConfigSource::Disabled;
        self
    }

    /// Builds the client. Fails if the docker config exists but cannot be read.
    pub fn build(self) -> Result<RegistryClient, OciError> {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("shipflow-oci/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            // A registry or token service that stops answering must not hang the push.
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60));
        if let Some(timeout) = self.timeout {
            http = http.timeout(timeout);
        }
        let http = http.build().map_err(OciError::Client)?;
        let docker_config = match &self.docker_config {
            DockerConfigSource::Environment => DockerConfig::load()?,
            DockerConfigSource::Given(config) => Some(config.clone()),
            DockerConfigSource::Disabled => None,
        };
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                docker_config,
                found_credentials: Mutex::default(),
                config: self,
                schemes: Mutex::default(),
                tokens: Mutex::default(),
                refused_mounts: Mutex::default(),
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
    /// The docker config credentials are looked up in, when none are explicit.
    docker_config: Option<DockerConfig>,
    /// Per registry: what the docker config gave (looked up once).
    found_credentials: Mutex<HashMap<String, Option<Credentials>>>,
    /// Per registry: how it wants requests authenticated.
    schemes: Mutex<HashMap<String, Scheme>>,
    /// Per (registry, scopes joined by spaces): a bearer token. `Token`'s Debug redacts it.
    tokens: Mutex<HashMap<(String, String), Token>>,
    /// (registry, target repository, source repository) whose mounts were refused
    /// (401/403): blobs go there by upload, without asking again.
    refused_mounts: Mutex<HashSet<(String, String, String)>>,
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
    /// `len` bytes of the file at `path` from `offset`, streamed.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
        progress: BlobProgress,
    },
}

/// One conversation's fixed facts: which reference, what access it needs, and the
/// request counter it adds to.
struct Call<'a> {
    reference: &'a ImageRef,
    push: bool,
    /// The repository (same registry) a blob mount reads from: it needs pull there too.
    mount_from: Option<&'a str>,
    requests: &'a AtomicU32,
    ctx: &'a Context,
}

impl<'a> Call<'a> {
    /// A call on `reference`, pulling or (with `push`) pushing, counting its requests
    /// in `requests`.
    fn new(reference: &'a ImageRef, push: bool, requests: &'a AtomicU32, ctx: &'a Context) -> Self {
        Call {
            reference,
            push,
            mount_from: None,
            requests,
            ctx,
        }
    }

    fn name(&self) -> String {
        self.reference.to_string()
    }

    /// This call, for a blob mount from `from`.
    fn mounting(&self, from: &'a str) -> Self {
        Call {
            mount_from: Some(from),
            ..*self
        }
    }

    /// The token scopes the call needs: its repository's, plus pull on the mount
    /// source (Distribution checks both on `POST …/blobs/uploads/?mount=…&from=…`).
    fn scopes(&self) -> Vec<String> {
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
        let attempts = self.inner.config.max_attempts;
        self.send_with(call, step, method, url, headers, body, attempts)
            .await
    }

    /// [`Self::send`] with at most `max_attempts` attempts (1: no retry, for requests
    /// that must not be repeated blindly, such as a chunk `PATCH`).
    #[allow(clippy::too_many_arguments)]
    async fn send_with(
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
                    if attempt >= max_attempts
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
            Scheme::Basic => matches!(self.credentials_for(reference.registry()), Ok(Some(_))),
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
            Scheme::Basic => Ok(match self.credentials_for(call.reference.registry())? {
                Some(c) => request.basic_auth(c.username(), Some(c.password())),
                None => request,
            }),
            Scheme::Bearer { realm, service, .. } => {
                let scopes = call.scopes();
                // One token per set of scopes: a mount's token (which also reads
                // the source) is not the plain push token of the target.
                let key = (call.reference.registry().to_owned(), scopes.join(" "));
                let cached = lock(&self.inner.tokens).get(&key).cloned();
                let token = match cached {
                    Some(token) => token,
                    None => {
                        let token = self
                            .fetch_token(call, &realm, service.as_deref(), &scopes)
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
        scopes: &[String],
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
            // One `scope` parameter per scope, as Docker sends them.
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let credentials = self.credentials_for(call.reference.registry())?;
        let request = match credentials.as_ref().and_then(|c| c.refresh_token()) {
            // OAuth2: the identity token is exchanged in a form POST, never sent as a
            // password (Docker does the same).
            Some(refresh_token) => {
                let mut form = Url::parse("form:").map_err(|e| protocol(e.to_string()))?;
                form.query_pairs_mut()
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("client_id", "shipflow")
                    .append_pair("refresh_token", refresh_token)
                    .append_pair("service", service.unwrap_or_default())
                    .append_pair("scope", &scopes.join(" "));
                url.set_query(None);
                self.inner
                    .http
                    .post(url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.query().unwrap_or_default().to_owned())
            }
            None => {
                let mut request = self.inner.http.get(url);
                if let Some(c) = &credentials {
                    request = request.basic_auth(c.username(), Some(c.password()));
                }
                request
            }
        };
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
                username: self.username(call.reference.registry()),
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

    fn username(&self, registry: &str) -> Option<String> {
        self.credentials_for(registry)
            .ok()
            .flatten()
            .map(|c| c.username().to_owned())
    }

    /// The credentials for `registry`: the explicit ones, else the docker config's
    /// (looked up once per registry; a credential helper runs at most once).
    fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, OciError> {
        if let Some(explicit) = &self.inner.config.credentials {
            return Ok(Some(explicit.clone()));
        }
        let Some(config) = &self.inner.docker_config else {
            return Ok(None);
        };
        if let Some(found) = lock(&self.inner.found_credentials).get(registry) {
            return Ok(found.clone());
        }
        let found = config.credentials(registry)?;
        lock(&self.inner.found_credentials).insert(registry.to_owned(), found.clone());
        Ok(found)
    }

    /// `GET /v2/`: checks the registry answers the distribution API and learns how
    /// it wants requests authenticated.
    pub async fn ping(&self, reference: &ImageRef, ctx: &Context) -> Result<(), OciError> {
        let requests = AtomicU32::new(0);
        let call = Call::new(reference, false, &requests, ctx);
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
        let call = Call::new(reference, false, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let by = reference.manifest_reference();
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
        let call = Call::new(reference, false, &requests, ctx);
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

    /// All tags of the repository of `reference`, in the registry's order, following
    /// the `Link: <…>; rel="next"` pages; `page_size` sets `n` (the registry's
    /// default when `None`).
    pub async fn list_tags(
        &self,
        reference: &ImageRef,
        page_size: Option<u32>,
        ctx: &Context,
    ) -> Result<Vec<String>, OciError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let requests = AtomicU32::new(0);
        let call = Call::new(reference, false, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let mut url = self.url(reference, "tags/list")?;
        if let Some(n) = page_size {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        let mut tags = Vec::new();
        loop {
            let response = self
                .send(
                    &call,
                    Step::TagList,
                    Method::GET,
                    url.clone(),
                    HeaderMap::new(),
                    Body::Empty,
                )
                .await?;
            if !response.status().is_success() {
                return Err(self.failure(&call, Step::TagList, response).await);
            }
            let next = next_page(response.headers())
                .map(|link| url.join(&link))
                .transpose()
                .map_err(|e| OciError::Protocol {
                    reference: call.name(),
                    step: Step::TagList,
                    reason: format!("Link header: {e}"),
                })?;
            let bytes = response.bytes().await.map_err(|source| OciError::Connect {
                reference: call.name(),
                step: Step::TagList,
                attempts: 1,
                source: source.without_url(),
            })?;
            let page: Page = serde_json::from_slice(&bytes).map_err(|e| OciError::Protocol {
                reference: call.name(),
                step: Step::TagList,
                reason: format!("tag list: {e}"),
            })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) if next != url => url = next,
                _ => return Ok(tags),
            }
        }
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
    /// A mount the registry or its token service refuses (401/403: the credentials
    /// may not pull from `from`) is not an error: the blob is uploaded instead.
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
        let sent = self
            .send(
                &call.mounting(from),
                Step::BlobMount,
                Method::POST,
                url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await;
        let response = match sent {
            Ok(response) => response,
            // The token service would not grant pull on `from`. (Bad credentials
            // failed earlier, at the blob's HEAD with the target's token.)
            Err(refusal @ OciError::Unauthorized { .. }) => {
                self.mount_refused(call, digest, from, &refusal);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        match response.status() {
            StatusCode::CREATED => Ok(true),
            // 202: the registry opened an ordinary upload instead; we start our own.
            s if s.is_success() => Ok(false),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let refusal = self.failure(call, Step::BlobMount, response).await;
                self.mount_refused(call, digest, from, &refusal);
                Ok(false)
            }
            _ => Err(self.failure(call, Step::BlobMount, response).await),
        }
    }

    /// Remembers that mounts from `from` into the call's repository are refused.
    fn mount_refused(&self, call: &Call<'_>, digest: &Digest, from: &str, refusal: &OciError) {
        // The error names the user, never a password or token.
        tracing::debug!(reference = %call.reference, %digest, from, error = %refusal, "blob mount refused, uploading instead");
        lock(&self.inner.refused_mounts).insert(Self::mount_key(call, from));
    }

    fn mount_key(call: &Call<'_>, from: &str) -> (String, String, String) {
        (
            call.reference.registry().to_owned(),
            call.reference.repository().to_owned(),
            from.to_owned(),
        )
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
        if blob.size > self.inner.config.chunk_threshold {
            return self.upload_chunked(call, blob, &path, progress).await;
        }
        // A session the registry lost (404 BLOB_UPLOAD_UNKNOWN, e.g. after a 5xx
        // mid-PUT or a restart) is started over once.
        let mut restarted = false;
        loop {
            let put_url = with_digest(self.start_upload(call).await?, &blob.digest);
            let body = Body::File {
                path: path.clone(),
                offset: 0,
                len: blob.size,
                progress: progress.clone(),
            };
            let response = self
                .send(
                    call,
                    Step::BlobUpload,
                    Method::PUT,
                    put_url,
                    octet_stream(),
                    body,
                )
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

    /// Uploads a large blob in `PATCH` chunks streamed from the file, then closes
    /// the session with a `PUT` carrying the digest. A chunk cut off by a connection
    /// error or answered 5xx/416 is resumed from the range the registry reports it
    /// holds; a session the registry dropped is started over (a bounded number of times).
    async fn upload_chunked(
        &self,
        call: &Call<'_>,
        blob: &Blob,
        path: &Path,
        progress: &BlobProgress,
    ) -> Result<(), OciError> {
        let config = &self.inner.config;
        let mut interruptions = 0u32;
        // Each chunk counts its own bytes, so that one interrupted chunk (or a whole
        // session started over) can be taken back without the others.
        let mut parts: Vec<BlobProgress> = Vec::new();
        'session: loop {
            parts.drain(..).for_each(|p| p.take_back());
            let mut location = self.start_upload(call).await?;
            let mut offset = 0u64;
            while offset < blob.size {
                let end = blob.size.min(offset + config.chunk_size);
                let part = progress.part();
                parts.push(part.clone());
                let headers = {
                    let mut h = octet_stream();
                    h.insert(
                        CONTENT_RANGE,
                        header_value(call, &format!("{offset}-{}", end - 1))?,
                    );
                    h
                };
                let body = Body::File {
                    path: path.to_path_buf(),
                    offset,
                    len: end - offset,
                    progress: part.clone(),
                };
                let sent = self
                    .send_with(
                        call,
                        Step::BlobUpload,
                        Method::PATCH,
                        location.clone(),
                        headers,
                        body,
                        1,
                    )
                    .await;
                let interrupted = match sent {
                    Ok(response) if response.status() == StatusCode::ACCEPTED => {
                        location = next_location(call, &location, response.headers())?;
                        offset = match upload_range_end(response.headers()) {
                            Some(received) if received > offset && received <= end => received,
                            _ => end,
                        };
                        continue;
                    }
                    Ok(response)
                        if response.status().is_server_error()
                            || response.status() == StatusCode::RANGE_NOT_SATISFIABLE =>
                    {
                        format!("PATCH answered {}", response.status())
                    }
                    Ok(response) => {
                        return Err(self.failure(call, Step::BlobUpload, response).await);
                    }
                    Err(OciError::Connect { source, .. }) => source.to_string(),
                    Err(other) => return Err(other),
                };
                part.take_back();
                interruptions += 1;
                if interruptions > config.max_attempts {
                    return Err(OciError::Protocol {
                        reference: call.name(),
                        step: Step::BlobUpload,
                        reason: format!(
                            "blob {} was interrupted {interruptions} times, last: {interrupted}",
                            blob.digest
                        ),
                    });
                }
                tokio::time::sleep(self.backoff(interruptions)).await;
                match self.upload_status(call, &location).await? {
                    Some((at, received)) => {
                        tracing::debug!(reference = %call.reference, digest = %blob.digest, offset, received, %interrupted, "resuming upload");
                        location = at;
                        // What the registry holds of this chunk counts as done.
                        part.confirm(received.saturating_sub(offset));
                        offset = received;
                    }
                    None => {
                        tracing::debug!(reference = %call.reference, digest = %blob.digest, %interrupted, "upload session lost, starting over");
                        continue 'session;
                    }
                }
            }
            let response = self
                .send(
                    call,
                    Step::BlobUpload,
                    Method::PUT,
                    with_digest(location, &blob.digest),
                    octet_stream(),
                    Body::Empty,
                )
                .await?;
            match response.status() {
                StatusCode::CREATED => return Ok(()),
                StatusCode::NOT_FOUND if interruptions < config.max_attempts => {
                    interruptions += 1;
                }
                _ => return Err(self.failure(call, Step::BlobUpload, response).await),
            }
        }
    }

    /// `GET` an upload session: where to continue and how many bytes the registry
    /// holds (from its `Range: 0-<last>` header), or `None` when the registry no
    /// longer knows the session or refuses to resume it.
    async fn upload_status(
        &self,
        call: &Call<'_>,
        location: &Url,
    ) -> Result<Option<(Url, u64)>, OciError> {
        let response = self
            .send(
                call,
                Step::BlobUpload,
                Method::GET,
                location.clone(),
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK | StatusCode::ACCEPTED => {
                let at = next_location(call, location, response.headers())?;
                Ok(Some((
                    at,
                    upload_range_end(response.headers()).unwrap_or(0),
                )))
            }
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => Ok(None),
            _ => Err(self.failure(call, Step::BlobUpload, response).await),
        }
    }

    /// `POST /v2/<repo>/blobs/uploads/`: opens an upload session and returns its URL.
    async fn start_upload(&self, call: &Call<'_>) -> Result<Url, OciError> {
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
        next_location(call, &url, response.headers())
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
        base: Option<&BaseImage>,
    ) -> Result<BlobOutcome, OciError> {
        if self.blob_exists(call, &blob.digest).await? {
            progress.add(blob.size);
            return Ok(BlobOutcome::Skipped);
        }
        if call.ctx.dry_run() {
            progress.add(blob.size);
            return Ok(BlobOutcome::Uploaded);
        }
        let base_repository = base
            .filter(|b| b.registry == call.reference.registry())
            .map(|b| b.repository.as_str());
        let mount_from = base_repository
            .into_iter()
            .chain(self.inner.config.mount_from.iter().map(String::as_str));
        for from in mount_from {
            if from != call.reference.repository()
                && !lock(&self.inner.refused_mounts).contains(&Self::mount_key(call, from))
                && self.mount_blob(call, &blob.digest, from).await?
            {
                progress.add(blob.size);
                return Ok(BlobOutcome::Mounted);
            }
        }
        if let Some(base) = base
            && !path.exists()
        {
            // A base layer the builder never downloaded, and the target lacks.
            return Err(OciError::BaseLayerMissing {
                reference: call.name(),
                digest: blob.digest.clone(),
                base: base.name.clone(),
            });
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
        let call = Call::new(target, true, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let base = base_image(&manifest);

        // A tag that already names this manifest means the registry holds every
        // blob (it checks them when a manifest is written): one request, done.
        let tag = target
            .tag()
            .map(str::to_owned)
            .unwrap_or_else(|| image.digest.to_string());
        let current = self.manifest_digest(&call, &tag).await?;
        if current.as_ref() == Some(&image.digest) {
            let distinct: BTreeSet<&Digest> = std::iter::once(&image.config.digest)
                .chain(image.layers.iter().map(|l| &l.digest))
                .collect();
            return Ok({
                let mut report = PushReport::default();
                report.digest = Some(image.digest.clone());
                report.blobs_skipped = distinct.len() as u32;
                report.requests = requests.load(Ordering::Relaxed);
                report
            });
        }

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
            let base = base.clone();
            tasks.spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .map_err(|_| OciError::Cancelled {
                        reference: target.to_string(),
                        step: Step::BlobUpload,
                    })?;
                let call = Call::new(&target, true, &requests, &ctx);
                let outcome = client
                    .sync_blob(&call, &blob, path, &progress, base.as_ref())
                    .await?;
                if outcome == BlobOutcome::Uploaded {
                    uploaded_bytes.fetch_add(blob.size, Ordering::Relaxed);
                }
                // One event per finished blob, besides those while bytes stream.
                progress.emit();
                Ok::<_, OciError>(outcome)
            });
        }
        let mut report = {
            let mut report = PushReport::default();
            report.digest = Some(image.digest.clone());
            report
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

        {
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

/// The base image of a manifest the native builder wrote (its
/// `org.opencontainers.image.base.name` annotation): its layers are not in the
/// local layout, and are mounted from its repository when it is on the target's
/// registry.
#[derive(Debug, Clone)]
struct BaseImage {
    name: String,
    registry: String,
    repository: String,
}

fn base_image(manifest: &[u8]) -> Option<BaseImage> {
    let manifest: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let name = manifest
        .get("annotations")?
        .get(crate::builder::ANNOTATION_BASE_NAME)?
        .as_str()?;
    let base: ImageRef = name.parse().ok()?;
    Some(BaseImage {
        name: name.to_owned(),
        registry: base.registry().to_owned(),
        repository: base.repository().to_owned(),
    })
}

/// The session URL from a response's `Location` (relative to `base`).
fn next_location(call: &Call<'_>, base: &Url, headers: &HeaderMap) -> Result<Url, OciError> {
    let location = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| OciError::Protocol {
            reference: call.name(),
            step: Step::BlobUpload,
            reason: "the upload answer has no Location header".into(),
        })?;
    base.join(location).map_err(|e| OciError::Protocol {
        reference: call.name(),
        step: Step::BlobUpload,
        reason: format!("upload Location {location:?}: {e}"),
    })
}

/// How many bytes an upload holds, from `Range: 0-<last>`. Distribution writes
/// `0-0` for an empty session too; that reads as 0 (a resend of one byte is harmless).
fn upload_range_end(headers: &HeaderMap) -> Option<u64> {
    let range = headers.get(RANGE)?.to_str().ok()?;
    let (_, last) = range.trim().trim_start_matches("bytes=").split_once('-')?;
    let last: u64 = last.trim().parse().ok()?;
    Some(if last == 0 { 0 } else { last + 1 })
}

/// The target of a `Link: <url>; rel="next"` header.
fn next_page(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\"") || link.contains("rel=next"))
        .and_then(|link| {
            let start = link.find('<')? + 1;
            let end = link[start..].find('>')? + start;
            Some(link[start..end].to_owned())
        })
}

fn with_digest(mut url: Url, digest: &Digest) -> Url {
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    url
}

fn octet_stream() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/octet-stream"),
    );
    headers
}

fn header_value(call: &Call<'_>, value: &str) -> Result<reqwest::header::HeaderValue, OciError> {
    value.parse().map_err(|_| OciError::Protocol {
        reference: call.name(),
        step: Step::BlobUpload,
        reason: format!("{value:?} is not a valid header value"),
    })
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
        let call = Call::new(reference, false, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let by = reference.manifest_reference();
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
        let call = Call::new(target, true, &requests, ctx);
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
    fn upload_ranges_and_next_links_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, "0-1048575".parse().expect("header"));
        assert_eq!(upload_range_end(&headers), Some(1_048_576));
        headers.insert(RANGE, "0-0".parse().expect("header"));
        assert_eq!(upload_range_end(&headers), Some(0));
        headers.insert(
            reqwest::header::LINK,
            r#"</v2/team/api/tags/list?last=t2&n=3>; rel="next""#
                .parse()
                .expect("header"),
        );
        assert_eq!(
            next_page(&headers).as_deref(),
            Some("/v2/team/api/tags/list?last=t2&n=3")
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
