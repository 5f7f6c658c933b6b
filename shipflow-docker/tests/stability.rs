//! A new revision is trusted only once it stayed healthy: one that dies seconds
//! after its first good probe is rolled back (with `recreate` and behind a real
//! Caddy with `start-first`), and a revision whose deploy died before the verdict is
//! never served again nor taken for "unchanged".

mod common;

use std::time::Duration;

use common::{Harness, free_port, get};
use rstest::rstest;
use shipflow_core::{Context, DeployMeta, Deployer};
use shipflow_docker::{DockerError, EngineKind};

/// Serves for about five seconds, then exits 3: a revision whose first probes pass.
const DIES_SOON: &str =
    "/bin/busybox httpd -p 80 -h /www; sleep 5; echo 'lost the database' >&2; exit 3";

fn unhealthy(err: &shipflow_core::BoxError) -> bool {
    matches!(
        err.downcast_ref::<DockerError>(),
        Some(DockerError::Unhealthy {
            previous: Some(_),
            ..
        })
    )
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_rolls_back_a_revision_that_dies_inside_the_window(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "stab-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", stable_for = 8 }}"),
    );
    let v1 = h.web_image("stab-web", "v1", "v1");
    let v2 = h.image("stab-web", "v2", "v2", DIES_SOON);
    let deployer = h.deployer().await;
    let ctx = Context::new();
    let http = reqwest::Client::new();
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");

    let err = deployer
        .deploy(&app, &v2, &DeployMeta::default(), &ctx)
        .await
        .expect_err("v2 dies inside the window");
    let text = err.to_string();
    assert!(unhealthy(&err), "v1 serves again: {text}");
    assert!(text.contains("after passing its health check"), "{text}");
    assert!(
        text.contains("lost the database"),
        "logs in the error: {text}"
    );
    assert_eq!(get(&http, port).await.as_deref(), Ok("v1"));
    assert_eq!(
        h.containers(&app.name),
        [
            (format!("{}--r1", app.name), "running".to_owned()),
            (format!("{}--r2--failed", app.name), "exited".to_owned())
        ]
    );
    let current = deployer.current(&app, &ctx).await.expect("current");
    assert_eq!(current.map(|c| c.image), Some(v1.to_string()));
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_switches_back_when_the_new_revision_dies_inside_the_window(
    #[case] kind: EngineKind,
) {
    let mut h = Harness::start(kind);
    let public = free_port();
    let admin = h.start_caddy(public, "stab-sf-route");
    let app = h.app(
        "stab-sf",
        &format!(
            "ports = [\"80\"]\nstrategy = \"start-first\"\nhealth = {{ http = \"/\", stable_for = 8 }}\nproxy = {{ caddy_admin = \"{admin}\", route = \"stab-sf-route\" }}"
        ),
    );
    let v1 = h.web_image("stab-sf", "v1", "v1");
    let v2 = h.image("stab-sf", "v2", "v2", DIES_SOON);
    let deployer = h.deployer().await;
    let ctx = Context::new();
    let http = reqwest::Client::new();
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");

    let meta = DeployMeta::default();
    let deploy = deployer.deploy(&app, &v2, &meta, &ctx);
    let watch = async {
        // v2 got the traffic after its first probes, and v1 still ran beside it.
        let mut seen = Vec::new();
        for _ in 0..60 {
            let answer = get(&http, public).await;
            if seen.last() != Some(&answer) {
                seen.push(answer);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    };
    let (result, seen) = tokio::join!(deploy, watch);
    let err = result.expect_err("v2 dies inside the window");
    let text = err.to_string();
    assert!(unhealthy(&err), "traffic is back on v1: {text}");
    assert!(text.contains("traffic went back to revision 1"), "{text}");
    assert!(
        seen.contains(&Ok("v2".to_owned())),
        "v2 served inside the window: {seen:?}"
    );
    assert_eq!(get(&http, public).await.as_deref(), Ok("v1"));
    assert_eq!(
        h.containers(&app.name),
        [
            (format!("{}--r1", app.name), "running".to_owned()),
            (format!("{}--r2--failed", app.name), "exited".to_owned())
        ]
    );
}

/// A deployer that dies while it checks a new revision (the deploy future dropped
/// mid-way: no clean-up runs, as when the process is killed) leaves that revision
/// running under its unchecked name. The next run trusts it with nothing: it is
/// not "the same image, unchanged", nor what repair falls back to.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_whose_deploy_died_unchecked_is_never_trusted(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "stab-crash",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", stable_for = 8 }}"),
    );
    let v1 = h.web_image("stab-crash", "v1", "v1");
    let v2 = h.image("stab-crash", "v2", "v2", DIES_SOON);
    let deployer = h.deployer().await;
    let ctx = Context::new();
    let http = reqwest::Client::new();
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");

    let dying = tokio::spawn({
        let (app, v2) = (app.clone(), v2.clone());
        let deployer = h.deployer().await;
        async move {
            let _ = deployer
                .deploy(&app, &v2, &DeployMeta::default(), &Context::new())
                .await;
        }
    });
    // v2 answered its first probes: the deploy is inside the window. It dies there.
    let mut answered = false;
    for _ in 0..100 {
        if get(&http, port).await.as_deref() == Ok("v2") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "v2 never answered");
    dying.abort();
    let _ = dying.await;
    let unchecked = format!("{}--r2--unchecked", app.name);
    assert!(
        h.containers(&app.name)
            .contains(&(unchecked.clone(), "running".to_owned())),
        "{:?}",
        h.containers(&app.name)
    );
    assert_eq!(
        deployer.current(&app, &ctx).await.expect("current"),
        None,
        "an unchecked revision is not current"
    );

    // Deploying v2 again is not "unchanged": repair marks r2 failed and brings v1
    // back, and the new attempt (r3) is checked to the end and fails as r2 would have.
    let err = deployer
        .deploy(&app, &v2, &DeployMeta::default(), &ctx)
        .await
        .expect_err("v2 is checked, and dies inside the window");
    assert!(unhealthy(&err), "{err}");
    assert_eq!(get(&http, port).await.as_deref(), Ok("v1"));
    assert_eq!(
        h.containers(&app.name),
        [
            (format!("{}--r1", app.name), "running".to_owned()),
            (format!("{}--r2--failed", app.name), "exited".to_owned()),
            (format!("{}--r3--failed", app.name), "exited".to_owned())
        ]
    );

    // A crash after the unhealthy one was stopped but before it was renamed: repair
    // starts the last revision that passed, never the unchecked one.
    h.cli_run(&["stop", "-t", "1", &format!("{}--r1", app.name)]);
    h.cli_run(&[
        "rename",
        &format!("{}--r3--failed", app.name),
        &format!("{}--r3--unchecked", app.name),
    ]);
    let again = deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("v1 again");
    assert_eq!((again.revision, again.changed), (Some(1), false));
    assert_eq!(get(&http, port).await.as_deref(), Ok("v1"));
    assert_eq!(
        h.containers(&app.name)[2],
        (format!("{}--r3--failed", app.name), "exited".to_owned())
    );
}
