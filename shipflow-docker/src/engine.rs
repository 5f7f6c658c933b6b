//! The connection to a Docker Engine or Podman through the Docker Engine API.

use std::fmt;
use std::path::PathBuf;

use bollard::{API_DEFAULT_VERSION, Docker};
use serde::Serialize;

use crate::DockerError;

const TIMEOUT_SECS: u64 = 300;

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket, e.g. `/run/podman/podman.sock`.
    Unix(PathBuf),
    /// A plain-HTTP TCP address, e.g. `127.0.0.1:2375`.
    Tcp(String),
}

impl Endpoint {
    /// Parses `unix:///path`, `tcp://host:port`, `http://host:port` or a bare socket path.
    pub fn parse(value: &str) -> Result<Self, DockerError> {
        if let Some(path) = value.strip_prefix("unix://") {
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = value
            .strip_prefix("tcp://")
            .or_else(|| value.strip_prefix("http://"))
        {
            Ok(Self::Tcp(addr.trim_end_matches('/').to_owned()))
        } else if value.starts_with('/') {
            Ok(Self::Unix(PathBuf::from(value)))
        } else {
            Err(DockerError::Endpoint(value.to_owned()))
        }
    }

    /// `DOCKER_HOST`, else Docker's default socket `/var/run/docker.sock`.
    pub fn from_env() -> Result<Self, DockerError> {
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.trim().is_empty() => Self::parse(host.trim()),
            _ => Ok(Self::Unix(PathBuf::from("/var/run/docker.sock"))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// Which engine answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// Docker Engine.
    Docker,
    /// Podman's Docker-compatible service.
    Podman,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Docker => "docker",
            Self::Podman => "podman",
        })
    }
}

/// A connected engine: the client, what it is and its version.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: Endpoint,
    kind: EngineKind,
    version: String,
}

impl Engine {
    /// Connects to `endpoint` and asks the engine what it is.
    pub async fn connect(endpoint: Endpoint) -> Result<Self, DockerError> {
        let connect_err = |source| DockerError::Connect {
            endpoint: endpoint.to_string(),
            step: "connect",
            source,
        };
        let docker = match &endpoint {
            Endpoint::Unix(path) => {
                let path = path.to_string_lossy();
                Docker::connect_with_unix(&path, TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(addr, TIMEOUT_SECS, API_DEFAULT_VERSION)
            }
        }
        .map_err(connect_err)?;
        // bollard speaks API 1.49; Docker Engine 20.10 refuses anything above 1.41.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Connect {
                endpoint: endpoint.to_string(),
                step: "GET /version (API version negotiation)",
                source,
            })?;
        let answer = docker
            .version()
            .await
            .map_err(|source| DockerError::Connect {
                endpoint: endpoint.to_string(),
                step: "GET /version",
                source,
            })?;
        let podman = answer
            .components
            .iter()
            .flatten()
            .find(|c| c.name.to_ascii_lowercase().contains("podman"));
        let (kind, version) = match podman {
            Some(component) => (EngineKind::Podman, component.version.clone()),
            None => (EngineKind::Docker, answer.version.unwrap_or_default()),
        };
        Ok(Self {
            docker,
            endpoint,
            kind,
            version,
        })
    }

    /// Connects to `DOCKER_HOST` (or Docker's default socket).
    pub async fn from_env() -> Result<Self, DockerError> {
        Self::connect(Endpoint::from_env()?).await
    }

    /// Docker or Podman.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The engine's version, e.g. `4.3.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where it listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The API client, for calls this crate does not wrap.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            Endpoint::parse("unix:///run/podman/podman.sock").expect("unix"),
            Endpoint::Unix("/run/podman/podman.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375").expect("tcp"),
            Endpoint::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            Endpoint::parse("/var/run/docker.sock").expect("path"),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert!(Endpoint::parse("ssh://host").is_err());
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("none.sock");
        let err = Engine::connect(Endpoint::Unix(socket.clone()))
            .await
            .expect_err("nothing listens");
        let text = err.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("DOCKER_HOST"), "{text}");
    }
}
