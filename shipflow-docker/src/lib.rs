//! Single-host deploys to Docker or Podman for shipflow, through the Docker Engine
//! API (which Podman serves too).
//!
//! - [`Endpoint::from_vars`] finds the engine as `docker` and `podman` do
//!   (`DOCKER_HOST` with `DOCKER_TLS_VERIFY`, `CONTAINER_HOST`, Docker contexts, the
//!   local and rootless Podman sockets) from variables the program passes in;
//!   [`Engine`] connects, negotiates the API version and tells Docker from Podman.
//!   `ssh://` and TLS endpoints need the `ssh` and `tls` features.
//! - [`EngineDeployer`] is the [`shipflow_core::Deployer`]: it pulls the
//!   digest-pinned image, runs one labelled container per revision, switches to it
//!   health-gated (`recreate`, or `start-first` behind a [`TrafficSwitch`] such as
//!   [`CaddySwitch`]), brings the old one back when the new one is unhealthy, keeps
//!   the last stopped containers for rollback without a pull, and holds a host lock
//!   per app. All its state is in container labels and names, so a run that died
//!   half-way is repaired by the next. Each step's time (lock, list, pull, create,
//!   stop, start, health probes, prune) is logged at debug level under the target
//!   `shipflow_docker::timing`.
//! - [`EngineBuilder`] is an [`shipflow_core::ImageBuilder`] for Dockerfile apps
//!   (context honouring `.dockerignore`, build args, target stage, labels), and
//!   [`EngineRegistry`] a [`shipflow_core::Registry`] that pushes those images
//!   through the engine, which uploads only the layers the registry lacks.
//!
//! Tested on Docker Engine 20.10.24 (API 1.41, classic builder) and Podman 4.3.1
//! (its Docker-compatible API): every engine test is one body run on both. The
//! README lists where the two differ and what the crate does about each.
//!
//! ```no_run
//! use shipflow_core::{Context, DeployMeta, Deployer, Workspace};
//! use shipflow_docker::{Engine, EngineDeployer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let workspace = Workspace::from_toml(
//!     r#"
//!     [workspace]
//!     registry = "127.0.0.1:5000"
//!     [apps.web.deploy.docker]
//!     ports = ["8080:80"]
//!     health = { http = "/" }
//!     "#,
//!     "."
//! )?;
//! let app = workspace.app("web").expect("declared above");
//! // DOCKER_HOST=unix:///run/podman/podman.sock, a Docker context, or the local socket.
//! let engine = Engine::from_vars(|key| std::env::var(key).ok()).await?;
//! println!("deploying to {} {}", engine.kind(), engine.version());
//! let deployer = EngineDeployer::new(engine);
//! let image = "127.0.0.1:5000/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".parse()?;
//! let rollout = deployer.deploy(app, &image, &DeployMeta::default(), &Context::new()).await?;
//! println!("{} runs revision {:?}", rollout.workload, rollout.revision);
//! # Ok(())
//! # }
//! ```

mod builder;
mod config;
mod context;
mod deployer;
mod endpoint;
mod engine;
mod error;
mod health;
mod lock;
mod registry;
mod spec;
mod state;
mod states;
mod switch;
#[cfg(feature = "testing")]
pub mod testing;
mod timing;

pub use builder::EngineBuilder;
pub use config::{
    DOCKER_TARGET, DOCKERFILE_BUILD_TYPE, DockerTarget, DockerfileBuild, HealthCheck, ProxyTarget,
    Strategy, schema,
};
pub use deployer::{EngineDeployer, EngineDeployerBuilder, RegistryCredentials};
pub use endpoint::Endpoint;
pub use engine::{Engine, EngineKind};
pub use error::DockerError;
pub use registry::EngineRegistry;
pub use switch::{CaddySwitch, HaproxyAdmin, HaproxySwitch, TrafficSwitch};
