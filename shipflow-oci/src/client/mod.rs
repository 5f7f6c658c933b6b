//! [`RegistryClient`]: a native client of the OCI distribution API that pushes only
//! the blobs a registry lacks.
//!
//! One module per concern: `transport` (URLs, a request with auth and retries),
//! `auth` (ping, challenges, tokens, credentials), `blobs` (checks, mounts,
//! uploads), `manifests` (manifests and tags) and `push` (orchestration).

mod auth;
mod blobs;
mod copy;
mod manifests;
mod push;
mod tls;
mod transport;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shipflow_core::{BoxError, Context, Digest, ImageRef, LocalImage, PushReport, Registry};

use self::blobs::DEFAULT_CHUNK;
use self::transport::Call;
use crate::auth::{Credentials, Scheme};
use crate::docker_config::DockerConfig;
use crate::error::OciError;

/// Builds a [`RegistryClient`].
#[derive(Debug, Clone)]
pub struct RegistryClientBuilder {
    insecure: bool,
    /// Explicit credentials, per registry (`host[:port]`, Docker Hub as `docker.io`).
    credentials: HashMap<String, Credentials>,
    max_concurrent_uploads: usize,
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    timeout: Option<Duration>,
    mount_from: Vec<String>,
    chunk_threshold: u64,
    chunk_size: u64,
    docker_config: DockerConfigSource,
    tls: tls::TlsSettings,
    /// CA files to read at build, into `tls.cas`.
    ca_files: Vec<PathBuf>,
    signer: Option<crate::ImageSigner>,
}

/// Where credentials come from when none are given explicitly.
#[derive(Debug, Clone)]
enum DockerConfigSource {
    /// The files [`DockerConfig::search_paths`] finds in the process environment:
    /// Podman's `auth.json`, then Docker's `config.json`; read at build.
    Environment,
    /// These files, in order (those that do not exist are skipped).
    Files(Vec<PathBuf>),
    /// This config.
    Given(DockerConfig),
    /// None: anonymous unless credentials are given.
    Disabled,
}

impl Default for RegistryClientBuilder {
    fn default() -> Self {
        Self {
            insecure: false,
            credentials: HashMap::new(),
            max_concurrent_uploads: 4,
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            timeout: None,
            mount_from: Vec::new(),
            chunk_threshold: DEFAULT_CHUNK,
            chunk_size: DEFAULT_CHUNK,
            docker_config: DockerConfigSource::Environment,
            tls: tls::TlsSettings {
                certs_dirs: tls::default_certs_dirs(),
                ..tls::TlsSettings::default()
            },
            ca_files: Vec::new(),
            signer: None,
        }
    }
}

impl RegistryClientBuilder {
    /// Treats every registry as Docker treats its `insecure-registries`: HTTPS
    /// without verifying the certificate, and plain HTTP when the registry does
    /// not speak TLS; a warning says so once per registry. Without it, loopback
    /// registries (`127.0.0.0/8`, `localhost`, `[::1]`) are tried over verified
    /// HTTPS and then plain HTTP, and all others must pass HTTPS verification.
    pub fn insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// The certs.d roots searched for `<host[:port]>/` directories: `*.crt` files
    /// there are CAs trusted for that registry (besides the system's), and a
    /// `*.cert` with the `*.key` of the same name is a client certificate for it.
    /// Default, as Docker and Podman: `/etc/docker/certs.d`,
    /// `/etc/containers/certs.d`, `~/.config/containers/certs.d`.
    pub fn certs_dirs(mut self, roots: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.tls.certs_dirs = roots.into_iter().map(Into::into).collect();
        self
    }

    /// Trusts the CA certificates in `pem` (one or more PEM certificates) for
    /// every registry, besides the system's and those of certs.d.
    pub fn ca_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        let n = self.tls.cas.len() + 1;
        self.tls
            .cas
            .push((format!("CA certificates #{n}"), pem.into()));
        self
    }

    /// Trusts the CA certificates of the PEM file at `path` for every registry
    /// (read at [`Self::build`], whose error names the file): what a CLI's
    /// `--registry-ca FILE` passes.
    pub fn ca_certificate_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Presents this client certificate chain and private key (PEM) to every
    /// registry that asks for one (mutual TLS). Without it, a certs.d client
    /// certificate of the registry is used.
    pub fn client_identity(
        mut self,
        certificate_chain_pem: impl Into<Vec<u8>>,
        private_key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((certificate_chain_pem.into(), private_key_pem.into()));
        self
    }

    /// Authenticates to `registry` (`host[:port]` as in image references, e.g.
    /// `registry.example.com` or `127.0.0.1:5000`; `docker.io` for Docker Hub) with
    /// `credentials`: as HTTP basic auth, or to obtain bearer tokens when the
    /// registry asks for them. They win over any docker config for that registry,
    /// and go nowhere else: an image on another registry is pushed with that
    /// registry's own credentials (or none), as `docker login <registry>` binds
    /// a login to one registry. Call once per registry.
    ///
    /// ```
    /// use shipflow_oci::{Credentials, RegistryClient};
    /// let client = RegistryClient::builder()
    ///     .credentials("registry.example.com", Credentials::basic("ci", "s3cret"))
    ///     .build()?;
    /// # Ok::<(), shipflow_oci::OciError>(())
    /// ```
    pub fn credentials(mut self, registry: impl Into<String>, credentials: Credentials) -> Self {
        self.credentials.insert(
            crate::docker_config::canonical_registry(&registry.into()),
            credentials,
        );
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
    /// `chunk_size` bytes (defaults 64 MiB and 64 MiB), each streamed from the file;
    /// an interrupted chunk resumes from the range the registry reports. Smaller
    /// blobs go in one `PUT`.
    pub fn chunked_uploads(mut self, threshold: u64, chunk_size: u64) -> Self {
        self.chunk_threshold = threshold;
        self.chunk_size = chunk_size.max(1);
        self
    }

    /// Looks credentials up in `config` (per registry) instead of the files found
    /// in the environment (the default: see [`DockerConfig::search_paths`]).
    pub fn docker_config(mut self, config: DockerConfig) -> Self {
        self.docker_config = DockerConfigSource::Given(config);
        self
    }

    /// Looks credentials up in these credential files (Podman `auth.json` or
    /// Docker `config.json`, the same format), in order: the first that knows a
    /// registry gives its credentials. Files that do not exist are skipped. A
    /// program that takes its settings from its caller passes
    /// `DockerConfig::search_paths(its_environment)` here.
    pub fn auth_files(mut self, paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.docker_config = DockerConfigSource::Files(paths.into_iter().map(Into::into).collect());
        self
    }

    /// Signs every image this client pushes with `signer`, in the sigstore
    /// (cosign) format: the signature goes to the `sha256-<digest>.sig` tag of
    /// the image's repository, where cosign and containers/image's
    /// `sigstoreSigned` policy (with `use-sigstore-attachments: true`) find it.
    /// Each platform's manifest of an index is signed too, since a verifier that
    /// pulls one platform checks that manifest's signature.
    pub fn sign_with(mut self, signer: crate::ImageSigner) -> Self {
        self.signer = Some(signer);
        self
    }

    /// Reads no docker config: requests are anonymous unless
    /// [`Self::credentials`] are given.
    pub fn without_docker_config(mut self) -> Self {
        self.docker_config = DockerConfigSource::Disabled;
        self
    }

    /// Builds the client. Fails if the docker config exists but cannot be read,
    /// or a CA file given here cannot be read.
    pub fn build(mut self) -> Result<RegistryClient, OciError> {
        for path in std::mem::take(&mut self.ca_files) {
            let pem = std::fs::read(&path).map_err(|e| OciError::Client {
                reason: format!("cannot read the CA file {}", path.display()),
                source: Some(Box::new(e)),
            })?;
            self.tls.cas.push((path.display().to_string(), pem));
        }
        // Fail now, not at the first push, on CAs or a client identity that do
        // not parse.
        tls::client_config(&self.tls, "", true, &tls::Rejected::default())?;
        let docker_configs = match &self.docker_config {
            DockerConfigSource::Environment => {
                DockerConfig::load_files(&DockerConfig::search_paths(|name| {
                    std::env::var_os(name)
                }))?
            }
            DockerConfigSource::Files(paths) => DockerConfig::load_files(paths)?,
            DockerConfigSource::Given(config) => vec![config.clone()],
            DockerConfigSource::Disabled => Vec::new(),
        };
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                endpoints: Mutex::default(),
                docker_configs,
                found_credentials: Mutex::default(),
                config: self,
                schemes: Mutex::default(),
                tokens: Mutex::default(),
                refused_mounts: Mutex::default(),
            }),
        })
    }

    /// An HTTP client for `registry`, with its TLS configuration.
    fn http_client(
        &self,
        registry: &str,
        rejected: &tls::Rejected,
    ) -> Result<reqwest::Client, OciError> {
        let tls = tls::client_config(&self.tls, registry, !self.insecure, rejected)?;
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("shipflow-oci/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect_policy())
            .tls_backend_preconfigured(tls)
            // A registry or token service that stops answering must not hang the push.
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60));
        if let Some(timeout) = self.timeout {
            http = http.timeout(timeout);
        }
        http.build().map_err(|e| OciError::Client {
            reason: format!("the HTTP client for {registry} cannot be built"),
            source: Some(Box::new(e)),
        })
    }
}

/// How this client talks to one registry.
#[derive(Debug, Clone)]
struct Endpoint {
    http: reqwest::Client,
    /// The certificate the registry last presented and the verifier rejected.
    rejected: tls::Rejected,
    /// Plain HTTP: a loopback or insecure registry that does not speak TLS.
    plain_http: bool,
}

/// Follows at most 5 redirects, none from HTTPS to plain HTTP. (reqwest already
/// drops `Authorization` on a redirect to another scheme, host or port.)
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt
            .previous()
            .last()
            .is_some_and(|from| from.scheme() == "https" && attempt.url().scheme() != "https");
        if downgrade {
            attempt.error("a redirect from HTTPS to plain HTTP was refused")
        } else if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else {
            attempt.follow()
        }
    })
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
    /// Per registry: its HTTP client (with the registry's TLS trust) and scheme.
    endpoints: Mutex<HashMap<String, Endpoint>>,
    config: RegistryClientBuilder,
    /// The docker config credentials are looked up in, when none are explicit.
    docker_configs: Vec<DockerConfig>,
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

impl RegistryClient {
    /// A builder with the defaults: HTTPS except on loopback, anonymous, 4 uploads
    /// at once, 4 attempts per request.
    pub fn builder() -> RegistryClientBuilder {
        RegistryClientBuilder::default()
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
        Ok(self.tag_manifest(digest, target, ctx).await?)
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, RANGE};

    use super::blobs::upload_range_end;
    use super::manifests::next_page;
    use super::*;

    fn url_of(client: &RegistryClient, reference: &str) -> String {
        let reference: ImageRef = reference.parse().expect("valid reference");
        client
            .url(&reference, "blobs/uploads/")
            .expect("url")
            .to_string()
    }

    #[test]
    fn an_upload_location_off_https_is_refused() {
        let client = RegistryClient::builder().build().expect("client");
        let reference: ImageRef = "registry.example.com/team/api:v1".parse().expect("ref");
        let requests = AtomicU32::new(0);
        let ctx = Context::new();
        let call = Call::new(&reference, true, &requests, &ctx);
        let base = client.url(&reference, "blobs/uploads/").expect("url");
        let mut headers = HeaderMap::new();
        for (location, ok) in [
            ("/v2/team/api/blobs/uploads/1", true),
            ("https://storage.example.com/upload/1", true),
            (
                "http://registry.example.com/v2/team/api/blobs/uploads/1",
                false,
            ),
            ("http://storage.example.com/upload/1", false),
        ] {
            headers.insert(reqwest::header::LOCATION, location.parse().expect("header"));
            let next = client.next_location(&call, &base, &headers);
            assert_eq!(next.is_ok(), ok, "{location}: {next:?}");
        }
    }

    #[test]
    fn https_first_and_plain_http_only_where_allowed() {
        let client = RegistryClient::builder().build().expect("client");
        assert_eq!(
            url_of(&client, "127.0.0.1:5000/team/api:v1"),
            "https://127.0.0.1:5000/v2/team/api/blobs/uploads/"
        );
        assert_eq!(
            url_of(&client, "nginx"),
            "https://registry-1.docker.io/v2/library/nginx/blobs/uploads/"
        );
        let loopback: ImageRef = "localhost:5000/api".parse().expect("ref");
        let remote: ImageRef = "registry.lan:5000/api".parse().expect("ref");
        assert!(client.may_use_plain_http(&loopback));
        assert!(!client.may_use_plain_http(&remote));
        client.endpoint("localhost:5000").expect("endpoint");
        client.use_plain_http("localhost:5000");
        assert_eq!(
            url_of(&client, "localhost:5000/api"),
            "http://localhost:5000/v2/api/blobs/uploads/"
        );
        let insecure = RegistryClient::builder()
            .insecure(true)
            .build()
            .expect("client");
        assert!(insecure.may_use_plain_http(&remote));
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
