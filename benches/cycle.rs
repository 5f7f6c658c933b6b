//! The headline benchmark: the incremental cycle of a 20-app monorepo where one file
//! of one app changed (detect → build → push → deploy), on Docker Engine and on
//! Podman, shipflow against the seeds' shell script (`benches/seed-deploy.sh`:
//! `git diff` + `docker build` + `docker push` + `docker run` per changed app, or
//! the same with `podman`), in the same run on the same commits, registry and
//! engine.
//!
//! ```text
//! cargo bench --bench cycle                      # 7 cycles per engine
//! SHIPFLOW_BENCH_CYCLES=15 cargo bench --bench cycle
//! SHIPFLOW_BENCH_ENGINES=podman cargo bench --bench cycle
//! SHIPFLOW_BENCH_STABLE_FOR_MS=5000 cargo bench --bench cycle   # with the default window
//! SHIPFLOW_BENCH_DEPS_MB=150 cargo bench --bench cycle  # apps with a 150 MB dependency layer
//! ```
//!
//! **The engine's floor.** After each cycle the bench starts one more container from
//! the image shipflow just deployed (the engine has it already) with the engine's own
//! command line, and times it until it answers HTTP: what no deploy of a new image can
//! beat on that engine. shipflow's cycle is printed as a ratio to it.
//!
//! **A realistic app.** With `SHIPFLOW_BENCH_DEPS_MB`, each app (4 unless
//! `SHIPFLOW_BENCH_APPS` says otherwise) also carries a generated `node_modules` of that
//! many MB of small files as a layer of its own, and 1 MB of code; one code file changes
//! per cycle. The script's Dockerfile copies the dependencies, then the code, from the
//! repository root as the seeds' do.
//!
//! The deployer's stabilization window (`health.stable_for`, 5 s by default: the new
//! container must stay healthy that long before it is called deployed) is off here
//! unless `SHIPFLOW_BENCH_STABLE_FOR_MS` sets it, as the script watches nothing after
//! the first answer; with it on, each cycle takes the window's length longer.
//!
//! Measured on the 2-core project machine on 2026-12-02 (Docker Engine 20.10 on
//! fuse-overlayfs, Podman 4; medians of 5 cycles): 20 apps, Docker 959 ms against the
//! script's 2,238 ms (0.43) and a floor of 364 ms (2.63); Podman 897 ms against 1,729 ms
//! (0.52), floor 381 ms (2.35). With 150 MB dependency layers, 4 apps: Docker 1,669 ms
//! against 132 s (0.013), Podman 1,466 ms against 16.7 s (0.088).
//!
//! Needs the Docker Engine, podman, runc, docker-registry, busybox-static, curl and
//! git (`.ci/run` installs them). Both sides get a warm start: every app deployed
//! once by each, so the engine's build cache and the registry hold the unchanged
//! layers. Each side waits until its new container answers HTTP, and both are
//! checked to serve the new page.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Monorepo;
use shipflow_kit::docker::testing::TestEngine;
use shipflow_kit::docker::{EngineDeployer, EngineKind};
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::oci::testing::TestRegistry;
use shipflow_kit::oci::{NativeBuilder, RegistryClient};
use shipflow_kit::{BuilderByType, Outcome, Pipeline, RunStatus, Selection, Workspace};

fn main() {
    let cycles: usize = std::env::var("SHIPFLOW_BENCH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let engines =
        std::env::var("SHIPFLOW_BENCH_ENGINES").unwrap_or_else(|_| "docker,podman".into());
    for kind in [EngineKind::Docker, EngineKind::Podman] {
        if engines.split(',').any(|e| e.trim() == kind.to_string()) {
            println!("== {kind}");
            runtime.block_on(bench(kind, cycles));
        }
    }
}

/// A number from the environment, or `default`.
fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn bench(kind: EngineKind, cycles: usize) {
    let deps_mb = env_number("SHIPFLOW_BENCH_DEPS_MB", 0);
    let app_count = env_number("SHIPFLOW_BENCH_APPS", if deps_mb > 0 { 4 } else { 20 });
    let registry = TestRegistry::start().expect("docker-registry starts");
    let engine = TestEngine::start(kind, &[&registry.host()])
        .unwrap_or_else(|e| panic!("the {kind} engine is needed: {e}"));
    let prefix = engine.prefix().to_owned();
    let apps: Vec<String> = (0..app_count).map(|i| format!("app{i:02}")).collect();
    let names: Vec<&str> = apps.iter().map(String::as_str).collect();
    let ours: Vec<u16> = apps.iter().map(|_| common::free_port()).collect();
    let theirs: Vec<u16> = apps.iter().map(|_| common::free_port()).collect();
    let repo = Monorepo::create(&registry.host(), &names, |app, i| {
        format!(
            "[apps.{app}.deploy.docker]\ncontainer = \"{prefix}bench-{app}\"\n\
             ports = [\"127.0.0.1:{}:8080\"]\nhealth = {{ http = \"/\" }}\n",
            ours[i]
        )
    });
    if deps_mb > 0 {
        let t = Instant::now();
        repo.add_dependencies(&names, deps_mb);
        println!(
            "{app_count} apps with a {deps_mb} MB dependency layer each (generated and committed in {:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    let floor_port = common::free_port();
    let builds = tempfile::tempdir().expect("build dir");
    let ports_file = builds.path().join("seed-ports");
    let ports: String = apps
        .iter()
        .zip(&theirs)
        .map(|(a, p)| format!("{a} {p}\n"))
        .collect();
    std::fs::write(&ports_file, ports).expect("ports file");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/seed-deploy.sh");
    let cleanup = Cleanup(&engine);

    let stable_for = Duration::from_millis(
        std::env::var("SHIPFLOW_BENCH_STABLE_FOR_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    println!("stabilization window: {stable_for:?}");
    let pipeline = || async {
        let workspace = Workspace::load(repo.config()).expect("workspace");
        let deployer = EngineDeployer::builder(engine.engine().await.expect("engine"))
            .state_dir(builds.path().join("state"))
            .probe_interval(Duration::from_millis(50))
            .stable_for(stable_for)
            .build();
        Pipeline::builder(workspace)
            .detector(Arc::new(
                GitChangeDetector::open(repo.path()).expect("repository"),
            ))
            .builder(Arc::new(BuilderByType::new().route(
                shipflow_kit::oci::NATIVE_BUILD_TYPE,
                Arc::new(NativeBuilder::new(builds.path())),
            )))
            .registry(Arc::new(RegistryClient::builder().build().expect("client")))
            .deployer(Arc::new(deployer))
            .build()
            .expect("pipeline")
    };
    let script_run = |base: &str| {
        let started = Instant::now();
        let status = std::process::Command::new("bash")
            .current_dir(repo.path())
            .arg(&script)
            .args([base, &registry.host(), ports_file.to_str().expect("utf-8")])
            .envs(engine.env())
            .env("SEED_ENGINE", kind.to_string())
            .env("SEED_PREFIX", &prefix)
            .status()
            .expect("bash runs the script");
        assert!(status.success(), "the seed script failed");
        started.elapsed()
    };

    println!("warm-up: every app deployed once by each side");
    let t = Instant::now();
    let first = pipeline()
        .await
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("first run");
    for app in first.apps.iter().filter(|a| a.error.is_some()) {
        println!(
            "  {}: {}",
            app.app,
            app.error.as_deref().unwrap_or_default()
        );
    }
    assert_eq!(first.status(), RunStatus::Succeeded, "{first:#?}");
    let shipflow_first = t.elapsed();
    let script_first = script_run("4b825dc642cb6eb9a060e54bf8d69288fbee4904"); // the empty tree
    println!(
        "  all {app_count} apps: shipflow {:.2} s, script {:.2} s",
        shipflow_first.as_secs_f64(),
        script_first.as_secs_f64()
    );

    let mut ours_t = Vec::new();
    let mut theirs_t = Vec::new();
    let mut floor_t = Vec::new();
    for cycle in 0..cycles {
        let i = (cycle * 7) % app_count;
        let app = &apps[i];
        let body = format!("<h1>{app} v{}</h1>\n", cycle + 2);
        repo.edit(&format!("apps/{app}/index.html"), &body);
        // Alternate who goes first, so neither always meets a warmer machine.
        let ((a, image), b) = if cycle % 2 == 0 {
            let a = shipflow_cycle(&pipeline().await, app).await;
            (a, script_run("HEAD~1"))
        } else {
            let b = script_run("HEAD~1");
            (shipflow_cycle(&pipeline().await, app).await, b)
        };
        assert_eq!(common::http_get(ours[i]).as_deref(), Some(body.as_str()));
        assert_eq!(common::http_get(theirs[i]).as_deref(), Some(body.as_str()));
        let (f, served) = floor(&engine, &format!("{prefix}bench-floor"), &image, floor_port);
        assert_eq!(served, body);
        println!(
            "cycle {cycle}: {app} changed: shipflow {:>6.0} ms, script {:>6.0} ms, ratio {:.3}; floor {:>4.0} ms, shipflow/floor {:.2}",
            ms(a),
            ms(b),
            ms(a) / ms(b),
            ms(f),
            ms(a) / ms(f)
        );
        ours_t.push(ms(a));
        theirs_t.push(ms(b));
        floor_t.push(ms(f));
    }
    let (m_ours, m_theirs, m_floor) = (
        median(&mut ours_t),
        median(&mut theirs_t),
        median(&mut floor_t),
    );
    let target = if deps_mb > 0 { 0.15 } else { 0.1 };
    println!(
        "median of {cycles}: shipflow {m_ours:.0} ms, script {m_theirs:.0} ms: shipflow/script = {:.3} (target ≤ {target}); \
         engine floor {m_floor:.0} ms: shipflow/floor = {:.2} (target ≤ 1.2)",
        m_ours / m_theirs,
        m_ours / m_floor
    );
    drop(cleanup);
}

/// The engine's floor: a container started from `image`, which the engine has, with
/// its own command line, until it answers HTTP on `port` (what it served is returned
/// beside the time); removed afterwards.
fn floor(engine: &TestEngine, name: &str, image: &str, port: u16) -> (Duration, String) {
    let _ = engine.command().args(["rm", "-f", name]).output();
    let started = Instant::now();
    let out = engine
        .command()
        .args(["run", "-d", "--name", name, "-p"])
        .arg(format!("127.0.0.1:{port}:8080"))
        .arg(image)
        .output()
        .expect("the engine's command line runs");
    assert!(
        out.status.success(),
        "run {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = loop {
        if let Some(body) = common::http_get(port) {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{name} never answered"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let _ = engine.command().args(["rm", "-f", name]).output();
    (took, served)
}

/// One shipflow cycle; checks that exactly `app` was deployed, and returns its time
/// and the image deployed.
async fn shipflow_cycle(pipeline: &Pipeline, app: &str) -> (Duration, String) {
    let started = Instant::now();
    let report = pipeline
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("run");
    let took = started.elapsed();
    let shipped: Vec<(&str, &Outcome)> = report
        .apps
        .iter()
        .map(|a| (a.app.as_str(), &a.outcome))
        .collect();
    assert_eq!(shipped, [(app, &Outcome::Deployed)], "{report:#?}");
    let t = &report.apps[0].timings;
    println!(
        "  shipflow stages: build {} ms, push {} ms, deploy {} ms, all {} ms",
        t.build_ms,
        t.push_ms,
        t.deploy_ms,
        took.as_millis()
    );
    let image = report.apps[0].image.as_ref().expect("deployed by digest");
    (took, image.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Removes both sides' containers when the benchmark ends.
struct Cleanup<'a>(&'a TestEngine);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.0.remove_containers(self.0.prefix());
    }
}
