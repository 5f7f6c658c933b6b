//! Real container engines for tests, behind the `testing` feature, for shipflow's
//! tests and for users testing their own pipelines:
//!
//! - [`TestPodman`] runs Podman's Docker-compatible API service on its own socket,
//!   with its own configuration and storage.
//! - [`TestDocker`] uses the Docker Engine that runs on the machine
//!   (`/var/run/docker.sock`), whose containers and images are shared with
//!   everything else on it: a test names what it creates with the instance's
//!   [`prefix`](TestDocker::prefix), and the instance removes what carries it.
//! - [`TestEngine`] is either, picked by [`EngineKind`], so one test body runs on
//!   both (say as `#[case::docker(EngineKind::Docker)]` and
//!   `#[case::podman(EngineKind::Podman)]` of an rstest).
//!
//! A missing engine is an error, never a skipped test.
//!
//! ```no_run
//! use shipflow_docker::EngineKind;
//! use shipflow_docker::testing::TestEngine;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! for kind in [EngineKind::Docker, EngineKind::Podman] {
//!     let test = TestEngine::start(kind, &["127.0.0.1:5000"])?;
//!     let engine = test.engine().await?;
//!     println!("{} {}; name things {}…", engine.kind(), engine.version(), test.prefix());
//! }
//! # Ok(())
//! # }
//! ```

use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{DockerError, Engine, EngineKind};

mod docker;
mod podman;

pub use docker::TestDocker;
pub use podman::TestPodman;

/// A real engine for a test: the machine's Docker Engine or a Podman service of the
/// test's own.
#[derive(Debug)]
pub enum TestEngine {
    /// The machine's Docker Engine.
    Docker(TestDocker),
    /// A Podman API service of the test's own.
    Podman(TestPodman),
}

impl TestEngine {
    /// Starts (Podman) or checks (Docker) the engine of `kind`, which may pull from
    /// `insecure_registries` (`host:port`) over plain HTTP. Fails when the engine or
    /// its command line is not installed, or Docker does not answer.
    pub fn start(kind: EngineKind, insecure_registries: &[&str]) -> io::Result<Self> {
        Ok(match kind {
            EngineKind::Docker => Self::Docker(TestDocker::start(insecure_registries)?),
            EngineKind::Podman => Self::Podman(TestPodman::start(insecure_registries)?),
        })
    }

    /// Docker or Podman.
    pub fn kind(&self) -> EngineKind {
        match self {
            Self::Docker(_) => EngineKind::Docker,
            Self::Podman(_) => EngineKind::Podman,
        }
    }

    /// An [`Engine`] connected to it.
    pub async fn engine(&self) -> Result<Engine, DockerError> {
        match self {
            Self::Docker(docker) => docker.engine().await,
            Self::Podman(podman) => podman.engine().await,
        }
    }

    /// Its `unix://` socket, for `DOCKER_HOST`.
    pub fn docker_host(&self) -> String {
        match self {
            Self::Docker(docker) => docker.docker_host(),
            Self::Podman(podman) => podman.docker_host(),
        }
    }

    /// The environment that points the engine's command line (or a script running
    /// it) at it: `DOCKER_HOST` and `DOCKER_CONFIG`, or Podman's configuration and
    /// storage.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        match self {
            Self::Docker(docker) => docker.env().to_vec(),
            Self::Podman(podman) => podman.env().to_vec(),
        }
    }

    /// The engine's own command line (`docker` or `podman`) pointed at it.
    pub fn command(&self) -> Command {
        match self {
            Self::Docker(docker) => docker.command(),
            Self::Podman(podman) => podman.command(),
        }
    }

    /// The namespace of names (containers, apps, image repositories) of this
    /// instance, unique on the machine.
    pub fn prefix(&self) -> &str {
        match self {
            Self::Docker(docker) => docker.prefix(),
            Self::Podman(podman) => podman.prefix(),
        }
    }

    /// A Dockerfile line to put after a test's first `FROM`, so that its build
    /// steps never share Docker's build cache with other tests (see
    /// [`TestDocker::dockerfile_label`]); empty on Podman, whose storage is the
    /// instance's own.
    pub fn dockerfile_label(&self) -> String {
        match self {
            Self::Docker(docker) => docker.dockerfile_label(),
            Self::Podman(_) => String::new(),
        }
    }

    /// Removes every container whose name starts with `prefix` (best effort).
    pub fn remove_containers(&self, prefix: &str) {
        match self {
            Self::Docker(docker) => docker.remove_containers(prefix),
            Self::Podman(podman) => podman.remove_containers(prefix),
        }
    }
}

/// A name prefix unique on the machine: `kind`, the process id, a salt taken from
/// the clock once per process (process ids are reused, and images an earlier
/// process of the same id left in Docker's build cache would be taken for this
/// one's), and a counter, e.g. `d1f2a3k9x0-`.
fn unique_prefix(kind: char) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SALT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let salt = SALT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() % (36 * 36))
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{kind}{:x}{salt:03x}x{n}-", std::process::id())
}

/// The path of `binary`, or an error naming the Debian package to install.
pub use shipflow_core::testing::require;

/// The ids (first column) of `command`'s output lines, empty when it fails.
fn ids_of(mut command: Command) -> Vec<String> {
    command.output().map_or_else(
        |_| Vec::new(),
        |out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_are_unique_and_valid_names() {
        let (a, b) = (super::unique_prefix('d'), super::unique_prefix('d'));
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
    }
}
