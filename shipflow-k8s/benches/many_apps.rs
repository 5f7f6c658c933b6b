//! 50 apps deployed at once (bounded concurrency) through one `kube::Client` against
//! the simulated API server: the requests each app costs, and the time from the
//! simulated controller marking a Deployment's rollout complete to `deploy` returning.
//!
//! The reference, in the same run and under the same load: a bare `kube` watch on
//! each Deployment that stops at the first event showing the rollout complete, the
//! least any watch-based client can take. Run with
//! `cargo bench -p shipflow-k8s --bench many_apps`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use shipflow_core::{Context, DeployMeta, Deployer, ImageRef};
use shipflow_k8s::KubeDeployer;
use shipflow_k8s::testing::SimCluster;

use common::{app_name, many_apps};

const APPS: usize = 50;
const ROUNDS: u64 = 5;

fn pinned(app: &str, round: u64) -> ImageRef {
    format!(
        "registry.local/{app}@sha256:{}",
        format!("{round:02x}").repeat(32)
    )
    .parse()
    .expect("valid pinned reference")
}

/// Watches `ns/name` from `rv` until generation `generation` is rolled out.
async fn reference_watch(
    sim_client: kube::Client,
    ns: String,
    rv: String,
    generation: i64,
) -> Instant {
    let api: Api<Deployment> = Api::namespaced(sim_client, &ns);
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={ns}"))
        .timeout(60);
    let mut stream = api.watch(&wp, &rv).await.expect("watch").boxed();
    while let Some(event) = stream.next().await {
        if let Ok(WatchEvent::Modified(d)) = event {
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let s = d.status.unwrap_or_default();
            if d.metadata.generation == Some(generation)
                && s.observed_generation.unwrap_or(0) >= generation
                && s.updated_replicas == Some(desired)
                && s.ready_replicas == Some(desired)
                && s.available_replicas == Some(desired)
                && s.replicas == Some(desired)
            {
                return Instant::now();
            }
        }
    }
    panic!("watch ended before {ns} rolled out");
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn scenario(concurrency: usize) {
    let sim = SimCluster::start().await.expect("sim starts");
    for i in 0..APPS {
        let app = app_name(i);
        sim.seed_deployment(&app, &app, &app, &format!("registry.local/{app}:v1"), 2);
    }
    let ws = many_apps(APPS);
    let deployer = KubeDeployer::new(sim.client());
    let ctx = Context::new();
    let mut ours = Vec::new();
    let mut reference = Vec::new();
    let mut wall = Vec::new();
    for round in 1..=ROUNDS {
        let generation = round as i64 + 1;
        // The first round runs alone, to count the deployer's own requests.
        let watchers: Vec<_> = if round == 1 {
            Vec::new()
        } else {
            (0..APPS)
                .map(|i| {
                    let ns = app_name(i);
                    let rv =
                        sim.deployment(&ns, &ns).expect("seeded")["metadata"]["resourceVersion"]
                            .as_str()
                            .expect("rv")
                            .to_owned();
                    tokio::spawn(reference_watch(sim.client(), ns, rv, generation))
                })
                .collect()
        };
        let started = Instant::now();
        let done: Vec<(usize, Instant)> = futures_util::stream::iter(0..APPS)
            .map(|i| {
                let (deployer, ws, ctx) = (&deployer, &ws, &ctx);
                async move {
                    let app = ws.app(&app_name(i)).expect("declared");
                    deployer
                        .deploy(
                            app,
                            &pinned(&app_name(i), round),
                            &DeployMeta::default(),
                            ctx,
                        )
                        .await
                        .expect("rollout succeeds");
                    (i, Instant::now())
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        wall.push(started.elapsed());
        let generation = u64::try_from(generation).expect("positive");
        for (i, at) in done {
            let ready = sim
                .ready_at(&app_name(i), &app_name(i), generation)
                .expect("rolled out");
            ours.push(at.duration_since(ready));
        }
        if round == 1 {
            print_requests(&sim);
        }
        for (i, w) in watchers.into_iter().enumerate() {
            let seen = w.await.expect("reference watch");
            let ready = sim
                .ready_at(&app_name(i), &app_name(i), generation)
                .expect("rolled out");
            reference.push(seen.duration_since(ready));
        }
    }
    // Round 1 had no reference: compare like with like.
    let ours_loaded: Vec<Duration> = ours[APPS..].to_vec();
    let mut all = ours.clone();
    all.sort();
    let mut loaded = ours_loaded;
    loaded.sort();
    reference.sort();
    println!(
        "concurrency {concurrency}: {APPS} apps x {ROUNDS} rounds, wall per round {:.0} ms (median)",
        ms({
            let mut w = wall.clone();
            w.sort();
            quantile(&w, 0.5)
        })
    );
    println!(
        "  ready -> deploy returns, all rounds:  median {:.2} ms  p95 {:.2} ms  max {:.2} ms",
        ms(quantile(&all, 0.5)),
        ms(quantile(&all, 0.95)),
        ms(all[all.len() - 1])
    );
    println!(
        "  same rounds as reference:             median {:.2} ms  p95 {:.2} ms",
        ms(quantile(&loaded, 0.5)),
        ms(quantile(&loaded, 0.95))
    );
    println!(
        "  reference (bare kube watch):          median {:.2} ms  p95 {:.2} ms",
        ms(quantile(&reference, 0.5)),
        ms(quantile(&reference, 0.95))
    );
    println!(
        "  ratio deployer / reference:           median {:.2}x  p95 {:.2}x",
        ms(quantile(&loaded, 0.5)) / ms(quantile(&reference, 0.5)),
        ms(quantile(&loaded, 0.95)) / ms(quantile(&reference, 0.95))
    );
}

/// Requests per app (each app has its own namespace), by verb and resource.
fn print_requests(sim: &SimCluster) {
    let mut per_app: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (key, n) in sim.requests() {
        let (verb, path) = key.split_once(' ').expect("VERB /path");
        let parts: Vec<&str> = path.split('/').collect();
        let at = parts
            .iter()
            .position(|s| *s == "namespaces")
            .expect("namespaced");
        *per_app
            .entry(parts[at + 1].to_owned())
            .or_default()
            .entry(format!("{verb} {}", parts[at + 2]))
            .or_default() += n;
    }
    let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
    for requests in per_app.values() {
        let shape = requests
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        *shapes.entry(shape).or_default() += 1;
    }
    for (shape, apps) in shapes {
        println!("  requests per app ({apps} apps): {shape}");
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for concurrency in [10, 50] {
            scenario(concurrency).await;
        }
    });
}
