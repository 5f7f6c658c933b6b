//! A base image on another registry than the push target: its layers are
//! streamed across (bounded memory, measured here), each registry getting its
//! own credentials only. One test in this binary, so that the peak memory it
//! reads is this test's.

mod common;

use std::io::Read as _;

use common::{TestRegistry, path_str, run};
use shipflow_core::{BuildRequest, Context, ImageBuilder, LocalImage, Registry, Workspace};
use shipflow_oci::{Credentials, NativeBuilder, OciLayout, RegistryClient, schema};

const BIG: u64 = 192 * 1024 * 1024;

/// A base image of one `BIG`-byte layer, written into a layout without holding
/// the layer in memory.
fn big_base(layout: &OciLayout) -> LocalImage {
    let layer = layout
        .write_blob_from(
            std::io::repeat(0x5a).take(BIG),
            "application/vnd.oci.image.layer.v1.tar",
        )
        .expect("layer");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest.to_string()]},
    });
    let config = layout
        .write_blob(
            &serde_json::to_vec(&config).expect("json"),
            "application/vnd.oci.image.config.v1+json",
        )
        .expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": config.media_type, "digest": config.digest.to_string(), "size": config.size},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest.to_string(), "size": layer.size}],
    });
    layout
        .put_manifest(&serde_json::to_vec(&manifest).expect("json"), "1")
        .expect("manifest");
    layout.local_image("base", "1").expect("base image")
}

/// This process's resident memory now and at its peak since the last reset, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/self/status"))
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_layers_on_another_registry_are_streamed_across_in_bounded_memory() {
    // Both registries want basic auth, each for its own user: credentials sent
    // to the wrong one would be refused.
    let base_registry = TestRegistry::start_with_basic_auth("base-reader", "base-pass-1");
    let target = TestRegistry::start_with_basic_auth("ci", "target-pass-2");
    let client = RegistryClient::builder()
        .credentials(
            base_registry.host(),
            Credentials::basic("base-reader", "base-pass-1"),
        )
        .credentials(target.host(), Credentials::basic("ci", "target-pass-2"))
        .without_docker_config()
        .build()
        .expect("client");
    let work = tempfile::tempdir().expect("work");
    let base = big_base(&OciLayout::create(work.path().join("base")).expect("layout"));
    client
        .push(
            &base,
            &base_registry.reference("library/base:1"),
            &Context::new(),
        )
        .await
        .expect("push the base");

    let root = work.path().join("repo");
    std::fs::create_dir_all(root.join("app")).expect("mkdir");
    std::fs::write(root.join("app/hello.txt"), "hello\n").expect("write");
    let toml = format!(
        "[workspace]\nregistry = \"{}/team\"\n[apps.api]\nbuild = {{ type = \"native\", base = \"{}/library/base:1\", layers = [{{ from = \"app\", to = \"/srv\" }}] }}\n",
        target.host(),
        base_registry.host()
    );
    let workspace = Workspace::loader()
        .schema(schema())
        .from_toml(&toml, &root)
        .expect("workspace");
    let request = BuildRequest {
        root: root.clone(),
        tag: "v1".into(),
        ..BuildRequest::default()
    };
    let image = NativeBuilder::new(work.path().join("images"))
        .registry_client(client.clone())
        .build(
            workspace.app("api").expect("api"),
            &request,
            &Context::new(),
        )
        .await
        .expect("build on the base");
    assert!(
        !OciLayout::open(work.path().join("images/api"))
            .expect("layout")
            .has_blob(&base.layers[0].digest),
        "the build did not download the base layer"
    );

    // Reset the peak (Linux: "5" to clear_refs), then push to the other registry.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let (before, _) = memory();
    let report = client
        .push(&image, &target.reference("team/api:v1"), &Context::new())
        .await
        .unwrap_or_else(|e| panic!("push: {e}\ntarget log:\n{}", target.log()));
    let (_, peak) = memory();
    let grew = peak.saturating_sub(before);
    println!(
        "copied a {} MiB base layer across registries: peak RSS grew by {:.1} MiB",
        BIG >> 20,
        grew as f64 / (1024.0 * 1024.0)
    );
    assert!(
        grew < 48 * 1024 * 1024,
        "the copy held {grew} bytes: the layer was not streamed"
    );
    // The base layer was read once from its registry, and uploaded once.
    let reads = common::access_log(&base_registry.log())
        .iter()
        .filter(|l| {
            l.starts_with(&format!(
                "GET /v2/library/base/blobs/{}",
                base.layers[0].digest
            ))
        })
        .count();
    assert_eq!(reads, 1);
    // The base layer, the app's layer and config (the SBOM and provenance are
    // attachments, counted in the bytes).
    assert_eq!(report.blobs_uploaded, 3, "{report:?}");
    assert_eq!(report.attachments.len(), 2, "{report:?}");
    assert!(report.bytes_uploaded > BIG, "{report:?}");

    // skopeo reads every blob of the image back from the target alone.
    let auth = work.path().join("auth.json");
    std::fs::write(
        &auth,
        serde_json::json!({"auths": {target.host(): {"auth": "Y2k6dGFyZ2V0LXBhc3MtMg=="}}})
            .to_string(),
    )
    .expect("auth.json");
    run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            "--src-authfile",
            path_str(&auth),
            &format!("docker://{}/team/api:v1", target.host()),
            &format!("dir:{}", path_str(&work.path().join("copy"))),
        ],
    );
    // `dir:` keeps each blob as it came, named by its hex digest.
    let copied_layer = work
        .path()
        .join("copy")
        .join(base.layers[0].digest.encoded());
    assert_eq!(
        std::fs::metadata(&copied_layer)
            .expect("the base layer came through")
            .len(),
        BIG
    );
}
