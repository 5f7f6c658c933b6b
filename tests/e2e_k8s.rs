//! End to end on Kubernetes: a real git monorepo → native builds → a real registry
//! (`docker-registry`) → rollouts through the real `kube` client against the
//! simulated API server (no API server can run on these machines).

mod common;

use std::sync::Arc;

use common::{Monorepo, outcome};
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::k8s::KubeDeployer;
use shipflow_kit::k8s::LockOptions;
use shipflow_kit::k8s::testing::{Outcome as Rollout, SimCluster};
use shipflow_kit::oci::testing::TestRegistry;
use shipflow_kit::oci::{NativeBuilder, RegistryClient};
use shipflow_kit::{
    BuilderByType, CancellationToken, FailurePolicy, Outcome, Pipeline, Registry as _, RunStatus,
    Selection, Stage, Workspace,
};

const APPS: [&str; 3] = ["api", "web", "worker"];

/// The parts of one end-to-end setup, kept alive together.
struct Setup {
    repo: Monorepo,
    registry: TestRegistry,
    cluster: SimCluster,
    builds: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        let registry = TestRegistry::start().expect("docker-registry starts");
        let repo = Monorepo::create(&registry.host(), &APPS, |_, _| {
            "deploy.kubernetes = {}".into()
        });
        let cluster = SimCluster::start().await.expect("simulated API server");
        for app in APPS {
            cluster.seed_deployment("default", app, app, "registry.local/placeholder:v0", 2);
        }
        let builds = tempfile::tempdir().expect("build dir");
        Self {
            repo,
            registry,
            cluster,
            builds,
        }
    }

    fn pipeline(&self) -> Pipeline {
        self.pipeline_with(CancellationToken::new())
    }

    /// The pipeline, with each deploy holding the app's Lease, cancelled by `cancel`.
    fn pipeline_with(&self, cancel: CancellationToken) -> Pipeline {
        let workspace = Workspace::load(self.repo.config()).expect("workspace");
        let native = NativeBuilder::new(self.builds.path());
        Pipeline::builder(workspace)
            .detector(Arc::new(
                GitChangeDetector::open(self.repo.path()).expect("repository"),
            ))
            .builder(Arc::new(
                BuilderByType::new().route(shipflow_kit::oci::NATIVE_BUILD_TYPE, Arc::new(native)),
            ))
            .registry(Arc::new(RegistryClient::builder().build().expect("client")))
            .deployer(Arc::new(
                KubeDeployer::new(self.cluster.client()).deploy_lock(LockOptions::default()),
            ))
            .failure_policy(FailurePolicy::Continue)
            .cancellation(cancel)
            .build()
            .expect("pipeline")
    }

    fn running(&self, app: &str) -> String {
        let deployment = self
            .cluster
            .deployment("default", app)
            .expect("deployment exists");
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .expect("an image")
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_edited_app_is_rebuilt_pushed_and_rolled() {
    let setup = Setup::new().await;
    let first = setup
        .pipeline()
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("first run");
    for app in APPS {
        assert_eq!(outcome(&first, app), &Outcome::Deployed, "{first:#?}");
        let running = setup.running(app);
        assert!(
            running.starts_with(&format!("{}/e2e/{app}@sha256:", setup.registry.host())),
            "{app} runs {running}"
        );
        // What runs is in the registry, under that digest.
        let pinned = running.parse().expect("a pinned reference");
        let ctx = shipflow_kit::Context::new();
        let client = RegistryClient::builder().build().expect("client");
        assert!(
            client
                .resolve(&pinned, &ctx)
                .await
                .expect("resolve")
                .is_some()
        );
    }
    let before: Vec<String> = APPS.iter().map(|a| setup.running(a)).collect();

    setup.repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let second = setup
        .pipeline()
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("second run");
    assert_eq!(
        second
            .apps
            .iter()
            .map(|a| a.app.as_str())
            .collect::<Vec<_>>(),
        ["web"]
    );
    assert_eq!(outcome(&second, "web"), &Outcome::Deployed);
    let push = second.apps[0].push.as_ref().expect("web was pushed");
    assert_eq!(
        (push.blobs_uploaded, push.blobs_skipped),
        (2, 2),
        "only web's code layer and config move: {push:?}"
    );
    assert_ne!(setup.running("web"), before[1]);
    assert_eq!(setup.running("api"), before[0]);
    assert_eq!(setup.running("worker"), before[2]);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_app_is_rolled_back_while_the_others_deploy() {
    let setup = Setup::new().await;
    setup
        .pipeline()
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("first run");
    let before: Vec<String> = APPS.iter().map(|a| setup.running(a)).collect();

    setup
        .cluster
        .set_outcome("default", "api", Rollout::CrashLoop);
    setup.repo.edit("packages/common/version.txt", "2\n");
    let report = setup
        .pipeline()
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("run");
    assert!(
        matches!(outcome(&report, "api"), Outcome::RolledBack { .. }),
        "{report:#?}"
    );
    let api = &report.apps[0];
    let error = api.error.as_deref().unwrap_or_default();
    assert!(error.contains("CrashLoopBackOff"), "{error}");
    assert_eq!(
        setup.running("api"),
        before[0],
        "api runs what it ran before"
    );
    for (i, app) in APPS.iter().enumerate().skip(1) {
        assert_eq!(outcome(&report, app), &Outcome::Deployed);
        assert_ne!(setup.running(app), before[i], "{app} moved on");
    }
    assert_eq!(report.status(), shipflow_kit::RunStatus::RolledBack);
}

/// Ctrl-C during a rollout that never becomes ready (what the CLI's signal handler
/// does: cancel the run's token): the run ends within seconds, the Deployment is
/// back on what ran before, the app's Lease is released, and the report says the
/// deploy was cancelled and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stuck_rollout_is_rolled_back_and_its_lease_released() {
    let setup = Setup::new().await;
    setup
        .pipeline()
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("first run");
    let before = setup.running("web");

    setup
        .cluster
        .set_outcome("default", "web", Rollout::NeverReady);
    setup.repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let cancel = CancellationToken::new();
    let pipeline = setup.pipeline_with(cancel.clone());
    let run = tokio::spawn(async move {
        pipeline
            .run(Some("HEAD~1"), "HEAD", &Selection::default())
            .await
            .expect("run")
    });
    // Cancel once the new template is in place and the rollout is being watched.
    let started = std::time::Instant::now();
    while setup.running("web") == before {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the deploy never patched the Deployment"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let cancelled_at = std::time::Instant::now();
    cancel.cancel();
    let report = tokio::time::timeout(std::time::Duration::from_secs(5), run)
        .await
        .expect("the cancelled run ends within 5 s")
        .expect("joined");
    assert!(cancelled_at.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        outcome(&report, "web"),
        &Outcome::Cancelled {
            stage: Some(Stage::Deploy),
            restored: true
        },
        "{report:#?}"
    );
    assert_eq!(report.status(), RunStatus::Cancelled);
    assert_eq!(setup.running("web"), before, "web runs what it ran before");
    assert!(
        setup
            .cluster
            .lease("default", "shipflow-lock-web")
            .is_none(),
        "the deploy lock is released"
    );
}
