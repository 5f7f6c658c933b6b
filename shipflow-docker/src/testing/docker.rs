//! [`TestDocker`]: the machine's Docker Engine, shared, with a namespace of names
//! per instance.

use std::io;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ids_of, require, unique_prefix};
use crate::{DockerError, Endpoint, Engine};

/// Docker's default socket.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The image label naming the instance whose test built the image.
const TEST_LABEL: &str = "dev.shipflow.test";

/// The machine's Docker Engine for a test. Unlike [`super::TestPodman`], its
/// containers and images are shared with everything else on the machine, other
/// tests included: name what you create with [`prefix`](Self::prefix) (apps,
/// containers, image repositories). On drop, the containers whose names start with
/// it are removed, and so are the images of the registries the instance was given.
///
/// Docker trusts plain-HTTP registries on `127.0.0.0/8` by default, and a test
/// cannot change the daemon's `insecure-registries`: other registries are refused.
#[derive(Debug)]
pub struct TestDocker {
    endpoint: Endpoint,
    socket: PathBuf,
    docker: PathBuf,
    prefix: String,
    registries: Vec<String>,
    /// `DOCKER_CONFIG` of the command line: logins stay in the test.
    config: tempfile::TempDir,
}

impl TestDocker {
    /// The Docker Engine on `/var/run/docker.sock`, pulling from
    /// `insecure_registries` (`host:port` on loopback).
    pub fn start(insecure_registries: &[&str]) -> io::Result<Self> {
        Self::at(PathBuf::from(DEFAULT_SOCKET), insecure_registries)
    }

    /// The Docker Engine on unix socket `socket`. Fails when the `docker` command
    /// line is missing, nothing answers on the socket, the engine there is Podman,
    /// or a registry is not on loopback.
    pub fn at(socket: PathBuf, insecure_registries: &[&str]) -> io::Result<Self> {
        let docker = require("docker", "docker.io")?;
        if let Some(far) = insecure_registries.iter().find(|r| !on_loopback(r)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "registry {far}: Docker Engine trusts plain-HTTP registries on 127.0.0.0/8 only (unless its daemon.json lists more); run the test registry on 127.0.0.1"
                ),
            ));
        }
        let this = Self {
            endpoint: Endpoint::Unix(socket.clone()),
            socket,
            docker,
            prefix: unique_prefix('d'),
            registries: insecure_registries
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
            config: tempfile::tempdir()?,
        };
        this.check()?;
        Ok(this)
    }

    /// That Docker (not Podman) answers on the socket.
    fn check(&self) -> io::Result<()> {
        let out = self
            .command()
            .args([
                "version",
                "--format",
                "{{.Server.Version}} {{json .Server.Components}}",
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no Docker Engine answers on {}: {}; start it (apt-get install -y docker.io; dockerd)",
                    self.socket.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        if text.to_ascii_lowercase().contains("podman") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is Podman's socket, not Docker Engine's",
                    self.socket.display()
                ),
            ));
        }
        Ok(())
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://<socket>`, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        self.endpoint.to_string()
    }

    /// The namespace of this instance's names, e.g. `d1a2b3x0-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// An [`Engine`] connected to the daemon.
    pub async fn engine(&self) -> Result<Engine, DockerError> {
        Engine::connect(self.endpoint.clone()).await
    }

    /// The environment that points the `docker` command line at this daemon with a
    /// configuration directory of the test's own (logins stay in it).
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("DOCKER_HOST", PathBuf::from(self.docker_host())),
            ("DOCKER_CONFIG", self.config.path().to_owned()),
        ]
    }

    /// A `docker` command line with [`env`](Self::env), and none of the caller's
    /// `DOCKER_CONTEXT` or TLS settings.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.docker);
        command
            .envs(self.env())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH");
        command
    }

    /// Removes every container whose name starts with `prefix` (best effort).
    pub fn remove_containers(&self, prefix: &str) {
        let mut list = self.command();
        list.args(["ps", "-aq", "--filter", &format!("name=^/?{prefix}")]);
        let ids = ids_of(list);
        if !ids.is_empty() {
            let _ = self.command().args(["rm", "-f"]).args(&ids).output();
        }
    }

    /// A Dockerfile line (`LABEL dev.shipflow.test="<prefix>"`, newline included)
    /// that gives the build steps after it a build-cache chain of this instance's
    /// own. Docker's classic builder reuses any image of the daemon as a cache
    /// step, and removing an image removes its untagged parents: a build sharing a
    /// cached step with another test fails ("unknown parent image ID") when that
    /// test removes its images meanwhile. The untagged images of the stages of such
    /// builds are removed on drop.
    pub fn dockerfile_label(&self) -> String {
        format!("LABEL {TEST_LABEL}=\"{}\"\n", self.prefix)
    }

    /// Removes the images of this instance's registries, by name (an image that
    /// another test tagged too keeps that tag), and the untagged ones its builds
    /// left (see [`dockerfile_label`](Self::dockerfile_label)).
    fn remove_images(&self) {
        let mut list = self.command();
        list.args([
            "images",
            "--digests",
            "--format",
            "{{.Repository}}|{{.Tag}}|{{.Digest}}",
        ]);
        let names: Vec<String> = ids_of(list)
            .iter()
            .filter_map(|line| {
                let mut parts = line.split('|');
                let (repo, tag, digest) = (parts.next()?, parts.next()?, parts.next()?);
                let ours = self
                    .registries
                    .iter()
                    .any(|r| repo.starts_with(&format!("{r}/")));
                match (ours, tag, digest) {
                    (false, _, _) => None,
                    (true, "<none>", "<none>") => None,
                    (true, "<none>", digest) => Some(format!("{repo}@{digest}")),
                    (true, tag, _) => Some(format!("{repo}:{tag}")),
                }
            })
            .collect();
        if !names.is_empty() {
            let _ = self.command().arg("rmi").args(&names).output();
        }
        let mut stages = self.command();
        stages.args(["images", "-q", "--filter", "dangling=true", "--filter"]);
        stages.arg(format!("label={TEST_LABEL}={}", self.prefix));
        let ids = ids_of(stages);
        if !ids.is_empty() {
            let _ = self.command().arg("rmi").args(&ids).output();
        }
    }
}

impl Drop for TestDocker {
    fn drop(&mut self) {
        self.remove_containers(&self.prefix.clone());
        self.remove_images();
    }
}

/// Whether `host:port` names a loopback address.
fn on_loopback(registry: &str) -> bool {
    let with_port = if registry.contains(':') {
        registry.to_owned()
    } else {
        format!("{registry}:443")
    };
    with_port
        .to_socket_addrs()
        .map(|mut addrs| addrs.all(|a| matches!(a.ip(), IpAddr::V4(ip) if ip.is_loopback())))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_registries_are_plain_http() {
        assert!(super::on_loopback("127.0.0.1:5000"));
        assert!(super::on_loopback("127.3.4.5:80"));
        assert!(!super::on_loopback("10.0.0.1:5000"));
    }
}
