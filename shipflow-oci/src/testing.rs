//! A real registry for tests: [`TestRegistry`] runs CNCF Distribution's
//! `docker-registry` on a free loopback port with its own storage, and stops it on
//! drop; [`TokenService`] hands out the bearer tokens of a registry started with
//! [`TestRegistry::start_with_token_auth`]. Behind the `testing` feature, for
//! shipflow's tests and for users testing their own pipelines against a real
//! registry.
//!
//! ```no_run
//! use shipflow_oci::testing::TestRegistry;
//!
//! let registry = TestRegistry::start()?;
//! let target = registry.reference("team/api:v1");
//! assert!(target.is_loopback());
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shipflow_core::ImageRef;

mod token;

pub use token::{Refusal, TOKEN_ISSUER, TOKEN_SERVICE, TokenService};

const BINARY: &str = "docker-registry";

/// A running `docker-registry`, killed on drop.
#[derive(Debug)]
pub struct TestRegistry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts an anonymous registry.
    pub fn start() -> io::Result<Self> {
        Self::start_with("")
    }

    /// Starts a registry whose config has `extra` appended (top-level YAML keys,
    /// e.g. an `auth:` section). Fails, never skips, when `docker-registry` is not
    /// installed.
    pub fn start_with(extra: &str) -> io::Result<Self> {
        Self::start_serving("", extra)
    }

    /// Starts an anonymous registry serving HTTPS with `certificate` and `key`
    /// (PEM files); with `client_cas`, it requires a client certificate signed by
    /// one of them (mutual TLS).
    pub fn start_tls(
        certificate: &Path,
        key: &Path,
        client_cas: Option<&Path>,
    ) -> io::Result<Self> {
        let mut tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            certificate.display(),
            key.display()
        );
        if let Some(cas) = client_cas {
            tls.push_str(&format!("    clientcas:\n      - {}\n", cas.display()));
        }
        Self::start_serving(&tls, "")
    }

    /// `http_extra`: lines under `http:` (indented two spaces); `extra`: top-level keys.
    fn start_serving(http_extra: &str, extra: &str) -> io::Result<Self> {
        let binary = which(BINARY).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "`{BINARY}` is not installed (not on PATH): install it with \
                     `apt-get install -y docker-registry`"
                ),
            )
        })?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{http_extra}{extra}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut registry = Self { child, port, dir };
        registry.wait_ready(!http_extra.is_empty())?;
        Ok(registry)
    }

    /// Starts a registry that wants bearer tokens from `tokens` (its config's
    /// `auth:` section is [`TokenService::registry_auth`]).
    pub fn start_with_token_auth(tokens: &TokenService) -> io::Result<Self> {
        Self::start_with(&tokens.registry_auth())
    }

    /// Waits for `GET /v2/` to answer; a TLS registry answers a plain request 400.
    fn wait_ready(&mut self, tls: bool) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "docker-registry exited with {status} before answering; log:\n{}",
                    self.log()
                )));
            }
            // 200 when anonymous, 401 when auth is on: either way it answers.
            match http_status(self.port, "/v2/") {
                Some(200 | 401) => return Ok(()),
                Some(400) if tls => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "docker-registry did not answer GET /v2/ on port {} within 20 s; log:\n{}",
                        self.port,
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id of the `docker-registry` process (to read its CPU time, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A reference into this registry, e.g. `reference("team/api:v1")`.
    ///
    /// # Panics
    ///
    /// When `repo_and_tag` does not make a valid reference (a bug in the test).
    pub fn reference(&self, repo_and_tag: &str) -> ImageRef {
        format!("{}/{repo_and_tag}", self.host())
            .parse()
            .unwrap_or_else(|e| panic!("{repo_and_tag}: not a valid reference: {e}"))
    }

    /// The directory holding the registry's config, log and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
