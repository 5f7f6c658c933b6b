//! The native OCI side of shipflow: a daemonless, reproducible image builder
//! ([`NativeBuilder`]), a registry client that pushes only the blobs a registry lacks
//! ([`RegistryClient`]), and an OCI image-layout store for images between build and
//! push ([`OciLayout`]).
//!
//! ```no_run
//! use shipflow_core::{BuildRequest, Context, ImageBuilder, ImageRef, Registry, Workspace};
//! use shipflow_oci::{NativeBuilder, RegistryClient};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Build app `api` (`build = { type = "native", layers = [...] }`) into
//! // target/images/api, an OCI layout, tagged `v1`.
//! let workspace = Workspace::load("shipflow.toml")?;
//! let app = workspace.app("api").ok_or("no app api")?;
//! let request = BuildRequest { root: ".".into(), tag: "v1".into(), ..Default::default() };
//! let image = NativeBuilder::new("target/images")
//!     .build(app, &request, &Context::new())
//!     .await?;
//!
//! // Push it: credentials come from ~/.docker/config.json (or `.credentials(…)`).
//! let client = RegistryClient::builder().build()?;
//! let target: ImageRef = "registry.example.com/team/api:v1".parse()?;
//! let report = client.push(&image, &target, &Context::new()).await?;
//! println!(
//!     "{} blobs uploaded, {} already there, {} bytes moved",
//!     report.blobs_uploaded, report.blobs_skipped, report.bytes_uploaded
//! );
//! assert_eq!(client.resolve(&target, &Context::new()).await?, Some(image.digest));
//! # Ok(())
//! # }
//! ```
//!
//! What [`RegistryClient`] does on a push: ping `/v2/` once per registry to learn its
//! auth (anonymous, basic, or bearer tokens fetched per scope and cached), `HEAD`
//! the tag (when it already names the manifest, that one request is the whole
//! push), `HEAD` each blob, mount missing blobs from the repositories given to
//! [`RegistryClientBuilder::mount_from`] (and from the base image's repository) or
//! upload them a few at once, then `PUT` the manifest. A base layer the target
//! cannot mount (the base is on another registry) is streamed from the base's
//! registry into the target, with each registry's own credentials. An image index
//! goes up as its platforms' manifests, then the index; a blob several platforms
//! share is checked and uploaded once. The image's referrers in the layout (its
//! SBOM and provenance) follow, listed in the referrers tag schema's index where
//! the registry has no referrers API; with [`RegistryClientBuilder::sign_with`],
//! an [`ImageSigner`] signs the image (and each platform's manifest) in the
//! cosign format; the tag is written last. Blobs up to 64 MiB go in one
//! streamed `PUT`; larger ones in streamed `PATCH` chunks, and a chunk cut off by a
//! connection reset or a 5xx resumes from the range the registry reports (or, when
//! the registry refuses the session, starts that blob over). Connection errors, 5xx
//! and 429 (honouring `Retry-After` in seconds) are retried with exponential backoff
//! and jitter. In dry-run, only reads are made and the report says what a push
//! would upload.
//!
//! Credentials are the explicit [`Credentials`] given for the registry
//! ([`RegistryClientBuilder::credentials`] binds them to one registry), else those
//! a docker `config.json` ([`DockerConfig`]: `$DOCKER_CONFIG` or `~/.docker`) holds
//! for it: `credHelpers`, `auths`, `credsStore`. They go to the registry's own
//! origin (scheme, host and port) only: an upload location, a tag page or a
//! redirect on another host gets none, and nothing leaves HTTPS for plain HTTP.
//! No password or token ever appears in `Debug` output, logs or errors. Every
//! body read from a registry is bounded (error bodies 64 KiB; manifests, tokens
//! and tag pages 4 MiB).
//!
//! TLS is rustls (crypto provider `aws-lc-rs` by default, or `ring` by feature)
//! with the system's trust store, plus, per registry as Docker and Podman do, the
//! CAs (`*.crt`) and client certificate (`*.cert` + `*.key`) in
//! `certs.d/<host[:port]>/` under `/etc/docker/certs.d`, `/etc/containers/certs.d`
//! and `~/.config/containers/certs.d` ([`RegistryClientBuilder::certs_dirs`]), and
//! the builder's [`ca_certificates`](RegistryClientBuilder::ca_certificates) and
//! [`client_identity`](RegistryClientBuilder::client_identity). Loopback
//! registries are tried over verified HTTPS first and spoken to over plain HTTP
//! when they do not speak TLS; [`insecure`](RegistryClientBuilder::insecure) does
//! that for every registry, without verifying certificates. An untrusted
//! certificate is never retried: [`OciError::Certificate`] says what the
//! registry presented and where its CA goes.
//!
//! [`NativeBuilder`] turns an app built `type = "native"` into an image in
//! `<images>/<app>`: sorted tar entries with fixed mtimes (`SOURCE_DATE_EPOCH`),
//! owners and modes, `.dockerignore` applied, symlinks kept (and refused when they
//! leave the context), compressed in parallel in fixed gzip members so that the same
//! inputs give the same digests on any machine. With `platforms`, the image is an
//! OCI image index, one manifest per [`Platform`] (layers whose `from` names the
//! platform, as `target/${TARGET_TRIPLE}/release/app`, are built per platform, the
//! others once); its digest too depends on the inputs only. Each image gets a
//! CycloneDX 1.5 SBOM (every file of each layer with its sha256, the packages of
//! the app's `Cargo.lock` or `package-lock.json`) and an in-toto SLSA v1
//! provenance statement, stored as OCI referrers of the image.
//!
//! [`ImagePolicy`] chooses a tag of a repository as Flux's image policies do (a
//! semver range, numerical or alphabetical order, a filter extracting the value
//! to order by from the tag), and [`TagCache`] resolves many policies per poll
//! with one tag list per repository.

mod attest;
mod auth;
mod build_context;
mod builder;
mod client;
mod docker_config;
mod dockerignore;
mod error;
mod gzip;
mod layer;
mod layer_cache;
mod layout;
mod platform;
mod policy;
mod progress;
mod remote_build;
mod sign;
mod spec;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use attest::{PROVENANCE_ARTIFACT_TYPE, SBOM_ARTIFACT_TYPE};
pub use auth::Credentials;
pub use build_context::{
    BOUNDARY_EVERY, CONTEXT_ARTIFACT_TYPE, ContextError, ContextPacker, FetchedContext,
    MAX_CHUNK_BYTES, PackedContext, fetch_context,
};
pub use builder::{BuildError, NativeBuilder};
pub use client::{RegistryClient, RegistryClientBuilder};
pub use docker_config::DockerConfig;
pub use error::{CertificateProblem, ConnectFailure, OciError, Step};
pub use layout::{
    LayoutError, OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, OciLayout, REF_NAME_ANNOTATION,
    Referrer, referrers_tag,
};
pub use platform::Platform;
pub use policy::{ImagePolicy, PolicyError, PolicyRule, Resolution, SortOrder, TagCache};
pub use remote_build::{RemoteApp, build_from_context, remote_image};
pub use sign::{ImageSigner, SIGNATURE_MEDIA_TYPE, signature_tag};
pub use spec::{LayerSpec, NATIVE_BUILD_TYPE, NativeBuild, schema};
pub use store::LayoutRegistry;

/// Entry points for the fuzz targets in the repository's `fuzz/` directory
/// (feature `fuzzing`): internal parsers, reachable from outside. Not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a `WWW-Authenticate` header value; whether it named a scheme.
    pub fn www_authenticate(header: &str) -> bool {
        crate::auth::parse_challenge(header).is_some()
    }

    /// Parses a Docker `config.json` and decodes `registry`'s `auths` entry (no
    /// credential helper is run).
    pub fn docker_config(json: &str, registry: &str) {
        if let Ok(config) = crate::DockerConfig::from_json(json) {
            let _ = config.auths_credentials(registry);
        }
    }

    /// Parses `.dockerignore` text and matches each of `paths` against it.
    pub fn dockerignore(text: &str, paths: &[&str]) {
        if let Ok(rules) = crate::dockerignore::IgnoreRules::parse(text) {
            for path in paths {
                let _ = rules.excludes(path);
            }
        }
    }
}
