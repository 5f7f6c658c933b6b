//! [`TestPodman`]: Podman's Docker-compatible API service on its own socket.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{require, unique_prefix};
use crate::{DockerError, Endpoint, Engine};

/// A running `podman system service` with its own socket, configuration and image
/// and container storage (so services running at once never see each other's
/// images), its own `containers.conf` (runtime `runc`, no default ulimits: what
/// works on sandboxed machines) and `registries.conf` (the loopback registries it
/// may pull from over plain HTTP). On drop, its containers are removed and the
/// service is stopped.
#[derive(Debug)]
pub struct TestPodman {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
    prefix: String,
}

impl TestPodman {
    /// Starts the service, trusting `insecure_registries` (`host:port`) over plain
    /// HTTP. Fails, never skips, when `podman` or `runc` is not installed.
    pub fn start(insecure_registries: &[&str]) -> io::Result<Self> {
        let podman = require("podman", "podman")?;
        require("runc", "runc")?;
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::write(
            d.join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n",
        )?;
        let registries: String = insecure_registries
            .iter()
            .map(|r| format!("[[registry]]\nlocation = \"{r}\"\ninsecure = true\n"))
            .collect();
        std::fs::write(d.join("registries.conf"), registries)?;
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("storage").display(),
                d.join("run").display()
            ),
        )?;
        let socket = d.join("podman.sock");
        let log = std::fs::File::create(d.join("podman.log"))?;
        let child = Command::new(podman)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .envs(Self::env_of(d))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut podman = Self {
            dir,
            socket,
            child,
            prefix: unique_prefix('p'),
        };
        podman.wait_ready()?;
        Ok(podman)
    }

    fn env_of(dir: &Path) -> [(&'static str, PathBuf); 3] {
        [
            ("CONTAINERS_CONF", dir.join("containers.conf")),
            ("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf")),
            ("CONTAINERS_STORAGE_CONF", dir.join("storage.conf")),
        ]
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "podman system service exited with {status}; log:\n{}",
                    std::fs::read_to_string(self.dir.path().join("podman.log")).unwrap_or_default()
                )));
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "podman system service did not open its socket within 30 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The namespace of names for this service's containers and images, e.g.
    /// `p1a2b3-`: unique to this instance, as [`super::TestDocker::prefix`] is.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>`, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A scratch directory that lives as long as the service.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An [`Engine`] connected to the service.
    pub async fn engine(&self) -> Result<Engine, DockerError> {
        Engine::connect(Endpoint::Unix(self.socket.clone())).await
    }

    /// The environment that points the `podman` command line (or a script running
    /// it) at this service's configuration and storage.
    pub fn env(&self) -> [(&'static str, PathBuf); 3] {
        Self::env_of(self.dir.path())
    }

    /// A `podman` command line with this service's configuration and storage, so
    /// images it builds are the service's too.
    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.envs(self.env());
        command
    }

    /// Removes every container whose name starts with `prefix` (best effort).
    pub fn remove_containers(&self, prefix: &str) {
        let Ok(out) = self
            .command()
            .args(["ps", "-aq", "--filter", &format!("name=^{prefix}")])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = self
                .command()
                .args(["rm", "-f", "-t", "0"])
                .args(&ids)
                .output();
        }
    }
}

impl Drop for TestPodman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "-af", "-t", "0"]).output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
