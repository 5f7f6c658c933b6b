//! The per-app host lock (a concurrent deploy waits, or fails naming the holder) and
//! crash repair (a half-done deploy and a dead holder's lock are understood by the
//! next run, which converges).

mod common;

use std::time::Duration;

use common::{Harness, free_port, get};
use rstest::rstest;
use shipflow_core::{Context, DeployMeta, Deployer};
use shipflow_docker::{DockerError, EngineDeployer, EngineKind};

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploy_waits_or_fails_naming_the_holder(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "lock-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", timeout = 3 }}"),
    );
    let v1 = h.web_image("lock-web", "v1", "v1");
    let v2 = h.web_image("lock-web", "v2", "v2");
    let bad = h.image("lock-web", "bad", "bad", "exec sleep 600");
    let ctx = Context::new();
    let holder = h.deployer().await;
    holder
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");

    let slow = tokio::spawn({
        let app = app.clone();
        async move {
            holder
                .deploy(&app, &bad, &DeployMeta::default(), &Context::new())
                .await
                .map_err(|e| e.to_string())
        }
    });
    // The lock file stays between deploys: that the slow deploy created its
    // container says it holds the lock (it takes the lock first).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !h
        .containers(&app.name)
        .iter()
        .any(|(name, _)| *name == format!("{}--r2--unchecked", app.name))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow deploy never created its container"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let impatient = EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join("state"))
        .lock_wait(Duration::from_millis(300))
        .build();
    let err = impatient
        .deploy(&app, &v2, &DeployMeta::default(), &ctx)
        .await
        .expect_err("locked");
    let text = err.to_string();
    assert!(
        matches!(
            err.downcast_ref::<DockerError>(),
            Some(DockerError::Locked { .. })
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "names the holder: {text}"
    );

    let patient = EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join("state"))
        .probe_interval(Duration::from_millis(100))
        .lock_wait(Duration::from_secs(60))
        .build();
    let rollout = patient
        .deploy(&app, &v2, &DeployMeta::default(), &ctx)
        .await
        .expect("waits for the lock, then deploys");
    let slow = slow.await.expect("slow deploy task");
    assert!(slow.is_err_and(|e| e.contains("unhealthy")));
    assert_eq!(rollout.revision, Some(3), "after r1 and the failed r2");
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v2")
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_after_a_crash_repairs_and_converges(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "crash-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\" }}"),
    );
    let v1 = h.web_image("crash-web", "v1", "v1");
    let v2 = h.web_image("crash-web", "v2", "v2");
    let ctx = Context::new();
    let deployer = h.deployer().await;
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");

    // A deployer died mid-recreate: it had stopped r1, created r2 and not started
    // it, and its lock file (in the format of before the lock was an OS lock) names
    // a process that is gone.
    h.cli_run(&["stop", "-t", "2", &format!("{}--r1", app.name)]);
    let v2_ref = v2.to_string();
    h.pull(&v2_ref);
    h.cli_run(&[
        "create",
        "--name",
        &format!("{}--r2--unchecked", app.name),
        "--label",
        &format!("dev.shipflow.app={}", app.name),
        "--label",
        "dev.shipflow.revision=2",
        "--label",
        &format!("dev.shipflow.image={v2_ref}"),
        "-p",
        &format!("127.0.0.1:{port}:80"),
        &v2_ref,
    ]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    std::fs::create_dir_all(h.dir.path().join("state")).expect("state dir");
    std::fs::write(
        h.dir.path().join(format!("state/{}.lock", app.name)),
        format!(
            r#"{{"pid":4194303,"host":"{}","since":1,"expires":99999999999}}"#,
            host.trim()
        ),
    )
    .expect("stale lock");
    assert_eq!(deployer.current(&app, &ctx).await.expect("current"), None);

    // The next run is not blocked by the dead holder's lock, removes the never-started
    // container, and converges on v2.
    let rollout = deployer
        .deploy(&app, &v2, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy after the crash");
    assert_eq!(rollout.revision, Some(2));
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v2")
    );
    assert_eq!(
        h.containers(&app.name),
        [
            (format!("{}--r1", app.name), "exited".to_owned()),
            (format!("{}--r2", app.name), "running".to_owned())
        ]
    );
    let current = deployer
        .current(&app, &ctx)
        .await
        .expect("current")
        .expect("runs");
    assert_eq!(current.image, v2_ref);
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_left_nothing_running_starts_the_last_good_revision(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "crash2-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\" }}"),
    );
    let v1 = h.web_image("crash2-web", "v1", "v1");
    let ctx = Context::new();
    let deployer = h.deployer().await;
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");
    h.cli_run(&["stop", "-t", "2", &format!("{}--r1", app.name)]);

    // Deploying the same image again repairs (r1 starts) and then has nothing to do.
    let rollout = deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("redeploy");
    assert_eq!((rollout.revision, rollout.changed), (Some(1), false));
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v1")
    );
}

/// Two workspaces on one host (two checkouts, two teams) with an app named alike:
/// their own container names keep each deployer to its own containers.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_named_alike_in_two_workspaces_never_touch_each_other(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let name = h.name("twin");
    let (port_a, port_b) = (free_port(), free_port());
    let app_in = |container: &str, port: u16| {
        h.app_toml(
            &name,
            &format!(
                "[apps.{name}.deploy.docker]\ncontainer = \"{}\"\nports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\" }}\n",
                h.name(container)
            ),
        )
    };
    let (a, b) = (app_in("team-a", port_a), app_in("team-b", port_b));
    let a1 = h.web_image("twin", "a1", "a1");
    let a2 = h.web_image("twin", "a2", "a2");
    let b1 = h.web_image("twin", "b1", "b1");
    // Separate state dirs: two checkouts do not share their locks.
    let deployer = h.deployer().await;
    let other = EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join("state-b"))
        .probe_interval(Duration::from_millis(100))
        .build();
    let (meta, ctx) = (DeployMeta::default(), Context::new());
    deployer.deploy(&a, &a1, &meta, &ctx).await.expect("a1");
    other.deploy(&b, &b1, &meta, &ctx).await.expect("b1");
    deployer.deploy(&a, &a2, &meta, &ctx).await.expect("a2");

    let http = reqwest::Client::new();
    assert_eq!(get(&http, port_a).await.as_deref(), Ok("a2"));
    assert_eq!(get(&http, port_b).await.as_deref(), Ok("b1"), "b untouched");
    let history = |revisions: Vec<shipflow_core::Revision>| -> Vec<String> {
        revisions.into_iter().map(|r| r.image).collect()
    };
    assert_eq!(
        history(deployer.history(&a, &ctx).await.expect("history a")),
        [a1.to_string(), a2.to_string()]
    );
    assert_eq!(
        history(other.history(&b, &ctx).await.expect("history b")),
        [b1.to_string()]
    );
}

/// A deploy joined with other work on the test's own thread (`tokio::join!` in
/// `block_on`): releasing the locks at the deploy's end must not swallow the
/// wake-ups of the futures beside it. A ticker that sleeps 1 ms at a time ends
/// with the deploys; it hung when the engine lock was released by a `block_on`
/// nested on this thread.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_the_locks_wakes_nothing_away_from_work_joined_beside(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "join-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\" }}"),
    );
    let v1 = h.web_image("join-web", "v1", "v1");
    let deployer = h.deployer().await;
    let (meta, ctx) = (DeployMeta::default(), Context::new());
    deployer
        .deploy(&app, &v1, &meta, &ctx)
        .await
        .expect("deploy v1");
    for round in 0..5 {
        let started = std::time::Instant::now();
        let deploy = deployer.deploy(&app, &v1, &meta, &ctx);
        let ticker = async {
            for _ in 0..300 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let joined = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(deploy, ticker)
        })
        .await;
        let (unchanged, ()) = joined.expect("within a minute");
        assert!(!unchanged.expect("same image").changed);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "round {round}: the ticker was woken only by the minute's timeout: {:?}",
            started.elapsed()
        );
    }
}
