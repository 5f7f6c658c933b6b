//! Builds in the cluster, end to end: the real builder image (the CLI binary, as a
//! native image) run in real Podman containers, a real `docker-registry`, and the
//! simulated API server whose pods are those containers.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Monorepo, builder_image, outcome, registry_in_pods};
use shipflow_kit::docker::testing::TestPodman;
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::k8s::testing::{PodmanPods, SimCluster};
use shipflow_kit::k8s::{BuildJobs, KubeDeployer, KubeJobBuilder};
use shipflow_kit::oci::testing::TestRegistry;
use shipflow_kit::oci::{ContextPacker, NativeBuilder, RegistryClient};
use shipflow_kit::{
    BuildRequest, Context, FailurePolicy, ImageBuilder as _, Outcome, Pipeline, Registry as _,
    Selection, Workspace,
};

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
    let app_json = serde_json::to_string(&shipflow_kit::oci::RemoteApp::new(
        "web",
        "apps/web",
        (*app
            .build_spec::<shipflow_kit::oci::NativeBuild>()
            .expect("native spec"))
        .clone(),
    ))
    .expect("json");
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
    .args(["-e", &format!("SHIPFLOW_BUILD_APP={app_json}")])
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

/// What a pod of `app` serves, by its pod IP: every ready pod of the Deployment.
fn served(sim: &SimCluster, app: &str) -> Vec<String> {
    sim.list("Pod", "default")
        .iter()
        .filter(|p| p["metadata"]["labels"][shipflow_kit::k8s::APP_LABEL] == app)
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_owned))
        .map(|ip| {
            let body = Command::new("curl")
                .args(["-sf", "--max-time", "5", &format!("http://{ip}:8080/")])
                .output()
                .expect("curl runs");
            String::from_utf8_lossy(&body.stdout).into_owned()
        })
        .collect()
}

/// Two apps built as Jobs on the simulated cluster whose pods are real Podman
/// containers (the builder's too), pushed to the real registry, deployed as pods
/// that answer HTTP with what was built; a rerun of the same inputs reuses the
/// finished Jobs; an edit builds one new Job; an image that crashes is caught from
/// its real exit and rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_built_as_jobs_run_as_pods_that_answer_http() {
    let registry = TestRegistry::start().expect("docker-registry starts");
    let host = registry.host();
    let repo = Monorepo::create(&host, &["api", "web"], |_, _| {
        "deploy.kubernetes = { replicas = 1, ports = [{ port = 8080 }], readiness = { http = \"/\", period = 1 } }".into()
    });
    let builder = builder_image(&host).await;
    let sim = SimCluster::start_with_podman(PodmanPods::new())
        .await
        .expect("a Podman-backed simulated cluster");
    let settings = BuildJobs::new(builder)
        .namespace("builds")
        .registry_alias(host.clone(), registry_in_pods(&sim, &host))
        .insecure_registry(true);
    let contexts = tempfile::tempdir().expect("contexts");
    let pipeline = || {
        let workspace = Workspace::loader()
            .schema(shipflow_kit::k8s::schema().merge(shipflow_kit::oci::schema()))
            .load(repo.config())
            .expect("workspace");
        let jobs = KubeJobBuilder::new(
            sim.client(),
            RegistryClient::builder().build().expect("client"),
            contexts.path(),
            settings.clone(),
        )
        .expect("builder")
        .poll_interval(Duration::from_millis(100));
        Pipeline::builder(workspace)
            .detector(Arc::new(
                GitChangeDetector::open(repo.path()).expect("repository"),
            ))
            .builder(Arc::new(jobs))
            .registry(Arc::new(RegistryClient::builder().build().expect("client")))
            .deployer(Arc::new(KubeDeployer::new(sim.client())))
            .failure_policy(FailurePolicy::Continue)
            .build()
            .expect("pipeline")
    };
    let jobs = || sim.list("Job", "builds");

    let first = pipeline()
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("first run");
    for app in ["api", "web"] {
        assert_eq!(outcome(&first, app), &Outcome::Deployed, "{first:#?}");
        assert_eq!(served(&sim, app), [format!("<h1>{app} v1</h1>\n")]);
    }
    assert_eq!(jobs().len(), 2);
    let uids: Vec<String> = jobs()
        .iter()
        .map(|j| j["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
        .collect();

    // Every app again, nothing changed: the finished Jobs' results, no new Job.
    let all = Selection {
        all: true,
        ..Selection::default()
    };
    let again = pipeline().run(None, "HEAD", &all).await.expect("rerun");
    for app in ["api", "web"] {
        assert!(
            matches!(outcome(&again, app), Outcome::Deployed | Outcome::Unchanged),
            "{again:#?}"
        );
    }
    let after: Vec<String> = jobs()
        .iter()
        .map(|j| j["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(after, uids);

    // An edit: one new Job, and web's new pod serves the new page.
    repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let edited = pipeline()
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("edited run");
    assert_eq!(outcome(&edited, "web"), &Outcome::Deployed, "{edited:#?}");
    assert_eq!(jobs().len(), 3);
    assert_eq!(served(&sim, "web"), ["<h1>web v2</h1>\n"]);
    assert_eq!(served(&sim, "api"), ["<h1>api v1</h1>\n"]);

    // An image whose process exits: caught from the real exit, rolled back.
    let config = std::fs::read_to_string(repo.config()).expect("config");
    let broken = config.replacen(
        &format!(
            "cmd = [\"/bin/busybox\", \"sh\", \"-c\", \"{}\"]",
            common::HTTPD
        ),
        "cmd = [\"/bin/busybox\", \"sh\", \"-c\", \"echo config missing; exit 3\"]",
        1,
    );
    assert_ne!(broken, config, "the api's command is replaced");
    repo.edit("shipflow.toml", &broken);
    let crashed = pipeline()
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("crashing run");
    let rolled_back = crashed
        .apps
        .iter()
        .find(|a| matches!(a.outcome, Outcome::RolledBack { .. }))
        .unwrap_or_else(|| panic!("an app is rolled back: {crashed:#?}"));
    let error = rolled_back.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("CrashLoopBackOff") || error.contains("exit"),
        "{error}"
    );
    assert!(
        error.contains("config missing"),
        "the real log is in the error: {error}"
    );
    assert_eq!(served(&sim, &rolled_back.app).len(), 1);
}
