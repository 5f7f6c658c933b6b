//! The native builder: reproducible layers, `.dockerignore`, symlinks, and images
//! that skopeo and a real `docker-registry` accept.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use common::{TestRegistry, path_str, run};
use shipflow_core::{
    App, BuildRequest, Context, ImageBuilder, LocalImage, Registry, RevisionInfo, Workspace,
};
use shipflow_oci::testing::{Refusal, TokenService};
use shipflow_oci::{BuildError, NativeBuilder, OciLayout, RegistryClient};

/// The app `api` of a workspace at `root`, built natively with `build` (a TOML table body).
fn app(root: &Path, build: &str) -> App {
    let toml = format!(
        "[workspace]\nregistry = \"127.0.0.1:5000/acme\"\n[apps.api]\nbuild = {{ type = \"native\", {build} }}\n"
    );
    let workspace = Workspace::from_toml(&toml, root).expect("valid workspace");
    workspace.app("api").expect("app api").clone()
}

fn request(root: &Path, tag: &str) -> BuildRequest {
    BuildRequest {
        root: root.to_path_buf(),
        tag: tag.into(),
        revision: RevisionInfo {
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            ..RevisionInfo::default()
        },
        labels: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
        ..BuildRequest::default()
    }
}

fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, content).expect("write file");
}

/// A small repository: dependencies in `deps/`, code in `src/` (with an executable).
fn sample_repo(root: &Path) {
    write(&root.join("deps/lib/a.txt"), "dependency a\n");
    write(&root.join("deps/lib/b.txt"), &"dependency b\n".repeat(1000));
    write(&root.join("src/main.sh"), "#!/bin/sh\necho hello\n");
    write(&root.join("src/static/index.html"), "<h1>hi</h1>\n");
    run("chmod", &["755", path_str(&root.join("src/main.sh"))]);
}

const TWO_LAYERS: &str = r#"layers = [{ from = "deps", to = "/opt/deps" }, { from = "src", to = "/app" }], entrypoint = ["/app/main.sh"], cmd = ["--port", "8080"], env = { MODE = "prod" }, workdir = "/app", expose = ["8080"], user = "1000", labels = { tier = "web" }"#;

async fn build(builder: &NativeBuilder, app: &App, root: &Path, tag: &str) -> LocalImage {
    builder
        .build(app, &request(root, tag), &Context::new())
        .await
        .expect("build")
}

async fn build_err(builder: &NativeBuilder, app: &App, root: &Path) -> BuildError {
    let err = builder
        .build(app, &request(root, "v1"), &Context::new())
        .await
        .expect_err("the build must fail");
    *err.downcast::<BuildError>().expect("a BuildError")
}

/// The entries of a gzip layer blob: (path, type, mode, uid, gid, mtime, link target).
fn entries(
    layout: &OciLayout,
    image: &LocalImage,
    layer: usize,
) -> Vec<(String, char, u32, u64, u64, u64, String)> {
    let file = fs::File::open(layout.blob_path(&image.layers[layer].digest)).expect("layer blob");
    let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
    archive
        .entries()
        .expect("tar entries")
        .map(|e| {
            let e = e.expect("tar entry");
            let h = e.header();
            (
                e.path().expect("path").to_string_lossy().into_owned(),
                match h.entry_type() {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Regular => 'f',
                    _ => '?',
                },
                h.mode().expect("mode"),
                h.uid().expect("uid"),
                h.gid().expect("gid"),
                h.mtime().expect("mtime"),
                e.link_name()
                    .expect("link")
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn same_inputs_give_the_same_digests_across_copies_mtimes_owners_and_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    sample_repo(&one);
    run("cp", &["-a", path_str(&one), path_str(&two)]);
    run(
        "touch",
        &[
            "-d",
            "2001-02-03 04:05:06",
            path_str(&two.join("src/main.sh")),
        ],
    );
    run("chown", &["-R", "65534:65534", path_str(&two)]);
    run("chmod", &["600", path_str(&two.join("deps/lib/a.txt"))]);

    let images = dir.path().join("images");
    let builder = NativeBuilder::new(&images).source_date_epoch(0);
    let a = build(&builder, &app(&one, TWO_LAYERS), &one, "v1").await;
    let again = build(&builder, &app(&one, TWO_LAYERS), &one, "v1").await;
    let single = NativeBuilder::new(dir.path().join("single")).compression_threads(1);
    let b = build(&single, &app(&two, TWO_LAYERS), &two, "v1").await;
    assert_eq!(a.digest, again.digest);
    assert_eq!(
        a.digest, b.digest,
        "copy with other mtimes, owners, modes and one thread"
    );
    assert_eq!(a.layers.len(), 2);

    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    let listed = entries(&layout, &a, 1);
    let paths: Vec<&str> = listed.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "app/",
            "app/main.sh",
            "app/static/",
            "app/static/index.html"
        ]
    );
    for (path, kind, mode, uid, gid, mtime, _) in &listed {
        assert_eq!((*uid, *gid, *mtime), (0, 0, 0), "{path}");
        let expected = if *kind == 'd' || path.ends_with(".sh") {
            0o755
        } else {
            0o644
        };
        assert_eq!(*mode, expected, "{path}");
    }
    let deps = entries(&layout, &a, 0);
    assert_eq!(deps[0].0, "opt/");
    assert_eq!(deps[1].0, "opt/deps/");

    let epoch = NativeBuilder::new(dir.path().join("epoch")).source_date_epoch(1_700_000_000);
    let c = build(&epoch, &app(&one, TWO_LAYERS), &one, "v1").await;
    assert_ne!(a.digest, c.digest, "SOURCE_DATE_EPOCH is part of the image");
}

#[tokio::test]
async fn a_changed_file_changes_only_its_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    sample_repo(&root);
    let builder = NativeBuilder::new(dir.path().join("images"));
    let before = build(&builder, &app(&root, TWO_LAYERS), &root, "v1").await;
    write(&root.join("src/static/index.html"), "<h1>changed</h1>\n");
    let after = build(&builder, &app(&root, TWO_LAYERS), &root, "v2").await;
    assert_eq!(before.layers[0], after.layers[0], "deps layer unchanged");
    assert_ne!(before.layers[1], after.layers[1], "code layer changed");
    assert_ne!(before.config.digest, after.config.digest);
    assert_ne!(before.digest, after.digest);
}

#[tokio::test]
async fn dockerignore_excludes_with_exceptions_and_double_star() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    write(
        &root.join("src/.dockerignore"),
        "# comments are ignored\n**/*.log\ntarget\ndocs/*\n!docs/keep.md\n",
    );
    write(&root.join("src/main.rs"), "fn main() {}\n");
    write(&root.join("src/debug.log"), "x");
    write(&root.join("src/deep/er/trace.log"), "x");
    write(&root.join("src/target/debug/app"), "binary");
    write(&root.join("src/docs/drop.md"), "x");
    write(&root.join("src/docs/keep.md"), "keep");
    let app = app(&root, r#"layers = [{ from = "src", to = "/" }]"#);
    let builder = NativeBuilder::new(dir.path().join("images"));
    let image = build(&builder, &app, &root, "v1").await;
    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    let paths: Vec<String> = entries(&layout, &image, 0)
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(
        paths,
        [
            ".dockerignore",
            "deep/",
            "deep/er/",
            "docs/",
            "docs/keep.md",
            "main.rs"
        ]
    );
}

#[tokio::test]
async fn symlinks_are_kept_and_links_out_of_the_context_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    write(&root.join("src/bin/tool"), "tool");
    std::os::unix::fs::symlink("bin/tool", root.join("src/tool")).expect("symlink");
    std::os::unix::fs::symlink("../tool", root.join("src/bin/up")).expect("symlink");
    std::os::unix::fs::symlink("bin", root.join("src/dirlink")).expect("symlink");
    let builder = NativeBuilder::new(dir.path().join("images"));
    let layers = r#"layers = [{ from = "src", to = "/app" }]"#;
    let image = build(&builder, &app(&root, layers), &root, "v1").await;
    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    let links: Vec<(String, String)> = entries(&layout, &image, 0)
        .into_iter()
        .filter(|e| e.1 == 'l')
        .map(|e| (e.0, e.6))
        .collect();
    assert_eq!(
        links,
        [
            ("app/bin/up".to_owned(), "../tool".to_owned()),
            ("app/dirlink".to_owned(), "bin".to_owned()),
            ("app/tool".to_owned(), "bin/tool".to_owned()),
        ],
        "links kept as links, directories behind links not followed"
    );

    std::os::unix::fs::symlink("../../secret", root.join("src/bin/escape")).expect("symlink");
    let err = build_err(&builder, &app(&root, layers), &root).await;
    let text = err.to_string();
    assert!(
        matches!(err, BuildError::LinkOutsideContext { .. }),
        "{text}"
    );
    assert!(
        text.contains("app api") && text.contains("src/bin/escape"),
        "{text}"
    );
    fs::remove_file(root.join("src/bin/escape")).expect("rm");

    std::os::unix::fs::symlink("/etc/passwd", root.join("src/passwd")).expect("symlink");
    let err = build_err(&builder, &app(&root, layers), &root).await;
    assert!(err.to_string().contains("src/passwd"), "{err}");
}

#[tokio::test]
async fn a_layer_whose_source_is_a_link_to_a_directory_takes_its_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    write(&root.join("site/build-42/index.html"), "v42");
    std::os::unix::fs::symlink("bin", root.join("site/build-42/link")).expect("symlink");
    std::os::unix::fs::symlink("build-42", root.join("site/current")).expect("symlink");
    let builder = NativeBuilder::new(dir.path().join("images"));
    let layers = r#"layers = [{ from = "site/current", to = "/www" }]"#;
    let image = build(&builder, &app(&root, layers), &root, "v1").await;
    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    let listed: Vec<(String, char)> = entries(&layout, &image, 0)
        .into_iter()
        .map(|e| (e.0, e.1))
        .collect();
    assert_eq!(
        listed,
        [
            ("www/".to_owned(), 'd'),
            ("www/index.html".to_owned(), 'f'),
            ("www/link".to_owned(), 'l'),
        ],
        "the directory's content; links inside it stay links"
    );
}

#[tokio::test]
async fn errors_name_the_app_and_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    fs::create_dir_all(&root).expect("mkdir");
    let builder = NativeBuilder::new(dir.path().join("images"));
    let err = build_err(
        &builder,
        &app(&root, r#"layers = [{ from = "missing", to = "/" }]"#),
        &root,
    )
    .await;
    let text = err.to_string();
    assert!(
        text.contains("app api") && text.contains("missing"),
        "{text}"
    );

    write(&root.join("src/.dockerignore"), "[broken\n");
    let err = build_err(
        &builder,
        &app(&root, r#"layers = [{ from = "src", to = "/" }]"#),
        &root,
    )
    .await;
    assert!(matches!(err, BuildError::BadIgnorePattern { .. }), "{err}");
    assert!(err.to_string().contains("[broken"), "{err}");

    // A bad setting is the workspace's error, named by its key.
    let err = builder
        .build(
            &app(&root, r#"expose = ["http"]"#),
            &request(&root, "v1"),
            &Context::new(),
        )
        .await
        .expect_err("the build must fail");
    let err = err
        .downcast::<shipflow_core::ConfigError>()
        .expect("a ConfigError");
    assert!(
        err.to_string()
            .starts_with("apps.api.build.expose[0]: \"http\""),
        "{err}"
    );
}

#[tokio::test]
async fn skopeo_reads_the_layout_and_a_pushed_build_copies_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    sample_repo(&root);
    let builder =
        NativeBuilder::new(dir.path().join("images")).source_url("https://example.com/acme/api");
    let image = build(&builder, &app(&root, TWO_LAYERS), &root, "v1").await;
    let layout_dir = builder.layout_path("api");

    let out = run(
        "skopeo",
        &["inspect", &format!("oci:{}:v1", path_str(&layout_dir))],
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("skopeo json");
    assert_eq!(json["Digest"], image.digest.to_string());
    assert_eq!(json["Labels"]["tier"], "web");
    assert_eq!(json["Labels"]["team"], "payments");
    assert_eq!(json["Env"], serde_json::json!(["MODE=prod"]));
    assert_eq!(json["Created"], "1970-01-01T00:00:00Z");
    let config = run(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci:{}:v1", path_str(&layout_dir)),
        ],
    );
    let config: serde_json::Value = serde_json::from_str(&config).expect("config json");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/app/main.sh"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["--port", "8080"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/app");
    assert_eq!(config["config"]["User"], "1000");
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    let manifest = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:v1", path_str(&layout_dir)),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&manifest).expect("manifest json");
    let annotations = &manifest["annotations"];
    assert_eq!(
        annotations["org.opencontainers.image.revision"],
        "0123456789abcdef0123456789abcdef01234567"
    );
    assert_eq!(
        annotations["org.opencontainers.image.source"],
        "https://example.com/acme/api"
    );
    assert_eq!(
        annotations["org.opencontainers.image.created"],
        "1970-01-01T00:00:00Z"
    );

    let registry = TestRegistry::start();
    let client = RegistryClient::builder().build().expect("client");
    let target = registry.reference("acme/api:v1");
    let report = client
        .push(&image, &target, &Context::new())
        .await
        .expect("push");
    // Two layers and the config; the SBOM and the provenance are attachments,
    // counted in the bytes, not in the image's blobs.
    assert_eq!(report.blobs_uploaded, 3);
    assert_eq!(report.attachments.len(), 2);
    let copy = dir.path().join("copy");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/acme/api:v1", registry.host()),
            &format!("oci:{}:v1", path_str(&copy)),
        ],
    );
    let copied = OciLayout::open(&copy)
        .expect("copied layout")
        .local_image("api", "v1")
        .expect("copied image");
    assert_eq!(
        copied.digest, image.digest,
        "skopeo pulled back the same manifest"
    );
    assert_eq!(copied.layers, image.layers);
    for blob in copied.layers.iter().chain([&copied.config]) {
        let bytes = fs::read(
            OciLayout::open(&copy)
                .expect("layout")
                .blob_path(&blob.digest),
        )
        .expect("blob");
        assert_eq!(shipflow_core::Digest::sha256(&bytes), blob.digest);
    }
    let mut tarball = Vec::new();
    flate2::read::MultiGzDecoder::new(
        &fs::read(
            OciLayout::open(&copy)
                .expect("layout")
                .blob_path(&copied.layers[1].digest),
        )
        .expect("layer")[..],
    )
    .read_to_end(&mut tarball)
    .expect("gunzip");
    assert!(!tarball.is_empty());
}

#[tokio::test]
async fn a_base_image_is_referenced_and_its_layers_are_mounted_not_copied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    sample_repo(&root);
    let registry = TestRegistry::start();
    let client = RegistryClient::builder().build().expect("client");

    // The base: a scratch image with the deps, pushed to its own repository.
    let base_builder = NativeBuilder::new(dir.path().join("base-images"));
    let base_app = app(
        &root,
        r#"layers = [{ from = "deps", to = "/opt/deps" }], env = { PATH = "/bin", MODE = "dev" }, cmd = ["sh"]"#,
    );
    let base = build(&base_builder, &base_app, &root, "1").await;
    client
        .push(
            &base,
            &registry.reference("base/runtime:1"),
            &Context::new(),
        )
        .await
        .expect("push base");

    let builder = NativeBuilder::new(dir.path().join("images")).registry_client(client.clone());
    let layers = format!(
        r#"base = "{}/base/runtime:1", layers = [{{ from = "src", to = "/app" }}], env = {{ MODE = "prod" }}"#,
        registry.host()
    );
    let image = build(&builder, &app(&root, &layers), &root, "v1").await;
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.layers[0].digest, base.layers[0].digest);
    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    assert!(
        !layout.has_blob(&base.layers[0].digest),
        "base layers are never downloaded"
    );

    let config: serde_json::Value =
        serde_json::from_slice(&layout.read_blob(&image.config.digest).expect("config"))
            .expect("json");
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["PATH=/bin", "MODE=prod"])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["sh"]),
        "the base's cmd is kept"
    );
    assert_eq!(
        config["rootfs"]["diff_ids"]
            .as_array()
            .expect("diff_ids")
            .len(),
        2
    );

    let report = client
        .push(&image, &registry.reference("acme/api:v1"), &Context::new())
        .await
        .expect("push");
    // The base layer mounted; the app's layer and config uploaded (the SBOM and
    // provenance are attachments, listed apart).
    assert_eq!(
        (report.blobs_mounted, report.blobs_uploaded),
        (1, 2),
        "{report:?}"
    );
    assert_eq!(report.attachments.len(), 2, "{report:?}");
    let copy = dir.path().join("copy");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/acme/api:v1", registry.host()),
            &format!("oci:{}:v1", path_str(&copy)),
        ],
    );
    let copied = OciLayout::open(&copy)
        .expect("copied")
        .local_image("api", "v1")
        .expect("image");
    assert_eq!(copied.digest, image.digest);

    // Another registry has no base layers to mount: they are copied from the
    // base's registry instead.
    let other = TestRegistry::start();
    let report = client
        .push(&image, &other.reference("acme/api:v1"), &Context::new())
        .await
        .expect("the base layer is copied across");
    // The base layer, the app's layer and config (the attachments apart).
    assert_eq!(
        (report.blobs_mounted, report.blobs_uploaded),
        (0, 3),
        "{report:?}"
    );
    let base_layer = &image.layers[0];
    let copied = client
        .fetch_blob(
            &other.reference("acme/api:v1"),
            &base_layer.digest,
            &Context::new(),
        )
        .await
        .expect("the base layer is on the other registry");
    assert_eq!(copied.len() as u64, base_layer.size);
}

#[tokio::test]
async fn a_base_image_on_a_token_registry_has_its_layers_mounted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    sample_repo(&root);
    let base_readable = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readable = base_readable.clone();
    let tokens =
        TokenService::start_with_rule("ci", "build-pass-7730", Refusal::Narrow, move |repo| {
            match repo {
                "base/runtime" if readable.load(std::sync::atomic::Ordering::SeqCst) => {
                    vec!["pull", "push"]
                }
                "acme/api" | "acme/worker" => vec!["pull", "push"],
                _ => Vec::new(),
            }
        })
        .expect("the token service starts");
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let client = RegistryClient::builder()
        .credentials(
            registry.host(),
            shipflow_oci::Credentials::basic("ci", "build-pass-7730"),
        )
        .without_docker_config()
        .build()
        .expect("client");

    let base_builder = NativeBuilder::new(dir.path().join("base-images"));
    let base_app = app(&root, r#"layers = [{ from = "deps", to = "/opt/deps" }]"#);
    let base = build(&base_builder, &base_app, &root, "1").await;
    client
        .push(
            &base,
            &registry.reference("base/runtime:1"),
            &Context::new(),
        )
        .await
        .expect("push base");

    let builder = NativeBuilder::new(dir.path().join("images")).registry_client(client.clone());
    let layers = format!(
        r#"base = "{}/base/runtime:1", layers = [{{ from = "src", to = "/app" }}]"#,
        registry.host()
    );
    let image = build(&builder, &app(&root, &layers), &root, "v1").await;
    // The base layer is not in the local layout: only a mount can put it in acme/api.
    let report = client
        .push(&image, &registry.reference("acme/api:v1"), &Context::new())
        .await
        .unwrap_or_else(|e| panic!("push: {e}\nregistry log:\n{}", registry.log()));
    // The base layer mounted; the app's layer and config uploaded (the SBOM and
    // provenance are attachments, listed apart).
    assert_eq!(
        (report.blobs_mounted, report.blobs_uploaded),
        (1, 2),
        "{report:?}"
    );
    assert_eq!(report.attachments.len(), 2, "{report:?}");
    let layer = client
        .fetch_blob(
            &registry.reference("acme/api:v1"),
            &base.layers[0].digest,
            &Context::new(),
        )
        .await
        .expect("the base layer reads back from acme/api");
    assert_eq!(layer.len() as u64, base.layers[0].size);

    // Without pull on the base, its layers can be neither mounted nor uploaded
    // (they were never downloaded): the error says so, not "401 at blob mount".
    base_readable.store(false, std::sync::atomic::Ordering::SeqCst);
    let err = client
        .push(
            &image,
            &registry.reference("acme/worker:v1"),
            &Context::new(),
        )
        .await
        .expect_err("the base layer cannot reach acme/worker");
    let err = err
        .downcast::<shipflow_oci::OciError>()
        .expect("an OciError");
    assert!(
        matches!(*err, shipflow_oci::OciError::BaseLayerMissing { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("the credentials may not pull it"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_layer_lands_at_its_destination_and_cancellation_stops_the_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    sample_repo(&root);
    let builder = NativeBuilder::new(dir.path().join("images"));
    let layers = r#"layers = [{ from = "src/main.sh", to = "/usr/local/bin/serve" }, { from = "deps/lib/a.txt", to = "/etc/" }]"#;
    let image = build(&builder, &app(&root, layers), &root, "v1").await;
    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    let paths = |i| -> Vec<(String, u32)> {
        entries(&layout, &image, i)
            .into_iter()
            .map(|e| (e.0, e.2))
            .collect()
    };
    assert_eq!(
        paths(0),
        [
            ("usr/".to_owned(), 0o755),
            ("usr/local/".to_owned(), 0o755),
            ("usr/local/bin/".to_owned(), 0o755),
            ("usr/local/bin/serve".to_owned(), 0o755),
        ]
    );
    assert_eq!(
        paths(1),
        [("etc/".to_owned(), 0o755), ("etc/a.txt".to_owned(), 0o644)]
    );

    let cancelled = Context::new();
    cancelled.cancellation().cancel();
    let err = builder
        .build(&app(&root, TWO_LAYERS), &request(&root, "v2"), &cancelled)
        .await
        .expect_err("cancelled");
    let err = err.downcast::<BuildError>().expect("a BuildError");
    assert!(matches!(*err, BuildError::Cancelled { .. }), "{err}");
    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    assert_eq!(layout.resolve("v2").expect("index"), None, "nothing tagged");
}

/// Builds and returns the image with the builder's layer messages.
async fn build_saying(
    builder: &NativeBuilder,
    app: &App,
    root: &Path,
    tag: &str,
) -> (LocalImage, Vec<String>) {
    let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = said.clone();
    let ctx = Context::new().with_events(shipflow_core::EventSink::new(move |event| {
        if let shipflow_core::EventKind::Message { text } = &event.kind {
            sink.lock().expect("messages").push(text.clone());
        }
    }));
    let image = builder
        .build(app, &request(root, tag), &ctx)
        .await
        .expect("build");
    let said = said.lock().expect("messages").clone();
    (image, said)
}

#[tokio::test]
async fn unchanged_layers_are_reused_and_any_change_rebuilds_only_its_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    sample_repo(&root);
    let builder = NativeBuilder::new(dir.path().join("images"));
    let reused = |said: &[String]| -> Vec<bool> {
        said.iter()
            .map(|m| m.ends_with("unchanged: reused)"))
            .collect()
    };

    let (first, said) = build_saying(&builder, &app(&root, TWO_LAYERS), &root, "v1").await;
    assert_eq!(reused(&said), [false, false], "{said:?}");
    let (second, said) = build_saying(&builder, &app(&root, TWO_LAYERS), &root, "v2").await;
    assert_eq!(reused(&said), [true, true], "{said:?}");
    assert_eq!(first.layers, second.layers);

    // Same size, same content length: the change time still tells.
    write(&root.join("src/static/index.html"), "<h1>ho</h1>\n");
    let (third, said) = build_saying(&builder, &app(&root, TWO_LAYERS), &root, "v3").await;
    assert_eq!(reused(&said), [true, false], "{said:?}");
    assert_ne!(third.layers[1], first.layers[1]);

    // A touch without a content change rebuilds the layer, to the same digest.
    run("touch", &[path_str(&root.join("deps/lib/a.txt"))]);
    let (fourth, said) = build_saying(&builder, &app(&root, TWO_LAYERS), &root, "v4").await;
    assert_eq!(reused(&said), [false, true], "{said:?}");
    assert_eq!(fourth.layers, third.layers);

    // A cache entry whose blob is gone is not trusted.
    let layout = OciLayout::open(builder.layout_path("api")).expect("layout");
    fs::remove_file(layout.blob_path(&fourth.layers[1].digest)).expect("remove blob");
    let (fifth, said) = build_saying(&builder, &app(&root, TWO_LAYERS), &root, "v5").await;
    assert_eq!(reused(&said), [true, false], "{said:?}");
    assert!(layout.has_blob(&fifth.layers[1].digest));
}

#[tokio::test]
async fn a_source_date_epoch_that_is_not_a_number_fails_the_build() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repo");
    fs::create_dir_all(root.join("dist")).expect("dist");
    fs::write(root.join("dist/app"), "binary").expect("file");
    let app = app(&root, r#"layers = [{ from = "dist", to = "/srv" }]"#);
    let builder =
        NativeBuilder::new(dir.path().join("images")).source_date_epoch_value("yesterday");
    let err = build_err(&builder, &app, &root).await;
    assert!(
        matches!(&err, BuildError::SourceDateEpoch { value, .. } if value == "yesterday"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("SOURCE_DATE_EPOCH=\"yesterday\""),
        "{err}"
    );

    let builder =
        NativeBuilder::new(dir.path().join("images")).source_date_epoch_value("1700000000");
    let image = build(&builder, &app, &root, "v1").await;
    let layout = OciLayout::open(dir.path().join("images/api")).expect("layout");
    assert!(
        entries(&layout, &image, 0)
            .iter()
            .all(|e| e.5 == 1_700_000_000)
    );
}
