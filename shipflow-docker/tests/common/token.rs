//! A bearer-token service for the harness's registry (the scheme of Docker Hub, GHCR
//! and Harbor): a self-signed RSA certificate made with the `openssl` CLI whose key
//! signs one JWT granting pull and push on a repository, handed by a loopback HTTP
//! server to clients with the right basic credentials. As in shipflow-oci's tests.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

pub const SERVICE: &str = "shipflow-registry";
pub const ISSUER: &str = "shipflow-test-issuer";

pub struct TokenService {
    pub realm: String,
    pub cert: PathBuf,
    /// The paths and query strings of the token requests served.
    pub requests: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl TokenService {
    pub fn start(user: &str, password: &str, repository: &str) -> Self {
        let openssl = super::require("openssl", "openssl");
        let dir = tempfile::tempdir().expect("temp dir for the token service");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let der = dir.path().join("cert.der");
        let openssl_run = |args: &[&str]| {
            let out = Command::new(&openssl)
                .args(args)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl_run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=shipflow-test-token",
            "-keyout",
            text(&key),
            "-out",
            text(&cert),
        ]);
        openssl_run(&[
            "x509",
            "-in",
            text(&cert),
            "-outform",
            "DER",
            "-out",
            text(&der),
        ]);
        let der = std::fs::read(&der).expect("cert der");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let header =
            serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [base64(&der, STANDARD)]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user, "aud": SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": "shipflow-test",
            "access": [{"type": "repository", "name": repository, "actions": ["pull", "push"]}],
        });
        let signing_input = format!(
            "{}.{}",
            base64(header.to_string().as_bytes(), URL_SAFE),
            base64(claims.to_string().as_bytes(), URL_SAFE)
        );
        let input = dir.path().join("input");
        std::fs::write(&input, &signing_input).expect("write signing input");
        let sig = dir.path().join("sig");
        openssl_run(&[
            "dgst",
            "-sha256",
            "-sign",
            text(&key),
            "-out",
            text(&sig),
            text(&input),
        ]);
        let sig = std::fs::read(&sig).expect("signature");
        let token = format!("{signing_input}.{}", base64(&sig, URL_SAFE));

        let expected_auth = format!(
            "basic {}",
            base64(format!("{user}:{password}").as_bytes(), STANDARD)
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("token service port");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let authorized = head.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:")
                        && l.split_once(':')
                            .map(|(_, v)| v.trim().to_ascii_lowercase())
                            == Some(expected_auth.to_ascii_lowercase())
                });
                seen.lock().expect("lock").push(target);
                let (status, body) = if authorized {
                    (
                        "200 OK",
                        serde_json::json!({"token": token, "expires_in": 3600}).to_string(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#
                            .to_owned(),
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            realm: format!("http://127.0.0.1:{port}/token"),
            cert,
            requests,
            _dir: dir,
        }
    }

    /// The `auth` section of a registry config that wants this service's tokens.
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert.display()
        )
    }
}

fn text(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 with `alphabet`; padded for the standard alphabet, unpadded for URL-safe (JWT).
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        if alphabet == STANDARD {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}
