//! `recreate` deploys against a real Podman and a real registry: v1 then v2 on the
//! published port, an unhealthy v3 rolled back automatically, rollback to a
//! revision, history, and the engine detected as Podman.

mod common;

use std::time::{Duration, Instant};

use common::{Harness, free_port, get};
use rstest::rstest;
use shipflow_core::{Context, DeployMeta, Deployer, Fingerprint, RollbackTarget};
use shipflow_docker::{DockerError, EngineKind};

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detects_the_engine(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let engine = h.engine().await;
    assert_eq!(engine.kind(), kind);
    // Debian 12's packages: Docker Engine 20.10, Podman 4.3.
    let major = match kind {
        EngineKind::Docker => "20.",
        EngineKind::Podman => "4.",
    };
    assert!(engine.version().starts_with(major), "{}", engine.version());
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_rolls_back_unhealthy_and_to_revision(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "rec-web",
        &format!(
            "ports = [\"127.0.0.1:{port}:80\"]\nenv = {{ GREETING = \"hi\" }}\nrestart = \"unless-stopped\"\nkeep = 2\nhealth = {{ http = \"/\", timeout = 3 }}"
        ),
    );
    let v1 = h.web_image("rec-web", "v1", "v1");
    let v2 = h.web_image("rec-web", "v2", "v2");
    let v3 = h.image(
        "rec-web",
        "v3",
        "v3",
        "echo v3 cannot start: missing config >&2; exec sleep 600",
    );
    let deployer = h.deployer().await;
    let http = reqwest::Client::new();
    let ctx = Context::new();
    let meta = |sha: &str| DeployMeta {
        fingerprint: Some(Fingerprint(format!("fp-{sha}"))),
        git_sha: Some(sha.to_owned()),
        change_cause: format!("deploy {sha}"),
        ..DeployMeta::default()
    };

    assert_eq!(deployer.current(&app, &ctx).await.expect("current"), None);
    let r1 = deployer
        .deploy(&app, &v1, &meta("aaa"), &ctx)
        .await
        .expect("deploy v1");
    assert_eq!((r1.revision, r1.changed), (Some(1), true));
    assert_eq!(get(&http, port).await.as_deref(), Ok("v1"));

    let r2 = deployer
        .deploy(&app, &v2, &meta("bbb"), &ctx)
        .await
        .expect("deploy v2");
    assert_eq!(r2.revision, Some(2));
    assert_eq!(get(&http, port).await.as_deref(), Ok("v2"));
    let current = deployer
        .current(&app, &ctx)
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(current.image, v2.to_string());
    assert_eq!(current.git_sha.as_deref(), Some("bbb"));
    assert_eq!(current.fingerprint, Some(Fingerprint("fp-bbb".into())));

    // Same digest again: nothing to do.
    let again = deployer
        .deploy(&app, &v2, &meta("bbb"), &ctx)
        .await
        .expect("redeploy v2");
    assert!(!again.changed);

    // v3 never answers HTTP: v2 must serve again, v3 is kept stopped with its logs.
    let err = deployer
        .deploy(&app, &v3, &meta("ccc"), &ctx)
        .await
        .expect_err("v3 is unhealthy");
    let err = err.downcast::<DockerError>().expect("typed error");
    let text = err.to_string();
    assert!(
        matches!(
            *err,
            DockerError::Unhealthy {
                previous: Some(_),
                ..
            }
        ),
        "v2 serves again, so the pipeline need not roll back: {text}"
    );
    assert!(
        text.contains("v3 cannot start: missing config"),
        "logs in the error: {text}"
    );
    assert!(text.contains("revision 2"), "{text}");
    assert_eq!(get(&http, port).await.as_deref(), Ok("v2"));
    assert!(
        h.containers(&app.name)
            .contains(&(format!("{}--r3--failed", app.name), "exited".into())),
        "{:?}",
        h.containers(&app.name)
    );

    let history = deployer.history(&app, &ctx).await.expect("history");
    let numbers: Vec<(u64, bool)> = history.iter().map(|r| (r.number, r.current)).collect();
    assert_eq!(numbers, [(1, false), (2, true), (3, false)]);
    assert_eq!(history[0].image, v1.to_string());
    assert_eq!(history[1].change_cause.as_deref(), Some("deploy bbb"));
    assert!(
        history[2]
            .change_cause
            .as_deref()
            .is_some_and(|c| c.contains("failed"))
    );

    // Rollback to revision 1 starts the kept container: no pull, v1 answers.
    let rb = deployer
        .rollback(&app, RollbackTarget::Revision(1), &ctx)
        .await
        .expect("rollback to 1");
    assert_eq!((rb.revision, rb.changed), (Some(1), true));
    assert_eq!(get(&http, port).await.as_deref(), Ok("v1"));
    // Previous of revision 1 does not exist; revision 2 does.
    let none = deployer
        .rollback(&app, RollbackTarget::Previous, &ctx)
        .await;
    assert!(none.is_err_and(|e| e.to_string().contains("no previous revision")));
    deployer
        .rollback(&app, RollbackTarget::Revision(2), &ctx)
        .await
        .expect("roll forward to 2");
    assert_eq!(get(&http, port).await.as_deref(), Ok("v2"));
    let missing = deployer
        .rollback(&app, RollbackTarget::Revision(9), &ctx)
        .await;
    assert!(missing.is_err_and(|e| e.to_string().contains("revision 9 is not kept")));

    // After the next deploy, the `keep = 2` newest healthy stopped containers stay,
    // and the failed one (the newest failed: its logs explain the failure).
    let v4 = h.web_image("rec-web", "v4", "v4");
    let r4 = deployer
        .deploy(&app, &v4, &meta("ddd"), &ctx)
        .await
        .expect("deploy v4");
    assert_eq!(r4.revision, Some(4));
    assert_eq!(get(&http, port).await.as_deref(), Ok("v4"));
    let names: Vec<String> = h
        .containers(&app.name)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            format!("{}--r1", app.name),
            format!("{}--r2", app.name),
            format!("{}--r3--failed", app.name),
            format!("{}--r4", app.name)
        ]
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_without_a_proxy_is_refused(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let app = h.app("sf-noproxy", "ports = [\"80\"]\nstrategy = \"start-first\"");
    let image = format!("{}/x@sha256:{}", h.registry, "0".repeat(64))
        .parse()
        .expect("reference");
    let deployer = h.deployer().await;
    let err = deployer
        .deploy(&app, &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("start-first needs a reverse proxy"),
        "{err}"
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_credentials_from_an_auth_registry(#[case] kind: EngineKind) {
    let h = Harness::start_with_basic_auth(kind, "deployer", "s3cret-pw");
    let port = free_port();
    let app = h.app(
        "auth-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\" }}"),
    );
    let v1 = h.web_image("auth-web", "v1", "v1");
    let ctx = Context::new();

    let anonymous = h.deployer().await;
    let err = anonymous
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect_err("the registry wants credentials");
    let text = err.to_string();
    assert!(text.contains(&format!("app {}: pull", app.name)), "{text}");

    let credentials = shipflow_docker::RegistryCredentials {
        username: "deployer".into(),
        password: "s3cret-pw".into(),
    };
    assert!(
        !format!("{credentials:?}").contains("s3cret"),
        "Debug hides the password"
    );
    let deployer = shipflow_docker::EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join("state"))
        .probe_interval(std::time::Duration::from_millis(100))
        .credentials(credentials)
        .build();
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy with credentials");
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v1")
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_during_the_health_check_brings_the_old_one_back(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "cancel-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", timeout = 60 }}"),
    );
    let v1 = h.web_image("cancel-web", "v1", "v1");
    let bad = h.image("cancel-web", "bad", "bad", "exec sleep 600");
    let deployer = h.deployer().await;
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &Context::new())
        .await
        .expect("deploy v1");

    let token = shipflow_core::CancellationToken::new();
    let ctx = Context::new().with_cancellation(token.clone());
    let meta = DeployMeta::default();
    let deploy = deployer.deploy(&app, &bad, &meta, &ctx);
    let cancel = async {
        // Cancel once the new container runs (its health check never passes).
        while !h
            .containers(&app.name)
            .contains(&(format!("{}--r2--unchecked", app.name), "running".into()))
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        token.cancel();
    };
    let (result, ()) = tokio::join!(deploy, cancel);
    let err = result.expect_err("cancelled");
    assert!(
        matches!(
            err.downcast_ref::<DockerError>(),
            Some(DockerError::Cancelled { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("revision 1"), "{err}");
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v1")
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_exec_probe_fails_at_the_health_timeout_or_on_cancel(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let docker = |timeout: u32| {
        format!(
            "ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ cmd = [\"/bin/busybox\", \"sleep\", \"3600\"], timeout = {timeout} }}"
        )
    };
    let v1 = h.web_image("exec-web", "v1", "v1");
    let v2 = h.web_image("exec-web", "v2", "v2");
    let deployer = h.deployer().await;
    let limit = Duration::from_secs(60);

    // The probe never returns (the image has busybox only, no `sleep` link): the
    // deploy fails at its 2 s health timeout.
    let app = h.app("exec-web", &docker(2));
    let (meta, ctx) = (DeployMeta::default(), Context::new());
    let started = Instant::now();
    let err = tokio::time::timeout(limit, deployer.deploy(&app, &v1, &meta, &ctx))
        .await
        .expect("the deploy ends although the probe hangs")
        .expect_err("never healthy");
    let elapsed = started.elapsed();
    let text = err.to_string();
    assert!(
        matches!(
            err.downcast_ref::<DockerError>(),
            Some(DockerError::Unhealthy { .. })
        ),
        "{text}"
    );
    assert!(text.contains("not healthy within 2s"), "{text}");
    assert!(text.contains("did not finish within"), "{text}");
    // Pull, create, start, 2 s of probing, stop: far from the hour `sleep` asks for.
    assert!(
        elapsed < Duration::from_secs(20),
        "took {elapsed:?}: {text}"
    );

    // With a long health timeout, cancelling ends the hanging probe at once.
    let app = h.app("exec-web", &docker(600));
    let token = shipflow_core::CancellationToken::new();
    let ctx = Context::new().with_cancellation(token.clone());
    let deploy = deployer.deploy(&app, &v2, &meta, &ctx);
    let cancel = async {
        while !h
            .containers(&app.name)
            .contains(&(format!("{}--r2--unchecked", app.name), "running".into()))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the probe start and hang.
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel();
        Instant::now()
    };
    let (result, cancelled_at) =
        tokio::time::timeout(limit, async { tokio::join!(deploy, cancel) })
            .await
            .expect("the deploy ends although the probe hangs");
    let err = result.expect_err("cancelled");
    assert!(
        matches!(
            err.downcast_ref::<DockerError>(),
            Some(DockerError::Cancelled { .. })
        ),
        "{err}"
    );
    let after = cancelled_at.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "ended {after:?} after the cancel"
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_container_comes_back_even_when_stopping_the_new_one_fails(
    #[case] kind: EngineKind,
) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "undo-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", timeout = 60 }}"),
    );
    let v1 = h.web_image("undo-web", "v1", "v1");
    let bad = h.image("undo-web", "bad", "bad", "exec sleep 600");
    let deployer = h.deployer().await;
    let (meta, ctx) = (DeployMeta::default(), Context::new());
    deployer
        .deploy(&app, &v1, &meta, &ctx)
        .await
        .expect("deploy v1");

    // The new container disappears during its health check (someone removed it): the
    // check fails, and so does stopping it; r1 must serve again all the same.
    let deploy = deployer.deploy(&app, &bad, &meta, &ctx);
    let remove = async {
        while !h
            .containers(&app.name)
            .contains(&(format!("{}--r2--unchecked", app.name), "running".into()))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.remove_now(&format!("{}--r2--unchecked", app.name));
    };
    let (result, ()) = tokio::join!(deploy, remove);
    let err = result.expect_err("r3 is gone");
    let text = err.to_string();
    assert!(
        matches!(
            err.downcast_ref::<DockerError>(),
            Some(DockerError::NotRestored { .. })
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!("stopping {}--r2--unchecked failed", app.name)),
        "{text}"
    );
    assert!(text.contains("revision 1"), "{text}");
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v1")
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deploys_never_prune_the_last_good_revision(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "keep-web",
        &format!(
            "ports = [\"127.0.0.1:{port}:80\"]\nkeep = 3\nhealth = {{ http = \"/\", timeout = 2 }}"
        ),
    );
    let v1 = h.web_image("keep-web", "v1", "v1");
    let v2 = h.web_image("keep-web", "v2", "v2");
    // Runs without serving HTTP, and exits on SIGTERM.
    let broken = h.image(
        "keep-web",
        "broken",
        "broken",
        "echo broken >&2; trap 'exit 1' TERM; while :; do sleep 1; done",
    );
    let deployer = h.deployer().await;
    let (meta, ctx) = (DeployMeta::default(), Context::new());
    deployer
        .deploy(&app, &v1, &meta, &ctx)
        .await
        .expect("deploy v1");
    for _ in 2..=4 {
        deployer
            .deploy(&app, &broken, &meta, &ctx)
            .await
            .expect_err("broken never answers");
    }
    let r5 = deployer
        .deploy(&app, &v2, &meta, &ctx)
        .await
        .expect("deploy v2");
    assert_eq!(r5.revision, Some(5));

    // r1, the only good revision before r5, stays; of the failed ones the newest.
    let names: Vec<String> = h
        .containers(&app.name)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        [
            format!("{}--r1", app.name),
            format!("{}--r4--failed", app.name),
            format!("{}--r5", app.name)
        ]
    );
    deployer
        .rollback(&app, RollbackTarget::Previous, &ctx)
        .await
        .expect("roll back to r1");
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v1")
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_at_once_is_reported_as_exited(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "exit-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", timeout = 5 }}"),
    );
    let crashing = h.image(
        "exit-web",
        "v1",
        "v1",
        "echo crashed on start >&2; sleep 1; exit 3",
    );
    let deployer = h.deployer().await;
    let err = deployer
        .deploy(&app, &crashing, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("it exits");
    let text = err.to_string();
    assert!(text.contains("exited"), "{text}");
    assert!(!text.contains("deserialize"), "{text}");
    assert!(
        text.contains("crashed on start"),
        "the last log lines: {text}"
    );
}

/// A cancel (Ctrl-C, a CI timeout) 2 s into a deploy whose new revision never gets
/// healthy ends the deploy within seconds, whatever the health timeout (60 s) and
/// stop timeout (30 s): the new container is stopped at once and kept for its
/// logs, v1 serves again, and the error says cancelled (for the pipeline's report)
/// and restored.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_restores_v1_within_seconds_whatever_the_timeouts(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "ctrlc-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", timeout = 60 }}"),
    );
    let v1 = h.web_image("ctrlc-web", "v1", "v1");
    // PID 1 without a TERM handler: only SIGKILL stops it.
    let never = h.image("ctrlc-web", "never", "never", "exec sleep 600");
    let deployer = shipflow_docker::EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join("state"))
        .probe_interval(Duration::from_millis(100))
        .stop_timeout(30)
        .build();
    let meta = DeployMeta::default();
    deployer
        .deploy(&app, &v1, &meta, &Context::new())
        .await
        .expect("deploy v1");

    let token = shipflow_core::CancellationToken::new();
    let ctx = Context::new().with_cancellation(token.clone());
    let cancel = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        token.cancel();
        Instant::now()
    };
    let (result, cancelled_at) = tokio::join!(deployer.deploy(&app, &never, &meta, &ctx), cancel);
    let after = cancelled_at.elapsed();
    eprintln!("{kind}: the deploy ended {after:?} after the cancel");
    let err = result.expect_err("cancelled");
    assert!(
        after < Duration::from_secs(5),
        "ended {after:?} after the cancel: {err}"
    );
    assert!(
        shipflow_core::caused_by::<shipflow_core::Cancelled>(err.as_ref()),
        "{err}"
    );
    assert!(
        matches!(
            err.downcast_ref::<DockerError>(),
            Some(DockerError::Cancelled { restored: true, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("revision 1"), "{err}");
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v1")
    );
    assert!(
        h.containers(&app.name)
            .contains(&(format!("{}--r2--failed", app.name), "exited".into())),
        "{:?}",
        h.containers(&app.name)
    );
}
