//! One app rolled out to several simulated clusters at once by a
//! `MultiClusterDeployer`: concurrency, a failing cluster that does not stop the
//! others, fail-fast, rollback scopes, per-cluster results in a pipeline's report,
//! and the `clusters` configuration.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{V1, app, deployer, pinned, sim, workspace};
use shipflow_core::testing::{FakeBuilder, MemoryRegistry, ScriptedDetector};
use shipflow_core::{
    BoxError, Context, DeployMeta, Deployer, EventKind, EventSink, Outcome as AppOutcome, Pipeline,
    RollbackTarget, Selection, Stage, TargetStatus, TargetsFailed, Workspace, find_cause,
};
use shipflow_k8s::testing::{Outcome, SimCluster};
use shipflow_k8s::{
    ClusterRollback, ClusterSpec, Clusters, ClustersError, KubeDeployer, MultiClusterDeployer,
    schema,
};

const NAMES: [&str; 3] = ["eu-west", "us-east", "ap-south"];

/// `count` simulated clusters, each running [`V1`] as `default/api` on `replicas` pods.
async fn sims(count: usize, replicas: u32) -> Vec<SimCluster> {
    let mut sims = Vec::with_capacity(count);
    for _ in 0..count {
        sims.push(sim(replicas).await);
    }
    sims
}

/// A deployer over `sims`, named after [`NAMES`].
fn multi(sims: &[SimCluster]) -> MultiClusterDeployer {
    MultiClusterDeployer::new(NAMES.iter().zip(sims).map(|(n, s)| (*n, deployer(s))))
        .expect("distinct names")
}

/// The image the Deployment `default/api` of `sim` runs in its spec.
fn running(sim: &SimCluster) -> String {
    let dep = sim.deployment("default", "api").expect("deployment");
    dep["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .expect("image")
        .to_owned()
}

/// Every cluster's result of a failed multi-cluster operation.
fn targets(err: &BoxError) -> &TargetsFailed {
    find_cause::<TargetsFailed>(err.as_ref())
        .unwrap_or_else(|| panic!("no per-cluster results in: {err}"))
}

fn status_of(targets: &[shipflow_core::TargetRollout], name: &str) -> TargetStatus {
    targets
        .iter()
        .find(|t| t.target == name)
        .unwrap_or_else(|| panic!("no result for {name}"))
        .status
}

/// Messages, with the instant each came, and replica counts (done, total).
type Seen = Arc<Mutex<(Vec<(Instant, String)>, Vec<(u64, Option<u64>)>)>>;

/// A context whose messages are kept with the instant they came, and its progress.
fn recording() -> (Context, Seen) {
    let seen: Seen = Arc::default();
    let sink_seen = seen.clone();
    let ctx = Context::new()
        .with_events(EventSink::new(move |event| {
            let mut seen = sink_seen.lock().expect("not poisoned");
            match &event.kind {
                EventKind::Message { text } => seen.0.push((Instant::now(), text.clone())),
                EventKind::Progress { done, total, .. } => seen.1.push((*done, *total)),
                _ => {}
            }
        }))
        .scoped(Some("api"), Stage::Deploy);
    (ctx, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_digest_rolls_out_on_every_cluster_at_once() {
    let sims = sims(2, 6).await;
    let ws = workspace();
    let image = pinned("ab");
    let deployer = multi(&sims);
    let (ctx, seen) = recording();

    let rollout = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &ctx)
        .await
        .expect("deployed on both");

    assert!(rollout.changed);
    assert_eq!(rollout.image, image.to_string());
    assert_eq!(rollout.targets.len(), 2);
    for (name, sim) in NAMES.iter().zip(&sims) {
        assert_eq!(status_of(&rollout.targets, name), TargetStatus::Deployed);
        assert_eq!(running(sim), image.to_string(), "{name}");
    }
    // Both rollouts started (the image patch, announced just before) before either
    // finished (every replica new and available).
    let (seen, counts) = seen.lock().expect("not poisoned").clone();
    let started = |name: &str| {
        seen.iter()
            .find(|(_, text)| text.starts_with(&format!("{name}: rolling ")))
            .unwrap_or_else(|| panic!("{name} announced no rollout: {seen:?}"))
            .0
    };
    let finished = |sim: &SimCluster| sim.ready_at("default", "api", 2).expect("rolled out");
    let last_start = started(NAMES[0]).max(started(NAMES[1]));
    let first_finish = finished(&sims[0]).min(finished(&sims[1]));
    assert!(
        last_start < first_finish,
        "the rollouts did not overlap: last started {:?} after the first finished",
        last_start - first_finish
    );
    // Replica counts are summed over the clusters: 6 + 6 ready at the end.
    assert_eq!(counts.last(), Some(&(12, Some(12))), "{counts:?}");
    // Every message says which cluster it is about.
    assert!(
        seen.iter()
            .all(|(_, t)| NAMES.iter().any(|n| t.starts_with(&format!("{n}: ")))),
        "{seen:?}"
    );

    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("readable")
        .expect("deployed");
    assert_eq!(now.image, image.to_string());
    assert_eq!(now.revision, Some(2));

    // Deployed again: nothing to roll anywhere.
    let again = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect("unchanged");
    assert!(!again.changed);
    assert!(
        again
            .targets
            .iter()
            .all(|t| t.status == TargetStatus::Unchanged)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_cluster_leaves_the_others_deployed_and_only_it_is_rolled_back() {
    let sims = sims(3, 2).await;
    sims[1].set_outcome("default", "api", Outcome::ImagePullFailure);
    let ws = workspace();
    let image = pinned("cd");
    let deployer = multi(&sims);

    let err = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("us-east cannot pull");
    match err.downcast_ref::<ClustersError>() {
        Some(ClustersError::Failed {
            failed: 1,
            total: 3,
            operation: "deploy",
            ..
        }) => {}
        other => panic!("not one failed cluster of three: {other:?} ({err})"),
    }
    let results = targets(&err).targets();
    assert_eq!(status_of(results, "eu-west"), TargetStatus::Deployed);
    assert_eq!(status_of(results, "ap-south"), TargetStatus::Deployed);
    assert_eq!(status_of(results, "us-east"), TargetStatus::Failed);
    let failed = results.iter().find(|t| t.target == "us-east").expect("us");
    let why = failed.error.as_deref().expect("an error");
    assert!(
        why.contains("ErrImagePull") || why.contains("pull"),
        "{why}"
    );
    // The others finished their rollouts: new image, fully available.
    for i in [0, 2] {
        assert_eq!(running(&sims[i]), image.to_string());
        assert!(sims[i].ready_at("default", "api", 2).is_some());
    }
    // The failed rollout's image is in us-east's spec: all agree on the spec, so
    // what runs reads as the new image, with no fingerprint (a failed rollout).
    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("readable")
        .expect("deployed");
    assert_eq!(now.fingerprint, None);

    // The pipeline's rollback undoes the failed cluster only.
    let back = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("rolled back");
    assert!(back.changed);
    assert_eq!(back.targets.len(), 1, "{:?}", back.targets);
    assert_eq!(
        status_of(&back.targets, "us-east"),
        TargetStatus::RolledBack
    );
    assert_eq!(running(&sims[1]), V1);
    assert_eq!(running(&sims[0]), image.to_string());
    assert_eq!(running(&sims[2]), image.to_string());

    // Now they disagree, and what runs says so.
    let mixed = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("readable")
        .expect("deployed");
    assert_eq!(
        mixed.image,
        format!("mixed: eu-west runs {image}, us-east runs {V1}, ap-south runs {image}")
    );
    assert_eq!((mixed.fingerprint, mixed.revision), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_the_other_clusters_rollouts() {
    let sims = sims(2, 2).await;
    sims[0].set_outcome("default", "api", Outcome::ImagePullFailure);
    // us-east's new pods never get ready: without fail-fast its deploy would wait
    // for the progress deadline (600 cluster seconds, 12 s here).
    sims[1].set_outcome("default", "api", Outcome::NeverReady);
    let ws = workspace();
    let image = pinned("ef");
    let deployer = MultiClusterDeployer::new([
        ("eu-west", deployer(&sims[0])),
        (
            "us-east",
            deployer(&sims[1]).timeout(Duration::from_secs(60)),
        ),
    ])
    .expect("distinct")
    .fail_fast(true);

    let started = Instant::now();
    let err = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("eu-west fails");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "us-east was not cancelled: {:?}",
        started.elapsed()
    );
    let results = targets(&err).targets();
    assert_eq!(status_of(results, "eu-west"), TargetStatus::Failed);
    assert_eq!(status_of(results, "us-east"), TargetStatus::Cancelled);
    let us = results.iter().find(|t| t.target == "us-east").expect("us");
    assert_eq!(
        us.note.as_deref(),
        Some("stopped: another cluster failed (fail-fast)")
    );
    // The run itself was not cancelled: the app is a failure, not a cancellation.
    assert!(!shipflow_core::caused_by::<shipflow_core::Cancelled>(
        err.as_ref()
    ));

    // Both were stopped short, so both roll back.
    let back = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("rolled back");
    assert_eq!(
        status_of(&back.targets, "eu-west"),
        TargetStatus::RolledBack
    );
    assert_eq!(
        status_of(&back.targets, "us-east"),
        TargetStatus::RolledBack
    );
    assert_eq!(
        (running(&sims[0]), running(&sims[1])),
        (V1.into(), V1.into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_scope_all_brings_every_cluster_back() {
    let sims = sims(2, 2).await;
    sims[1].set_outcome("default", "api", Outcome::ImagePullFailure);
    let ws = workspace();
    let deployer = multi(&sims).rollback_scope(ClusterRollback::All);
    deployer
        .deploy(
            app(&ws),
            &pinned("12"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("us-east fails");
    assert_eq!(running(&sims[0]), pinned("12").to_string());

    let back = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("rolled back");
    assert_eq!(back.targets.len(), 2);
    assert_eq!(
        (running(&sims[0]), running(&sims[1])),
        (V1.into(), V1.into())
    );
    assert_eq!(back.image, V1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_failed_before_changing_anything_is_left_alone() {
    let sims = sims(2, 1).await;
    let ws = workspace();
    let image = pinned("34");
    // us-east's Deployment is paused: the deploy fails before patching it.
    let paused = KubeDeployer::new(sims[1].client());
    sims[1].seed_deployment_json(
        "default",
        serde_json::json!({
            "metadata": {"name": "api", "labels": {"app": "api"}},
            "spec": {
                "replicas": 1,
                "paused": true,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "api", "image": V1}]},
                },
            },
        }),
    );
    let deployer =
        MultiClusterDeployer::new([("eu-west", deployer(&sims[0])), ("us-east", paused)])
            .expect("distinct");
    let err = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("us-east is paused");
    assert_eq!(
        status_of(targets(&err).targets(), "us-east"),
        TargetStatus::Failed
    );
    let back = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("nothing failed");
    assert!(!back.changed, "nothing of this deploy was in place");
    let us = &back.targets[0];
    assert!(
        us.note
            .as_deref()
            .is_some_and(|n| n.starts_with("not rolled back: no change of this deploy")),
        "{us:?}"
    );
    assert_eq!(running(&sims[0]), image.to_string());
    assert_eq!(running(&sims[1]), V1);
}

/// A pipeline over `sims`' deployer, building and pushing in memory.
fn pipeline(ws: Workspace, deployer: MultiClusterDeployer) -> Pipeline {
    Pipeline::builder(ws)
        .detector(Arc::new(ScriptedDetector::new().with_change("api/main.rs")))
        .builder(Arc::new(FakeBuilder::new()))
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(Arc::new(deployer))
        .build()
        .expect("pipeline")
}

fn api_workspace() -> Workspace {
    Workspace::loader()
        .schema(schema())
        .from_toml(
            "[workspace]\nregistry = \"registry.local\"\n[apps.api]\npath = \"api\"\ndeploy.kubernetes = {}\n",
            ".",
        )
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_reports_each_clusters_result() {
    let sims = sims(2, 2).await;
    let report = pipeline(api_workspace(), multi(&sims))
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("ran");
    let api = &report.apps[0];
    assert_eq!(api.outcome, AppOutcome::Deployed, "{api:?}");
    let image = api.image.as_ref().expect("pushed").to_string();
    assert_eq!(api.targets.len(), 2);
    for (name, sim) in NAMES.iter().zip(&sims) {
        let target = api.targets.iter().find(|t| t.target == *name).expect(name);
        assert_eq!(target.status, TargetStatus::Deployed);
        assert_eq!(target.rollout.as_ref().expect("rollout").image, image);
        assert_eq!(running(sim), image);
    }
    // The per-cluster results are the app's, not repeated inside its rollout.
    assert!(api.rollout.as_ref().expect("rollout").targets.is_empty());
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["apps"][0]["targets"][1]["target"], "us-east");
    assert_eq!(json["apps"][0]["targets"][1]["status"], "deployed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_rolls_back_the_failed_cluster_and_reports_both() {
    let sims = sims(2, 2).await;
    sims[1].set_outcome("default", "api", Outcome::ImagePullFailure);
    let report = pipeline(api_workspace(), multi(&sims))
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("ran");
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        AppOutcome::RolledBack {
            stage: Stage::Deploy
        },
        "{api:?}"
    );
    let image = api.image.as_ref().expect("pushed").to_string();
    let eu = api
        .targets
        .iter()
        .find(|t| t.target == "eu-west")
        .expect("eu");
    let us = api
        .targets
        .iter()
        .find(|t| t.target == "us-east")
        .expect("us");
    assert_eq!(eu.status, TargetStatus::Deployed);
    assert!(eu.rollback.is_none());
    assert_eq!(us.status, TargetStatus::RolledBack);
    assert!(us.error.as_deref().is_some_and(|e| !e.is_empty()));
    assert_eq!(us.rollback.as_ref().expect("rolled back").image, V1);
    let error = api.error.as_deref().expect("an error");
    assert!(
        error.contains("deploy failed on 1 of 2 clusters") && error.contains("us-east: "),
        "{error}"
    );
    assert_eq!(running(&sims[0]), image);
    assert_eq!(running(&sims[1]), V1);
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["apps"][0]["targets"][1]["status"], "rolled_back");
    assert_eq!(json["apps"][0]["targets"][0]["status"], "deployed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rollback_off_the_failed_cluster_is_left_as_it_is_and_reported() {
    let sims = sims(2, 1).await;
    sims[1].set_outcome("default", "api", Outcome::ImagePullFailure);
    let report = Pipeline::builder(api_workspace())
        .detector(Arc::new(ScriptedDetector::new().with_change("api/main.rs")))
        .builder(Arc::new(FakeBuilder::new()))
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(Arc::new(multi(&sims)))
        .rollback_on_failure(false)
        .build()
        .expect("pipeline")
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("ran");
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        AppOutcome::Failed {
            stage: Stage::Deploy
        }
    );
    assert_eq!(status_of(&api.targets, "eu-west"), TargetStatus::Deployed);
    assert_eq!(status_of(&api.targets, "us-east"), TargetStatus::Failed);
    let image = api.image.as_ref().expect("pushed").to_string();
    assert_eq!(
        (running(&sims[0]), running(&sims[1])),
        (image.clone(), image)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_every_cluster_and_restores_each() {
    let sims = sims(2, 1).await;
    for sim in &sims {
        sim.set_outcome("default", "api", Outcome::NeverReady);
    }
    let cancel = shipflow_core::CancellationToken::new();
    let pipeline = Pipeline::builder(api_workspace())
        .detector(Arc::new(ScriptedDetector::new().with_change("api/main.rs")))
        .builder(Arc::new(FakeBuilder::new()))
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(Arc::new(multi(&sims)))
        .cancellation(cancel.clone())
        .build()
        .expect("pipeline");
    let run = tokio::spawn(async move {
        pipeline
            .run(Some("HEAD~1"), "HEAD", &Selection::default())
            .await
    });
    // Both rollouts are under way (their new pods never get ready) when the run is
    // cancelled.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sims.iter().any(|s| running(s) == V1) {
        assert!(Instant::now() < deadline, "the rollouts never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let report = run.await.expect("no panic").expect("ran");
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        AppOutcome::Cancelled {
            stage: Some(Stage::Deploy),
            restored: true
        },
        "{api:?}"
    );
    for name in ["eu-west", "us-east"] {
        let target = api.targets.iter().find(|t| t.target == name).expect(name);
        assert_eq!(target.status, TargetStatus::RolledBack, "{target:?}");
        assert_eq!(target.note.as_deref(), Some("the run was cancelled"));
    }
    assert_eq!(
        (running(&sims[0]), running(&sims[1])),
        (V1.into(), V1.into())
    );
}

#[test]
fn deployers_need_distinct_clusters() {
    let none: [(&str, KubeDeployer); 0] = [];
    assert!(matches!(
        MultiClusterDeployer::new(none),
        Err(ClustersError::NoClusters)
    ));
}

#[tokio::test]
async fn a_cluster_name_given_twice_is_refused() {
    let sim = sim(1).await;
    let err = MultiClusterDeployer::new([("eu", deployer(&sim)), ("eu", deployer(&sim))])
        .expect_err("twice");
    assert_eq!(
        err.to_string(),
        "cluster \"eu\" is given twice: give each cluster its own name"
    );
}

const BASE: &str = "[workspace]\nregistry = \"r.io\"\nnamespace = \"dev\"\nclusters = [\"kind-dev\"]\n[apps.api]\ndeploy.kubernetes = {}\n";

fn load(environments: &str) -> Result<Workspace, String> {
    Workspace::loader()
        .schema(schema())
        .from_toml(&format!("{BASE}{environments}"), ".")
        .map_err(|e| e.to_string())
}

fn clusters(ws: &Workspace) -> Vec<ClusterSpec> {
    ws.section::<Clusters>(shipflow_k8s::CLUSTERS_KEY)
        .expect("valid")
        .expect("present")
        .iter()
        .cloned()
        .collect()
}

#[test]
fn an_environment_lists_its_clusters() {
    let ws = load(
        "[environments.production]\ntags = [\"v*\"]\nclusters = [\"eu-west\", { name = \"us-east\", context = \"gke_acme_us-east1_prod\", namespace = \"prod-us\" }]\n",
    )
    .expect("valid");
    let dev = clusters(&ws);
    assert_eq!(dev, [ClusterSpec::new("kind-dev")]);
    let prod = clusters(&ws.for_environment("production").expect("valid"));
    assert_eq!(prod.len(), 2, "the environment's list replaces the file's");
    assert_eq!(
        (prod[0].name.as_str(), prod[0].context()),
        ("eu-west", "eu-west")
    );
    assert_eq!(
        (
            prod[1].name.as_str(),
            prod[1].context(),
            prod[1].namespace.as_deref()
        ),
        ("us-east", "gke_acme_us-east1_prod", Some("prod-us"))
    );
}

#[test]
fn bad_cluster_lists_are_refused_at_load_naming_the_environment() {
    let cases = [
        (
            "clusters = []",
            "environments.production.clusters: lists no cluster",
        ),
        (
            "clusters = [\"eu\", { name = \"eu\", context = \"other\" }]",
            "environments.production.clusters[1].name: cluster \"eu\" is listed twice (also at [0])",
        ),
        (
            "clusters = [{ name = \"eu\", contxt = \"x\" }]",
            "environments.production.clusters: ",
        ),
        (
            "clusters = [{ context = \"x\" }]",
            "environments.production.clusters: ",
        ),
        (
            "clusters = [\"eu west\"]",
            "environments.production.clusters[0].name: \"eu west\" is not a usable name",
        ),
        (
            "clusters = [{ name = \"eu\", namespace = \"Prod\" }]",
            "environments.production.clusters[0].namespace: \"Prod\" is not a valid name",
        ),
        ("clusters = \"eu\"", "environments.production.clusters: "),
    ];
    for (setting, start) in cases {
        let err = load(&format!("[environments.production]\n{setting}\n")).expect_err(setting);
        assert!(err.starts_with(start), "{setting}: {err}");
    }
    let err = load("[environments.production]\nclusters = [{ name = \"eu\", contxt = \"x\" }]\n")
        .expect_err("unknown key");
    assert!(err.contains("contxt"), "{err}");
    let err = load("").and_then(|_| {
        Workspace::loader()
            .schema(schema())
            .from_toml(&BASE.replace("[\"kind-dev\"]", "[]"), ".")
            .map_err(|e| e.to_string())
    });
    assert!(
        err.expect_err("empty")
            .starts_with("workspace.clusters: lists no cluster"),
    );
}
