//! One-app redeploy with the image already in the registry (not in the engine):
//! `EngineDeployer::deploy` (pull, create, stop old, start, HTTP health gate)
//! against the podman commands `pull && stop && rm && run -d`, in the same run,
//! alternating which goes first. Both are timed until the published port serves
//! the new version. Needs podman, runc, docker-registry and busybox-static.
//!
//! `cargo bench -p shipflow-docker --bench redeploy`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Harness, free_port, get};
use shipflow_core::{Context, DeployMeta, Deployer, ImageRef};

const ROUNDS: usize = 6;

async fn until_serving(http: &reqwest::Client, port: u16, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(http, port).await.as_deref() != Ok(body) {
        assert!(Instant::now() < deadline, "port {port} never served {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let h = Harness::start();
    let (port_sf, port_cli) = (free_port(), free_port());
    let app = h.app(
        "bench-web",
        &format!("ports = [\"127.0.0.1:{port_sf}:80\"]\nkeep = 1\nhealth = {{ http = \"/\" }}"),
    );
    h.apps_to_clean("bench-cli");
    eprintln!("building {} images...", 2 * ROUNDS + 2);
    let images: Vec<(String, ImageRef)> = (0..2 * ROUNDS + 2)
        .map(|i| {
            let body = format!("v{i}");
            let image = h.web_image("bench-web", &body, &body);
            (body, image)
        })
        .collect();
    let deployer = common_deployer(&h).await;
    let http = reqwest::Client::new();
    let ctx = Context::new();

    // Warm both up with a first version.
    let (body, image) = &images[0];
    deployer
        .deploy(&app, image, &DeployMeta::default(), &ctx)
        .await
        .expect("first deploy");
    until_serving(&http, port_sf, body).await;
    let (body, image) = &images[1];
    cli_redeploy(&h, image, port_cli, false);
    until_serving(&http, port_cli, body).await;

    let (mut shipflow, mut cli) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (sf_body, sf_image) = &images[2 + 2 * round];
        let (cli_body, cli_image) = &images[3 + 2 * round];
        for which in [round % 2, 1 - round % 2] {
            let started = Instant::now();
            if which == 0 {
                deployer
                    .deploy(&app, sf_image, &DeployMeta::default(), &ctx)
                    .await
                    .expect("deploy");
                until_serving(&http, port_sf, sf_body).await;
                shipflow.push(started.elapsed());
            } else {
                cli_redeploy(&h, cli_image, port_cli, true);
                until_serving(&http, port_cli, cli_body).await;
                cli.push(started.elapsed());
            }
        }
    }
    let (s, c) = (median(shipflow.clone()), median(cli.clone()));
    println!("rounds: {ROUNDS}");
    println!("shipflow EngineDeployer::deploy  median {s:?}  all {shipflow:?}");
    println!("podman pull && stop && rm && run median {c:?}  all {cli:?}");
    println!(
        "ratio shipflow / podman commands: {:.2}",
        s.as_secs_f64() / c.as_secs_f64()
    );
}

async fn common_deployer(h: &Harness) -> shipflow_docker::EngineDeployer {
    shipflow_docker::EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join("state"))
        .probe_interval(Duration::from_millis(50))
        .stop_timeout(10)
        .build()
}

/// `podman pull && podman stop && podman rm && podman run -d`, as a user would type it.
fn cli_redeploy(h: &Harness, image: &ImageRef, port: u16, replace: bool) {
    let image = image.to_string();
    h.podman_cli(&["pull", "-q", "--tls-verify=false", &image]);
    if replace {
        h.podman_cli(&["stop", "bench-cli"]);
        h.podman_cli(&["rm", "bench-cli"]);
    }
    h.podman_cli(&[
        "run",
        "-d",
        "--name",
        "bench-cli",
        "--label",
        "dev.shipflow.app=bench-cli",
        "-p",
        &format!("127.0.0.1:{port}:80"),
        &image,
    ]);
}
