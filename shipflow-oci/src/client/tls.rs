//! TLS per registry, the way Docker and Podman configure it: the system's trust
//! store, plus the CAs (`*.crt`) and client certificate pairs (`*.cert` with
//! `*.key`) in `certs.d/<host[:port]>/` under each certs.d root, plus the CAs and
//! client identity given to the builder. An insecure registry gets HTTPS without
//! verification. The certificate a verifier rejects is kept, so that the error
//! can say what it was (subject, issuer, names, validity).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::transport::lock;
use crate::error::{CertificateProblem, OciError};

/// The certs.d roots Docker and Podman read, in their order.
pub(super) fn default_certs_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![
        PathBuf::from("/etc/docker/certs.d"),
        PathBuf::from("/etc/containers/certs.d"),
    ];
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        dirs.push(Path::new(&home).join(".config/containers/certs.d"));
    }
    dirs
}

/// What the builder was told about TLS.
#[derive(Clone, Default)]
pub(super) struct TlsSettings {
    /// certs.d roots, searched for `<host[:port]>/`.
    pub(super) certs_dirs: Vec<PathBuf>,
    /// Extra CAs for every registry: (where they came from, PEM).
    pub(super) cas: Vec<(String, Vec<u8>)>,
    /// A client certificate chain and key (PEM) for every registry.
    pub(super) identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("certs_dirs", &self.certs_dirs)
            .field(
                "cas",
                &self.cas.iter().map(|(from, _)| from).collect::<Vec<_>>(),
            )
            .field("identity", &self.identity.as_ref().map(|_| "<client key>"))
            .finish()
    }
}

/// The certificate the last failed verification was shown.
pub(super) type Rejected = Arc<Mutex<Option<CertificateDer<'static>>>>;

/// The crypto provider this build selected (features `aws-lc-rs`, `ring`).
fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    {
        Arc::new(rustls::crypto::ring::default_provider())
    }
}

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
compile_error!(
    "shipflow-oci needs a TLS crypto provider: enable the `aws-lc-rs` or `ring` feature"
);

fn setup_error(reason: String, source: impl Into<shipflow_core::BoxError>) -> OciError {
    OciError::Client {
        reason,
        source: Some(source.into()),
    }
}

/// The rustls configuration for `registry` (`host[:port]`).
pub(super) fn client_config(
    settings: &TlsSettings,
    registry: &str,
    verify: bool,
    rejected: &Rejected,
) -> Result<rustls::ClientConfig, OciError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup_error("no TLS protocol version is available".into(), e))?
        .dangerous();
    let builder = if verify {
        let mut roots = Vec::new();
        for (from, pem) in &settings.cas {
            roots.extend(parse_certificates(from, pem)?);
        }
        let found = certs_d(settings, registry)?;
        roots.extend(found.cas);
        let verifier = if roots.is_empty() {
            rustls_platform_verifier::Verifier::new(provider)
        } else {
            rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider)
        }
        .map_err(|e| {
            let whose = if registry.is_empty() {
                "the system's trust store".to_owned()
            } else {
                format!("the trust store for {registry}")
            };
            setup_error(
                format!("{whose} cannot be built (a minimal image needs its CA certificates, e.g. /etc/ssl/certs/ca-certificates.crt)"),
                e,
            )
        })?;
        let builder = builder.with_custom_certificate_verifier(Arc::new(Recording {
            inner: verifier,
            rejected: rejected.clone(),
        }));
        match settings.identity.as_ref().map(|(cert, key)| {
            Ok::<_, OciError>((
                parse_certificates("the client certificate", cert)?,
                parse_key("the client key", key)?,
            ))
        }) {
            Some(identity) => {
                let (chain, key) = identity?;
                builder.with_client_auth_cert(chain, key)
            }
            None => match found.identity {
                Some((chain, key)) => builder.with_client_auth_cert(chain, key),
                None => Ok(builder.with_no_client_auth()),
            },
        }
        .map_err(|e| {
            setup_error(
                format!("the client certificate for {registry} is not usable"),
                e,
            )
        })?
    } else {
        builder
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth()
    };
    let mut config = builder;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What certs.d holds for a registry.
struct CertsD {
    cas: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// Reads `<root>/<registry>/` under every certs.d root: `*.crt` are CAs, and a
/// `*.cert` with the `*.key` of the same name is a client certificate (Docker's
/// rules; a `.cert` without its `.key` is an error, as there).
fn certs_d(settings: &TlsSettings, registry: &str) -> Result<CertsD, OciError> {
    let mut found = CertsD {
        cas: Vec::new(),
        identity: None,
    };
    // A registry name never walks out of the root.
    if registry.is_empty() || registry.contains('/') || registry.contains("..") {
        return Ok(found);
    }
    for root in &settings.certs_dirs {
        let dir = root.join(registry);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        files.sort();
        for file in &files {
            let shown = file.display().to_string();
            match file.extension().and_then(|e| e.to_str()) {
                Some("crt") => {
                    let pem = read(file)?;
                    found.cas.extend(parse_certificates(&shown, &pem)?);
                    tracing::debug!(%registry, file = %shown, "trusting the CAs of a certs.d file");
                }
                Some("cert") if found.identity.is_none() => {
                    let key = file.with_extension("key");
                    if !key.is_file() {
                        return Err(OciError::Client {
                            reason: format!(
                                "{shown} has no {} beside it: a client certificate needs its key",
                                key.display()
                            ),
                            source: None,
                        });
                    }
                    let chain = parse_certificates(&shown, &read(file)?)?;
                    let key_shown = key.display().to_string();
                    let key = parse_key(&key_shown, &read(&key)?)?;
                    tracing::debug!(%registry, file = %shown, "using a certs.d client certificate");
                    found.identity = Some((chain, key));
                }
                _ => {}
            }
        }
    }
    Ok(found)
}

fn read(path: &Path) -> Result<Vec<u8>, OciError> {
    std::fs::read(path).map_err(|e| setup_error(format!("cannot read {}", path.display()), e))
}

fn parse_certificates(from: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, OciError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup_error(format!("{from} is not PEM certificates"), e))?;
    if certificates.is_empty() {
        return Err(OciError::Client {
            reason: format!("{from} holds no PEM certificate"),
            source: None,
        });
    }
    Ok(certificates)
}

/// A private key; the error never quotes the file.
fn parse_key(from: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, OciError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| OciError::Client {
        reason: format!("{from} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"),
        source: None,
    })
}

/// A verifier that keeps the certificate it rejected.
#[derive(Debug)]
struct Recording {
    inner: rustls_platform_verifier::Verifier,
    rejected: Rejected,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if verified.is_err() {
            *lock(&self.rejected) = Some(end_entity.clone().into_owned());
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// An insecure registry's verifier: any certificate, any name (the handshake's
/// signatures are still checked, so the session is with the key's holder).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate problem a TLS error names, if it is one.
pub(super) fn certificate_problem(error: &rustls::Error) -> Option<CertificateProblem> {
    let rustls::Error::InvalidCertificate(error) = error else {
        return None;
    };
    Some(match error {
        CertificateError::UnknownIssuer => CertificateProblem::UnknownIssuer,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            CertificateProblem::NameMismatch
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            CertificateProblem::Expired
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            CertificateProblem::NotYetValid
        }
        other => CertificateProblem::Other(format!("{other:?}")),
    })
}

/// What a certificate says about itself, for an error message: subject, issuer,
/// the names it is valid for, and its validity period.
pub(super) fn describe(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = certificate.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names
                        .push(std::net::Ipv4Addr::from([ip[0], ip[1], ip[2], ip[3]]).to_string()),
                    16 => {
                        let mut octets = [0u8; 16];
                        octets.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(octets).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let validity = certificate.validity();
    Some(format!(
        "a certificate for {} (subject {}), issued by {}, valid from {} to {}",
        if names.is_empty() {
            "no names".to_owned()
        } else {
            names.join(", ")
        },
        certificate.subject(),
        certificate.issuer(),
        validity.not_before,
        validity.not_after
    ))
}
