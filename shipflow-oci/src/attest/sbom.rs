//! The SBOM of a native image, in CycloneDX 1.5 JSON: the image, each
//! platform's manifest, each layer with every regular file it holds (path,
//! size, sha256), and the packages of the app's lock file. A base image's
//! layers are named by digest; their files are the base's own SBOM's to list.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::lockfile::{self, Package};
use super::{BuiltImage, split_digest};

/// The CycloneDX document for `image`.
pub(super) fn cyclonedx(image: &BuiltImage<'_>) -> Result<Value, String> {
    let (_, image_hex) = split_digest(image.digest);
    let mut components = Vec::new();
    let mut dependencies = Vec::new();
    let mut layers_listed = BTreeSet::new();
    let mut platform_refs = Vec::new();
    for platform in &image.platforms {
        let platform_ref = format!("manifest:{}", platform.manifest);
        let mut layer_refs = Vec::new();
        for base_layer in &platform.base_layers {
            let Some(digest) = base_layer.get("digest").and_then(Value::as_str) else {
                continue;
            };
            let layer_ref = format!("layer:{digest}");
            layer_refs.push(layer_ref.clone());
            if layers_listed.insert(layer_ref.clone()) {
                let mut layer = json!({
                    "type": "file",
                    "bom-ref": layer_ref,
                    "name": digest,
                    "description": format!(
                        "a layer of the base image {}; its files are listed by the base's own SBOM",
                        platform.base_name.as_deref().unwrap_or("")
                    ),
                });
                if let Some(hex) = digest.strip_prefix("sha256:") {
                    layer["hashes"] = json!([{"alg": "SHA-256", "content": hex}]);
                }
                if let Some(media_type) = base_layer.get("mediaType").and_then(Value::as_str) {
                    layer["mime-type"] = Value::from(media_type);
                }
                components.push(layer);
            }
        }
        for layer in &platform.layers {
            let layer_ref = format!("layer:{}", layer.blob.digest);
            layer_refs.push(layer_ref.clone());
            if !layers_listed.insert(layer_ref.clone()) {
                continue;
            }
            let files = layer.files.as_ref().ok_or_else(|| {
                format!("the files of layer {} were not listed", layer.blob.digest)
            })?;
            let (_, layer_hex) = split_digest(&layer.blob.digest);
            components.push(json!({
                "type": "file",
                "bom-ref": layer_ref,
                "name": layer.blob.digest.to_string(),
                "mime-type": layer.blob.media_type,
                "hashes": [{"alg": "SHA-256", "content": layer_hex}],
                "properties": [
                    {"name": "shipflow:layer:diff_id", "value": layer.diff_id.to_string()},
                    {"name": "shipflow:layer:size", "value": layer.blob.size.to_string()},
                ],
                "components": files.iter().map(|file| json!({
                    "type": "file",
                    "bom-ref": format!("file:{}:/{}", layer.blob.digest, file.path),
                    "name": format!("/{}", file.path),
                    "hashes": [{"alg": "SHA-256", "content": file.sha256}],
                    "properties": [{"name": "shipflow:file:size", "value": file.size.to_string()}],
                })).collect::<Vec<_>>(),
            }));
        }
        components.push(json!({
            "type": "container",
            "bom-ref": platform_ref,
            "name": image.name,
            "version": platform.manifest.to_string(),
            "hashes": [{"alg": "SHA-256", "content": split_digest(&platform.manifest).1}],
            "properties": [{"name": "shipflow:platform", "value": platform.platform.to_string()}],
        }));
        dependencies.push(json!({"ref": platform_ref, "dependsOn": dedup(layer_refs)}));
        platform_refs.push(platform_ref);
    }

    let (lock_files, packages) = lockfile::packages(&image.request.root, &image.app.path)?;
    let package_refs: Vec<String> = packages.iter().map(Package::purl).collect();
    components.extend(packages.iter().map(|p| {
        let mut component = json!({
            "type": "library",
            "bom-ref": p.purl(),
            "name": p.name,
            "version": p.version,
            "purl": p.purl(),
        });
        if let Some((alg, hex)) = &p.hash {
            component["hashes"] = json!([{"alg": alg, "content": hex}]);
        }
        component
    }));

    let image_ref = "image".to_owned();
    let mut image_deps = platform_refs;
    image_deps.extend(package_refs);
    dependencies.insert(0, json!({"ref": image_ref, "dependsOn": dedup(image_deps)}));
    let mut properties = vec![json!({"name": "shipflow:app", "value": image.app.name})];
    properties.extend(
        lock_files
            .iter()
            .map(|f| json!({"name": "shipflow:lockfile", "value": f})),
    );
    Ok(json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial_number(image_hex),
        "version": 1,
        "metadata": {
            "timestamp": image.created,
            "tools": {"components": [{
                "type": "application",
                "name": "shipflow-oci",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": image.name,
                "version": image.digest.to_string(),
                "hashes": [{"alg": "SHA-256", "content": image_hex}],
                "properties": properties,
            },
        },
        "components": components,
        "dependencies": dependencies,
    }))
}

fn dedup(refs: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    refs.into_iter()
        .filter(|r| seen.insert(r.clone()))
        .collect()
}

/// A serial number of the form `urn:uuid:…` that depends only on the image: the
/// same image gets the same SBOM bytes (a UUID of version 8, from a sha256).
fn serial_number(image_hex: &str) -> String {
    let mut bytes: [u8; 16] = [0; 16];
    bytes.copy_from_slice(&Sha256::digest(format!("shipflow sbom {image_hex}"))[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
