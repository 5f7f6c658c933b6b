//! Where Docker Engine and Podman answer the same API differently, each on both:
//! what a pull leaves (image id and repo digests), the fields the deployer reads
//! back (restart policy, published loopback ports), how a push reports the layers
//! the registry already has, and what a Dockerfile build puts in the image (the
//! same file tree on both).

mod common;

use std::collections::BTreeSet;
use std::io::Read;

use bollard::query_parameters::InspectContainerOptions;
use common::{Harness, free_port};
use futures_util::StreamExt;
use rstest::rstest;
use shipflow_core::{BuildRequest, Context, DeployMeta, Deployer, ImageBuilder, Registry};
use shipflow_docker::{EngineBuilder, EngineKind, EngineRegistry};

/// A pull by digest leaves an image whose id is its config digest (not the manifest
/// digest) and whose repo digests hold the reference deployed: the deployer finds it
/// again by that reference, so a rollback or redeploy never pulls.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_image_is_found_by_its_digest_reference(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let port = free_port();
    let app = h.app(
        "pull-web",
        &format!("ports = [\"127.0.0.1:{port}:80\"]\nrestart = \"unless-stopped\"\nhealth = {{ http = \"/\" }}"),
    );
    let v1 = h.web_image("pull-web", "v1", "v1");
    let deployer = h.deployer().await;
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &Context::new())
        .await
        .expect("deploy v1");
    let engine = h.engine().await;
    let pinned = v1.to_string();
    let image = engine
        .client()
        .inspect_image(&pinned)
        .await
        .expect("found by repo@digest");
    let digest = v1.digest().expect("pinned").to_string();
    assert_ne!(
        image.id.as_deref(),
        Some(digest.as_str()),
        "the id is the config's digest"
    );
    let repo_digests = image.repo_digests.unwrap_or_default();
    assert!(
        repo_digests.iter().any(|d| d == &pinned),
        "{pinned} in {repo_digests:?}"
    );
    let pulls = |log: &str| {
        log.matches(&format!("GET /v2/pull-web/manifests/{digest}"))
            .count()
    };
    let before = pulls(&h.registry_log());

    // The restart policy and the loopback binding read back as they were asked for.
    let container = format!("{}--r1", app.name);
    let inspect = engine
        .client()
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let host = inspect.host_config.expect("host config");
    assert_eq!(
        host.restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string())
            .as_deref(),
        Some("unless-stopped")
    );
    let ports = inspect
        .network_settings
        .and_then(|n| n.ports)
        .expect("ports");
    let binding = ports["80/tcp"].as_ref().expect("published")[0].clone();
    assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(binding.host_port, Some(port.to_string()));

    // A second revision of the same image (forced by removing the first's
    // container) creates from the local image: no manifest request.
    h.remove_now(&container);
    deployer
        .deploy(&app, &v1, &DeployMeta::default(), &Context::new())
        .await
        .expect("deploy v1 again");
    assert_eq!(pulls(&h.registry_log()), before, "no second pull");
}

/// A container that exits on its own is reported with its exit code, whatever
/// state names the engine passes through while it stops.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_code_reads_the_same(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let app = h.app("code-web", "health = { timeout = 10 }");
    let image = h.image("code-web", "v1", "v1", "exit 7");
    let deployer = h.deployer().await;
    let err = deployer
        .deploy(&app, &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("it exits");
    assert!(err.to_string().contains("exited (code 7)"), "{err}");
}

/// The engine checks each layer before uploading it and reports the ones the
/// registry has: Docker says "Layer already exists"; Podman reports no layer
/// statuses, so its report counts none of either kind.
#[rstest]
#[case::docker(EngineKind::Docker)]
#[case::podman(EngineKind::Podman)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reports_the_layers_the_registry_has(#[case] kind: EngineKind) {
    let h = Harness::start(kind);
    let root = h.dir.path().join("repo");
    let (dir, app) = dockerfile_app(
        &h,
        "push-web",
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n",
    );
    let engine = h.engine().await;
    let (builder, registry) = (
        EngineBuilder::new(engine.clone()),
        EngineRegistry::new(engine),
    );
    let ctx = Context::new();
    let request = |tag: &str| BuildRequest {
        root: root.clone(),
        tag: tag.to_owned(),
        ..Default::default()
    };
    let v1 = builder
        .build(&app, &request("v1"), &ctx)
        .await
        .expect("build v1");
    let first = registry
        .push(&v1, &app.image.with_tag("v1").expect("tag"), &ctx)
        .await
        .expect("push v1");
    std::fs::write(dir.join("www/index.html"), "v2").expect("index v2");
    let v2 = builder
        .build(&app, &request("v2"), &ctx)
        .await
        .expect("build v2");
    let second = registry
        .push(&v2, &app.image.with_tag("v2").expect("tag"), &ctx)
        .await
        .expect("push v2");
    assert!(first.digest.is_some() && second.digest.is_some());
    assert_ne!(first.digest, second.digest);
    match kind {
        EngineKind::Docker => {
            assert_eq!(
                (first.blobs_uploaded, first.blobs_skipped),
                (2, 0),
                "{first:?}"
            );
            assert_eq!(
                (second.blobs_uploaded, second.blobs_skipped),
                (1, 1),
                "the busybox layer is there: {second:?}"
            );
        }
        EngineKind::Podman => {
            assert_eq!(
                (second.blobs_uploaded, second.blobs_skipped),
                (0, 0),
                "{second:?}"
            );
        }
    }
}

/// Docker's classic builder and Podman's Buildah put the same files in the image
/// from the same Dockerfile: multi-stage with `COPY --from`, a target stage, build
/// args, `RUN`, `WORKDIR` and `.dockerignore`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dockerfile_gives_the_same_files_on_both_engines() {
    let mut trees = Vec::new();
    for kind in [EngineKind::Docker, EngineKind::Podman] {
        let h = Harness::start(kind);
        let dockerfile = "FROM scratch AS tools\n\
             COPY busybox /bin/busybox\n\
             ARG FLAVOUR=plain\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir -p /out/etc && echo $FLAVOUR > /out/etc/flavour\"]\n\
             FROM scratch AS app\n\
             COPY --from=tools /bin/busybox /bin/busybox\n\
             COPY --from=tools /out/ /\n\
             WORKDIR /srv/app\n\
             COPY www ./www\n\
             FROM scratch AS unused\n\
             COPY notes.md /\n";
        let (root, app) = dockerfile_app(&h, "tree-web", dockerfile);
        std::fs::write(root.join("notes.md"), "left out").expect("notes");
        std::fs::write(root.join("www/secret.txt"), "left out").expect("secret");
        std::fs::write(root.join(".dockerignore"), "*.md\nwww/secret.txt\n").expect("ignore");
        let app = with_build(
            &h,
            &app.name,
            "target = \"app\", args = { FLAVOUR = \"spicy\" }",
        );
        let engine = h.engine().await;
        let request = BuildRequest {
            root: root
                .parent()
                .and_then(|p| p.parent())
                .expect("repo root")
                .to_owned(),
            tag: "v1".into(),
            ..Default::default()
        };
        let built = EngineBuilder::new(engine.clone())
            .build(&app, &request, &Context::new())
            .await
            .unwrap_or_else(|e| panic!("{kind} build: {e}"));
        let id = match &built.location {
            shipflow_core::ImageLocation::Engine { id } => id.clone(),
            other => panic!("{other:?}"),
        };
        trees.push((kind, files_of(&engine, &id).await));
    }
    let (docker, podman) = (&trees[0].1, &trees[1].1);
    assert!(docker.contains("srv/app/www/index.html"), "{docker:?}");
    assert!(docker.contains("etc/flavour"), "{docker:?}");
    assert!(!docker.contains("www/secret.txt") && !docker.contains("notes.md"));
    assert_eq!(docker, podman, "the same files on Docker and on Podman");
}

/// An app `name` built from `apps/<name>` with `dockerfile`, busybox and
/// `www/index.html` in its directory; the directory and the app.
fn dockerfile_app(
    h: &Harness,
    base: &str,
    dockerfile: &str,
) -> (std::path::PathBuf, shipflow_core::App) {
    let name = h.name(base);
    let root = h.dir.path().join("repo").join("apps").join(&name);
    std::fs::create_dir_all(root.join("www")).expect("app dir");
    std::fs::copy("/bin/busybox", root.join("busybox")).expect("busybox-static");
    std::fs::write(root.join("www/index.html"), "v1").expect("index");
    // Each stage its own cache chain on the shared Docker Engine
    // (see `Harness::own_chain`).
    let dockerfile: String = dockerfile
        .lines()
        .map(|line| match line.starts_with("FROM ") {
            true => format!("{line}\n{}", h.own_chain()),
            false => format!("{line}\n"),
        })
        .collect();
    std::fs::write(root.join("Dockerfile"), dockerfile).expect("Dockerfile");
    let app = with_build(h, &name, "");
    (root, app)
}

/// The app `name` of `apps/<name>` with a Dockerfile build plus `extra` settings.
fn with_build(h: &Harness, name: &str, extra: &str) -> shipflow_core::App {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    h.app_toml(
        name,
        &format!(
            "[apps.{name}]\npath = \"apps/{name}\"\n\
             build = {{ type = \"dockerfile\", context = \"apps/{name}\"{extra} }}\n\
             [apps.{name}.deploy.docker]\n"
        ),
    )
}

/// The paths of the files and directories in image `id`'s layers (`docker save`
/// through the API, layers applied in order).
async fn files_of(engine: &shipflow_docker::Engine, id: &str) -> BTreeSet<String> {
    let mut archive = Vec::new();
    let mut stream = engine.client().export_image(id);
    while let Some(chunk) = stream.next().await {
        archive.extend_from_slice(&chunk.expect("image export"));
    }
    let mut entries = std::collections::HashMap::new();
    let mut outer = tar::Archive::new(archive.as_slice());
    for entry in outer.entries().expect("archive") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        entries.insert(path, data);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&entries["manifest.json"]).expect("manifest.json");
    let mut files = BTreeSet::new();
    for layer in manifest[0]["Layers"].as_array().expect("layers") {
        let data = &entries[layer.as_str().expect("layer path")];
        for entry in tar::Archive::new(data.as_slice()).entries().expect("layer") {
            let entry = entry.expect("layer entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned();
            if let Some(gone) = path.rsplit('/').next().and_then(|f| f.strip_prefix(".wh.")) {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                let gone = if dir.is_empty() {
                    gone.to_owned()
                } else {
                    format!("{dir}/{gone}")
                };
                files.retain(|f: &String| f != &gone && !f.starts_with(&format!("{gone}/")));
            } else if !path.is_empty() {
                files.insert(path);
            }
        }
    }
    files
}

/// The engine is found as the command lines find it: nothing set is Docker's
/// socket; Podman's `CONTAINER_HOST`, or a Docker context made with `docker context
/// create`, points at a Podman service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_is_found_from_the_variables_given() {
    let docker = shipflow_docker::Engine::from_vars(|_| None)
        .await
        .expect("Docker Engine on /var/run/docker.sock");
    assert_eq!(docker.kind(), EngineKind::Docker);

    let podman = shipflow_docker::testing::TestPodman::start(&[]).expect("podman service");
    let host = podman.docker_host();
    let engine =
        shipflow_docker::Engine::from_vars(|k| (k == "CONTAINER_HOST").then(|| host.clone()))
            .await
            .expect("Podman from CONTAINER_HOST");
    assert_eq!(engine.kind(), EngineKind::Podman);

    // `docker context create` writes the context's meta.json; `DOCKER_CONTEXT` picks it.
    let config = tempfile::tempdir().expect("config dir");
    let docker_cli = shipflow_docker::testing::require("docker", "docker.io").expect("docker CLI");
    let out = std::process::Command::new(docker_cli)
        .env("DOCKER_CONFIG", config.path())
        .args([
            "context",
            "create",
            "podman-test",
            "--docker",
            &format!("host={host}"),
        ])
        .output()
        .expect("docker context create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = config.path().to_str().expect("utf-8").to_owned();
    let vars = |k: &str| match k {
        "DOCKER_CONFIG" => Some(dir.clone()),
        "DOCKER_CONTEXT" => Some("podman-test".to_owned()),
        _ => None,
    };
    let engine = shipflow_docker::Engine::from_vars(vars)
        .await
        .expect("Podman from the Docker context");
    assert_eq!(engine.kind(), EngineKind::Podman);
}
