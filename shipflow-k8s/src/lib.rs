//! Kubernetes rollouts for shipflow (work in progress).
//!
//! This crate will hold `KubeDeployer`, the [`shipflow_core::Deployer`] for
//! Kubernetes Deployments: it patches only the app's container to the digest-pinned
//! image, watches the rollout with the watch API, fails fast on `ImagePullBackOff`,
//! `CrashLoopBackOff` and deadline overruns, rolls back to the exact previous
//! revision, and serialises deploys per app with a Lease. It is tested through the
//! real `kube` client against a simulated API server that ships behind a `testing`
//! feature. Nothing is implemented yet; the crate exists so the workspace layout is
//! final.
