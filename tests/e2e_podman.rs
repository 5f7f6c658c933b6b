//! End to end on one host, on Docker Engine and on Podman: a real git monorepo →
//! native builds → a real registry (`docker-registry`) → containers on the engine
//! through the Docker Engine API, answering HTTP on their published ports.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Monorepo, outcome};
use rstest::rstest;
use shipflow_kit::docker::testing::TestEngine;
use shipflow_kit::docker::{EngineDeployer, EngineKind};
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::oci::testing::TestRegistry;
use shipflow_kit::oci::{NativeBuilder, RegistryClient};
use shipflow_kit::{
    BuilderByType, FailurePolicy, Outcome, Pipeline, Report, RunStatus, Selection, Workspace,
};

const APPS: [&str; 3] = ["api", "web", "worker"];

struct Setup {
    repo: Monorepo,
    engine: TestEngine,
    builds: tempfile::TempDir,
    ports: Vec<u16>,
    prefix: String,
    // Last: the registry outlives the engine's pulls.
    _registry: TestRegistry,
}

impl Setup {
    fn new(kind: EngineKind) -> Self {
        let registry = TestRegistry::start().expect("docker-registry starts");
        let engine = TestEngine::start(kind, &[&registry.host()])
            .unwrap_or_else(|e| panic!("the {kind} engine is needed: {e}"));
        let ports: Vec<u16> = APPS.iter().map(|_| common::free_port()).collect();
        // Container names in the engine instance's namespace, so tests on the shared
        // Docker Engine never meet.
        let prefix = engine.prefix().to_owned();
        let repo = Monorepo::create(&registry.host(), &APPS, |app, i| {
            format!(
                "[apps.{app}.deploy.docker]\ncontainer = \"{prefix}{app}\"\n\
                 ports = [\"127.0.0.1:{}:8080\"]\nhealth = {{ http = \"/\", timeout = 5 }}\n",
                ports[i]
            )
        });
        Self {
            repo,
            engine,
            builds: tempfile::tempdir().expect("build dir"),
            ports,
            prefix,
            _registry: registry,
        }
    }

    async fn pipeline(&self) -> Pipeline {
        let workspace = Workspace::load(self.repo.config()).expect("workspace");
        let deployer = EngineDeployer::builder(self.engine.engine().await.expect("engine"))
            .state_dir(self.builds.path().join("state"))
            .probe_interval(Duration::from_millis(100))
            .stop_timeout(2)
            .build();
        Pipeline::builder(workspace)
            .detector(Arc::new(
                GitChangeDetector::open(self.repo.path()).expect("repository"),
            ))
            .builder(Arc::new(BuilderByType::new().route(
                shipflow_kit::oci::NATIVE_BUILD_TYPE,
                Arc::new(NativeBuilder::new(self.builds.path())),
            )))
            .registry(Arc::new(RegistryClient::builder().build().expect("client")))
            .deployer(Arc::new(deployer))
            .failure_policy(FailurePolicy::Continue)
            .build()
            .expect("pipeline")
    }

    async fn run(&self, base: Option<&str>) -> Report {
        self.pipeline()
            .await
            .run(base, "HEAD", &Selection::default())
            .await
            .expect("run")
    }

    /// The body served on `app`'s published port.
    async fn get(&self, app: &str) -> String {
        let i = APPS.iter().position(|a| *a == app).expect("an app");
        let port = self.ports[i];
        tokio::task::spawn_blocking(move || common::http_get(port))
            .await
            .expect("the GET task")
            .unwrap_or_default()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.engine.remove_containers(&self.prefix);
    }
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_edited_app_moves_and_a_broken_one_is_rolled_back_while_others_deploy(
    #[case] kind: EngineKind,
) {
    let setup = Setup::new(kind);
    let first = setup.run(None).await;
    assert_eq!(first.status(), RunStatus::Succeeded, "{first:#?}");
    for app in APPS {
        assert_eq!(setup.get(app).await, format!("<h1>{app} v1</h1>\n"));
    }

    setup.repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let second = setup.run(Some("HEAD~1")).await;
    let shipped: Vec<&str> = second.apps.iter().map(|a| a.app.as_str()).collect();
    assert_eq!(shipped, ["web"]);
    assert_eq!(outcome(&second, "web"), &Outcome::Deployed, "{second:#?}");
    let push = second.apps[0].push.as_ref().expect("pushed");
    assert_eq!(
        (push.blobs_uploaded, push.blobs_skipped),
        (2, 2),
        "{push:?}"
    );
    assert_eq!(setup.get("web").await, "<h1>web v2</h1>\n");
    assert_eq!(setup.get("api").await, "<h1>api v1</h1>\n");

    // A shared change ships every app; api's new version serves nothing at `/`,
    // fails its health check and is rolled back while the others deploy.
    std::fs::remove_file(setup.repo.path().join("apps/api/index.html")).expect("rm");
    setup.repo.edit("packages/common/version.txt", "2\n");
    let third = setup.run(Some("HEAD~1")).await;
    assert!(
        matches!(outcome(&third, "api"), Outcome::RolledBack { .. }),
        "{third:#?}"
    );
    assert_eq!(outcome(&third, "web"), &Outcome::Deployed);
    assert_eq!(outcome(&third, "worker"), &Outcome::Deployed);
    assert_eq!(third.status(), RunStatus::RolledBack);
    assert_eq!(
        setup.get("api").await,
        "<h1>api v1</h1>\n",
        "v1 still answers"
    );
    assert_eq!(setup.get("web").await, "<h1>web v2</h1>\n");
}
