//! Builds in the cluster, end to end: the real builder image (the CLI binary, as a
//! native image) run in real Podman containers, a real `docker-registry`, and the
//! simulated API server whose pods are those containers.

mod common;

use std::process::Command;

use common::{Monorepo, builder_image};
use shipflow_kit::docker::testing::TestPodman;
use shipflow_kit::oci::testing::TestRegistry;
use shipflow_kit::oci::{ContextPacker, NativeBuilder, RegistryClient};
use shipflow_kit::{BuildRequest, Context, ImageBuilder as _, Registry as _, Workspace};

/// How a build pod reaches the registry on the host's loopback: slirp4netns maps
/// 10.0.2.2 to it.
const HOST_LOOPBACK: &str = "10.0.2.2";

fn run(mut command: Command) -> String {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The builder image, run by Podman the way a build Job's restricted pod runs it
/// (not root, read-only root file system, no capabilities, an emptyDir to work in),
/// fetches the context, builds and pushes the image a local build makes, and
/// leaves its digest in the termination log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_image_builds_an_app_in_a_restricted_container() {
    let registry = TestRegistry::start().expect("docker-registry starts");
    let host = registry.host();
    let repo = Monorepo::create(&host, &["web"], |_, _| String::new());
    let workspace = Workspace::load(repo.config()).expect("workspace");
    let app = workspace.app("web").expect("app");
    let ctx = Context::new();
    let request = BuildRequest {
        root: repo.path().to_owned(),
        tag: "v1".into(),
        ..Default::default()
    };
    let images = tempfile::tempdir().expect("images");
    let local = NativeBuilder::new(images.path())
        .build(app, &request, &ctx)
        .await
        .expect("local build");

    let contexts = tempfile::tempdir().expect("contexts");
    let packed = ContextPacker::new(contexts.path())
        .pack(
            "web",
            repo.path(),
            &[
                "shipflow.toml",
                "apps/web",
                "packages/common",
                "packages/runtime/busybox",
            ],
            &Default::default(),
        )
        .expect("pack");
    let context = format!("{host}/e2e/web-context")
        .parse::<shipflow_kit::ImageRef>()
        .expect("ref")
        .pinned(packed.image.digest.clone());
    let client = RegistryClient::builder().build().expect("client");
    client
        .push(&packed.image, &context, &ctx)
        .await
        .expect("push context");

    let builder = builder_image(&host).await;
    let podman = TestPodman::start(&[&host]).expect("podman");
    let log = tempfile::tempdir().expect("log dir");
    let termination = log.path().join("termination-log");
    std::fs::write(&termination, "").expect("termination log");
    // Writable by the container's user, as the kubelet makes it.
    std::fs::set_permissions(
        &termination,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    // The pod's emptyDir: a host directory anyone may write, as the kubelet makes it.
    let empty_dir = log.path().join("workspace");
    std::fs::create_dir(&empty_dir).expect("emptyDir");
    std::fs::set_permissions(
        &empty_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod");
    let mut pod = podman.command();
    let alias = |r: &str| r.replacen("127.0.0.1", HOST_LOOPBACK, 1);
    let request_json = serde_json::to_string(&BuildRequest {
        tag: "v1".into(),
        ..Default::default()
    })
    .expect("json");
    pod.args([
        "run",
        "--rm",
        "--network",
        "slirp4netns:allow_host_loopback=true",
    ])
    .args(["--user", "65532:65532", "--read-only", "--cap-drop", "ALL"])
    .args(["--security-opt", "no-new-privileges"])
    .args(["-v", &format!("{}:/workspace", empty_dir.display())])
    .args([
        "-v",
        &format!("{}:/dev/termination-log", termination.display()),
    ])
    .args(["-e", &format!("SHIPFLOW_BUILD_REQUEST={request_json}")])
    .args(["-e", "RUST_LOG=info"])
    .arg("--tls-verify=false")
    .arg(&builder)
    .args(["build-context", "--context", &alias(&context.to_string())])
    .args(["--app", "web", "--target", &alias(&app.image.to_string())])
    .args(["--workdir", "/workspace/build", "--insecure-registry"]);
    let printed = run(pod);
    assert_eq!(printed.trim(), local.digest.to_string());
    assert_eq!(
        std::fs::read_to_string(&termination).expect("termination log"),
        local.digest.to_string()
    );
    assert_eq!(
        client
            .resolve(&app.image.pinned(local.digest.clone()), &ctx)
            .await
            .expect("resolve"),
        Some(local.digest)
    );
}
