//! Local files a deploy must not leak or trust, and runners that share an engine,
//! against real Docker and Podman: the build context leaves out `.shipflow/` and
//! (unless asked) `.git/`, and is streamed, not held in memory; two deployers with
//! state directories of their own (two machines) exclude each other on one engine.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Harness, free_port, get};
use futures_util::StreamExt;
use rstest::rstest;
use shipflow_core::{App, BuildRequest, Context, DeployMeta, Deployer, ImageBuilder};
use shipflow_docker::{DockerError, EngineBuilder, EngineDeployer, EngineKind};

/// A fake CI token, as `actions/checkout` leaves one in `.git/config`.
const TOKEN: &str = "ghs_FAKEFAKEFAKEFAKEFAKEFAKEFAKE";

/// A repository whose root is the build context: a token in `.git/config`, an
/// image store in `.shipflow/`, a source file, and `Dockerfile` (`dockerfile`).
fn repo(root: &Path, dockerfile: &str) {
    for (path, body) in [
        (
            ".git/config",
            format!("[http]\n\textraheader = AUTHORIZATION: basic {TOKEN}\n"),
        ),
        (".git/HEAD", "ref: refs/heads/main\n".to_owned()),
        (
            ".shipflow/images/blobs/sha256/aa",
            "an image layer".to_owned(),
        ),
        ("src/a.txt", "a".to_owned()),
        ("Dockerfile", dockerfile.to_owned()),
    ] {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }
}

fn dockerfile_app(h: &Harness, base: &str, build_extra: &str) -> App {
    let name = h.name(base);
    h.app_toml(
        &name,
        &format!(
            "[apps.{name}]\npath = \".\"\n\
             build = {{ type = \"dockerfile\", dockerfile = \"Dockerfile\"{build_extra} }}\n"
        ),
    )
}

async fn build(h: &Harness, app: &App, root: &Path) -> String {
    let builder = EngineBuilder::new(h.engine().await);
    let request = BuildRequest {
        root: root.to_owned(),
        tag: "v1".into(),
        ..Default::default()
    };
    builder
        .build(app, &request, &Context::new())
        .await
        .expect("build");
    format!("{}:v1", app.image)
}

/// The paths under `/ctx` of `image`, read through the engine from a container
/// created (never started) from it.
async fn files_under_ctx(h: &Harness, image: &str, name: &str) -> Vec<String> {
    let engine = h.engine().await;
    let docker = engine.client();
    let config = bollard::models::ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["none".into()]),
        ..Default::default()
    };
    let options = bollard::query_parameters::CreateContainerOptions {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    docker
        .create_container(Some(options), config)
        .await
        .expect("create a container of the image");
    let mut tar = Vec::new();
    let mut stream = docker.download_from_container(
        name,
        Some(bollard::query_parameters::DownloadFromContainerOptions {
            path: "/ctx".into(),
        }),
    );
    while let Some(chunk) = stream.next().await {
        tar.extend_from_slice(&chunk.expect("read /ctx"));
    }
    h.remove_now(name);
    let mut names: Vec<String> = tar::Archive::new(tar.as_slice())
        .entries()
        .expect("a tar")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_leaves_out_git_and_the_image_store(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let root = h.dir.path().join("repo");
    repo(
        &root,
        &format!("FROM scratch\n{}COPY . /ctx\n", h.own_chain()),
    );

    let app = dockerfile_app(&h, "ctx-default", "");
    let image = build(&h, &app, &root).await;
    let files = files_under_ctx(&h, &image, &h.name("ctx-default-files")).await;
    assert!(files.iter().any(|f| f.ends_with("src/a.txt")), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.contains(".git") || f.contains(".shipflow")),
        "{files:?}"
    );

    // Asked for, `.git/` is sent (with its token: the app's choice); the store never.
    let app = dockerfile_app(&h, "ctx-git", ", include_git = true");
    let image = build(&h, &app, &root).await;
    let files = files_under_ctx(&h, &image, &h.name("ctx-git-files")).await;
    assert!(
        files.iter().any(|f| f.ends_with(".git/config")),
        "{files:?}"
    );
    assert!(!files.iter().any(|f| f.contains(".shipflow")), "{files:?}");
}

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_context_is_streamed_not_held_in_memory(#[case] kind: EngineKind) {
    const BIG: u64 = 256 << 20;
    let h = Harness::start(kind);
    let root = h.dir.path().join("repo");
    repo(
        &root,
        &format!("FROM scratch\n{}LABEL big=yes\n", h.own_chain()),
    );
    // Sparse: costs no disk here, and reads as BIG bytes of zeros.
    std::fs::File::create(root.join("big.bin"))
        .and_then(|f| f.set_len(BIG))
        .expect("big file");
    let app = dockerfile_app(&h, "ctx-big", "");
    let before = peak_rss();
    build(&h, &app, &root).await;
    let grew = peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {} MiB for a {} MiB context",
        grew >> 20,
        BIG >> 20
    );
    assert!(
        grew < 64 << 20,
        "peak RSS grew by {} MiB for a {} MiB context",
        grew >> 20,
        BIG >> 20
    );
}

/// A deployer as on another machine: a state directory (host locks) of its own.
async fn machine(h: &Harness, state: &str, wait: Duration) -> EngineDeployer {
    EngineDeployer::builder(h.engine().await)
        .state_dir(h.dir.path().join(state))
        .probe_interval(Duration::from_millis(100))
        .stable_for(Duration::from_millis(300))
        .stop_timeout(2)
        .lock_wait(wait)
        .build()
}

fn engine_locked(err: &shipflow_core::BoxError) -> bool {
    matches!(
        err.downcast_ref::<DockerError>(),
        Some(DockerError::EngineLocked { .. })
    )
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployers_on_two_machines_exclude_each_other_on_one_engine(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "two-hosts",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\", timeout = 4 }}"),
    );
    let v1 = h.web_image("two-hosts", "v1", "v1");
    let v2 = h.web_image("two-hosts", "v2", "v2");
    let bad = h.image("two-hosts", "bad", "bad", "exec sleep 600");
    let (meta, ctx) = (DeployMeta::default(), Context::new());
    let a = machine(&h, "state-a", Duration::from_secs(60)).await;
    a.deploy(&app, &v1, &meta, &ctx).await.expect("deploy v1");

    // Machine A deploys a revision that never turns healthy: it holds the lock for
    // its health timeout.
    let slow = tokio::spawn({
        let app = app.clone();
        async move {
            a.deploy(&app, &bad, &DeployMeta::default(), &Context::new())
                .await
                .map_err(|e| e.to_string())
        }
    });
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(60);
    while !h
        .containers(&app.name)
        .iter()
        .any(|(name, _)| *name == format!("{}--r2--unchecked", app.name))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "machine A never created its container"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    eprintln!(
        "machine A created its container after {:?}",
        started.elapsed()
    );
    // Machine B shares no host lock with A: the engine's lock stops it.
    let impatient = machine(&h, "state-b", Duration::from_millis(500)).await;
    let err = impatient
        .deploy(&app, &v2, &meta, &ctx)
        .await
        .expect_err("locked on the engine");
    let text = err.to_string();
    assert!(engine_locked(&err), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "names the holder: {text}"
    );

    let patient = machine(&h, "state-c", Duration::from_secs(60)).await;
    let rollout = patient
        .deploy(&app, &v2, &meta, &ctx)
        .await
        .expect("waits for the engine lock, then deploys");
    let slow = slow.await.expect("machine A's task");
    assert!(slow.is_err_and(|e| e.contains("unhealthy")));
    assert_eq!(rollout.revision, Some(3), "after r1 and A's failed r2");
    assert_eq!(
        get(&reqwest::Client::new(), port).await.as_deref(),
        Ok("v2")
    );
    // Released: nothing named after the lock is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !h.containers(&app.name)
            .iter()
            .any(|(name, _)| name.ends_with("--lock")),
        "{:?}",
        h.containers(&app.name)
    );
}

#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_lock_nobody_renews_is_taken_over_after_its_lease(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "stale-lock",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nhealth = {{ http = \"/\" }}"),
    );
    let v1 = h.web_image("stale-lock", "v1", "v1");
    let (meta, ctx) = (DeployMeta::default(), Context::new());
    // A runner that crashed while holding the engine lock: its sentinel stays and
    // is never renewed (the first deploy imports the sentinel's image).
    let a = machine(&h, "state-a", Duration::from_secs(60)).await;
    a.deploy(&app, &v1, &meta, &ctx).await.expect("deploy v1");
    let sentinel = format!("{}--lock", app.name);
    // The deploy's own sentinel goes just after it returns.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let planted = h
            .cli()
            .args(["create", "--name", &sentinel, "--label"])
            .arg(format!("dev.shipflow.lock={}", app.name))
            .args(["localhost/shipflow-lock:1", "lock"])
            .output()
            .expect("the engine's command line");
        if planted.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&planted.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let impatient = machine(&h, "state-b", Duration::from_secs(2)).await;
    let err = impatient
        .deploy(&app, &v1, &meta, &ctx)
        .await
        .expect_err("held until its lease ends");
    assert!(engine_locked(&err), "{err}");

    let started = std::time::Instant::now();
    let b = machine(&h, "state-c", Duration::from_secs(90)).await;
    b.deploy(&app, &v1, &meta, &ctx)
        .await
        .expect("takes over the expired lock");
    let waited = started.elapsed();
    eprintln!("took over an unrenewed engine lock after {waited:?}");
    assert!(waited >= Duration::from_secs(15), "{waited:?}");
}
