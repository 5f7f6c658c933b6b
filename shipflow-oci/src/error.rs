//! [`OciError`]: what went wrong talking to a registry, where, and what to do next.

use std::fmt;
use std::path::PathBuf;

use shipflow_core::{BoxError, Digest};

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
    /// The registry could not be reached: nothing listens, its name does not
    /// resolve, the TLS handshake failed, or it stopped answering; after retries
    /// where a retry can help.
    #[error(
        "{reference}: {step} failed: {} after {attempts} attempt(s): {source}; {}",
        failure.what(registry),
        failure.next_move()
    )]
    Connect {
        /// The image reference being worked on.
        reference: String,
        /// The registry, `host[:port]`.
        registry: String,
        /// The step.
        step: Step,
        /// What kind of failure it was.
        failure: ConnectFailure,
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error.
        #[source]
        source: BoxError,
    },
    /// The registry's TLS certificate is not trusted. Never retried: trying again
    /// cannot change a certificate.
    #[error(
        "{reference}: {step} failed: the TLS certificate of registry {registry} is not trusted: {problem}{}; {}",
        certificate.as_deref().map(|c| format!(" (it presents {c})")).unwrap_or_default(),
        problem.fix(registry)
    )]
    Certificate {
        /// The image reference being worked on.
        reference: String,
        /// The registry, `host[:port]`.
        registry: String,
        /// The step.
        step: Step,
        /// What is wrong with the certificate.
        problem: CertificateProblem,
        /// The certificate the registry presented: subject, issuer, names, validity.
        certificate: Option<String>,
        /// The TLS library's error.
        #[source]
        source: BoxError,
    },
    /// A body the registry sent is larger than this client reads.
    #[error(
        "{reference}: {step} failed: the registry's {what} is larger than {limit} bytes; refusing to read it (check the address points at an OCI registry, and no proxy is in the way)"
    )]
    TooLarge {
        /// The image reference being worked on.
        reference: String,
        /// The step.
        step: Step,
        /// What was being read, e.g. `manifest`.
        what: &'static str,
        /// The limit, in bytes.
        limit: u64,
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
    /// mountable there, and could not be copied from the base's registry (the
    /// native builder references base layers, it does not download them).
    #[error(
        "{reference}: blob upload failed: layer {digest} of base image {base} is not in the target repository and could be neither mounted nor copied from the base ({cause}); the credentials may not pull it from the base's registry: use credentials that can, or push the base image to the target registry first (e.g. skopeo copy)"
    )]
    BaseLayerMissing {
        /// The image reference.
        reference: String,
        /// The missing layer.
        digest: Digest,
        /// The base image, `registry/repository`.
        base: String,
        /// Why the copy from the base's registry failed.
        cause: String,
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
        /// Always [`shipflow_core::Cancelled`], so the pipeline sees a cancellation.
        #[source]
        source: shipflow_core::Cancelled,
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
    /// The HTTP client could not be set up (a CA or client certificate file that
    /// cannot be read or parsed, a TLS setting the TLS library refuses).
    #[error("cannot set up the registry client: {reason}; check the TLS configuration")]
    Client {
        /// What failed, naming the file when a file is at fault.
        reason: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },
}

/// How a connection to a registry failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// Nothing listens at the address: connection refused.
    Refused,
    /// The registry's host name does not resolve.
    Dns,
    /// The TLS handshake failed for a reason other than an untrusted certificate
    /// (those are [`OciError::Certificate`]).
    Tls,
    /// The registry refused the TLS session for want of a client certificate it
    /// trusts (mutual TLS).
    ClientCertificate,
    /// The registry did not answer in time.
    Timeout,
    /// The connection broke for another reason (reset, closed early).
    Other,
}

impl ConnectFailure {
    fn what(self, registry: &str) -> String {
        match self {
            Self::Refused => format!("nothing listens at {registry} (connection refused)"),
            Self::Dns => format!("the registry host name of {registry} does not resolve"),
            Self::Tls => format!("the TLS handshake with {registry} failed"),
            Self::ClientCertificate => format!(
                "registry {registry} asks for a client certificate (mutual TLS) and did not accept this client's"
            ),
            Self::Timeout => format!("{registry} did not answer in time"),
            Self::Other => format!("the connection to {registry} broke"),
        }
    }

    fn next_move(self) -> &'static str {
        match self {
            Self::Refused => "check the registry's address and port, and that it is running",
            Self::Dns => "check the host name (a typo? a name only your VPN or /etc/hosts knows?)",
            Self::Tls => {
                "check that the registry speaks HTTPS on that port (a plain-HTTP registry needs insecure(true), the CLI's --insecure-registry)"
            }
            Self::ClientCertificate => {
                "put the client certificate and key it trusts in certs.d/<host:port>/ as client.cert and client.key (under /etc/docker/certs.d, /etc/containers/certs.d or ~/.config/containers/certs.d), or give them to the client (client_identity)"
            }
            Self::Timeout | Self::Other => {
                "check the network between here and the registry, and that the registry is healthy"
            }
        }
    }
}

/// What is wrong with a registry's TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// It is signed by a CA this client does not trust.
    UnknownIssuer,
    /// It is not valid for the name (or address) the registry was reached by.
    NameMismatch,
    /// It has expired.
    Expired,
    /// It is not valid yet.
    NotYetValid,
    /// Another reason, as the TLS library words it.
    Other(String),
}

impl CertificateProblem {
    /// What to do about it, for `registry` (`host[:port]`): where to put the CA
    /// that signed it, or what to have renewed or reissued.
    pub fn fix(&self, registry: &str) -> String {
        match self {
            Self::UnknownIssuer | Self::Other(_) => format!(
                "if the registry's CA is private, put it (PEM) in /etc/docker/certs.d/{registry}/ca.crt, /etc/containers/certs.d/{registry}/ or ~/.config/containers/certs.d/{registry}/ as Docker and Podman read it, or give it to the client (ca_certificates, the CLI's --registry-ca)"
            ),
            Self::NameMismatch => format!(
                "reach the registry by a name its certificate holds, or have the certificate reissued for {}",
                registry.rsplit_once(':').map_or(registry, |(host, _)| host)
            ),
            Self::Expired | Self::NotYetValid => {
                "have the registry's certificate renewed (or check this machine's clock)".to_owned()
            }
        }
    }
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownIssuer => f.write_str("it is signed by an unknown certificate authority"),
            Self::NameMismatch => {
                f.write_str("it is not valid for the name the registry was reached by")
            }
            Self::Expired => f.write_str("it has expired"),
            Self::NotYetValid => f.write_str("it is not valid yet"),
            Self::Other(reason) => f.write_str(reason),
        }
    }
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
