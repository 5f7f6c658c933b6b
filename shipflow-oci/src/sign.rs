//! [`ImageSigner`]: signs pushed images the way cosign does with a key, so that
//! sigstore verifiers (cosign, and containers/image's `sigstoreSigned` policy
//! in skopeo, Podman and CRI-O) accept them.
//!
//! The signature is an ECDSA P-256 signature (ASN.1 DER, SHA-256) of a "simple
//! signing" payload naming the repository and the manifest digest, stored as a
//! layer of the manifest tagged `sha256-<digest>.sig` in the image's repository,
//! with the signature in the layer's `dev.cosignproject.cosign/signature`
//! annotation. Signing is deterministic (RFC 6979): signing the same image with
//! the same key again gives the same signature manifest.

use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};
use shipflow_core::{Digest, ImageRef};

use crate::error::OciError;

/// The media type of a signature payload layer.
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding the base64 signature of a payload layer.
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The largest key file read.
const KEY_FILE_LIMIT: u64 = 64 * 1024;

/// An ECDSA P-256 private key that signs pushed images in the sigstore (cosign)
/// format. Its `Debug` output never shows the key.
///
/// ```
/// use shipflow_oci::{ImageSigner, RegistryClient};
/// # let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgiOO8qiDgUjnZqibo\nc5cTcUrxJ+lmmtKJNTAn66xfWiGhRANCAAQMJsHQ6wFQ0v6VHbhgAY0jxgGxhQtZ\nmuj16ootCxM/S64a2BpqaOp9Xaf7ekzVRgGKiyLiyD+qeMx7lAKAT0qf\n-----END PRIVATE KEY-----\n";
/// let signer = ImageSigner::from_pem(pem)?;   // or ImageSigner::from_pem_file("cosign.pem")
/// println!("verify with:\n{}", signer.public_key_pem());
/// let client = RegistryClient::builder().sign_with(signer).build()?;
/// # Ok::<(), shipflow_oci::OciError>(())
/// ```
#[derive(Clone)]
pub struct ImageSigner {
    key: SigningKey,
}

impl std::fmt::Debug for ImageSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageSigner(<ECDSA P-256 key>)")
    }
}

impl ImageSigner {
    /// A signer from a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, as
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes)
    /// or SEC1 (`BEGIN EC PRIVATE KEY`, as `openssl ecparam -genkey -name
    /// prime256v1` writes), unencrypted.
    pub fn from_pem(pem: &str) -> Result<Self, OciError> {
        let key = if pem.contains("BEGIN EC PRIVATE KEY") {
            p256::SecretKey::from_sec1_pem(pem)
                .map(SigningKey::from)
                .map_err(|e| e.to_string())
        } else if pem.contains("BEGIN PRIVATE KEY") {
            SigningKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())
        } else if pem.contains("ENCRYPTED") {
            Err("the key is encrypted; give it decrypted (openssl pkey -in KEY -out PLAIN)".into())
        } else {
            Err("no PEM private key (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY) found".into())
        };
        key.map(|key| Self { key })
            .map_err(|reason| OciError::Client {
                reason: format!("the signing key is not an ECDSA P-256 private key: {reason}"),
                source: None,
            })
    }

    /// A signer from the PEM file at `path` (see [`Self::from_pem`]). The error
    /// names the file, never its content.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, OciError> {
        use std::io::Read as _;
        let path = path.as_ref();
        let mut pem = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(KEY_FILE_LIMIT).read_to_string(&mut pem))
            .map_err(|e| OciError::Client {
                reason: format!("cannot read the signing key file {}", path.display()),
                source: Some(Box::new(e)),
            })?;
        Self::from_pem(&pem).map_err(|e| match e {
            OciError::Client { reason, source } => OciError::Client {
                reason: format!("{}: {reason}", path.display()),
                source,
            },
            other => other,
        })
    }

    /// The public key, PEM (`BEGIN PUBLIC KEY`), that verifiers are given
    /// (cosign's `--key`, a `policy.json` `keyPath`).
    pub fn public_key_pem(&self) -> String {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The simple-signing payload for `digest` pushed to `target`'s repository,
    /// and its signature (base64 of the DER signature).
    pub(crate) fn sign(&self, target: &ImageRef, digest: &Digest) -> (Vec<u8>, String) {
        let payload = json!({
            "critical": {
                "identity": {"docker-reference": target.name()},
                "image": {"docker-manifest-digest": digest.to_string()},
                "type": "cosign container image signature",
            },
            "optional": Value::Null,
        });
        let payload = serde_json::to_vec(&payload).unwrap_or_default();
        let signature: Signature = self.key.sign(&payload);
        let encoded = base64::engine::general_purpose::STANDARD.encode(signature.to_der());
        (payload, encoded)
    }
}

/// The tag cosign keeps the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}.sig", crate::layout::referrers_tag(digest))
}

/// The config of a signature manifest whose payload layers are `payloads`
/// (cosign writes the same shape).
pub(crate) fn signature_config(payloads: &[Digest]) -> Vec<u8> {
    let config = json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": payloads.iter().map(ToString::to_string).collect::<Vec<_>>()},
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier as _;

    use super::*;

    const PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgiOO8qiDgUjnZqibo\nc5cTcUrxJ+lmmtKJNTAn66xfWiGhRANCAAQMJsHQ6wFQ0v6VHbhgAY0jxgGxhQtZ\nmuj16ootCxM/S64a2BpqaOp9Xaf7ekzVRgGKiyLiyD+qeMx7lAKAT0qf\n-----END PRIVATE KEY-----\n";

    #[test]
    fn signatures_verify_are_deterministic_and_the_key_never_shows() {
        let signer = ImageSigner::from_pem(PKCS8).expect("key");
        let target: ImageRef = "r.io/team/api:v1".parse().expect("ref");
        let digest = Digest::sha256(b"manifest");
        let (payload, sig) = signer.sign(&target, &digest);
        let (again, sig_again) = signer.sign(&target, &digest);
        assert_eq!(
            (payload.clone(), sig.clone()),
            (again, sig_again),
            "RFC 6979"
        );
        let der = base64::engine::general_purpose::STANDARD
            .decode(&sig)
            .expect("base64");
        let signature = Signature::from_der(&der).expect("DER");
        VerifyingKey::from(&signer.key)
            .verify(&payload, &signature)
            .expect("verifies");
        let text = String::from_utf8(payload).expect("utf-8");
        assert!(
            text.contains("\"docker-reference\":\"r.io/team/api\""),
            "{text}"
        );
        assert_eq!(format!("{signer:?}"), "ImageSigner(<ECDSA P-256 key>)");
        assert!(
            signer
                .public_key_pem()
                .starts_with("-----BEGIN PUBLIC KEY-----")
        );
        let err = ImageSigner::from_pem(
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .expect_err("not P-256");
        assert!(
            err.to_string().contains("not an ECDSA P-256 private key"),
            "{err}"
        );
    }
}
