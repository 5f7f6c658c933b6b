//! The connection to a Docker Engine or Podman through the Docker Engine API.

use std::fmt;

use bollard::{API_DEFAULT_VERSION, ClientVersion, Docker};
use serde::Serialize;

use crate::{DockerError, Endpoint};

const TIMEOUT_SECS: u64 = 300;

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
        let connect_err = |source: bollard::errors::Error| DockerError::Connect {
            endpoint: endpoint.to_string(),
            step: "connect",
            source: Box::new(source),
        };
        let docker = client(&endpoint, API_DEFAULT_VERSION)?.map_err(connect_err)?;
        // bollard speaks API 1.49; Docker Engine 20.10 refuses anything above 1.41.
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|source| DockerError::Connect {
                endpoint: endpoint.to_string(),
                step: "GET /version (API version negotiation)",
                source: Box::new(source),
            })?;
        let answer = docker
            .version()
            .await
            .map_err(|source| DockerError::Connect {
                endpoint: endpoint.to_string(),
                step: "GET /version",
                source: Box::new(source),
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
        tracing::debug!(%endpoint, ?kind, %version, "connected to the engine");
        Ok(Self {
            docker,
            endpoint,
            kind,
            version,
        })
    }

    /// A new connection to the same engine, speaking the API version this one
    /// negotiated, made without a request (Podman answers `GET /version` in about
    /// 300 ms). For work on another runtime, whose connections this one's pool must
    /// not carry.
    pub fn reconnect(&self) -> Result<Self, DockerError> {
        let docker = client(&self.endpoint, &self.docker.client_version())?.map_err(|source| {
            DockerError::Connect {
                endpoint: self.endpoint.to_string(),
                step: "connect",
                source: Box::new(source),
            }
        })?;
        Ok(Self {
            docker,
            ..self.clone()
        })
    }

    /// Connects to the endpoint the environment variables `var` gives name, as
    /// [`Endpoint::from_vars`] finds it.
    pub async fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, DockerError> {
        Self::connect(Endpoint::from_vars(var)?).await
    }

    /// [`from_vars`](Self::from_vars) with the process environment: for programs.
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

/// The API client for `endpoint` speaking `version`; the outer error when this
/// build cannot reach it.
fn client(
    endpoint: &Endpoint,
    version: &ClientVersion,
) -> Result<Result<Docker, bollard::errors::Error>, DockerError> {
    // Unused when both features are on.
    #[allow(unused_variables)]
    let needs = |feature| DockerError::NeedsFeature {
        endpoint: endpoint.to_string(),
        feature,
    };
    Ok(match endpoint {
        Endpoint::Unix(path) => {
            Docker::connect_with_unix(&path.to_string_lossy(), TIMEOUT_SECS, version)
        }
        Endpoint::Tcp(addr) => Docker::connect_with_http(addr, TIMEOUT_SECS, version),
        #[cfg(feature = "tls")]
        Endpoint::Tls { addr, certs } => Docker::connect_with_ssl(
            addr,
            &certs.join("key.pem"),
            &certs.join("cert.pem"),
            &certs.join("ca.pem"),
            TIMEOUT_SECS,
            version,
        ),
        #[cfg(not(feature = "tls"))]
        Endpoint::Tls { .. } => return Err(needs("tls")),
        #[cfg(feature = "ssh")]
        Endpoint::Ssh(dest) => {
            Docker::connect_with_ssh(&format!("ssh://{dest}"), TIMEOUT_SECS, version)
        }
        #[cfg(not(feature = "ssh"))]
        Endpoint::Ssh(_) => return Err(needs("ssh")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// `ssh://` goes through the `ssh` command: a host where nothing answers is a
    /// connect error naming the endpoint, not a hang or a panic.
    #[cfg(feature = "ssh")]
    #[tokio::test]
    async fn an_unreachable_ssh_host_is_a_clear_error() {
        let endpoint = Endpoint::parse("ssh://nobody@127.0.0.1:1").expect("ssh");
        let connect = Engine::connect(endpoint);
        let err = tokio::time::timeout(std::time::Duration::from_secs(30), connect)
            .await
            .expect("fails within 30 s")
            .expect_err("nothing listens on port 1");
        assert!(
            err.to_string().contains("ssh://nobody@127.0.0.1:1"),
            "{err}"
        );
    }

    /// TLS reads the client certificate from the directory given: missing files
    /// are a connect error naming the endpoint and the directory.
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn tls_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = Endpoint::Tls {
            addr: "127.0.0.1:1".into(),
            certs: dir.path().to_owned(),
        };
        let err = Engine::connect(endpoint)
            .await
            .expect_err("no certificates");
        let text = err.to_string();
        assert!(text.contains("tcp://127.0.0.1:1 (TLS"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
    }
}
