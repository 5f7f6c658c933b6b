//! What the deployer's tests share: a workspace with one app `api` deployed to
//! `default/api`, pinned references, and a simulated cluster already running it.

#![allow(dead_code, unreachable_pub)]

pub mod kubectl;

use std::time::Duration;

use shipflow_core::{App, BoxError, ImageRef, Workspace};
use shipflow_k8s::testing::SimCluster;
use shipflow_k8s::{KubeDeployer, KubeError};

/// The image `default/api` runs when the simulator starts.
pub const V1: &str = "registry.local/api:v1";

pub fn workspace() -> Workspace {
    Workspace::from_toml(
        "[workspace]\nregistry = \"registry.local\"\n[apps.api]\ndeploy.kubernetes = {}\n",
        ".",
    )
    .expect("valid workspace")
}

/// The name of app `i` of [`many_apps`].
pub fn app_name(i: usize) -> String {
    format!("app-{i:02}")
}

/// A workspace of `count` apps, each deployed to its own namespace (named after it),
/// so every request path names its app.
pub fn many_apps(count: usize) -> Workspace {
    let mut toml = String::from("[workspace]\nregistry = \"registry.local\"\n");
    for i in 0..count {
        let app = app_name(i);
        toml.push_str(&format!(
            "[apps.{app}]\ndeploy.kubernetes = {{ namespace = \"{app}\" }}\n"
        ));
    }
    Workspace::from_toml(&toml, ".").expect("valid workspace")
}

pub fn app(ws: &Workspace) -> &App {
    ws.app("api").expect("api is declared")
}

/// `registry.local/api@sha256:<byte × 32>`.
pub fn pinned(byte: &str) -> ImageRef {
    format!("registry.local/api@sha256:{}", byte.repeat(32))
        .parse()
        .expect("valid pinned reference")
}

/// A simulated cluster whose `default/api` runs [`V1`] on `replicas` ready pods.
pub async fn sim(replicas: u32) -> SimCluster {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment("default", "api", "api", V1, replicas);
    sim
}

/// A deployer for the simulator, whose clock runs one cluster second per step (20
/// ms): the default 30 s failure window is 600 ms there, and the 5 s stabilization
/// window 100 ms.
pub fn deployer(sim: &SimCluster) -> KubeDeployer {
    KubeDeployer::new(sim.client())
        .failure_window(Duration::from_millis(600))
        .stable_for(Duration::from_millis(100))
}

pub fn kube_error(err: &BoxError) -> &KubeError {
    err.downcast_ref::<KubeError>()
        .unwrap_or_else(|| panic!("not a KubeError: {err}"))
}
