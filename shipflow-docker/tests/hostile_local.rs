//! Local files a deploy must not leak or trust, and runners that share an engine,
//! against real Docker and Podman: the build context leaves out `.shipflow/` and
//! (unless asked) `.git/`, and is streamed, not held in memory.

mod common;

use std::path::Path;

use common::Harness;
use futures_util::StreamExt;
use rstest::rstest;
use shipflow_core::{App, BuildRequest, Context, ImageBuilder};
use shipflow_docker::{EngineBuilder, EngineKind};

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
