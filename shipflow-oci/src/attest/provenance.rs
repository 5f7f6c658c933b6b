//! The provenance of a native image: an in-toto v1 statement whose predicate
//! is SLSA provenance v1. It names the source repository and revision, the
//! app's input fingerprint, the builder, the base image by digest and the build
//! parameters, and holds no clock time (the same build gives the same bytes).

use serde_json::{Value, json};

use super::{BuiltImage, SLSA_PROVENANCE_V1, split_digest};

/// The build type this builder's provenance describes.
pub(crate) const BUILD_TYPE: &str =
    "https://github.com/shipflow/shipflow/blob/main/shipflow-oci/build-types/native/v1";
/// The builder's id.
pub(crate) const BUILDER_ID: &str = "https://github.com/shipflow/shipflow/tree/main/shipflow-oci";

/// The in-toto statement for `image`.
pub(super) fn statement(image: &BuiltImage<'_>) -> Value {
    let (algorithm, hex) = split_digest(image.digest);
    let revision = &image.request.revision.sha;
    let mut dependencies = Vec::new();
    if !revision.is_empty() || image.source.is_some() {
        let mut source = json!({"name": "source"});
        if let Some(url) = &image.source {
            source["uri"] = Value::from(if revision.is_empty() {
                format!("git+{url}")
            } else {
                format!("git+{url}@{revision}")
            });
        }
        if !revision.is_empty() {
            source["digest"] = json!({"gitCommit": revision});
        }
        dependencies.push(source);
    }
    let mut seen_bases = std::collections::BTreeSet::new();
    for platform in &image.platforms {
        let (Some(name), Some(digest)) = (&platform.base_name, &platform.base_platform_digest)
        else {
            continue;
        };
        if !seen_bases.insert(digest.clone()) {
            continue;
        }
        let (alg, hex) = split_digest(digest);
        let mut base = json!({
            "name": "base",
            "uri": format!("oci://{name}@{digest}"),
            "digest": {alg: hex},
            "annotations": {"platform": platform.platform.to_string()},
        });
        if let Some(index) = platform.base_digest.as_ref().filter(|d| *d != digest) {
            base["annotations"]["index"] = Value::from(index.to_string());
        }
        dependencies.push(base);
    }
    let mut external = json!({
        "app": image.app.name,
        "tag": image.request.tag,
        "build": image.spec,
    });
    if let Some(fingerprint) = &image.request.fingerprint {
        external["fingerprint"] = Value::from(fingerprint.0.as_str());
    }
    if !revision.is_empty() {
        external["revision"] = Value::from(revision.as_str());
    }
    if let Some(url) = &image.source {
        external["source"] = Value::from(url.as_str());
    }
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": image.name, "digest": {algorithm: hex}}],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "sourceDateEpoch": image.source_date_epoch,
                    "gzipLevel": image.compression_level,
                    "platforms": image.platforms.iter().map(|p| json!({
                        "platform": p.platform.to_string(),
                        "manifest": p.manifest.to_string(),
                    })).collect::<Vec<_>>(),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": {"shipflow-oci": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {"invocationId": format!("{}@{}", image.app.name, image.digest)},
            },
        },
    })
}
