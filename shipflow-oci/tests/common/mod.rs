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
use shipflow_oci::testing::TokenService;

pub mod hostile;

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

    /// Starts a registry that wants bearer tokens from `tokens`.
    pub fn start_with_token_auth(tokens: &TokenService) -> Self {
        Self {
            inner: shipflow_oci::testing::TestRegistry::start_with_token_auth(tokens)
                .unwrap_or_else(|e| panic!("the test registry does not start: {e}")),
            _auth_dir: None,
        }
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
                // A TLS hello (the client trying HTTPS first) goes to the plain
                // registry, which answers it as such: faults are for requests.
                let mut first = [0u8; 1];
                let tls_hello = matches!(client.peek(&mut first), Ok(1) if first[0] == 0x16);
                if !tls_hello && let Some((status, headers, body)) = faults.pop_front() {
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

/// Runs `program args` with `envs`, returning (success, stdout, stderr).
pub fn run_with(program: &str, args: &[&str], envs: &[(&str, &Path)]) -> (bool, String, String) {
    let path = which(program).unwrap_or_else(|| {
        panic!("`{program}` is not installed (not on PATH): this test needs it; apt-get install -y {program}")
    });
    let out = Command::new(path)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `podman` command line with storage and configuration of its own in a temp
/// dir (runtime runc, no default ulimits, the loopback registry `registry`
/// trusted over plain HTTP), so tests never share images.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new(registry: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        std::fs::write(
            d.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n",
        )
        .expect("containers.conf");
        std::fs::write(
            d.join("registries.conf"),
            format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"),
        )
        .expect("registries.conf");
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("storage").display(),
                d.join("run").display()
            ),
        )
        .expect("storage.conf");
        Self { dir }
    }

    /// Runs podman with `args`: (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let d = self.dir.path();
        let (conf, registries, storage) = (
            d.join("containers.conf"),
            d.join("registries.conf"),
            d.join("storage.conf"),
        );
        run_with(
            "podman",
            args,
            &[
                ("CONTAINERS_CONF", conf.as_path()),
                ("CONTAINERS_REGISTRIES_CONF", registries.as_path()),
                ("CONTAINERS_STORAGE_CONF", storage.as_path()),
            ],
        )
    }
}

/// The requests a `docker-registry` log records (`"METHOD /v2/… HTTP/1.1"
/// status`), in order, as `METHOD path status`. The readiness probe of
/// `TestRegistry` (HTTP/1.0) is left out.
pub fn access_log(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let start = line
                .find("\"GET /v2/")
                .or_else(|| line.find("\"HEAD /v2/"))
                .or_else(|| line.find("\"PUT /v2/"))
                .or_else(|| line.find("\"POST /v2/"))
                .or_else(|| line.find("\"PATCH /v2/"))?;
            let rest = &line[start + 1..];
            let end = rest.find(" HTTP/1.1\"")?;
            let status = rest[end..].split('"').nth(1)?.split_whitespace().next()?;
            Some(format!("{} {status}", &rest[..end]))
        })
        .collect()
}
