//! [`OciError`]: what went wrong talking to a registry, where, and what to do next.

use std::fmt;
use std::path::PathBuf;

use shipflow_core::Digest;

use crate::LayoutError;

/// The step of a registry conversation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// `GET /v2/`: is this a registry, and how does it want auth.
    Ping,
    /// Getting a bearer token from the registry's token service.
    Auth,
    /// `HEAD /v2/<repo>/blobs/<digest>`.
    BlobHead,
    /// `GET /v2/<repo>/blobs/<digest>`.
    BlobGet,
    /// `POST /v2/<repo>/blobs/uploads/?mount=…`.
    BlobMount,
    /// `POST /v2/<repo>/blobs/uploads/` and the `PUT` that completes it.
    BlobUpload,
    /// `HEAD /v2/<repo>/manifests/<ref>`.
    ManifestHead,
    /// `GET /v2/<repo>/manifests/<ref>`.
    ManifestGet,
    /// `PUT /v2/<repo>/manifests/<ref>`.
    ManifestPut,
    /// `GET /v2/<repo>/tags/list`.
    TagList,
    /// Reading the image from the local layout.
    ReadLocal,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Ping => "ping",
            Step::Auth => "auth",
            Step::BlobHead => "blob head",
            Step::BlobGet => "blob get",
            Step::BlobMount => "blob mount",
            Step::BlobUpload => "blob upload",
            Step::ManifestHead => "manifest head",
            Step::ManifestGet => "manifest get",
            Step::ManifestPut => "manifest put",
            Step::TagList => "tag list",
            Step::ReadLocal => "read local image",
        })
    }
}

/// What went wrong talking to a registry. Every variant names the reference, the
/// step and the cause, and its message ends with the next move. No message ever
/// holds a password or token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The registry could not be reached (connection refused, TLS, timeout), after retries.
    #[error(
        "{reference}: {step} failed: cannot reach the registry after {attempts} attempt(s): {source}; check the registry address and that it is running (plain-http registries off loopback need insecure(true))"
    )]
    Connect {
        /// The image reference being worked on.
        reference: String,
        /// The step.
        step: Step,
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry refused the credentials (HTTP 401).
    #[error(
        "{reference}: {step} failed: the registry answered 401 Unauthorized{}; check the credentials (username {username:?})",
        registry_says(code, message)
    )]
    Unauthorized {
        /// The image reference.
        reference: String,
        /// The step.
        step: Step,
        /// The username tried, if any (never the password).
        username: Option<String>,
        /// The registry's error code, e.g. `UNAUTHORIZED`.
        code: Option<String>,
        /// The registry's error message.
        message: Option<String>,
    },
    /// The registry answered with an unexpected HTTP status.
    #[error(
        "{reference}: {step} failed: the registry answered {status}{}; {}",
        registry_says(code, message),
        next_move(*status)
    )]
    Status {
        /// The image reference.
        reference: String,
        /// The step.
        step: Step,
        /// The HTTP status.
        status: u16,
        /// The registry's error code from the JSON body, e.g. `MANIFEST_INVALID`.
        code: Option<String>,
        /// The registry's error message.
        message: Option<String>,
    },
    /// The registry answered something that breaks the distribution spec.
    #[error(
        "{reference}: {step} failed: the registry's answer is not usable: {reason}; check the address points at an OCI registry"
    )]
    Protocol {
        /// The image reference.
        reference: String,
        /// The step.
        step: Step,
        /// What was wrong.
        reason: String,
    },
    /// Content the registry returned does not hash to the digest asked for.
    #[error(
        "{reference}: {step} failed: expected digest {expected}, got {actual}; the registry or a proxy altered the content"
    )]
    DigestMismatch {
        /// The image reference.
        reference: String,
        /// The step.
        step: Step,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what came back.
        actual: Digest,
    },
    /// The local image could not be read.
    #[error("{reference}: {step} failed: {source}")]
    Layout {
        /// The image reference.
        reference: String,
        /// The step.
        step: Step,
        /// The cause.
        #[source]
        source: Box<LayoutError>,
    },
    /// A local blob file could not be read for upload.
    #[error("{reference}: blob upload failed: cannot read {path}: {source}; rebuild the image")]
    ReadBlob {
        /// The image reference.
        reference: String,
        /// The blob file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A layer of the image's base is neither in the target repository nor
    /// mountable there, and was never downloaded (the native builder references
    /// base layers, it does not copy them).
    #[error(
        "{reference}: blob upload failed: layer {digest} of base image {base} cannot be mounted into the target repository (the base is not on the target registry, or the credentials may not pull it); push the base image there first (e.g. skopeo copy), or use credentials that can pull it, or a base image from the target registry"
    )]
    BaseLayerMissing {
        /// The image reference.
        reference: String,
        /// The missing layer.
        digest: Digest,
        /// The base image, `registry/repository`.
        base: String,
    },
    /// The image is not stored where this client can read it.
    #[error(
        "{reference}: the image of app {app} is not in an OCI layout ({location}); build it with a builder that writes an OCI layout"
    )]
    UnsupportedLocation {
        /// The image reference.
        reference: String,
        /// The app.
        app: String,
        /// Where the image is.
        location: String,
    },
    /// The run was cancelled.
    #[error("{reference}: {step} stopped: cancelled")]
    Cancelled {
        /// The image reference.
        reference: String,
        /// The step.
        step: Step,
    },
    /// A docker `config.json` or a credential helper could not give credentials.
    #[error(
        "docker config {}{}: {reason}",
        path.display(),
        registry.as_deref().map(|r| format!(" (registry {r})")).unwrap_or_default()
    )]
    DockerConfig {
        /// The config file.
        path: PathBuf,
        /// The registry whose credentials were looked up.
        registry: Option<String>,
        /// What went wrong (never a secret).
        reason: String,
    },
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}; check the TLS configuration")]
    Client(#[source] reqwest::Error),
}

fn registry_says(code: &Option<String>, message: &Option<String>) -> String {
    match (code, message) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(c), None) => format!(" ({c})"),
        (None, Some(m)) => format!(" ({m})"),
        (None, None) => String::new(),
    }
}

fn next_move(status: u16) -> &'static str {
    match status {
        403 => "the credentials lack permission on this repository; check its access rules",
        404 => "check the repository name and that the image exists",
        405 => "the registry does not allow this operation (read-only or a proxy cache?)",
        400 => "the registry rejected the content; check the manifest and media types",
        413 => "the blob is too large for the registry or a proxy in front of it",
        429 => "the registry is rate limiting; try again later",
        500..=599 => "the registry failed; try again later or check its logs",
        _ => "check the registry's logs",
    }
}
