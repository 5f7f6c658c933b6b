//! Blue-green apps: two Deployments behind an active and a preview Service; the
//! active Service switches only when the preview Service's endpoints hold only new,
//! ready pods, and a rollback is a switch back. Checked through the real `kubectl`
//! and strict deserialisation of what shipflow wrote.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shipflow_core::{Context, DeployMeta, Deployer, RollbackTarget, Workspace};
use shipflow_k8s::testing::{Outcome, SimCluster};
use shipflow_k8s::{COLOUR_LABEL, KubeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{deployer, kube_error, pinned};

const NS: &str = "shop";

/// A workspace whose app `api` is blue-green in `shop`, with `extra` settings.
fn workspace(extra: &str) -> Workspace {
    Workspace::loader()
        .schema(shipflow_k8s::schema())
        .from_toml(
            &format!(
                "[workspace]\nregistry = \"registry.local\"\n[apps.api.deploy.kubernetes]\nnamespace = \"{NS}\"\nreplicas = 2\nports = [{{ name = \"http\", port = 8080, service_port = 80 }}]\nstrategy = \"blue-green\"\n{extra}\n"
            ),
            ".",
        )
        .expect("valid settings")
}

fn meta(sha: &str) -> DeployMeta {
    DeployMeta {
        git_sha: Some(sha.into()),
        change_cause: format!("shipflow: api at {sha}"),
        ..DeployMeta::default()
    }
}

fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).expect("deserialises");
    let back = serde_json::to_value(&typed).expect("serialises");
    assert_eq!(&back, value, "fields outside the schema were dropped");
    typed
}

/// Runs `kubectl -n shop <args>` against the simulator; it must succeed.
async fn kubectl(sim: &SimCluster, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config"), sim.kubeconfig()).expect("kubeconfig");
    let mut all: Vec<String> = vec!["-n".into(), NS.into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .env_clear()
            .env("HOME", dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--kubeconfig")
            .arg(dir.path().join("config"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(&all)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run kubectl (install Debian's kubectl package): {e}")
            })
    })
    .await
    .expect("kubectl task");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The colour `kubectl get svc <name> -o jsonpath={.spec.selector}` shows.
async fn kubectl_colour(sim: &SimCluster, name: &str) -> String {
    let selector = kubectl(
        sim,
        &["get", "svc", name, "-o", "jsonpath={.spec.selector}"],
    )
    .await;
    let selector: Value = serde_json::from_str(&selector).expect("a JSON selector");
    selector[COLOUR_LABEL]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The colour the stored Service selects.
fn colour(sim: &SimCluster, name: &str) -> Option<String> {
    sim.service(NS, name).and_then(|s| {
        s["spec"]["selector"][COLOUR_LABEL]
            .as_str()
            .map(str::to_owned)
    })
}

/// The stored pods of `colour`: (pod name, ready).
fn pods(sim: &SimCluster, colour: &str) -> Vec<(String, bool)> {
    sim.list("Pod", NS)
        .iter()
        .filter(|p| p["metadata"]["labels"][COLOUR_LABEL] == colour)
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| {
            let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                ready,
            )
        })
        .collect()
}

fn replicas(sim: &SimCluster, name: &str) -> i64 {
    sim.deployment(NS, name).expect("deployment")["spec"]["replicas"]
        .as_i64()
        .expect("replicas")
}

/// The requests the simulator received: (not watches, watches).
fn requests(sim: &SimCluster) -> (u64, u64) {
    let all: u64 = sim.requests().values().sum();
    let watches = sim.request_count("WATCH");
    (all - watches, watches)
}

/// An HTTP server on 127.0.0.1 answering every request with the status in `status`.
async fn check_server(status: Arc<AtomicU16>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let status = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_service_switches_only_once_the_preview_holds_only_new_ready_pods() {
    let sim = SimCluster::start().await.expect("sim starts");
    // New pods take 15 cluster seconds (300 ms) to get ready.
    let ws = workspace(
        "readiness = { http = \"/ready\", initial_delay = 15 }\nblue_green = { scale_down_delay = 0 }",
    );
    let app = ws.app("api").expect("declared");
    let deployer = deployer(&sim);
    let ctx = Context::new();

    let first = deployer
        .deploy(app, &pinned("aa"), &meta("a"), &ctx)
        .await
        .expect("first deploy");
    assert!(first.changed);
    assert_eq!(first.revision, Some(1));
    assert_eq!(kubectl_colour(&sim, "api").await, "blue");
    assert_eq!(kubectl_colour(&sim, "api-preview").await, "blue");

    // Sample the active selector, then the green pods, while the deploy runs.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let samples = {
        let (image, m) = (pinned("bb"), meta("b"));
        let sim = &sim;
        let deploy = deployer.deploy(app, &image, &m, &ctx);
        let monitor = async {
            let mut samples = Vec::new();
            while watching.load(Ordering::SeqCst) {
                let selected = colour(sim, "api");
                let green = pods(sim, "green");
                samples.push((selected, green));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        };
        let (rollout, samples) = tokio::join!(
            async {
                let r = deploy.await;
                watching.store(false, Ordering::SeqCst);
                r
            },
            monitor
        );
        let rollout = rollout.expect("second deploy");
        assert!(rollout.changed);
        assert_eq!(rollout.revision, Some(2));
        assert!(
            rollout.workload.contains("shop/api-green"),
            "{}",
            rollout.workload
        );
        samples
    };
    assert!(
        samples
            .iter()
            .any(|(selected, green)| selected.as_deref() == Some("blue")
                && !green.is_empty()
                && green.iter().any(|(_, ready)| !ready)),
        "the new pods were seen unready while blue took the traffic"
    );
    for (selected, green) in &samples {
        if selected.as_deref() == Some("green") {
            assert!(
                green.len() == 2 && green.iter().all(|(_, ready)| *ready),
                "switched while green pods were {green:?}"
            );
        }
    }
    assert_eq!(kubectl_colour(&sim, "api").await, "green");
    let status = kubectl(
        &sim,
        &["rollout", "status", "deployment/api-green", "--timeout=5s"],
    )
    .await;
    assert!(status.contains("successfully rolled out"), "{status}");
    // Delay 0: blue was scaled down before the deploy returned.
    assert_eq!(replicas(&sim, "api-blue"), 0);
    assert_eq!(replicas(&sim, "api-green"), 2);

    let current = deployer
        .current(app, &ctx)
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(current.image, pinned("bb").to_string());
    assert_eq!(current.revision, Some(2));
    let history = deployer.history(app, &ctx).await.expect("history");
    let summary: Vec<_> = history
        .iter()
        .map(|r| (r.number, r.image.clone(), r.current))
        .collect();
    assert_eq!(
        summary,
        [
            (1, pinned("aa").to_string(), false),
            (2, pinned("bb").to_string(), true)
        ]
    );

    // Unchanged: no write, no new colour.
    let again = deployer
        .deploy(app, &pinned("bb"), &meta("b"), &ctx)
        .await
        .expect("redeploy");
    assert!(!again.changed);

    for name in ["api-blue", "api-green"] {
        let got: Value = serde_json::from_str(
            &kubectl(
                &sim,
                &["get", "deploy", name, "-o", "json", "--show-managed-fields"],
            )
            .await,
        )
        .expect("JSON");
        let _: Deployment = strict(&got);
    }
    for name in ["api", "api-preview"] {
        let got: Value =
            serde_json::from_str(&kubectl(&sim, &["get", "svc", name, "-o", "json"]).await)
                .expect("JSON");
        let _: Service = strict(&got);
    }
    assert_eq!(sim.schema_violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_colour_never_gets_traffic() {
    let sim = SimCluster::start().await.expect("sim starts");
    let ws = workspace("blue_green = { scale_down_delay = 0 }");
    let app = ws.app("api").expect("declared");
    let deployer = deployer(&sim);
    let ctx = Context::new();
    deployer
        .deploy(app, &pinned("aa"), &meta("a"), &ctx)
        .await
        .expect("first deploy");
    let blue_before = sim.deployment(NS, "api-blue").expect("blue");

    sim.set_image(&pinned("bb").to_string(), Outcome::CrashLoop);
    let err = deployer
        .deploy(app, &pinned("bb"), &meta("b"), &ctx)
        .await
        .expect_err("a crash loop fails the deploy");
    let KubeError::PodFailed {
        app: name,
        workload,
        pod,
        ..
    } = kube_error(&err)
    else {
        panic!("expected PodFailed, got {err}");
    };
    assert_eq!(name, "api");
    assert_eq!(workload, "shop/api-green");
    assert_eq!(pod.reason, "CrashLoopBackOff", "{err}");
    assert!(err.to_string().contains("CrashLoopBackOff"), "{err}");
    assert_eq!(kubectl_colour(&sim, "api").await, "blue");
    let blue_after = sim.deployment(NS, "api-blue").expect("blue");
    assert_eq!(blue_before["spec"], blue_after["spec"], "blue untouched");
    assert_eq!(
        blue_before["metadata"]["generation"],
        blue_after["metadata"]["generation"]
    );
    assert!(pods(&sim, "blue").iter().all(|(_, ready)| *ready));
    let current = deployer
        .current(app, &ctx)
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(current.image, pinned("aa").to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_promotion_checks_leave_or_put_the_old_colour_back() {
    let sim = SimCluster::start().await.expect("sim starts");
    let pre = Arc::new(AtomicU16::new(200));
    let post = Arc::new(AtomicU16::new(200));
    let pre_url = check_server(pre.clone()).await;
    let post_url = check_server(post.clone()).await;
    let ws = workspace(&format!(
        "blue_green = {{ scale_down_delay = 0, pre_promotion = \"{pre_url}\", post_promotion = \"{post_url}\", check_timeout = 2 }}"
    ));
    let app = ws.app("api").expect("declared");
    let deployer = deployer(&sim);
    let ctx = Context::new();
    deployer
        .deploy(app, &pinned("aa"), &meta("a"), &ctx)
        .await
        .expect("first deploy passes both checks");
    assert_eq!(colour(&sim, "api").as_deref(), Some("blue"));

    pre.store(503, Ordering::SeqCst);
    let err = deployer
        .deploy(app, &pinned("bb"), &meta("b"), &ctx)
        .await
        .expect_err("the pre-promotion check fails");
    let KubeError::BlueGreen {
        app: name,
        step,
        cause,
        ..
    } = kube_error(&err)
    else {
        panic!("expected BlueGreen, got {err}");
    };
    assert_eq!((name.as_str(), *step), ("api", "pre-promotion check"));
    assert!(
        cause.contains("HTTP 503") && cause.contains("service api still selects blue"),
        "{err}"
    );
    assert_eq!(kubectl_colour(&sim, "api").await, "blue");

    pre.store(200, Ordering::SeqCst);
    post.store(500, Ordering::SeqCst);
    let err = deployer
        .deploy(app, &pinned("cc"), &meta("c"), &ctx)
        .await
        .expect_err("the post-promotion check fails");
    let KubeError::BlueGreen { step, cause, .. } = kube_error(&err) else {
        panic!("expected BlueGreen, got {err}");
    };
    assert_eq!(*step, "post-promotion check");
    assert!(
        cause.contains("HTTP 500") && cause.contains("switched service api back to blue"),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("app api: post-promotion check: shop/api-green:"),
        "{err}"
    );
    assert_eq!(kubectl_colour(&sim, "api").await, "blue");
    assert_eq!(replicas(&sim, "api-blue"), 2, "blue was not scaled down");
    let current = deployer
        .current(app, &ctx)
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(current.image, pinned("aa").to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_a_switch_of_the_selector() {
    let sim = SimCluster::start().await.expect("sim starts");
    let ws = workspace("blue_green = { keep_previous = true }");
    let app = ws.app("api").expect("declared");
    let deployer = deployer(&sim);
    let ctx = Context::new();
    let mut before = requests(&sim);
    for (image, sha) in [("aa", "a"), ("bb", "b")] {
        before = requests(&sim);
        deployer
            .deploy(app, &pinned(image), &meta(sha), &ctx)
            .await
            .expect("deploy");
    }
    let after = requests(&sim);
    println!(
        "a blue-green deploy: {} requests and {} watches",
        after.0 - before.0,
        after.1 - before.1
    );
    assert_eq!(replicas(&sim, "api-blue"), 2, "kept");
    assert_eq!(kubectl_colour(&sim, "api").await, "green");

    let before = requests(&sim);
    let started = Instant::now();
    let back = deployer
        .rollback(app, RollbackTarget::Previous, &ctx)
        .await
        .expect("rollback");
    let took = started.elapsed();
    let after = requests(&sim);
    println!(
        "blue-green rollback by switch took {took:?}: {} requests and {} watches",
        after.0 - before.0,
        after.1 - before.1
    );
    assert!(back.changed);
    assert_eq!(back.image, pinned("aa").to_string());
    assert_eq!(back.revision, Some(1));
    assert!(took < Duration::from_secs(1), "rollback took {took:?}");
    assert_eq!(kubectl_colour(&sim, "api").await, "blue");
    let current = deployer
        .current(app, &ctx)
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(current.image, pinned("aa").to_string());

    // Back to revision 2 by number.
    let forth = deployer
        .rollback(app, RollbackTarget::Revision(2), &ctx)
        .await
        .expect("rollback to 2");
    assert_eq!(forth.image, pinned("bb").to_string());
    assert_eq!(kubectl_colour(&sim, "api").await, "green");
    let err = deployer
        .rollback(app, RollbackTarget::Revision(7), &ctx)
        .await
        .expect_err("no such release");
    assert!(
        matches!(kube_error(&err), KubeError::NoRevision { available, .. } if available == &[1, 2]),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_down_colour_is_scaled_up_before_the_switch_back() {
    let sim = SimCluster::start().await.expect("sim starts");
    let ws = workspace("blue_green = { scale_down_delay = 1 }");
    let app = ws.app("api").expect("declared");
    let deployer = deployer(&sim);
    let ctx = Context::new();
    for (image, sha) in [("aa", "a"), ("bb", "b")] {
        deployer
            .deploy(app, &pinned(image), &meta(sha), &ctx)
            .await
            .expect("deploy");
    }
    // The deploy returned before the delay: blue still runs, then goes.
    assert_eq!(replicas(&sim, "api-blue"), 2);
    let until = Instant::now() + Duration::from_secs(10);
    while replicas(&sim, "api-blue") != 0 {
        assert!(Instant::now() < until, "blue was never scaled down");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let back = deployer
        .rollback(app, RollbackTarget::Previous, &ctx)
        .await
        .expect("rollback");
    println!(
        "blue-green rollback with scale-up took {:?}",
        started.elapsed()
    );
    assert_eq!(back.image, pinned("aa").to_string());
    assert_eq!(replicas(&sim, "api-blue"), 2);
    assert_eq!(kubectl_colour(&sim, "api").await, "blue");
    assert!(
        pods(&sim, "blue")
            .iter()
            .filter(|(_, ready)| *ready)
            .count()
            == 2
    );
    let endpoints: Value =
        serde_json::from_str(&kubectl(&sim, &["get", "endpoints", "api", "-o", "json"]).await)
            .expect("JSON");
    let addresses = endpoints["subsets"][0]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(addresses.len(), 2);
    assert!(
        addresses.iter().all(|a| a["targetRef"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("api-blue-"))),
        "{addresses:?}"
    );
}

#[test]
fn blue_green_settings_are_checked_at_load() {
    let load = |settings: &str| {
        Workspace::loader()
            .schema(shipflow_k8s::schema())
            .from_toml(
                &format!(
                    "[workspace]\nregistry = \"r.io\"\n[apps.api.deploy.kubernetes]\n{settings}\n"
                ),
                ".",
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let port = "ports = [{ port = 8080, service_port = 80 }]\n";
    assert!(load(&format!("{port}strategy = \"blue-green\"")).is_ok());
    for (settings, why) in [
        (
            "strategy = \"blue-green\"".to_owned(),
            "ports: strategy \"blue-green\" needs a port with a service_port",
        ),
        (
            format!("{port}blue_green = {{ keep_previous = true }}"),
            "blue_green: is for strategy \"blue-green\"",
        ),
        (
            format!(
                "{port}strategy = \"blue-green\"\nblue_green = {{ post_promotion = \"https://x/\" }}"
            ),
            "blue_green.post_promotion: \"https://x/\" is not an http:// URL",
        ),
        (
            format!("{port}strategy = \"blue-green\"\nreplicas = 0"),
            "replicas: strategy \"blue-green\" needs at least one replica",
        ),
        (
            format!("{port}strategy = \"blue-green\"\nmax_surge = 1"),
            "strategy: max_surge and max_unavailable are for strategy \"rolling\"",
        ),
        (
            format!(
                "{port}strategy = \"blue-green\"\nblue_green = {{ active_service = \"web\", preview_service = \"web\" }}"
            ),
            "blue_green.preview_service: is the active Service's name too",
        ),
        (
            format!("{port}strategy = \"blue-green\"\nblue_green = {{ delay = 3 }}"),
            "unknown field",
        ),
    ] {
        let err = load(&settings).expect_err(&settings);
        assert!(err.contains(why), "{settings}: {err}");
    }
}

/// The README's blue-green example loads as it is.
#[test]
fn the_readme_blue_green_example_loads() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("[apps.web.deploy.kubernetes]\n")
        .expect("the example");
    let end = start + readme[start..].find("```").expect("its end");
    let ws = Workspace::loader()
        .schema(shipflow_k8s::schema())
        .from_toml(
            &format!(
                "[workspace]\nregistry = \"registry.local\"\n{}",
                &readme[start..end]
            ),
            ".",
        )
        .expect("the README's example is valid");
    let target = ws
        .app("web")
        .expect("declared")
        .deploy_target::<shipflow_k8s::KubernetesTarget>(shipflow_k8s::KUBERNETES_TARGET)
        .expect("valid")
        .expect("present");
    assert_eq!(target.strategy, Some(shipflow_k8s::Strategy::BlueGreen));
    let bg = target.blue_green.as_ref().expect("blue_green");
    assert_eq!(bg.scale_down_delay, Some(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_inside_the_delay_cancels_the_pending_scale_down() {
    let sim = SimCluster::start().await.expect("sim starts");
    let ws = workspace("blue_green = { scale_down_delay = 1 }");
    let app = ws.app("api").expect("declared");
    let deployer = deployer(&sim);
    let ctx = Context::new();
    for (image, sha) in [("aa", "a"), ("bb", "b")] {
        deployer
            .deploy(app, &pinned(image), &meta(sha), &ctx)
            .await
            .expect("deploy");
    }
    deployer
        .rollback(app, RollbackTarget::Previous, &ctx)
        .await
        .expect("rollback inside the delay");
    assert_eq!(colour(&sim, "api").as_deref(), Some("blue"));
    // Past the delay: blue, which takes the traffic again, still runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(replicas(&sim, "api-blue"), 2);
    assert_eq!(pods(&sim, "blue").iter().filter(|(_, r)| *r).count(), 2);
    assert_eq!(kubectl_colour(&sim, "api").await, "blue");
}
