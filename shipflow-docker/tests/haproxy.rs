//! `start-first` behind a real HAProxy switched through its runtime API: 8 clients
//! on kept-alive connections, sending GETs and POSTs every 10 ms, see no failed
//! request during an upgrade, a rollback and a crash repair, and a slow request
//! started before the switch completes with the old revision's answer.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Harness, free_port};
use rstest::rstest;
use shipflow_core::{Context, DeployMeta, Deployer, RollbackTarget};
use shipflow_docker::EngineKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request's outcome: the body of a 200, or why it failed.
type Answer = Result<String, String>;

/// A client on its own kept-alive connection, alternating GET and POST every 10 ms
/// until `stop`.
async fn client(public: u16, stop: Arc<AtomicBool>) -> Vec<Answer> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let url = format!("http://127.0.0.1:{public}/cgi-bin/rev");
    let mut answers = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let request = if n.is_multiple_of(2) {
            http.get(&url)
        } else {
            http.post(&url).body(format!("request {n}"))
        };
        n += 1;
        answers.push(answer(request).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    answers
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("{e:?}"))?;
    if status.is_success() {
        Ok(body.trim().to_owned())
    } else {
        Err(format!("HTTP {status}: {}", body.trim()))
    }
}

/// One runtime-API command's answer.
async fn haproxy(socket: &Path, command: &str) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("runtime API");
    stream
        .write_all(format!("{command}\n").as_bytes())
        .await
        .expect("command");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    answer
}

/// Connections the frontend accepted so far (`conn_tot` of `show stat`).
async fn connections(socket: &Path) -> u64 {
    let stat = haproxy(socket, "show stat").await;
    let mut lines = stat.lines();
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .expect("header")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|c| *c == name).expect(name);
    let (sv, conn) = (col("svname"), col("conn_tot"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(sv) == Some(&"FRONTEND"))
        .and_then(|f| f.get(conn)?.parse().ok())
        .expect("frontend row")
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kept_alive_clients_see_no_failure_through_upgrade_rollback_and_repair(
    #[case] kind: EngineKind,
) {
    let mut h = Harness::start(kind);
    let public = free_port();
    let socket = h.start_haproxy(public, "web");
    let app = h.app(
        "hap-web",
        &format!(
            "ports = [\"80\"]\nstrategy = \"start-first\"\nhealth = {{ http = \"/\", timeout = 10 }}\nproxy = {{ haproxy_admin = \"{}\", backend = \"web\", servers = [\"blue\", \"green\"], drain_timeout = 20 }}",
            socket.display()
        ),
    );
    let v1 = h.web_image("hap-web", "v1", "v1");
    let v2 = h.web_image("hap-web", "v2", "v2");
    let deployer = h.deployer().await;
    let ctx = Context::new();
    let meta = DeployMeta::default();
    deployer
        .deploy(&app, &v1, &meta, &ctx)
        .await
        .expect("deploy v1");
    let url = format!("http://127.0.0.1:{public}/cgi-bin/rev");
    assert_eq!(
        answer(reqwest::Client::new().get(&url)).await.as_deref(),
        Ok("v1")
    );

    let before = connections(&socket).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client(public, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A request that takes 2 s starts just before the upgrade: it is in flight to
    // v1 when traffic moves to v2, and v1 stops only once it has been answered.
    let slow = tokio::spawn(answer(reqwest::Client::new().get(format!("{url}?2"))));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let rollout = deployer
        .deploy(&app, &v2, &meta, &ctx)
        .await
        .expect("deploy v2");
    assert_eq!(rollout.revision, Some(2));
    assert_eq!(slow.await.expect("slow request").as_deref(), Ok("v1"));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the drain ended with the last request, not at its 20 s timeout: {:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A rollback is a switch back to the kept revision 1.
    deployer
        .rollback(&app, RollbackTarget::Previous, &ctx)
        .await
        .expect("rollback");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Revision 2 runs again beside 1 (a restart policy, a reboot): the next run's
    // repair keeps the newest, re-points the proxy at it and drains the other.
    h.cli_run(&["start", &format!("{}--r2", app.name)]);
    let again = deployer
        .deploy(&app, &v2, &meta, &ctx)
        .await
        .expect("repairing run");
    assert!(!again.changed);
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.expect("client"));
    }
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\nHAProxy's log:\n{}",
        failed.len(),
        answers.len(),
        std::fs::read_to_string(h.dir.path().join("haproxy.log")).unwrap_or_default()
    );
    assert!(answers.len() > 400, "only {} requests", answers.len());
    for body in ["v1", "v2"] {
        assert!(
            answers.iter().any(|a| a.as_deref() == Ok(body)),
            "{body} never answered"
        );
    }
    // Kept alive: a handful of connections (one per client) for all of them.
    let opened = connections(&socket).await - before;
    assert!(
        opened <= 8 + 2,
        "{opened} connections for {} requests",
        answers.len()
    );
    assert_eq!(
        h.containers(&app.name),
        [
            (format!("{}--r1", app.name), "exited".to_owned()),
            (format!("{}--r2", app.name), "running".to_owned())
        ]
    );
}
