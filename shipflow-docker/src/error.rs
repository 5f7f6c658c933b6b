//! The crate's error type.

use std::time::Duration;

/// What went wrong, naming the app, the step and the cause, and the next move where
/// there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The engine could not be reached or answered with an error.
    #[error(
        "engine at {endpoint}: {step}: {source}; check that the engine (or `podman system service`) runs and DOCKER_HOST points at it"
    )]
    Connect {
        /// The endpoint tried.
        endpoint: String,
        /// What was being done.
        step: &'static str,
        /// The engine client's error (boxed: the client is an implementation detail).
        #[source]
        source: shipflow_core::BoxError,
    },
    /// `DOCKER_HOST` or an explicit endpoint could not be understood.
    #[error(
        "engine endpoint `{0}` is none of unix:///path, tcp://host:port, http://host:port, ssh://[user@]host[:port]; set DOCKER_HOST (or CONTAINER_HOST) to one of these"
    )]
    Endpoint(String),
    /// The Docker context to use could not be read.
    #[error(
        "docker context `{name}`: {path}: {reason}; check `docker context ls`, or unset DOCKER_CONTEXT (or `docker context use default`)"
    )]
    DockerContext {
        /// The context's name.
        name: String,
        /// Its `meta.json`.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint needs a feature this build of the crate lacks.
    #[error(
        "engine endpoint {endpoint} needs shipflow-docker's `{feature}` feature: enable it in Cargo.toml (features = [\"{feature}\"])"
    )]
    NeedsFeature {
        /// The endpoint.
        endpoint: String,
        /// The cargo feature: `ssh` or `tls`.
        feature: &'static str,
    },
    /// An engine call for an app failed.
    #[error("app {app}: {step}: {source}")]
    Engine {
        /// The app.
        app: String,
        /// What was being done, e.g. `pull 127.0.0.1:5000/web@sha256:…`.
        step: String,
        /// The engine client's error (boxed: the client is an implementation detail).
        #[source]
        source: shipflow_core::BoxError,
    },
    /// The app's `deploy.docker` section or Dockerfile build has a bad value.
    #[error("app {app}: {source}")]
    Settings {
        /// The app.
        app: String,
        /// What is wrong, with the key and line.
        #[source]
        source: shipflow_core::ConfigError,
    },
    /// The app has no `[apps.<name>.deploy.docker]` section.
    #[error("app {app}: no docker deploy target; add [apps.{app}.deploy.docker] to shipflow.toml")]
    NoTarget {
        /// The app.
        app: String,
    },
    /// The deploy target's configuration is invalid.
    #[error("app {app}: invalid docker target: {reason}")]
    Config {
        /// The app.
        app: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The image to deploy is not pinned to a digest.
    #[error(
        "app {app}: image {image} is not pinned to a digest; deploy `repo@sha256:…` so rollbacks are exact"
    )]
    NotPinned {
        /// The app.
        app: String,
        /// The image reference.
        image: String,
    },
    /// `start-first` needs a proxy to switch.
    #[error(
        "app {app}: strategy start-first needs a reverse proxy to switch traffic; add [apps.{app}.deploy.docker.proxy] (haproxy_admin, backend and servers; or caddy_admin and route) or use strategy = \"recreate\""
    )]
    NoProxy {
        /// The app.
        app: String,
    },
    /// The new container never became healthy; the previous one serves again.
    #[error(
        "app {app}: container {container} is unhealthy: {cause}; {restored}; the new container is kept stopped for `podman logs {container}` (or `docker logs`); last log lines:\n{logs}"
    )]
    Unhealthy {
        /// The app.
        app: String,
        /// The failed container's name.
        container: String,
        /// Why it is deemed unhealthy.
        cause: String,
        /// What serves now.
        restored: String,
        /// The container's last log lines.
        logs: String,
        /// Set when the revision that ran before serves again, so the pipeline
        /// reports the app rolled back without rolling back again.
        #[source]
        previous: Option<shipflow_core::Restored>,
    },
    /// The new container was unhealthy (or could not be created), and stopping it or
    /// starting the previous one again failed too: what runs now needs a look.
    #[error(
        "app {app}: container {container} failed: {cause}; {restored}; check what runs with `podman ps -a` (or `docker ps -a`); last log lines of {container}:\n{logs}"
    )]
    NotRestored {
        /// The app.
        app: String,
        /// The failed container's name.
        container: String,
        /// Why it failed: unhealthy, or not created.
        cause: String,
        /// What serves now as far as known, and which steps of bringing the old
        /// container back failed, with their causes.
        restored: String,
        /// The container's last log lines.
        logs: String,
    },
    /// A rollback target does not exist (any more).
    #[error("app {app}: cannot roll back: {reason}")]
    Rollback {
        /// The app.
        app: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// Another deployer holds the app's host lock.
    #[error(
        "app {app}: another deploy holds the lock {path} ({holder}); waited {waited:?}; retry when it finishes (the lock goes with its process; do not remove the file)"
    )]
    Locked {
        /// The app.
        app: String,
        /// The lock file.
        path: String,
        /// Who holds it: pid, host, since when (as the holder wrote it).
        holder: String,
        /// How long this deployer waited.
        waited: Duration,
    },
    /// A deployer on another machine holds the app's lock on the engine.
    #[error(
        "app {app}: another deploy holds the engine lock, container {container} ({holder}); waited {waited:?}; retry when it finishes (a holder that stops renewing it loses it)"
    )]
    EngineLocked {
        /// The app.
        app: String,
        /// The sentinel container.
        container: String,
        /// Who holds it, as the holder wrote it.
        holder: String,
        /// How long this deployer waited.
        waited: Duration,
    },
    /// The lock file could not be read or written.
    #[error("app {app}: lock {path}: {source}")]
    LockIo {
        /// The app.
        app: String,
        /// The lock file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The traffic switch (reverse proxy) failed.
    #[error(
        "app {app}: switching proxy route {route} to {upstream}: {cause}; the old container keeps serving"
    )]
    Switch {
        /// The app.
        app: String,
        /// The proxy route.
        route: String,
        /// The upstream that was to be set.
        upstream: String,
        /// What the proxy said.
        cause: String,
    },
    /// An image build failed.
    #[error("app {app}: build: {cause}")]
    Build {
        /// The app.
        app: String,
        /// What failed, with the engine's output.
        cause: String,
    },
    /// A push through the engine failed.
    #[error("image {image}: push: {cause}")]
    Push {
        /// The target reference.
        image: String,
        /// The engine's message.
        cause: String,
    },
    /// The operation was cancelled. Its source is [`shipflow_core::Cancelled`], so
    /// the pipeline reports the app cancelled, not failed.
    #[error("app {app}: cancelled during {step}")]
    Cancelled {
        /// The app.
        app: String,
        /// The step, and what runs now when a switch was under way.
        step: String,
        /// Whether the revision that ran before serves again (a cancelled switch
        /// brings it back).
        restored: bool,
        /// [`shipflow_core::Cancelled`], carried by [`shipflow_core::Restored`] when
        /// `restored`, so the pipeline sees both.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl DockerError {
    /// `app` was cancelled during `step`; `restored` when what ran before serves again.
    pub(crate) fn cancelled(app: &str, step: impl Into<String>, restored: bool) -> Self {
        Self::Cancelled {
            app: app.to_owned(),
            step: step.into(),
            restored,
            source: if restored {
                Box::new(shipflow_core::Restored::after_cancel())
            } else {
                Box::new(shipflow_core::Cancelled)
            },
        }
    }
}
