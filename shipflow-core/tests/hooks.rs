//! The `hooks` of shipflow.toml, run by the pipeline as real processes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shipflow_core::testing::{FakeBuilder, FakeDeployer, MemoryRegistry, ScriptedDetector};
use shipflow_core::{Outcome, Pipeline, Report, Selection, Stage, Workspace};

/// A workspace in `dir` with two apps, `api` and `web`, and `hooks` appended.
fn workspace(dir: &Path, hooks: &str) -> Workspace {
    let toml = format!("[workspace]\nregistry = \"r.io/acme\"\n[apps.api]\n[apps.web]\n{hooks}");
    std::fs::create_dir_all(dir.join("apps/api")).expect("mkdir");
    Workspace::from_toml(&toml, dir).expect("valid workspace")
}

async fn run(
    workspace: Workspace,
    builder: Arc<FakeBuilder>,
    deployer: Arc<FakeDeployer>,
) -> Report {
    Pipeline::builder(workspace)
        .detector(Arc::new(
            ScriptedDetector::new().with_change("apps/api/main.rs"),
        ))
        .builder(builder)
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(deployer)
        .build()
        .expect("pipeline")
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("run")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn hooks_run_in_order_for_changed_apps_with_their_environment_and_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = "echo \"$SHIPFLOW_STAGE $SHIPFLOW_APP image=$SHIPFLOW_IMAGE target=$SHIPFLOW_TARGET rev=$SHIPFLOW_REVISION\" >> hooks.log";
    let ws = workspace(
        dir.path(),
        &format!(
            "[workspace.hooks]\npre_build = '{log}'\npost_deploy = '{log}'\n\
             [apps.api.hooks]\npre_build = 'cat > stdin.json'\npost_build = '{log}'\npre_deploy = ['sh', '-c', '{log}']\n"
        ),
    );
    let report = run(
        ws,
        Arc::new(FakeBuilder::new()),
        Arc::new(FakeDeployer::new()),
    )
    .await;
    assert_eq!(report.apps.len(), 1, "only api changed");
    let api = &report.apps[0];
    assert_eq!(api.outcome, Outcome::Deployed, "{api:?}");
    let pinned = api.image.as_ref().expect("pinned").to_string();
    let rev = &report.plan.revision.sha;
    assert!(!rev.is_empty());
    let lines: Vec<String> = read(&dir.path().join("hooks.log"))
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        [
            format!("pre_build api image= target= rev={rev}"),
            format!("post_build api image={pinned} target= rev={rev}"),
            format!("pre_deploy api image={pinned} target=fake rev={rev}"),
            format!("post_deploy api image={pinned} target=fake rev={rev}"),
        ],
        "the workspace's hook first, then the app's; web never"
    );
    let stdin: serde_json::Value =
        serde_json::from_str(&read(&dir.path().join("stdin.json"))).expect("json");
    assert_eq!(stdin["app"], "api");
    assert_eq!(stdin["stage"], "pre_build");
    assert_eq!(stdin["reasons"][0]["rule"], "own_path");
    assert_eq!(stdin["reasons"][0]["path"], "apps/api/main.rs");
}

#[tokio::test]
async fn a_failing_pre_hook_stops_the_app_and_its_output_is_in_the_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = "for i in $(seq 1 60); do echo line $i; done; echo boom >&2; exit 3";
    let ws = workspace(
        dir.path(),
        &format!("[apps.api.hooks]\npre_build = '{script}'\n"),
    );
    let builder = Arc::new(FakeBuilder::new());
    let deployer = Arc::new(FakeDeployer::new());
    let report = run(ws, builder.clone(), deployer.clone()).await;
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        Outcome::Failed {
            stage: Stage::Build
        }
    );
    let error = api.error.as_deref().expect("error");
    assert!(
        error.starts_with("api: build failed: api: pre_build hook `for i in"),
        "{error}"
    );
    assert!(error.contains("exited with 3"), "{error}");
    assert!(error.contains("boom"), "{error}");
    assert!(
        error.contains("line 60") && !error.contains("line 10\n"),
        "the last 50 lines only: {error}"
    );
    assert!(builder.builds().is_empty(), "nothing was built");
    assert!(deployer.calls().is_empty(), "nothing was deployed");
}

#[tokio::test]
async fn a_failing_on_failure_hook_never_hides_the_failure_and_rollback_still_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ws = workspace(
        dir.path(),
        "[apps.api.hooks]\non_failure = 'echo paging; exit 1'\non_rollback = 'echo rolled >> rollback.log'\n",
    );
    let deployer = Arc::new(FakeDeployer::new());
    let builder = Arc::new(FakeBuilder::new());
    let first = run(ws.clone(), builder.clone(), deployer.clone()).await;
    assert_eq!(first.apps[0].outcome, Outcome::Deployed);

    deployer.set_failing("api", true);
    let detector = ScriptedDetector::new()
        .with_change("apps/api/main.rs")
        .with_file("apps/api/main.rs", "v2");
    let report = Pipeline::builder(ws)
        .detector(Arc::new(detector))
        .builder(builder)
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(deployer.clone())
        .build()
        .expect("pipeline")
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("run");
    let api = &report.apps[0];
    assert_eq!(
        api.outcome,
        Outcome::RolledBack {
            stage: Stage::Deploy
        },
        "{api:?}"
    );
    let error = api.error.as_deref().expect("error");
    assert!(
        error.contains("scripted rollout failure"),
        "the original failure: {error}"
    );
    assert!(
        error.contains("on_failure hook failed too") && error.contains("paging"),
        "{error}"
    );
    assert_eq!(read(&dir.path().join("rollback.log")), "rolled\n");
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_with_its_whole_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The hook leaves a grandchild behind; the timeout must take it too.
    let ws = workspace(
        dir.path(),
        "[apps.api.hooks]\npre_build = 'sleep 600 & echo $! > grandchild; wait'\ntimeout = 1\n",
    );
    let started = Instant::now();
    let report = run(
        ws,
        Arc::new(FakeBuilder::new()),
        Arc::new(FakeDeployer::new()),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let error = report.apps[0].error.as_deref().expect("error");
    assert!(
        error.contains("timed out after 1 s and was killed"),
        "{error}"
    );
    let pid = read(&dir.path().join("grandchild")).trim().to_owned();
    let gone = (0..50).any(|_| {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its reaper.
        let dead = state.is_empty() || state.split(' ').nth(2) == Some("Z");
        if !dead {
            std::thread::sleep(Duration::from_millis(100));
        }
        dead
    });
    assert!(gone, "the hook's grandchild {pid} was killed");
}

#[tokio::test]
async fn with_a_batching_deployer_each_app_keeps_its_own_deploy_hooks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = "echo \"$SHIPFLOW_STAGE $SHIPFLOW_APP\" >> hooks.log";
    let ws = workspace(
        dir.path(),
        &format!(
            "[workspace.hooks]\npre_deploy = '{log}'\npost_deploy = '{log}'\n\
             [apps.web.hooks]\npre_deploy = 'echo web refused >&2; exit 7'\n"
        ),
    );
    let deployer = Arc::new(FakeDeployer::new().batching());
    let report = Pipeline::builder(ws)
        .detector(Arc::new(
            ScriptedDetector::new()
                .with_change("apps/api/main.rs")
                .with_change("apps/web/main.rs"),
        ))
        .builder(Arc::new(FakeBuilder::new()))
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(deployer.clone())
        .failure_policy(shipflow_core::FailurePolicy::Continue)
        .build()
        .expect("pipeline")
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("run");
    // web's pre-deploy hook refused: web drops out of the batch alone.
    assert_eq!(deployer.calls(), ["batch api", "deploy api"]);
    assert_eq!(report.apps[0].outcome, Outcome::Deployed, "{report:?}");
    assert_eq!(
        report.apps[1].outcome,
        Outcome::Failed {
            stage: Stage::Deploy
        }
    );
    let error = report.apps[1].error.as_deref().expect("error");
    assert!(error.contains("web refused"), "{error}");
    let mut lines: Vec<String> = read(&dir.path().join("hooks.log"))
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        ["post_deploy api", "pre_deploy api", "pre_deploy web"],
        "web's own hook ran after the workspace's, and failed"
    );
}
