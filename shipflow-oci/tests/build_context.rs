//! Build contexts as registry artifacts, against a real `docker-registry`: a
//! one-file change moves one chunk, skopeo reads the artifact, a fetch rebuilds the
//! tree byte for byte, a hostile context is refused, and a remote build pushes the
//! same image a local one makes.

mod common;

use std::fs;
use std::path::Path;

use common::{TestRegistry, run};
use shipflow_core::{BuildRequest, Context, ImageBuilder, ImageRef, Registry, Workspace};
use shipflow_oci::{
    CONTEXT_ARTIFACT_TYPE, ContextError, ContextPacker, NativeBuilder, RegistryClient, RemoteApp,
    build_from_context, fetch_context,
};

/// A repository of `files` small files in nested directories, and one file large
/// enough to span several of the layer writer's gzip members.
fn repository(root: &Path, files: usize) {
    let bin = root.join("apps/api/bin");
    fs::create_dir_all(&bin).expect("mkdir");
    fs::write(
        bin.join("server"),
        common::noise("server", 3 * 1024 * 1024 + 17),
    )
    .expect("write");
    for i in 0..files {
        let dir = root.join(format!("apps/api/src/m{:03}", i / 100));
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(
            dir.join(format!("f{i:05}.txt")),
            format!("file {i}\n").repeat(20),
        )
        .expect("write file");
    }
}

fn client() -> RegistryClient {
    RegistryClient::builder()
        .without_docker_config()
        .build()
        .expect("client")
}

/// Every file under `root`, relative, with its bytes, sorted.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                out.push((rel.display().to_string(), fs::read(&path).expect("read")));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_one_file_change_moves_one_chunk_and_the_fetch_gives_the_tree_back() {
    let registry = TestRegistry::start();
    let repo = tempfile::tempdir().expect("repo dir");
    repository(repo.path(), 3000);
    let store = tempfile::tempdir().expect("store dir");
    let packer = ContextPacker::new(store.path().join("contexts"));
    let cancel = Default::default();
    let ctx = Context::new();
    let target: ImageRef = format!("{}/acme/api-context", registry.host())
        .parse()
        .expect("ref");

    let first = packer
        .pack("api", repo.path(), &["apps/api"], &cancel)
        .expect("pack");
    assert_eq!(first.files, 3001);
    assert!(first.chunks > 4, "{} chunks", first.chunks);
    let cold = client()
        .push(&first.image, &target, &ctx)
        .await
        .expect("push");
    assert_eq!(cold.blobs_uploaded as usize, first.chunks + 1, "{cold:?}");

    // The same files pack to the same artifact.
    let again = packer
        .pack("api", repo.path(), &["apps/api"], &cancel)
        .expect("pack again");
    assert_eq!(again.image.digest, first.image.digest);

    fs::write(
        repo.path().join("apps/api/src/m017/f01717.txt"),
        "changed\n",
    )
    .expect("edit");
    let edited = packer
        .pack("api", repo.path(), &["apps/api"], &cancel)
        .expect("pack edited");
    assert_ne!(edited.image.digest, first.image.digest);
    let warm = client()
        .push(&edited.image, &target, &ctx)
        .await
        .expect("push edited");
    assert_eq!(warm.blobs_uploaded, 1, "{warm:?}");
    assert!(
        warm.bytes_uploaded < cold.bytes_uploaded / 4,
        "{} of {} bytes moved",
        warm.bytes_uploaded,
        cold.bytes_uploaded
    );

    // A reference client reads what was pushed as an artifact.
    let pinned = target.pinned(edited.image.digest.clone());
    let raw = run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{pinned}"),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).expect("manifest JSON");
    assert_eq!(manifest["artifactType"], CONTEXT_ARTIFACT_TYPE);
    assert_eq!(
        manifest["layers"].as_array().map(Vec::len),
        Some(edited.chunks)
    );

    let out = tempfile::tempdir().expect("out dir");
    let fetched = fetch_context(&client(), &pinned, out.path(), &ctx)
        .await
        .expect("fetch");
    assert_eq!(fetched.chunks, edited.chunks);
    assert_eq!(tree(out.path()), tree(repo.path()));
}

#[tokio::test]
async fn a_context_that_is_not_one_or_that_leaves_its_directory_is_refused() {
    let registry = TestRegistry::start();
    let ctx = Context::new();
    let store = tempfile::tempdir().expect("store dir");
    let layout = shipflow_oci::OciLayout::create(store.path()).expect("layout");

    // A plain image is not a build context.
    let image = common::write_image(&layout, "api", "v1", &common::three_layers("ctx"));
    let plain: ImageRef = format!("{}/acme/plain:v1", registry.host())
        .parse()
        .expect("ref");
    client().push(&image, &plain, &ctx).await.expect("push");
    let out = tempfile::tempdir().expect("out");
    let refused = fetch_context(&client(), &plain, out.path(), &ctx).await;
    assert!(
        matches!(&refused, Err(ContextError::Invalid { reason, .. }) if reason.contains("artifactType")),
        "{refused:?}"
    );

    // A context whose chunk writes through a link to outside.
    let evil = tempfile::tempdir().expect("evil");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    tar.append_link(&mut link, "escape", evil.path())
        .expect("link entry");
    let body = b"owned";
    let mut file = tar::Header::new_gnu();
    file.set_size(body.len() as u64);
    file.set_mode(0o644);
    tar.append_data(&mut file, "escape/pwned", &body[..])
        .expect("file entry");
    let gz = tar.into_inner().expect("tar").finish().expect("gzip");
    let chunk = layout
        .write_blob(&gz, "application/vnd.oci.image.layer.v1.tar+gzip")
        .expect("chunk");
    let empty = layout
        .write_blob(b"{}", "application/vnd.oci.empty.v1+json")
        .expect("empty");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": CONTEXT_ARTIFACT_TYPE,
        "config": {"mediaType": empty.media_type, "digest": empty.digest.to_string(), "size": empty.size},
        "layers": [{"mediaType": chunk.media_type, "digest": chunk.digest.to_string(), "size": chunk.size}],
    });
    let digest = layout
        .put_manifest(&serde_json::to_vec(&manifest).expect("json"), "evil")
        .expect("manifest");
    let artifact = layout
        .local_image_by_digest("api", &digest)
        .expect("artifact");
    let target: ImageRef = format!("{}/acme/evil-context", registry.host())
        .parse()
        .expect("ref");
    client()
        .push(&artifact, &target, &ctx)
        .await
        .expect("push evil");
    let refused = fetch_context(&client(), &target.pinned(digest), out.path(), &ctx).await;
    assert!(
        matches!(&refused, Err(ContextError::Invalid { reason, .. }) if reason.contains("outside")),
        "{refused:?}"
    );
    assert!(!evil.path().join("pwned").exists());
}

#[tokio::test]
async fn a_remote_build_from_a_context_pushes_the_image_a_local_build_makes() {
    let registry = TestRegistry::start();
    let repo = tempfile::tempdir().expect("repo");
    fs::create_dir_all(repo.path().join("apps/web/public")).expect("mkdir");
    fs::write(repo.path().join("apps/web/public/index.html"), "hello\n").expect("write");
    let config = format!(
        "[workspace]\nregistry = \"{}/acme\"\n\n[apps.web]\npath = \"apps/web\"\n\
         build = {{ type = \"native\", layers = [{{ from = \"apps/web/public\", to = \"/srv\" }}], \
         sbom = false, provenance = false }}\n",
        registry.host()
    );
    fs::write(repo.path().join("shipflow.toml"), &config).expect("config");
    let workspace = Workspace::load(repo.path().join("shipflow.toml")).expect("workspace");
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

    let store = tempfile::tempdir().expect("store");
    let packed = ContextPacker::new(store.path())
        .pack(
            "web",
            repo.path(),
            &["shipflow.toml", "apps/web"],
            &Default::default(),
        )
        .expect("pack");
    let context: ImageRef = format!("{}/acme/web-context", registry.host())
        .parse()
        .expect("ref");
    client()
        .push(&packed.image, &context, &ctx)
        .await
        .expect("push context");
    let work = tempfile::tempdir().expect("work");
    let remote = RemoteApp::new(
        "web",
        "apps/web",
        (*app.build_spec::<shipflow_oci::NativeBuild>().expect("spec")).clone(),
    );
    let digest = build_from_context(
        &client(),
        &context.pinned(packed.image.digest.clone()),
        &remote,
        &app.image,
        &request,
        work.path(),
        &ctx,
    )
    .await
    .expect("remote build");
    assert_eq!(digest, local.digest);
    let pinned = app.image.pinned(digest.clone());
    assert_eq!(
        client().resolve(&pinned, &ctx).await.expect("resolve"),
        Some(digest)
    );
}
