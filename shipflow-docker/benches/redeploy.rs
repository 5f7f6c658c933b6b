//! One-app redeploy with the image already in the registry (not in the engine),
//! on Docker Engine and on Podman: `EngineDeployer::deploy` (pull, create, stop old,
//! start, HTTP health gate) against the engine's own commands `pull && stop && rm &&
//! run -d`, in the same run, alternating which goes first. Both are timed until the
//! published port serves the new version; the deployer's step timings
//! (`shipflow_docker::timing`) are collected and their medians printed per step.
//! Needs the Docker Engine, podman, runc, docker-registry and busybox-static.
//!
//! `cargo bench -p shipflow-docker --bench redeploy` (`SHIPFLOW_BENCH_ROUNDS=12` for
//! more rounds; `SHIPFLOW_BENCH_ENGINES=podman` for one engine)

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Harness, free_port, get};
use shipflow_core::{Context, DeployMeta, Deployer, ImageRef};
use shipflow_docker::EngineKind;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::SubscriberExt;

/// Rounds unless `SHIPFLOW_BENCH_ROUNDS` says otherwise.
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

/// The step timings (`step`, microseconds) the deployer logged since the last take.
#[derive(Clone, Default)]
struct Steps(Arc<Mutex<Vec<(String, u64)>>>);

impl Steps {
    fn take(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.0.lock().expect("steps"))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Steps {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Step(String, u64);
        impl Visit for Step {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "step" {
                    self.0 = value.to_owned();
                }
            }
            fn record_u64(&mut self, field: &Field, value: u64) {
                if field.name() == "us" {
                    self.1 = value;
                }
            }
            fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        }
        if event.metadata().target() == "shipflow_docker::timing" {
            let mut step = Step::default();
            event.record(&mut step);
            self.0.lock().expect("steps").push((step.0, step.1));
        }
    }
}

/// Per step: the median over rounds of its total time in a deploy, and how often it ran.
fn print_steps(rounds: &[Vec<(String, u64)>]) {
    let mut per_step: BTreeMap<&str, Vec<(u64, u32)>> = BTreeMap::new();
    for round in rounds {
        let mut sums: BTreeMap<&str, (u64, u32)> = BTreeMap::new();
        for (step, us) in round {
            let sum = sums.entry(step).or_default();
            sum.0 += us;
            sum.1 += 1;
        }
        for (step, sum) in sums {
            per_step.entry(step).or_default().push(sum);
        }
    }
    println!(
        "deploy steps (median per deploy over {} rounds):",
        rounds.len()
    );
    for (step, mut sums) in per_step {
        sums.sort();
        let (us, count) = sums[sums.len() / 2];
        println!("  {step:<18} {:>7.1} ms  x{count}", us as f64 / 1000.0);
    }
}

#[tokio::main]
async fn main() {
    let steps = Steps::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(steps.clone()))
        .expect("a subscriber");
    let rounds = std::env::var("SHIPFLOW_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    let engines =
        std::env::var("SHIPFLOW_BENCH_ENGINES").unwrap_or_else(|_| "docker,podman".into());
    for kind in [EngineKind::Docker, EngineKind::Podman] {
        if engines.split(',').any(|e| e.trim() == kind.to_string()) {
            println!("== {kind}");
            bench(kind, rounds, &steps).await;
        }
    }
}

async fn bench(kind: EngineKind, rounds: usize, steps: &Steps) {
    let h = Harness::start(kind);
    let (port_sf, port_cli) = (free_port(), free_port());
    let app = h.app(
        "bench-web",
        &format!("ports = [\"127.0.0.1:{port_sf}:80\"]\nkeep = 1\nhealth = {{ http = \"/\" }}"),
    );
    eprintln!("building {} images...", 2 * rounds + 2);
    let images: Vec<(String, ImageRef)> = (0..2 * rounds + 2)
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

    let (mut shipflow, mut cli, mut timings) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (sf_body, sf_image) = &images[2 + 2 * round];
        let (cli_body, cli_image) = &images[3 + 2 * round];
        for which in [round % 2, 1 - round % 2] {
            let started = Instant::now();
            if which == 0 {
                steps.take();
                deployer
                    .deploy(&app, sf_image, &DeployMeta::default(), &ctx)
                    .await
                    .expect("deploy");
                until_serving(&http, port_sf, sf_body).await;
                shipflow.push(started.elapsed());
                timings.push(steps.take());
            } else {
                cli_redeploy(&h, cli_image, port_cli, true);
                until_serving(&http, port_cli, cli_body).await;
                cli.push(started.elapsed());
            }
        }
    }
    let (s, c) = (median(shipflow.clone()), median(cli.clone()));
    println!("rounds: {rounds}");
    println!("shipflow EngineDeployer::deploy  median {s:?}  all {shipflow:?}");
    println!("{kind} pull && stop && rm && run median {c:?}  all {cli:?}");
    println!(
        "ratio shipflow / {kind} commands: {:.2}",
        s.as_secs_f64() / c.as_secs_f64()
    );
    print_steps(&timings);
}

async fn common_deployer(h: &Harness) -> shipflow_docker::EngineDeployer {
    shipflow_docker::EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join("state"))
        .probe_interval(Duration::from_millis(50))
        // Like the commands, which watch nothing after the container started.
        .stable_for(Duration::ZERO)
        .stop_timeout(10)
        .build()
}

/// `docker pull && docker stop && docker rm && docker run -d` (or `podman …`), as a
/// user would type it.
fn cli_redeploy(h: &Harness, image: &ImageRef, port: u16, replace: bool) {
    let image = image.to_string();
    let name = h.name("bench-cli");
    h.pull(&image);
    if replace {
        h.cli_run(&["stop", &name]);
        h.cli_run(&["rm", &name]);
    }
    h.cli_run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &format!("dev.shipflow.app={name}"),
        "-p",
        &format!("127.0.0.1:{port}:80"),
        &image,
    ]);
}
