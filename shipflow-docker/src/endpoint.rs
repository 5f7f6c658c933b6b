//! Where the engine listens, found the way `docker` and `podman` find it: from
//! `DOCKER_HOST` (with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`), Podman's
//! `CONTAINER_HOST`, the Docker context (`DOCKER_CONTEXT`, or `docker context use`'s
//! `currentContext` in `config.json`), else the local sockets. The library reads no
//! environment variable itself: the program passes them in ([`Endpoint::from_vars`]).

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::DockerError;

/// Docker's default socket.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Rootful Podman's socket.
const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Endpoint {
    /// A unix socket, e.g. `/run/podman/podman.sock`.
    Unix(PathBuf),
    /// A plain-HTTP TCP address, e.g. `127.0.0.1:2375`.
    Tcp(String),
    /// A TCP address over TLS, e.g. `docker.example.com:2376`, with the client
    /// certificate and the CA in `certs` (`cert.pem`, `key.pem`, `ca.pem`, as in
    /// `DOCKER_CERT_PATH`). Needs the `tls` feature.
    Tls {
        /// `host:port`.
        addr: String,
        /// The directory of `ca.pem`, `cert.pem` and `key.pem`.
        certs: PathBuf,
    },
    /// `user@host[:port]`, reached with the `ssh` command, which runs
    /// `docker system dial-stdio` there. Needs the `ssh` feature.
    Ssh(String),
}

impl Endpoint {
    /// Parses `unix:///path`, `tcp://host:port`, `http://host:port`,
    /// `ssh://user@host[:port]` or a bare socket path. A `tcp://` address is plain
    /// HTTP here; [`from_vars`](Self::from_vars) makes it TLS when
    /// `DOCKER_TLS_VERIFY` says so.
    pub fn parse(value: &str) -> Result<Self, DockerError> {
        if let Some(path) = value.strip_prefix("unix://") {
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = value
            .strip_prefix("tcp://")
            .or_else(|| value.strip_prefix("http://"))
        {
            Ok(Self::Tcp(addr.trim_end_matches('/').to_owned()))
        } else if let Some(dest) = value.strip_prefix("ssh://") {
            let dest = dest.trim_end_matches('/');
            let host = dest.rsplit('@').next().unwrap_or_default();
            if host.is_empty() || dest.contains('/') {
                return Err(DockerError::Endpoint(value.to_owned()));
            }
            Ok(Self::Ssh(dest.to_owned()))
        } else if value.starts_with('/') {
            Ok(Self::Unix(PathBuf::from(value)))
        } else {
            Err(DockerError::Endpoint(value.to_owned()))
        }
    }

    /// The endpoint the `docker` (or `podman --remote`) command line would use, from
    /// the environment variables `var` gives (pass `|k| std::env::var(k).ok()`):
    ///
    /// 1. `DOCKER_HOST`; a `tcp://` one is TLS when `DOCKER_TLS_VERIFY` is set
    ///    (not empty), with the certificates in `DOCKER_CERT_PATH` (else
    ///    `~/.docker`);
    /// 2. Podman's `CONTAINER_HOST`;
    /// 3. the Docker context `DOCKER_CONTEXT` names, else the one `docker context
    ///    use` stored in `config.json` (`currentContext`); `default` means none. Its
    ///    `meta.json` under `contexts/meta/<sha256 of the name>/` in `DOCKER_CONFIG`
    ///    (else `~/.docker`) gives the host, and `contexts/tls/…/docker/` its TLS
    ///    files;
    /// 4. Docker's `/var/run/docker.sock` when it exists, else rootless Podman's
    ///    `$XDG_RUNTIME_DIR/podman/podman.sock`, else rootful Podman's
    ///    `/run/podman/podman.sock`, else Docker's (which then fails to connect,
    ///    saying so).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, DockerError> {
        Self::from_vars_and_sockets(var, Path::new(DOCKER_SOCKET), Path::new(PODMAN_SOCKET))
    }

    /// [`from_vars`](Self::from_vars) with the process environment: for programs
    /// (the library itself never calls it).
    pub fn from_env() -> Result<Self, DockerError> {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    fn from_vars_and_sockets(
        var: impl Fn(&str) -> Option<String>,
        docker_socket: &Path,
        podman_socket: &Path,
    ) -> Result<Self, DockerError> {
        let var = |key: &str| {
            var(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let config_dir = var("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| Path::new(&home).join(".docker")));
        if let Some(host) = var("DOCKER_HOST") {
            return match Self::parse(&host)? {
                Self::Tcp(addr) if var("DOCKER_TLS_VERIFY").is_some() => {
                    let certs = var("DOCKER_CERT_PATH")
                        .map(PathBuf::from)
                        .or(config_dir)
                        .ok_or_else(|| DockerError::Endpoint(format!(
                            "{host} with DOCKER_TLS_VERIFY, but neither DOCKER_CERT_PATH nor HOME is set"
                        )))?;
                    Ok(Self::Tls { addr, certs })
                }
                endpoint => Ok(endpoint),
            };
        }
        if let Some(host) = var("CONTAINER_HOST") {
            return Self::parse(&host);
        }
        if let Some(dir) = &config_dir {
            let name = var("DOCKER_CONTEXT").or_else(|| current_context(dir));
            if let Some(name) = name.filter(|n| n != "default") {
                return from_context(dir, &name);
            }
        }
        let rootless = var("XDG_RUNTIME_DIR").map(|d| Path::new(&d).join("podman/podman.sock"));
        let found = [
            Some(docker_socket.to_owned()),
            rootless,
            Some(podman_socket.to_owned()),
        ]
        .into_iter()
        .flatten()
        .find(|socket| socket.exists());
        Ok(Self::Unix(
            found.unwrap_or_else(|| docker_socket.to_owned()),
        ))
    }
}

/// `currentContext` of `config.json` in `dir`, if any.
fn current_context(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    config["currentContext"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// The endpoint of Docker context `name` in config directory `dir`.
fn from_context(dir: &Path, name: &str) -> Result<Endpoint, DockerError> {
    let id = Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let meta = dir.join("contexts/meta").join(&id).join("meta.json");
    let err = |reason: String| DockerError::DockerContext {
        name: name.to_owned(),
        path: meta.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(&meta).map_err(|e| err(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let host = value["Endpoints"]["docker"]["Host"]
        .as_str()
        .ok_or_else(|| err("no Endpoints.docker.Host".into()))?;
    let certs = dir.join("contexts/tls").join(&id).join("docker");
    match Endpoint::parse(host)? {
        Endpoint::Tcp(addr) if certs.join("ca.pem").exists() => Ok(Endpoint::Tls { addr, certs }),
        endpoint => Ok(endpoint),
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Tls { addr, certs } => {
                write!(f, "tcp://{addr} (TLS, certificates in {})", certs.display())
            }
            Self::Ssh(dest) => write!(f, "ssh://{dest}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// `from_vars` over `vars`, with Docker's socket at `docker_socket`.
    fn resolve(vars: &[(&str, &str)], docker_socket: &Path) -> Result<Endpoint, DockerError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let rootful = Path::new("/nonexistent/podman.sock");
        Endpoint::from_vars_and_sockets(|k| vars.get(k).cloned(), docker_socket, rootful)
    }

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
        assert_eq!(
            Endpoint::parse("ssh://deploy@build-1.example.com:2222").expect("ssh"),
            Endpoint::Ssh("deploy@build-1.example.com:2222".into())
        );
        assert_eq!(
            Endpoint::parse("ssh://host").expect("ssh without user"),
            Endpoint::Ssh("host".into())
        );
        for bad in [
            "ssh://",
            "ssh://user@",
            "ssh://host/path",
            "npipe:////./pipe/docker",
            "host:2375",
        ] {
            let err = Endpoint::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("ssh://"), "{err}");
        }
    }

    #[test]
    fn docker_host_wins_and_tls_follows_docker_tls_verify() {
        let none = Path::new("/nonexistent/docker.sock");
        let vars = [
            ("DOCKER_HOST", "tcp://docker.example.com:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", "/etc/certs"),
            ("CONTAINER_HOST", "unix:///run/podman/podman.sock"),
        ];
        assert_eq!(
            resolve(&vars, none).expect("tls"),
            Endpoint::Tls {
                addr: "docker.example.com:2376".into(),
                certs: "/etc/certs".into()
            }
        );
        // Without DOCKER_CERT_PATH the certificates are in ~/.docker.
        let vars = [
            ("DOCKER_HOST", "tcp://docker.example.com:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("HOME", "/home/ci"),
        ];
        assert!(matches!(
            resolve(&vars, none).expect("tls"),
            Endpoint::Tls { certs, .. } if certs == Path::new("/home/ci/.docker")
        ));
        // An empty DOCKER_TLS_VERIFY is unset, as for the docker command line.
        let vars = [
            ("DOCKER_HOST", "tcp://10.0.0.5:2375"),
            ("DOCKER_TLS_VERIFY", ""),
        ];
        assert_eq!(
            resolve(&vars, none).expect("plain"),
            Endpoint::Tcp("10.0.0.5:2375".into())
        );
        let vars = [("DOCKER_HOST", "ssh://deploy@host")];
        assert_eq!(
            resolve(&vars, none).expect("ssh"),
            Endpoint::Ssh("deploy@host".into())
        );
    }

    #[test]
    fn podman_container_host_is_next() {
        let vars = [("CONTAINER_HOST", "unix:///run/user/1000/podman/podman.sock")];
        assert_eq!(
            resolve(&vars, Path::new("/nonexistent")).expect("podman"),
            Endpoint::Unix("/run/user/1000/podman/podman.sock".into())
        );
    }

    #[test]
    fn docker_contexts_are_read_from_the_config_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join(".docker");
        let write_context = |name: &str, host: &str, tls: bool| {
            let id = Sha256::digest(name.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            let meta = config.join("contexts/meta").join(&id);
            std::fs::create_dir_all(&meta).expect("meta dir");
            std::fs::write(
                meta.join("meta.json"),
                format!(
                    r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":false}}}}}}"#
                ),
            )
            .expect("meta.json");
            if tls {
                let certs = config.join("contexts/tls").join(&id).join("docker");
                std::fs::create_dir_all(&certs).expect("tls dir");
                std::fs::write(certs.join("ca.pem"), "").expect("ca");
            }
        };
        write_context("remote", "ssh://deploy@build-1", false);
        write_context("secure", "tcp://docker.example.com:2376", true);
        let home = dir.path().to_str().expect("utf-8");
        let none = Path::new("/nonexistent");

        // `docker context use remote` wrote currentContext.
        std::fs::write(config.join("config.json"), r#"{"currentContext":"remote"}"#)
            .expect("config.json");
        assert_eq!(
            resolve(&[("HOME", home)], none).expect("current context"),
            Endpoint::Ssh("deploy@build-1".into())
        );
        // DOCKER_CONTEXT overrides it; its TLS files come along.
        assert_eq!(
            resolve(&[("HOME", home), ("DOCKER_CONTEXT", "secure")], none).expect("context"),
            Endpoint::Tls {
                addr: "docker.example.com:2376".into(),
                certs: config
                    .join("contexts/tls")
                    .join(
                        Sha256::digest(b"secure")
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    )
                    .join("docker"),
            }
        );
        // `default` is the local engine; DOCKER_HOST beats any context.
        assert_eq!(
            resolve(&[("HOME", home), ("DOCKER_CONTEXT", "default")], none).expect("default"),
            Endpoint::Unix(none.to_owned())
        );
        assert_eq!(
            resolve(&[("HOME", home), ("DOCKER_HOST", "unix:///x.sock")], none).expect("host"),
            Endpoint::Unix("/x.sock".into())
        );
        let err = resolve(&[("HOME", home), ("DOCKER_CONTEXT", "gone")], none)
            .expect_err("no such context");
        assert!(err.to_string().contains("docker context `gone`"), "{err}");
    }

    #[test]
    fn the_rootless_podman_socket_is_the_fallback_when_docker_has_none() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("podman/podman.sock");
        std::fs::create_dir_all(socket.parent().expect("parent")).expect("dir");
        std::fs::write(&socket, "").expect("stand-in socket");
        let runtime = dir.path().to_str().expect("utf-8");
        assert_eq!(
            resolve(
                &[("XDG_RUNTIME_DIR", runtime)],
                Path::new("/nonexistent/docker.sock")
            )
            .expect("rootless"),
            Endpoint::Unix(socket)
        );
        // Docker's socket, when there, comes first.
        let docker = dir.path().join("docker.sock");
        std::fs::write(&docker, "").expect("stand-in socket");
        assert_eq!(
            resolve(&[("XDG_RUNTIME_DIR", runtime)], &docker).expect("docker"),
            Endpoint::Unix(docker)
        );
    }
}
