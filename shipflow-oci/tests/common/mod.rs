//! Test harness: a real `docker-registry` (CNCF Distribution) on a free loopback
//! port with its own storage, and helpers that write test images into an OCI layout.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use shipflow_core::{ImageRef, LocalImage};
use shipflow_oci::OciLayout;

const BINARY: &str = "docker-registry";

/// A running `docker-registry`, killed on drop.
pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a registry that requires basic auth for `user` / `password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> Self {
        let binary = which(BINARY).unwrap_or_else(|| {
            panic!(
                "`{BINARY}` is not installed (not on PATH): these tests need a real registry; \
                 install it with `apt-get install -y docker-registry`"
            )
        });
        let dir = tempfile::tempdir().expect("temp dir for the registry");
        let port = free_port();
        let auth_section = match auth {
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt hash");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: shipflow-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_section}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut registry = Self { child, port, dir };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll registry") {
                panic!(
                    "docker-registry exited with {status} before answering; log:\n{}",
                    self.log()
                );
            }
            // 200 when anonymous, 401 when auth is on: either way it answers.
            if let Some(code) = http_status(self.port, "/v2/")
                && (code == 200 || code == 401)
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "docker-registry did not answer GET /v2/ on port {} within 20 s; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A reference into this registry, e.g. `reference("team/api:v1")`.
    pub fn reference(&self, repo_and_tag: &str) -> ImageRef {
        format!("{}/{repo_and_tag}", self.host())
            .parse()
            .expect("valid test reference")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many blobs the registry stores (across repositories).
    pub fn stored_blobs(&self) -> usize {
        let root = self.dir.path().join("data/docker/registry/v2/blobs/sha256");
        let Ok(prefixes) = std::fs::read_dir(root) else {
            return 0;
        };
        prefixes
            .filter_map(Result::ok)
            .filter_map(|p| std::fs::read_dir(p.path()).ok())
            .map(Iterator::count)
            .sum()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The status code of `GET path`, or `None` if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
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
