//! `start-first` behind a real Caddy: a client polling through the proxy every
//! 50 ms on a connection per request sees no failed request during an upgrade,
//! and a proxy that dials the wrong port is pointed back by the next run.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Harness, free_port, get};
use rstest::rstest;
use shipflow_core::{Context, DeployMeta, Deployer, RollbackTarget};
use shipflow_docker::{CaddySwitch, EngineKind, TrafficSwitch};

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_behind_caddy_drops_no_request(#[case] kind: EngineKind) {
    let mut h = Harness::start(kind);
    let public = free_port();
    let admin = h.start_caddy(public, "sf-web-route");
    let app = h.app(
        "sf-web",
        &format!(
            "ports = [\"80\"]\nstrategy = \"start-first\"\nhealth = {{ http = \"/\", timeout = 3 }}\nproxy = {{ caddy_admin = \"{admin}\", route = \"sf-web-route\" }}"
        ),
    );
    let v1 = h.web_image("sf-web", "v1", "v1");
    let v2 = h.web_image("sf-web", "v2", "v2");
    let deployer = h.deployer().await;
    let ctx = Context::new();
    // A connection per request: Caddy starts its servers anew on every config change
    // and closes idle kept-alive connections, so a request sent on one just then
    // fails (a limit of the Caddy switch, stated on `CaddySwitch` and in the deploy's
    // output, counted by `cargo bench -p shipflow-docker --bench switch`). Kept-alive
    // clients are tested through HAProxy (tests/haproxy.rs); here, whether the
    // server side answers every request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");

    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");
    assert_eq!(get(&http, public).await.as_deref(), Ok("v1"));

    let stop = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn({
        let stop = stop.clone();
        let http = http.clone();
        async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                answers.push(get(&http, public).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            answers
        }
    });
    let rollout = deployer
        .deploy(&app, &v2, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v2");
    assert_eq!(rollout.revision, Some(2));
    // Keep polling a moment after the old container stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = poller.await.expect("poller");

    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "failed requests during the upgrade: {failed:?}"
    );
    assert!(answers.len() > 10, "polled only {} times", answers.len());
    assert_eq!(answers.first().and_then(|a| a.as_deref().ok()), Some("v1"));
    assert_eq!(answers.last().and_then(|a| a.as_deref().ok()), Some("v2"));
    assert_eq!(
        h.containers(&app.name),
        [
            (format!("{}--r1", app.name), "exited".to_owned()),
            (format!("{}--r2", app.name), "running".to_owned())
        ]
    );

    // A deployer that died between starting a new container and switching leaves
    // two running; the next run keeps the newest healthy one, points the proxy at
    // it and stops the other.
    h.cli_run(&["start", &format!("{}--r1", app.name)]);
    let again = deployer
        .deploy(&app, &v2, &DeployMeta::default(), &ctx)
        .await
        .expect("repairing run");
    assert!(!again.changed);
    assert_eq!(
        h.containers(&app.name),
        [
            (format!("{}--r1", app.name), "exited".to_owned()),
            (format!("{}--r2", app.name), "running".to_owned())
        ]
    );
    assert_eq!(get(&http, public).await.as_deref(), Ok("v2"));

    // An unhealthy new container never gets traffic: the proxy stays on v2.
    let bad = h.image("sf-web", "bad", "bad", "echo no config >&2; exec sleep 600");
    let err = deployer
        .deploy(&app, &bad, &DeployMeta::default(), &ctx)
        .await
        .expect_err("unhealthy");
    assert!(err.to_string().contains("revision 2 kept serving"), "{err}");
    assert!(err.to_string().contains("no config"), "{err}");
    assert_eq!(get(&http, public).await.as_deref(), Ok("v2"));

    // Rolling back goes through the proxy too.
    deployer
        .rollback(&app, RollbackTarget::Previous, &ctx)
        .await
        .expect("rollback");
    assert_eq!(get(&http, public).await.as_deref(), Ok("v1"));
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_points_the_proxy_at_where_the_container_listens_now(#[case] kind: EngineKind) {
    let mut h = Harness::start(kind);
    let public = free_port();
    let admin = h.start_caddy(public, "sfr-web-route");
    let app = h.app(
        "sfr-web",
        &format!(
            "ports = [\"80\"]\nstrategy = \"start-first\"\nhealth = {{ http = \"/\", timeout = 5 }}\nproxy = {{ caddy_admin = \"{admin}\", route = \"sfr-web-route\" }}"
        ),
    );
    let v1 = h.web_image("sfr-web", "v1", "v1");
    let deployer = h.deployer().await;
    let ctx = Context::new();
    let http = reqwest::Client::new();
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("deploy v1");
    assert_eq!(get(&http, public).await.as_deref(), Ok("v1"));
    let listens = h
        .cli_run(&["port", &format!("{}--r1", app.name), "80"])
        .trim()
        .to_owned();
    let caddy = CaddySwitch::new(&admin, "sfr-web-route");
    assert_eq!(caddy.upstream().await, Ok(Some(listens.clone())));

    // The container came back on another port (Docker picks a new one when a
    // restart policy or a reboot starts it again): the proxy dials a dead port.
    caddy
        .switch_to("127.0.0.1:9")
        .await
        .expect("point caddy away");
    assert!(get(&http, public).await.is_err());

    // The next run sees it and switches back, even with nothing to deploy.
    let again = deployer
        .deploy(&app, &v1, &DeployMeta::default(), &ctx)
        .await
        .expect("repairing run");
    assert!(!again.changed);
    assert_eq!(caddy.upstream().await, Ok(Some(listens)));
    assert_eq!(get(&http, public).await.as_deref(), Ok("v1"));
}
