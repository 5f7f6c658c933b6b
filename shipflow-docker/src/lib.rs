//! Single-host deploys to Docker or Podman for shipflow (work in progress).
//!
//! This crate will hold `EngineDeployer`, the [`shipflow_core::Deployer`] for a
//! container on one Docker or Podman host (through the Docker Engine API, which
//! Podman serves too): health-gated `recreate` and no-downtime `start-first`
//! rollouts behind a switchable reverse proxy, rollback from kept containers,
//! history from labels; and `EngineBuilder`, an [`shipflow_core::ImageBuilder`]
//! for Dockerfile builds through the engine. Nothing is implemented yet; the crate
//! exists so the workspace layout is final.
