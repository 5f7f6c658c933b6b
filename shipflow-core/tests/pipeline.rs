//! Pipeline behaviour, end to end on the in-memory fakes of `shipflow_core::testing`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rstest::rstest;
use shipflow_core::testing::{FakeBuilder, FakeDeployer, MemoryRegistry, ScriptedDetector};
use shipflow_core::{
    CancellationToken, ChangedPath, Event, EventKind, EventSink, FailurePolicy, Outcome, Pipeline,
    PipelineBuilder, PipelineError, Reason, Report, RunStatus, Selection, Stage, Workspace,
};

const WORKSPACE: &str = r#"
[workspace]
registry = "127.0.0.1:5000/acme"
shared = ["Cargo.lock"]
tag = "${BRANCH}-${SHORT_SHA}"

[apps.api]
depends_on = ["packages/db"]
[apps.worker]
depends_on = ["packages/db"]
[apps.web]
[apps.docs]
"#;

fn workspace() -> Workspace {
    Workspace::from_toml(WORKSPACE, ".").expect("valid workspace")
}

struct Parts {
    builder: Arc<FakeBuilder>,
    registry: Arc<MemoryRegistry>,
    deployer: Arc<FakeDeployer>,
}

impl Parts {
    fn new(builder: FakeBuilder, deployer: FakeDeployer) -> Self {
        Self {
            builder: Arc::new(builder),
            registry: Arc::new(MemoryRegistry::new()),
            deployer: Arc::new(deployer),
        }
    }

    fn pipeline(&self, detector: ScriptedDetector) -> PipelineBuilder {
        Pipeline::builder(workspace())
            .detector(Arc::new(detector))
            .builder(self.builder.clone())
            .registry(self.registry.clone())
            .deployer(self.deployer.clone())
    }
}

/// Runs `pipeline` from `main` to `HEAD` with the default selection.
async fn ship(pipeline: &Pipeline) -> Report {
    pipeline
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("run")
}

/// Builds and runs once.
async fn build_and_ship(builder: PipelineBuilder) -> Report {
    ship(&builder.build().expect("pipeline")).await
}

fn names(report: &Report) -> Vec<&str> {
    report.apps.iter().map(|a| a.app.as_str()).collect()
}

#[tokio::test]
async fn shared_path_change_ships_every_app() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("Cargo.lock"))
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    assert_eq!(names(&report), ["api", "docs", "web", "worker"]);
    for app in &report.apps {
        assert_eq!(app.outcome, Outcome::Deployed, "{app:?}");
        assert_eq!(
            app.reasons,
            [Reason::Shared {
                path: "Cargo.lock".into(),
                glob: "Cargo.lock".into()
            }]
        );
        assert_eq!(app.tag, "main-0123456");
        let image = app.image.as_ref().expect("pinned image").to_string();
        assert!(
            image.starts_with(&format!("127.0.0.1:5000/acme/{}@sha256:", app.app)),
            "{image}"
        );
        assert_eq!(
            parts.deployer.running(&app.app).as_deref(),
            Some(image.as_str())
        );
    }
    assert_eq!(report.status(), RunStatus::Succeeded);
    assert_eq!(parts.builder.builds().len(), 4);
}

#[tokio::test]
async fn package_change_ships_both_dependents_each_with_its_reason() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let detector = ScriptedDetector::new().with_change("packages/db/src/pool.rs");
    let report = build_and_ship(parts.pipeline(detector)).await;
    assert_eq!(names(&report), ["api", "worker"]);
    let expected = Reason::Package {
        path: "packages/db/src/pool.rs".into(),
        package: "packages/db".into(),
    };
    assert!(report.apps.iter().all(|a| a.reasons == [expected.clone()]));
    assert_eq!(report.plan.unchanged, ["docs", "web"]);
    let mut built = parts.builder.builds();
    built.sort();
    assert_eq!(built, ["api", "worker"]);
}

#[tokio::test]
async fn rename_from_one_app_to_another_ships_both() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let detector = ScriptedDetector::new().with_changed_path(ChangedPath::renamed(
        "apps/web/util.ts",
        "apps/docs/util.ts",
    ));
    let report = build_and_ship(parts.pipeline(detector)).await;
    assert_eq!(names(&report), ["docs", "web"]);
    assert_eq!(
        report.apps[0].reasons,
        [Reason::OwnPath {
            path: "apps/docs/util.ts".into()
        }]
    );
    assert_eq!(
        report.apps[1].reasons,
        [Reason::OwnPath {
            path: "apps/web/util.ts".into()
        }]
    );
}

#[tokio::test]
async fn plan_has_no_side_effects() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let detector = ScriptedDetector::new().with_change("Cargo.lock");
    let plan = parts
        .pipeline(detector)
        .build()
        .expect("pipeline")
        .plan(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("plan");
    assert_eq!(plan.apps.len(), 4);
    assert_eq!(
        plan.apps[0].image.to_string(),
        "127.0.0.1:5000/acme/api:main-0123456"
    );
    assert_eq!(
        plan.apps[0].stages,
        [Stage::Build, Stage::Push, Stage::Deploy]
    );
    assert!(parts.builder.builds().is_empty());
    assert_eq!(parts.registry.writes(), 0);
    assert!(parts.deployer.calls().is_empty());
    // The plan is data: it serialises with every app's reasons.
    let json = serde_json::to_value(&plan).expect("json");
    assert_eq!(json["apps"][0]["reasons"][0]["rule"], "shared");
}

#[tokio::test]
async fn second_run_with_nothing_new_moves_nothing() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("apps/web/a.ts"))
        .build()
        .expect("pipeline");
    let first = ship(&pipeline).await;
    assert!(first.bytes_pushed() > 0);
    let second = ship(&pipeline).await;
    assert_eq!(second.apps[0].outcome, Outcome::Unchanged);
    assert_eq!(second.bytes_pushed(), 0);
    assert_eq!(second.status(), RunStatus::NothingToDo);
    assert_eq!(
        parts.builder.builds(),
        ["web"],
        "same fingerprint as the running deploy: no rebuild"
    );
}

#[tokio::test]
async fn skip_deploy_builds_and_pushes_only() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("apps/web/a.ts"))
        .skip_deploy(true)
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    assert_eq!(report.apps[0].outcome, Outcome::Pushed);
    assert!(parts.deployer.calls().is_empty());
    assert_eq!(parts.registry.writes(), 1);
}

#[tokio::test]
async fn skip_build_deploys_what_the_registry_has_and_explains_when_it_has_nothing() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let detector = ScriptedDetector::new().with_change("apps/web/a.ts");
    let skip = parts
        .pipeline(detector.clone())
        .skip_build(true)
        .build()
        .expect("pipeline");
    let missing = ship(&skip).await;
    assert_eq!(
        missing.apps[0].outcome,
        Outcome::Failed {
            stage: Stage::Build
        }
    );
    assert_eq!(
        missing.apps[0].error.as_deref(),
        Some(
            "web: build failed: 127.0.0.1:5000/acme/web:main-0123456 is not in the registry and builds are skipped; build it first or drop --skip-build"
        )
    );

    let pushed = parts
        .pipeline(detector.clone())
        .skip_deploy(true)
        .build()
        .expect("pipeline");
    ship(&pushed).await;
    let report = ship(&skip).await;
    assert_eq!(report.apps[0].outcome, Outcome::Deployed);
    assert_eq!(
        parts.builder.builds(),
        ["web"],
        "--skip-build must not build"
    );
    assert_eq!(parts.deployer.calls(), ["deploy web"]);
}

#[rstest]
#[case::fail_fast(FailurePolicy::FailFast)]
#[case::keep_going(FailurePolicy::Continue)]
#[tokio::test]
async fn failure_policy(#[case] policy: FailurePolicy) {
    // concurrency 1 runs apps in a known order: api fails first.
    let parts = Parts::new(FakeBuilder::new().failing_for("api"), FakeDeployer::new());
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("Cargo.lock"))
        .concurrency(1)
        .failure_policy(policy)
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        Outcome::Failed {
            stage: Stage::Build
        }
    );
    assert_eq!(
        api.error.as_deref(),
        Some("api: build failed: api: build: scripted build failure")
    );
    let others: Vec<&Outcome> = report.apps[1..].iter().map(|a| &a.outcome).collect();
    match policy {
        FailurePolicy::FailFast => {
            assert!(others.iter().all(|o| **o == Outcome::Skipped), "{others:?}");
            assert_eq!(parts.builder.builds(), ["api"]);
        }
        FailurePolicy::Continue => {
            assert!(
                others.iter().all(|o| **o == Outcome::Deployed),
                "{others:?}"
            );
            assert_eq!(parts.builder.builds().len(), 4);
        }
    }
    assert_eq!(report.status(), RunStatus::Failed);
}

#[tokio::test]
async fn failed_rollout_is_rolled_back_to_the_revision_that_ran_before() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let v1 = ScriptedDetector::new().with_change("apps/web/a.ts");
    let good = build_and_ship(parts.pipeline(v1)).await;
    let good_image = good.apps[0].image.clone().expect("image").to_string();

    parts.deployer.set_failing("web", true);
    let v2 = ScriptedDetector::new()
        .with_change("apps/web/a.ts")
        .with_file("apps/web/a.ts", "v2");
    let report = build_and_ship(parts.pipeline(v2)).await;
    let web = &report.apps[0];
    assert_eq!(
        web.outcome,
        Outcome::RolledBack {
            stage: Stage::Deploy
        }
    );
    assert!(
        web.error
            .as_deref()
            .is_some_and(|e| e.contains("revision 2: scripted rollout failure")),
        "{web:?}"
    );
    assert_eq!(
        parts.deployer.calls(),
        ["deploy web", "deploy web", "rollback web to 1"]
    );
    assert_eq!(
        parts.deployer.running("web").as_deref(),
        Some(good_image.as_str())
    );
    assert_eq!(web.rollback.as_ref().and_then(|r| r.revision), Some(1));
    assert_eq!(report.status(), RunStatus::RolledBack);
}

/// A deploy whose rollout never finishes, cancelled mid-watch: with automatic
/// rollback the pipeline brings back what ran before and says the app was cancelled
/// and restored; without it the rollout is left as it is.
#[rstest]
#[case::rolled_back(true)]
#[case::left_alone(false)]
#[tokio::test]
async fn a_cancelled_deploy_is_rolled_back_by_the_rollback_policy(#[case] rollback: bool) {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let v1 = ScriptedDetector::new().with_change("apps/web/a.ts");
    let good = build_and_ship(parts.pipeline(v1)).await;
    let good_image = good.apps[0].image.clone().expect("image").to_string();

    parts.deployer.set_stuck("web", true);
    let token = CancellationToken::new();
    let v2 = ScriptedDetector::new()
        .with_change("apps/web/a.ts")
        .with_file("apps/web/a.ts", "v2");
    let pipeline = parts
        .pipeline(v2)
        .rollback_on_failure(rollback)
        .cancellation(token.clone())
        .build()
        .expect("pipeline");
    let run = tokio::spawn(async move { ship(&pipeline).await });
    // The deploy has changed the workload and waits on its rollout when cancelled.
    while parts.deployer.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    token.cancel();
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("a cancelled run ends at once")
        .expect("joined");
    let web = &report.apps[0];
    assert_eq!(
        web.outcome,
        Outcome::Cancelled {
            stage: Some(Stage::Deploy),
            restored: rollback
        },
        "{web:?}"
    );
    assert_eq!(report.status(), RunStatus::Cancelled);
    if rollback {
        assert_eq!(
            parts.deployer.calls(),
            ["deploy web", "deploy web", "rollback web to 1"]
        );
        assert_eq!(
            parts.deployer.running("web").as_deref(),
            Some(good_image.as_str())
        );
    } else {
        assert_eq!(parts.deployer.calls(), ["deploy web", "deploy web"]);
        assert_ne!(
            parts.deployer.running("web").as_deref(),
            Some(good_image.as_str())
        );
        assert!(
            web.note
                .as_deref()
                .is_some_and(|n| n.contains("left as it is")),
            "{web:?}"
        );
    }
}

#[tokio::test]
async fn failed_first_rollout_has_nothing_to_roll_back_to() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new().failing_for("web"));
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("apps/web/a.ts"))
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    assert_eq!(
        report.apps[0].outcome,
        Outcome::Failed {
            stage: Stage::Deploy
        }
    );
    assert_eq!(
        report.apps[0].note.as_deref(),
        Some("first deploy of this app: there is no earlier revision to roll back to")
    );
    assert_eq!(parts.deployer.calls(), ["deploy web"]);
}

#[tokio::test]
async fn rollback_is_not_attempted_when_switched_off() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new().failing_for("web"));
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("apps/web/a.ts"))
        .rollback_on_failure(false)
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    assert_eq!(
        report.apps[0].outcome,
        Outcome::Failed {
            stage: Stage::Deploy
        }
    );
    assert_eq!(parts.deployer.calls(), ["deploy web"]);
}

#[tokio::test]
async fn a_deploy_that_failed_before_changing_anything_is_not_rolled_back() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let v1 = ScriptedDetector::new().with_change("apps/web/a.ts");
    let good = build_and_ship(parts.pipeline(v1)).await;
    let good_image = good.apps[0].image.clone().expect("image").to_string();

    // Another pipeline holds the lock: the deploy gives up before any change, and a
    // rollback now could undo what that pipeline deploys meanwhile.
    parts.deployer.set_refusing("web", true);
    let v2 = ScriptedDetector::new()
        .with_change("apps/web/a.ts")
        .with_file("apps/web/a.ts", "v2");
    let report = build_and_ship(parts.pipeline(v2)).await;
    let web = &report.apps[0];
    assert_eq!(
        web.outcome,
        Outcome::Failed {
            stage: Stage::Deploy
        }
    );
    assert_eq!(parts.deployer.calls(), ["deploy web", "deploy web"]);
    assert!(
        web.note
            .as_deref()
            .is_some_and(|n| n.starts_with("not rolled back") && n.contains(&good_image)),
        "{web:?}"
    );
    assert_eq!(report.status(), RunStatus::Failed);
}

#[tokio::test]
async fn a_failed_rollout_left_in_place_is_checked_again_not_skipped_as_unchanged() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let v1 = ScriptedDetector::new().with_change("apps/web/a.ts");
    build_and_ship(parts.pipeline(v1)).await;
    parts.deployer.set_failing("web", true);
    let v2 = || {
        ScriptedDetector::new()
            .with_change("apps/web/a.ts")
            .with_file("apps/web/a.ts", "v2")
    };
    let failed = build_and_ship(parts.pipeline(v2()).rollback_on_failure(false)).await;
    assert!(failed.apps[0].outcome.is_failure(), "{failed:?}");

    // Same inputs again: the broken rollout still runs and must not pass as unchanged.
    let again = build_and_ship(parts.pipeline(v2()).rollback_on_failure(false)).await;
    assert_eq!(
        again.apps[0].outcome,
        Outcome::Failed {
            stage: Stage::Deploy
        },
        "{again:?}"
    );
    assert_eq!(
        parts.deployer.calls(),
        ["deploy web", "deploy web", "deploy web"]
    );
}

#[rstest]
#[case(1)]
#[case(2)]
#[case(3)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limit_is_respected(#[case] limit: usize) {
    let delay = Duration::from_millis(30);
    let parts = Parts::new(
        FakeBuilder::new().with_delay(delay),
        FakeDeployer::new().with_delay(delay),
    );
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("Cargo.lock"))
        .concurrency(limit)
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    assert_eq!(report.apps.len(), 4);
    assert_eq!(parts.builder.max_concurrent(), limit, "builds at once");
    assert!(parts.deployer.max_concurrent() <= limit, "deploys at once");
}

#[tokio::test]
async fn cancellation_stops_apps_not_yet_started() {
    let token = CancellationToken::new();
    let parts = Parts::new(
        FakeBuilder::new().with_delay(Duration::from_millis(50)),
        FakeDeployer::new(),
    );
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("Cargo.lock"))
        .concurrency(1)
        .cancellation(token.clone())
        .build()
        .expect("pipeline");
    let plan = pipeline
        .plan(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("plan");
    let run = tokio::spawn({
        let pipeline = pipeline.clone();
        async move { pipeline.execute(plan).await.expect("parts") }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    token.cancel();
    let report = run.await.expect("joined");
    let outcomes: Vec<_> = report.apps.iter().map(|a| a.outcome.clone()).collect();
    assert_eq!(
        outcomes[0],
        Outcome::Cancelled {
            stage: Some(Stage::Build),
            restored: false
        },
        "the app under way was stopped in its build"
    );
    assert!(
        outcomes[1..].iter().all(|o| *o
            == Outcome::Cancelled {
                stage: None,
                restored: false
            }),
        "{outcomes:?}"
    );
    assert_eq!(
        parts.builder.builds().len(),
        1,
        "only the app under way had started"
    );
    assert!(parts.deployer.calls().is_empty());
    assert_eq!(report.status(), RunStatus::Cancelled);
}

#[tokio::test]
async fn events_cover_every_stage_of_every_app() {
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = EventSink::new({
        let events = events.clone();
        move |e| events.lock().expect("lock").push(e.clone())
    });
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("packages/db/x.rs"))
        .events(sink)
        .build()
        .expect("pipeline");
    ship(&pipeline).await;
    let events = events.lock().expect("lock");
    for app in ["api", "worker"] {
        for stage in [Stage::Build, Stage::Push, Stage::Deploy] {
            let of = |kind: &EventKind| {
                events
                    .iter()
                    .any(|e| e.app.as_deref() == Some(app) && e.stage == stage && &e.kind == kind)
            };
            assert!(of(&EventKind::Started), "{app} {stage} started");
            assert!(
                of(&EventKind::Finished { ok: true }),
                "{app} {stage} finished"
            );
        }
    }
    assert!(events.iter().any(|e| e.stage == Stage::Push
        && matches!(e.kind, EventKind::Progress { ref unit, .. } if unit == "bytes")));
}

#[tokio::test]
async fn without_a_base_every_app_is_in_and_filters_apply() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let pipeline = parts
        .pipeline(ScriptedDetector::new())
        .build()
        .expect("pipeline");
    let plan = pipeline
        .plan(None, "HEAD", &Selection::default())
        .await
        .expect("plan");
    assert_eq!(plan.apps.len(), 4);
    assert!(plan.apps.iter().all(|a| a.reasons == [Reason::NoBase]));
    let only = Selection {
        all: false,
        apps: vec!["web".into()],
    };
    let plan = pipeline.plan(None, "HEAD", &only).await.expect("plan");
    assert_eq!(
        plan.apps.iter().map(|a| a.app.as_str()).collect::<Vec<_>>(),
        ["web"]
    );
    let bad = Selection {
        all: false,
        apps: vec!["mobile".into()],
    };
    let err = pipeline
        .plan(None, "HEAD", &bad)
        .await
        .expect_err("unknown app");
    assert_eq!(
        err.to_string(),
        "unknown app \"mobile\" in the app filter (known apps: api, docs, web, worker)"
    );
}

#[tokio::test]
async fn missing_parts_are_explained() {
    let err = Pipeline::builder(workspace())
        .build()
        .err()
        .expect("no detector");
    assert_eq!(
        err.to_string(),
        "pipeline has no change detector: call .detector(…), e.g. with shipflow_git::GitChangeDetector"
    );

    // A detector is enough to plan.
    let planner = Pipeline::builder(workspace())
        .detector(Arc::new(ScriptedDetector::new()))
        .build()
        .expect("pipeline");
    assert_eq!(
        planner
            .plan(None, "HEAD", &Selection::default())
            .await
            .expect("plan")
            .apps
            .len(),
        4
    );
    let err = planner
        .run(None, "HEAD", &Selection::default())
        .await
        .expect_err("cannot run");
    assert_eq!(
        err.to_string(),
        "pipeline has no image builder: call .builder(…), or .skip_build(true) to deploy images already pushed"
    );

    let no_deployer = Pipeline::builder(workspace())
        .detector(Arc::new(ScriptedDetector::new()))
        .registry(Arc::new(MemoryRegistry::new()))
        .builder(Arc::new(FakeBuilder::new()));
    let err = no_deployer
        .build()
        .expect("pipeline")
        .run(None, "HEAD", &Selection::default())
        .await
        .expect_err("no deployer");
    assert!(matches!(
        err,
        PipelineError::MissingPart {
            part: "deployer",
            ..
        }
    ));
}

#[tokio::test]
async fn without_a_base_only_apps_whose_fingerprint_differs_from_what_runs_ship() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let v1 = parts
        .pipeline(ScriptedDetector::new())
        .build()
        .expect("pipeline");
    let first = v1
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("run");
    assert!(first.apps.iter().all(|a| a.outcome == Outcome::Deployed));

    let v2 = parts
        .pipeline(ScriptedDetector::new().with_file("apps/web/a.ts", "v2"))
        .build()
        .expect("pipeline");
    let second = v2
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("run");
    let outcomes: Vec<(&str, &Outcome)> = second
        .apps
        .iter()
        .map(|a| (a.app.as_str(), &a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("api", &Outcome::Unchanged),
            ("docs", &Outcome::Unchanged),
            ("web", &Outcome::Deployed),
            ("worker", &Outcome::Unchanged)
        ]
    );

    // --all forces every app through, fingerprint or not.
    let forced = Selection {
        all: true,
        apps: vec![],
    };
    let third = v2.run(None, "HEAD", &forced).await.expect("run");
    assert_eq!(parts.builder.builds().len(), 4 + 1 + 4);
    assert!(third.apps.iter().all(|a| a.reasons == [Reason::All]));
}

#[tokio::test]
async fn a_shared_file_s_content_is_part_of_every_app_s_fingerprint() {
    let detector = |lock: &str| ScriptedDetector::new().with_file("Cargo.lock", lock);
    let plan = |lock: &'static str| async move {
        let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
        parts
            .pipeline(detector(lock))
            .build()
            .expect("pipeline")
            .plan(None, "HEAD", &Selection::default())
            .await
            .expect("plan")
    };
    let (v1, v2) = (plan("v1").await, plan("v2").await);
    for (a, b) in v1.apps.iter().zip(&v2.apps) {
        assert_eq!(a.app, b.app);
        assert_ne!(a.fingerprint, b.fingerprint, "{}", a.app);
    }
    assert_eq!(v1.apps.len(), 4);
}

/// A deployer with a bug: it panics when asked to deploy `api`.
struct PanicsOnApi(FakeDeployer);

#[async_trait::async_trait]
impl shipflow_core::Deployer for PanicsOnApi {
    async fn current(
        &self,
        app: &shipflow_core::App,
        ctx: &shipflow_core::Context,
    ) -> Result<Option<shipflow_core::Deployed>, shipflow_core::BoxError> {
        self.0.current(app, ctx).await
    }

    async fn deploy(
        &self,
        app: &shipflow_core::App,
        image: &shipflow_core::ImageRef,
        meta: &shipflow_core::DeployMeta,
        ctx: &shipflow_core::Context,
    ) -> Result<shipflow_core::Rollout, shipflow_core::BoxError> {
        assert_ne!(app.name, "api", "a bug in the adapter");
        self.0.deploy(app, image, meta, ctx).await
    }

    async fn rollback(
        &self,
        app: &shipflow_core::App,
        to: shipflow_core::RollbackTarget,
        ctx: &shipflow_core::Context,
    ) -> Result<shipflow_core::Rollout, shipflow_core::BoxError> {
        self.0.rollback(app, to, ctx).await
    }

    async fn history(
        &self,
        app: &shipflow_core::App,
        ctx: &shipflow_core::Context,
    ) -> Result<Vec<shipflow_core::Revision>, shipflow_core::BoxError> {
        self.0.history(app, ctx).await
    }

    fn batches(&self) -> bool {
        self.0.batches()
    }
}

#[tokio::test]
async fn an_app_whose_adapter_panics_is_reported_failed_not_dropped() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let report = build_and_ship(
        parts
            .pipeline(ScriptedDetector::new().with_change("packages/db/x.sql"))
            .deployer(Arc::new(PanicsOnApi(FakeDeployer::new())))
            .failure_policy(FailurePolicy::Continue),
    )
    .await;
    assert_eq!(names(&report), ["api", "worker"]);
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        Outcome::Failed {
            stage: Stage::Deploy
        }
    );
    assert!(
        api.error.as_deref().is_some_and(|e| e.contains("panicked")),
        "{api:?}"
    );
    assert_eq!(report.apps[1].outcome, Outcome::Deployed);
    assert_eq!(report.status(), RunStatus::Failed);
}

#[tokio::test]
async fn a_plan_naming_an_app_the_workspace_lacks_is_refused() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("apps/web/a.ts"))
        .build()
        .expect("pipeline");
    let mut plan = pipeline
        .plan(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("plan");
    plan.apps[0].app = "gone".into();
    let err = pipeline.execute(plan).await.expect_err("unknown app");
    assert!(
        matches!(err, PipelineError::UnknownApp(ref u) if u.app == "gone"),
        "{err}"
    );
    assert!(parts.deployer.calls().is_empty());
}

#[tokio::test]
async fn further_tags_follow_the_pushed_image_by_manifest_only() {
    let ws = Workspace::from_toml(
        "[workspace]\nregistry = \"127.0.0.1:5000/acme\"\ntags = [\"${SHORT_SHA}\", \"latest\", \"stable\"]\n[apps.api]\n",
        ".",
    )
    .expect("valid");
    let registry = Arc::new(MemoryRegistry::new());
    let report = Pipeline::builder(ws)
        .detector(Arc::new(
            ScriptedDetector::new().with_change("apps/api/x.rs"),
        ))
        .builder(Arc::new(FakeBuilder::new()))
        .registry(registry.clone())
        .skip_deploy(true)
        .build()
        .expect("pipeline")
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("run");
    let api = &report.apps[0];
    assert_eq!(api.outcome, Outcome::Pushed);
    assert_eq!(api.extra_tags, ["latest", "stable"]);
    let pushed = api
        .image
        .as_ref()
        .and_then(|i| i.digest())
        .expect("digest")
        .clone();
    for tag in ["latest", "stable", "0123456"] {
        let reference = format!("127.0.0.1:5000/acme/api:{tag}")
            .parse()
            .expect("ref");
        assert_eq!(
            registry.tag_digest(&reference),
            Some(pushed.clone()),
            "{tag}"
        );
    }
    assert_eq!(report.plan.apps[0].extra_tags, ["latest", "stable"]);
}

/// The apps a batch call named, sorted (apps reach the batch in the order they finish).
fn batch_calls(deployer: &FakeDeployer) -> Vec<Vec<String>> {
    deployer
        .calls()
        .iter()
        .filter_map(|c| c.strip_prefix("batch "))
        .map(|apps| {
            let mut apps: Vec<String> = apps.split(", ").map(str::to_owned).collect();
            apps.sort();
            apps
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_deployer_gets_every_app_of_a_run_in_one_call() {
    // One app at a time, each build taking a while: the apps reach deploy far apart,
    // and an app waiting for the batch must not hold the only slot.
    let parts = Parts::new(
        FakeBuilder::new().with_delay(Duration::from_millis(40)),
        FakeDeployer::new().batching(),
    );
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("Cargo.lock"))
        .concurrency(1)
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    assert_eq!(
        batch_calls(&parts.deployer),
        [["api", "docs", "web", "worker"]]
    );
    assert_eq!(parts.builder.max_concurrent(), 1);
    assert!(
        report.apps.iter().all(|a| a.outcome == Outcome::Deployed),
        "{report:?}"
    );
    assert!(report.apps.iter().all(|a| a.rollout.is_some()));
    // A second run with nothing new: every app is unchanged, and no batch goes.
    let again = ship(&pipeline).await;
    assert!(again.apps.iter().all(|a| a.outcome == Outcome::Unchanged));
    assert_eq!(batch_calls(&parts.deployer).len(), 1);
}

#[tokio::test]
async fn a_failed_app_of_a_batch_is_rolled_back_alone() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new().batching());
    let v1 = ScriptedDetector::new().with_change("packages/db/x.sql");
    let first = build_and_ship(parts.pipeline(v1)).await;
    assert!(first.apps.iter().all(|a| a.outcome == Outcome::Deployed));
    parts.deployer.set_failing("worker", true);
    let v2 = ScriptedDetector::new()
        .with_change("packages/db/x.sql")
        .with_file("packages/db/x.sql", "v2");
    let report = build_and_ship(parts.pipeline(v2).failure_policy(FailurePolicy::Continue)).await;
    assert_eq!(names(&report), ["api", "worker"]);
    assert_eq!(report.apps[0].outcome, Outcome::Deployed);
    assert_eq!(
        report.apps[1].outcome,
        Outcome::RolledBack {
            stage: Stage::Deploy
        }
    );
    assert_eq!(
        batch_calls(&parts.deployer),
        [["api", "worker"], ["api", "worker"]]
    );
    assert_eq!(
        parts.deployer.calls().last().map(String::as_str),
        Some("rollback worker to 1")
    );
}

#[tokio::test]
async fn after_a_fail_fast_stop_the_batch_does_not_go() {
    // One at a time, in plan order: api builds and pushes, then worker's build fails
    // and stops the run; api, waiting for the batch, stays pushed.
    let parts = Parts::new(
        FakeBuilder::new().failing_for("worker"),
        FakeDeployer::new().batching(),
    );
    let pipeline = parts
        .pipeline(ScriptedDetector::new().with_change("packages/db/x.sql"))
        .concurrency(1)
        .build()
        .expect("pipeline");
    let report = ship(&pipeline).await;
    assert!(
        parts.deployer.calls().is_empty(),
        "{:?}",
        parts.deployer.calls()
    );
    let api = &report.apps[0];
    assert_eq!(api.outcome, Outcome::Pushed, "{api:?}");
    assert!(api.note.as_deref().is_some_and(|n| n.contains("fail-fast")));
    assert_eq!(
        report.apps[1].outcome,
        Outcome::Failed {
            stage: Stage::Build
        }
    );
    assert_eq!(report.status(), RunStatus::Failed);
}

#[tokio::test]
async fn a_batch_whose_adapter_panics_fails_its_apps_not_the_run() {
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let report = build_and_ship(
        parts
            .pipeline(ScriptedDetector::new().with_change("packages/db/x.sql"))
            .deployer(Arc::new(PanicsOnApi(FakeDeployer::new().batching())))
            .failure_policy(FailurePolicy::Continue),
    )
    .await;
    assert_eq!(names(&report), ["api", "worker"]);
    for app in &report.apps {
        assert_eq!(
            app.outcome,
            Outcome::Failed {
                stage: Stage::Deploy
            },
            "{app:?}"
        );
        assert!(
            app.error.as_deref().is_some_and(|e| e.contains("panicked")),
            "{app:?}"
        );
    }
}

/// A batching deployer whose first batch fails `worker` for a passing reason.
#[derive(Default)]
struct FlakyOnce {
    inner: FakeDeployer,
    failed: std::sync::atomic::AtomicBool,
    batches: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl shipflow_core::Deployer for FlakyOnce {
    async fn current(
        &self,
        app: &shipflow_core::App,
        ctx: &shipflow_core::Context,
    ) -> Result<Option<shipflow_core::Deployed>, shipflow_core::BoxError> {
        self.inner.current(app, ctx).await
    }

    async fn deploy(
        &self,
        app: &shipflow_core::App,
        image: &shipflow_core::ImageRef,
        meta: &shipflow_core::DeployMeta,
        ctx: &shipflow_core::Context,
    ) -> Result<shipflow_core::Rollout, shipflow_core::BoxError> {
        if app.name == "worker" && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(Box::new(shipflow_core::Transient));
        }
        self.inner.deploy(app, image, meta, ctx).await
    }

    fn batches(&self) -> bool {
        true
    }

    async fn deploy_batch(
        &self,
        items: &[shipflow_core::DeployItem<'_>],
    ) -> Vec<Result<shipflow_core::Rollout, shipflow_core::BoxError>> {
        let apps: Vec<&str> = items.iter().map(|i| i.app.name.as_str()).collect();
        self.batches.lock().expect("lock").push(apps.join(", "));
        let mut results = Vec::new();
        for item in items {
            results.push(self.deploy(item.app, item.image, item.meta, item.ctx).await);
        }
        results
    }
}

#[tokio::test]
async fn a_retried_batch_sends_again_only_what_failed_for_a_passing_reason() {
    let flaky = Arc::new(FlakyOnce::default());
    let deployer = shipflow_core::Retry::new(
        flaky.clone(),
        shipflow_core::Backoff::new(3, Duration::from_millis(1), Duration::from_millis(5)),
    );
    let parts = Parts::new(FakeBuilder::new(), FakeDeployer::new());
    let report = build_and_ship(
        parts
            .pipeline(ScriptedDetector::new().with_change("packages/db/x.sql"))
            .deployer(Arc::new(deployer)),
    )
    .await;
    assert!(
        report.apps.iter().all(|a| a.outcome == Outcome::Deployed),
        "{report:?}"
    );
    let mut batches = flaky.batches.lock().expect("lock").clone();
    batches[0] = {
        let mut first: Vec<&str> = batches[0].split(", ").collect();
        first.sort_unstable();
        first.join(", ")
    };
    assert_eq!(batches, ["api, worker", "worker"]);
}

#[tokio::test]
async fn a_run_cancelled_before_its_batch_deploys_nothing_and_says_so() {
    // Cancelled as soon as api has pushed: api waits for the batch, which never goes.
    let token = CancellationToken::new();
    let sink = EventSink::new({
        let token = token.clone();
        move |e| {
            if e.stage == Stage::Push && e.kind == (EventKind::Finished { ok: true }) {
                token.cancel();
            }
        }
    });
    let parts = Parts::new(
        FakeBuilder::new().with_delay(Duration::from_millis(20)),
        FakeDeployer::new().batching(),
    );
    let report = build_and_ship(
        parts
            .pipeline(ScriptedDetector::new().with_change("packages/db/x.sql"))
            .concurrency(1)
            .events(sink)
            .cancellation(token),
    )
    .await;
    assert!(
        parts.deployer.calls().is_empty(),
        "{:?}",
        parts.deployer.calls()
    );
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        Outcome::Cancelled {
            stage: Some(Stage::Deploy),
            restored: false
        },
        "{api:?}"
    );
    assert!(api.note.as_deref().is_some_and(|n| n.contains("cancelled")));
    assert_eq!(report.status(), RunStatus::Cancelled);
}

#[tokio::test]
async fn every_batched_app_gets_its_deploy_events() {
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = EventSink::new({
        let events = events.clone();
        move |e| events.lock().expect("lock").push(e.clone())
    });
    let parts = Parts::new(
        FakeBuilder::new(),
        FakeDeployer::new().batching().failing_for("worker"),
    );
    build_and_ship(
        parts
            .pipeline(ScriptedDetector::new().with_change("packages/db/x.sql"))
            .failure_policy(FailurePolicy::Continue)
            .events(sink),
    )
    .await;
    let events = events.lock().expect("lock");
    let of = |app: &str, kind: EventKind| {
        events
            .iter()
            .filter(|e| e.app.as_deref() == Some(app) && e.stage == Stage::Deploy && e.kind == kind)
            .count()
    };
    assert_eq!(of("api", EventKind::Started), 1);
    assert_eq!(of("api", EventKind::Finished { ok: true }), 1);
    assert_eq!(of("worker", EventKind::Started), 1);
    assert_eq!(of("worker", EventKind::Finished { ok: false }), 1);
}

const SETTINGS: &str = r#"
[workspace]
registry = "127.0.0.1:5000/acme"

[apps.api]
[apps.api.deploy.fake]
replicas = 2

[apps.web]
[apps.web.deploy.fake]
replicas = 2
"#;

#[tokio::test]
async fn a_changed_setting_ships_its_app_and_only_that_app() {
    let deployer = Arc::new(FakeDeployer::new());
    let registry = Arc::new(MemoryRegistry::new());
    let run = |toml: String, change: &'static str| {
        let (deployer, registry) = (deployer.clone(), registry.clone());
        async move {
            build_and_ship(
                Pipeline::builder(Workspace::from_toml(&toml, ".").expect("workspace"))
                    .detector(Arc::new(ScriptedDetector::new().with_change(change)))
                    .builder(Arc::new(FakeBuilder::new()))
                    .registry(registry)
                    .deployer(deployer),
            )
            .await
        }
    };
    let first = run(SETTINGS.to_owned(), "shipflow.toml").await;
    assert!(first.apps.iter().all(|a| a.outcome == Outcome::Deployed));
    assert_eq!(
        first.apps[0].reasons,
        [Reason::Config {
            path: "shipflow.toml".into()
        }]
    );
    // The file changed, the settings did not: nothing ships.
    let same = run(format!("{SETTINGS}# a comment\n"), "shipflow.toml").await;
    assert!(
        same.apps.iter().all(|a| a.outcome == Outcome::Unchanged),
        "{same:?}"
    );
    // web's replicas changed, and nothing else: web ships, api does not.
    let scaled = SETTINGS.replacen(
        "[apps.web.deploy.fake]\nreplicas = 2",
        "[apps.web.deploy.fake]\nreplicas = 5",
        1,
    );
    let report = run(scaled, "shipflow.toml").await;
    let outcomes: Vec<(&str, &Outcome)> = report
        .apps
        .iter()
        .map(|a| (a.app.as_str(), &a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [("api", &Outcome::Unchanged), ("web", &Outcome::Deployed)]
    );
}
