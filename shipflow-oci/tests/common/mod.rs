//! Test harness: a real `docker-registry` (CNCF Distribution) on a free loopback
//! port with its own storage, and helpers that write test images into an OCI layout.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use shipflow_core::{ImageRef, LocalImage};
use shipflow_oci::OciLayout;

/// A running `docker-registry` (the crate's `testing::TestRegistry`), with the auth
/// files it reads kept alive beside it.
pub struct TestRegistry {
    inner: shipflow_oci::testing::TestRegistry,
    _auth_dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for TestRegistry {
    type Target = shipflow_oci::testing::TestRegistry;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> Self {
        Self::start_with_auth_section(String::new(), None)
    }

    /// Starts a registry that requires basic auth for `user` / `password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the auth files");
        let hash = bcrypt::hash(password, 4).expect("bcrypt hash");
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
        let section = format!(
            "auth:\n  htpasswd:\n    realm: shipflow-test\n    path: {}\n",
            htpasswd.display()
        );
        Self::start_with_auth_section(section, Some(dir))
    }

    fn start_with_auth_section(section: String, dir: Option<tempfile::TempDir>) -> Self {
        Self {
            inner: shipflow_oci::testing::TestRegistry::start_with(&section)
                .unwrap_or_else(|e| panic!("the test registry does not start: {e}")),
            _auth_dir: dir,
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `len` bytes of deterministic noise derived from `seed` (incompressible, distinct per seed).
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Writes an image made of `layers` (plus a config naming them) into `layout`
/// under `tag`, and returns it as a `LocalImage` of app `app`.
pub fn write_image(layout: &OciLayout, app: &str, tag: &str, layers: &[Vec<u8>]) -> LocalImage {
    let blobs: Vec<_> = layers
        .iter()
        .map(|l| layout.write_blob(l, LAYER_MEDIA_TYPE).expect("write layer"))
        .collect();
    let diff_ids: Vec<String> = blobs.iter().map(|b| b.digest.to_string()).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"app": app}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = layout
        .write_blob(
            &serde_json::to_vec(&config).expect("config json"),
            CONFIG_MEDIA_TYPE,
        )
        .expect("write config");
    let descriptor = |media_type: &str, b: &shipflow_core::Blob| serde_json::json!({"mediaType": media_type, "digest": b.digest.to_string(), "size": b.size});
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": shipflow_oci::OCI_MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": blobs.iter().map(|b| descriptor(LAYER_MEDIA_TYPE, b)).collect::<Vec<_>>(),
    });
    layout
        .put_manifest(&serde_json::to_vec(&manifest).expect("manifest json"), tag)
        .expect("put manifest");
    layout.local_image(app, tag).expect("local image")
}

/// Three layers of a few hundred KB each, distinct per `seed`.
pub fn three_layers(seed: &str) -> Vec<Vec<u8>> {
    (0..3)
        .map(|i| noise(&format!("{seed}-{i}"), 200_000 + i * 50_000))
        .collect()
}

/// Runs `program args` and returns stdout, panicking with stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let path = which(program).unwrap_or_else(|| {
        panic!("`{program}` is not installed (not on PATH): this test needs it; apt-get install -y {program}")
    });
    let out = Command::new(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A fresh OCI layout in a temp dir (kept alive by the returned guard).
pub fn temp_layout() -> (tempfile::TempDir, OciLayout) {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = OciLayout::create(dir.path().join("layout")).expect("create layout");
    (dir, layout)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// What a [`TokenService`] does with a request for actions its rule does not grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Leaves them out of the token and grants the rest, as Docker's token spec
    /// says a token server does (and Docker Hub does).
    Narrow,
    /// Answers 403 Forbidden and grants nothing, as some token servers do.
    Forbid,
}

/// Which actions (`pull`, `push`) the user may take on a repository.
type Rule = Box<dyn Fn(&str) -> Vec<&'static str> + Send>;

/// A bearer-token service for a registry: a self-signed RSA certificate (made with
/// the `openssl` CLI) whose key signs a JWT per request, granting the actions the
/// request's scopes ask for as far as a rule allows; a loopback HTTP server hands
/// those tokens to clients with the right basic credentials. Nothing it handles is
/// printed: neither the credentials nor the tokens.
pub struct TokenService {
    pub realm: String,
    pub cert: PathBuf,
    /// The query strings of the token requests served (with and without valid
    /// credentials). They hold no secret: credentials travel in a header.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

pub const TOKEN_SERVICE: &str = "shipflow-registry";
pub const TOKEN_ISSUER: &str = "shipflow-test-issuer";

impl TokenService {
    /// Grants pull and push on `repository`, nothing elsewhere.
    pub fn start(user: &str, password: &str, repository: &str) -> Self {
        let repository = repository.to_owned();
        Self::start_with_rule(user, password, Refusal::Narrow, move |name| {
            if name == repository {
                vec!["pull", "push"]
            } else {
                Vec::new()
            }
        })
    }

    /// Grants, for each repository a request's scopes name, the requested actions
    /// that `rule(repository)` allows; what it does not allow is handled as `refusal` says.
    pub fn start_with_rule(
        user: &str,
        password: &str,
        refusal: Refusal,
        rule: impl Fn(&str) -> Vec<&'static str> + Send + 'static,
    ) -> Self {
        let rule: Rule = Box::new(rule);
        let dir = tempfile::tempdir().expect("temp dir for the token service");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        run(
            "openssl",
            &[
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
                path_str(&key),
                "-out",
                path_str(&cert),
            ],
        );
        let der = dir.path().join("cert.der");
        run(
            "openssl",
            &[
                "x509",
                "-in",
                path_str(&cert),
                "-outform",
                "DER",
                "-out",
                path_str(&der),
            ],
        );
        let der = std::fs::read(&der).expect("cert der");
        let signer = Signer {
            key,
            header: serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [base64(&der, STANDARD)]}),
            user: user.to_owned(),
            issued: std::collections::HashMap::new(),
        };

        let expected_auth = format!(
            "basic {}",
            base64(format!("{user}:{password}").as_bytes(), STANDARD)
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("token service port");
        let port = listener.local_addr().expect("addr").port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            let mut signer = signer;
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
                if let Ok(mut seen) = seen.lock() {
                    seen.push(target.clone());
                }
                let (status, body) = if !authorized {
                    (
                        "401 Unauthorized",
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#
                            .to_owned(),
                    )
                } else {
                    let requested = requested_access(&target);
                    let granted = grant(&requested, &rule);
                    if refusal == Refusal::Forbid && granted != requested {
                        (
                            "403 Forbidden",
                            r#"{"errors":[{"code":"DENIED","message":"requested access is not granted"}]}"#
                                .to_owned(),
                        )
                    } else {
                        match signer.token(&granted) {
                            Some(token) => (
                                "200 OK",
                                serde_json::json!({"token": token, "expires_in": 3600}).to_string(),
                            ),
                            None => (
                                "500 Internal Server Error",
                                r#"{"errors":[{"code":"UNKNOWN","message":"signing failed"}]}"#
                                    .to_owned(),
                            ),
                        }
                    }
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

    /// The scopes of each token request served, in order, decoded
    /// (e.g. `["repository:team/api:pull,push", "repository:team/base:pull"]`).
    pub fn scopes(&self) -> Vec<Vec<String>> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .map(|target| {
                query_pairs(target)
                    .into_iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect()
    }
}

/// Repository → actions, sorted, so that two grants compare equal when they grant the same.
type Access = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The decoded query parameters of a request target such as `/token?scope=…`.
fn query_pairs(target: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://token.invalid{target}"))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// The repository access a token request's `scope` parameters ask for (each may hold
/// several space-separated scopes; scopes of other resource types are ignored).
fn requested_access(target: &str) -> Access {
    let mut access = Access::new();
    for (_, scope) in query_pairs(target)
        .into_iter()
        .filter(|(k, _)| k == "scope")
    {
        for one in scope.split_whitespace() {
            let Some(("repository", rest)) = one.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            access
                .entry(name.to_owned())
                .or_default()
                .extend(actions.split(',').map(str::to_owned));
        }
    }
    access
}

/// What of `requested` the rule allows.
fn grant(requested: &Access, rule: &Rule) -> Access {
    requested
        .iter()
        .filter_map(|(name, actions)| {
            let allowed = rule(name);
            let granted: std::collections::BTreeSet<String> = actions
                .iter()
                .filter(|a| allowed.contains(&a.as_str()))
                .cloned()
                .collect();
            (!granted.is_empty()).then(|| (name.clone(), granted))
        })
        .collect()
}

/// Signs JWTs for the token service with the `openssl` CLI (one per distinct grant).
struct Signer {
    key: PathBuf,
    header: serde_json::Value,
    user: String,
    issued: std::collections::HashMap<Access, String>,
}

impl Signer {
    /// A token granting `access`, or `None` when `openssl` fails.
    fn token(&mut self, access: &Access) -> Option<String> {
        if let Some(token) = self.issued.get(access) {
            return Some(token.clone());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let access_claim: Vec<_> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": self.user, "aud": TOKEN_SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60,
            "jti": format!("shipflow-test-{}", self.issued.len()),
            "access": access_claim,
        });
        let signing_input = format!(
            "{}.{}",
            base64(self.header.to_string().as_bytes(), URL_SAFE),
            base64(claims.to_string().as_bytes(), URL_SAFE)
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign", path_str(&self.key)])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()?
            .write_all(signing_input.as_bytes())
            .ok()?;
        let out = child.wait_with_output().ok()?;
        if !out.status.success() || out.stdout.is_empty() {
            return None;
        }
        let token = format!("{signing_input}.{}", base64(&out.stdout, URL_SAFE));
        self.issued.insert(access.clone(), token.clone());
        Some(token)
    }
}

impl TestRegistry {
    /// Starts a registry that wants bearer tokens from `tokens`.
    pub fn start_with_token_auth(tokens: &TokenService) -> Self {
        Self::start_with_auth_section(
            format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                tokens.realm,
                tokens.cert.display()
            ),
            None,
        )
    }
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

/// A loopback TCP proxy in front of a registry that answers the first requests
/// with canned failures (each on its own connection, then closes it), and pipes
/// every later connection through to the registry untouched.
pub struct FaultProxy {
    port: u16,
    /// How many canned failures were served.
    pub served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultProxy {
    /// `faults` are `(status line, extra headers, body)`, served in order.
    pub fn start(
        upstream_port: u16,
        faults: Vec<(&'static str, &'static str, &'static str)>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("addr").port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            let mut faults = std::collections::VecDeque::from(faults);
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                if let Some((status, headers, body)) = faults.pop_front() {
                    let mut buf = [0u8; 4096];
                    let _ = client.read(&mut buf);
                    let _ = write!(
                        client,
                        "HTTP/1.1 {status}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                let mut upstream = upstream;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client, &mut upstream);
                    let _ = upstream.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port, served }
    }

    /// A reference through the proxy.
    pub fn reference(&self, repo_and_tag: &str) -> ImageRef {
        format!("127.0.0.1:{}/{repo_and_tag}", self.port)
            .parse()
            .expect("valid test reference")
    }
}

enum Cut {
    AtBytes(Vec<u64>),
    PatchBodies(Vec<usize>),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A loopback TCP proxy in front of a registry that resets the connection (TCP RST)
/// carrying the request bytes past `reset_at` (counted over everything sent to the
/// registry), once per entry of `reset_at`, and pipes everything else through.
pub struct ResetProxy {
    port: u16,
    /// How many connections were reset.
    pub resets: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ResetProxy {
    /// `reset_at`: byte counts (ascending) at which to cut the upload.
    pub fn start(upstream_port: u16, reset_at: Vec<u64>) -> Self {
        Self::start_with(upstream_port, Cut::AtBytes(reset_at))
    }

    /// Resets the connection right after the headers of the `nth` (1-based)
    /// `PATCH` requests, before any of their body reaches the registry.
    pub fn cut_patch_bodies(upstream_port: u16, nth: Vec<usize>) -> Self {
        Self::start_with(upstream_port, Cut::PatchBodies(nth))
    }

    fn start_with(upstream_port: u16, cut: Cut) -> Self {
        let (reset_at, patch_cuts) = match cut {
            Cut::AtBytes(at) => (at, Vec::new()),
            Cut::PatchBodies(nth) => (Vec::new(), nth),
        };
        let patches_seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("addr").port();
        let resets = Arc::new(AtomicUsize::new(0));
        let counted = resets.clone();
        let forwarded = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(Mutex::new(std::collections::VecDeque::from(reset_at)));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                let (forwarded, pending, counted) =
                    (forwarded.clone(), pending.clone(), counted.clone());
                let (patches_seen, patch_cuts) = (patches_seen.clone(), patch_cuts.clone());
                std::thread::spawn(move || {
                    let (mut client, mut upstream) = (client, upstream);
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let before = forwarded.fetch_add(n as u64, Ordering::SeqCst);
                        let patch_cut = find(&buf[..n], b"PATCH /").and_then(|start| {
                            let nth = patches_seen.fetch_add(1, Ordering::SeqCst) + 1;
                            let end = find(&buf[start..n], b"\r\n\r\n")? + start + 4;
                            patch_cuts.contains(&nth).then_some(end)
                        });
                        let cut = patch_cut.or_else(|| {
                            let mut pending = pending.lock().expect("reset plan");
                            match pending.front() {
                                Some(&at) if before + n as u64 > at => {
                                    pending.pop_front();
                                    Some((at.saturating_sub(before)) as usize)
                                }
                                _ => None,
                            }
                        });
                        if let Some(keep) = cut {
                            let _ = upstream.write_all(&buf[..keep]);
                            for s in [&client, &upstream] {
                                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                            }
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            let _ = upstream.shutdown(std::net::Shutdown::Both);
                            counted.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        if upstream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = upstream.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port, resets }
    }

    /// A reference through the proxy.
    pub fn reference(&self, repo_and_tag: &str) -> ImageRef {
        format!("127.0.0.1:{}/{repo_and_tag}", self.port)
            .parse()
            .expect("valid test reference")
    }
}
