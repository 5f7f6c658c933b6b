//! The OCI layout store, cross-checked with skopeo.

mod common;

use common::{path_str, run, temp_layout, three_layers, write_image};
use shipflow_core::{Digest, ImageLocation};
use shipflow_oci::OciLayout;

#[test]
fn a_written_image_reads_back_as_a_local_image() {
    let (_dir, layout) = temp_layout();
    let layers = three_layers("l");
    let image = write_image(&layout, "api", "v1", &layers);
    assert_eq!(image.app, "api");
    assert_eq!(image.layers.len(), 3);
    for (blob, bytes) in image.layers.iter().zip(&layers) {
        assert_eq!(blob.digest, Digest::sha256(bytes));
        assert_eq!(blob.size, bytes.len() as u64);
        assert_eq!(
            std::fs::read(layout.blob_path(&blob.digest)).expect("blob"),
            *bytes
        );
    }
    assert_eq!(
        image.location,
        ImageLocation::OciLayout {
            path: layout.root().to_path_buf()
        }
    );
    let manifest = layout.read_blob(&image.digest).expect("manifest");
    assert_eq!(manifest.len() as u64, image.manifest_size);
    assert_eq!(image.media_type, shipflow_oci::OCI_MANIFEST_MEDIA_TYPE);

    let reopened = OciLayout::open(layout.root()).expect("open");
    assert_eq!(
        reopened.resolve("v1").expect("resolve"),
        Some(image.digest.clone())
    );
    assert_eq!(reopened.resolve("v2").expect("resolve"), None);
    assert!(reopened.local_image("api", "v2").is_err());
}

#[test]
fn put_manifest_moves_a_tag_and_keeps_others() {
    let (_dir, layout) = temp_layout();
    let v1 = write_image(&layout, "api", "v1", &three_layers("m1"));
    let v2 = write_image(&layout, "api", "v2", &three_layers("m2"));
    let moved = write_image(&layout, "api", "v1", &three_layers("m3"));
    assert_ne!(moved.digest, v1.digest);
    assert_eq!(layout.resolve("v1").expect("resolve"), Some(moved.digest));
    assert_eq!(layout.resolve("v2").expect("resolve"), Some(v2.digest));
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.root().join("index.json")).expect("index.json"),
    )
    .expect("json");
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(2),
        "{index}"
    );
    assert_eq!(index["schemaVersion"], 2);
}

#[test]
fn streamed_blobs_match_their_content() {
    let (_dir, layout) = temp_layout();
    let big = common::noise("stream", 3 * 1024 * 1024 + 7);
    let blob = layout
        .write_blob_from(std::io::Cursor::new(&big), common::LAYER_MEDIA_TYPE)
        .expect("stream blob");
    assert_eq!(blob.size, big.len() as u64);
    assert_eq!(blob.digest, Digest::sha256(&big));
}

#[test]
fn skopeo_reads_our_layout() {
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "web", "v3", &three_layers("s"));
    let out = run(
        "skopeo",
        &["inspect", &format!("oci:{}:v3", path_str(layout.root()))],
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("skopeo json");
    assert_eq!(json["Digest"], image.digest.to_string());
    assert_eq!(json["Layers"].as_array().map(Vec::len), Some(3));
    assert_eq!(json["Labels"]["app"], "web");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn the_local_store_copies_only_missing_blobs_and_skopeo_reads_it() {
    use shipflow_core::{Context, ImageRef, Registry};
    let (dir, build) = temp_layout();
    let store = shipflow_oci::LayoutRegistry::new(dir.path().join("store"));
    let target: ImageRef = "localhost/team/api:v1".parse().expect("ref");
    let ctx = Context::new();
    let mut layers = three_layers("store");
    let v1 = write_image(&build, "api", "v1", &layers);

    assert_eq!(
        block_on(store.resolve(&target, &ctx)).expect("resolve"),
        None
    );
    let dry = block_on(store.push(&v1, &target, &Context::new().with_dry_run(true))).expect("dry");
    assert_eq!(dry.blobs_uploaded, 4);
    assert!(!store.layout_dir(&target).exists(), "dry run wrote nothing");

    let first = block_on(store.push(&v1, &target, &ctx)).expect("push");
    assert_eq!((first.blobs_uploaded, first.blobs_skipped), (4, 0));
    assert!(first.manifest_written);
    assert_eq!(first.bytes_uploaded, v1.size() + v1.manifest_size);
    assert_eq!(
        block_on(store.resolve(&target, &ctx)).expect("resolve"),
        Some(v1.digest.clone())
    );

    let again = block_on(store.push(&v1, &target, &ctx)).expect("re-push");
    assert_eq!((again.blobs_uploaded, again.blobs_skipped), (0, 4));
    assert!(!again.manifest_written);

    layers[2] = common::noise("store-changed", 123_456);
    let v2 = write_image(&build, "api", "v2", &layers);
    let target_v2 = target.with_tag("v2").expect("tag");
    let second = block_on(store.push(&v2, &target_v2, &ctx)).expect("push v2");
    assert_eq!(second.blobs_uploaded, 2, "the changed layer and the config");
    assert_eq!(
        second.bytes_uploaded,
        v2.layers[2].size + v2.config.size + v2.manifest_size
    );

    let latest = target.with_tag("latest").expect("tag");
    block_on(store.tag(&v2.digest, &latest, &ctx)).expect("retag");
    let out = run(
        "skopeo",
        &[
            "inspect",
            &format!("oci:{}:latest", path_str(&store.layout_dir(&target))),
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&out).expect("skopeo json");
    assert_eq!(json["Digest"], v2.digest.to_string());
}

#[test]
fn read_blob_checks_sha512_and_refuses_algorithms_it_cannot_check() {
    use sha2::Digest as _;
    let (_dir, layout) = temp_layout();
    let content = b"a config named by sha512";
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let good: Digest = format!("sha512:{}", hex(&sha2::Sha512::digest(content)))
        .parse()
        .expect("sha512 digest");
    let bad: Digest = format!("sha512:{}", hex(&sha2::Sha512::digest(b"something else")))
        .parse()
        .expect("sha512 digest");
    let md5: Digest = "md5:0123456789abcdef0123456789abcdef"
        .parse()
        .expect("an algorithm the digest grammar allows");
    for digest in [&good, &bad, &md5] {
        let path = layout.blob_path(digest);
        std::fs::create_dir_all(path.parent().expect("blob dir")).expect("blob dir");
        std::fs::write(&path, content).expect("write blob");
    }
    assert_eq!(layout.read_blob(&good).expect("verified"), content);
    let err = layout.read_blob(&bad).expect_err("content does not match");
    assert!(
        matches!(err, shipflow_oci::LayoutError::Corrupt { .. }),
        "{err:?}"
    );
    let err = layout.read_blob(&md5).expect_err("cannot be checked");
    assert!(err.to_string().contains("not supported"), "{err}");
}
