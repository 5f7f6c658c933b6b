//! Many apps at once through one `kube::Client` against the simulated API server: the
//! requests each app costs stay bounded: at most 4 requests and 1 watch (no polling;
//! one watch on its Deployment; its pods are only looked at when it stays quiet).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use shipflow_core::{Context, DeployMeta, Deployer, ImageRef};
use shipflow_k8s::KubeDeployer;
use shipflow_k8s::testing::SimCluster;

use common::{app_name, many_apps};

const APPS: usize = 50;
const CONCURRENCY: usize = 10;

fn pinned(app: &str) -> ImageRef {
    format!("registry.local/{app}@sha256:{}", "5a".repeat(32))
        .parse()
        .expect("valid pinned reference")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_apps_cost_at_most_four_requests_and_one_watch_each() {
    let sim = SimCluster::start().await.expect("sim starts");
    for i in 0..APPS {
        let app = app_name(i);
        sim.seed_deployment(&app, &app, &app, &format!("registry.local/{app}:v1"), 2);
    }
    let ws = many_apps(APPS);
    // The rollout watch's own cost: the stabilization window adds its time and two
    // pod lists (and a replica-set list) per app.
    let deployer = KubeDeployer::new(sim.client()).stable_for(Duration::ZERO);
    let ctx = Context::new();

    let results: Vec<_> = futures_util::stream::iter(0..APPS)
        .map(|i| {
            let (deployer, ws, ctx) = (&deployer, &ws, &ctx);
            async move {
                let app = ws.app(&app_name(i)).expect("declared");
                deployer
                    .deploy(app, &pinned(&app_name(i)), &DeployMeta::default(), ctx)
                    .await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for r in &results {
        let rollout = r.as_ref().expect("every rollout succeeds");
        assert_eq!(rollout.revision, Some(2));
    }

    // Per app (its namespace): read and patch the Deployment, list and watch it.
    let mut per_app: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for (key, n) in sim.requests() {
        let (verb, path) = key.split_once(' ').expect("VERB /path");
        let ns = path
            .split('/')
            .skip_while(|s| *s != "namespaces")
            .nth(1)
            .expect("namespaced path")
            .to_owned();
        let resource = path
            .split('/')
            .nth(if path.starts_with("/api/") { 5 } else { 6 })
            .expect("resource");
        *per_app
            .entry(ns)
            .or_default()
            .entry(format!("{verb} {resource}"))
            .or_default() += n;
    }
    assert_eq!(per_app.len(), APPS);
    for (app, requests) in &per_app {
        // A rollout the simulated controller finished before the read that follows
        // the patch needs no watch; a watched one needs exactly one.
        let watch = requests.get("WATCH deployments").copied().unwrap_or(0);
        let expected: BTreeMap<String, u64> = [
            ("GET deployments", 2),
            ("PATCH deployments", 1),
            ("WATCH deployments", watch),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
        assert_eq!(requests, &expected, "{app}");
        let watches: u64 = requests
            .iter()
            .filter(|(k, _)| k.starts_with("WATCH"))
            .map(|(_, n)| n)
            .sum();
        let others: u64 = requests.values().sum::<u64>() - watches;
        assert!(others <= 4 && watches <= 1, "{app}: {requests:?}");
    }
}
