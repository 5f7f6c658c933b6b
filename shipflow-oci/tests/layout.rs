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
