//! What a native image says about itself: a CycloneDX SBOM ([`sbom`]) and an
//! in-toto SLSA provenance statement ([`provenance`]), each stored in the
//! layout as an OCI artifact whose `subject` is the image, and listed in the
//! layout's referrers index of the image (the referrers tag schema), from where
//! a push takes them to the registry.

mod lockfile;
mod provenance;
mod sbom;

use serde_json::{Value, json};
use shipflow_core::{App, BuildRequest, Digest};

use crate::layer::WrittenLayer;
use crate::layout::{OCI_MANIFEST_MEDIA_TYPE, OciLayout, Referrer};
use crate::{NativeBuild, Platform};

/// The artifact type (and layer media type) of the SBOM.
pub const SBOM_ARTIFACT_TYPE: &str = "application/vnd.cyclonedx+json";
/// The artifact type (and layer media type) of the provenance statement.
pub const PROVENANCE_ARTIFACT_TYPE: &str = "application/vnd.in-toto+json";
/// The predicate type of the provenance statement.
pub(crate) const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// The media type, digest and content of the empty config artifacts carry.
pub(crate) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub(crate) const EMPTY_JSON: &[u8] = b"{}";

/// A native image just built, as its attestations describe it.
pub(crate) struct BuiltImage<'a> {
    pub(crate) app: &'a App,
    pub(crate) spec: &'a NativeBuild,
    pub(crate) request: &'a BuildRequest,
    /// The image's name, `registry/repository`.
    pub(crate) name: String,
    /// The manifest or index digest.
    pub(crate) digest: &'a Digest,
    pub(crate) media_type: &'a str,
    pub(crate) size: u64,
    pub(crate) created: &'a str,
    pub(crate) source: Option<String>,
    pub(crate) compression_level: u32,
    pub(crate) source_date_epoch: u64,
    pub(crate) platforms: Vec<BuiltPlatform>,
}

/// One platform's manifest of a [`BuiltImage`].
pub(crate) struct BuiltPlatform {
    pub(crate) platform: Platform,
    pub(crate) manifest: Digest,
    /// The base image's `registry/repository`.
    pub(crate) base_name: Option<String>,
    /// The base as it was referred to: its index digest, else its manifest's.
    pub(crate) base_digest: Option<Digest>,
    /// The base's manifest for this platform.
    pub(crate) base_platform_digest: Option<Digest>,
    /// The base's layer descriptors.
    pub(crate) base_layers: Vec<Value>,
    /// The layers the build wrote, base-most first.
    pub(crate) layers: Vec<WrittenLayer>,
}

/// Writes the SBOM and provenance the build section asks for into `layout`, as
/// referrers of the image.
pub(crate) fn attach_to(layout: &OciLayout, image: &BuiltImage<'_>) -> Result<(), String> {
    if image.spec.sbom {
        let bom = sbom::cyclonedx(image)?;
        attach(layout, image, SBOM_ARTIFACT_TYPE, &bom, json!({}))?;
    }
    if image.spec.provenance {
        let statement = provenance::statement(image);
        attach(
            layout,
            image,
            PROVENANCE_ARTIFACT_TYPE,
            &statement,
            json!({"in-toto.io/predicate-type": SLSA_PROVENANCE_V1}),
        )?;
    }
    Ok(())
}

/// Stores `document` as an artifact whose subject is the image and records it as
/// one of the image's referrers.
fn attach(
    layout: &OciLayout,
    image: &BuiltImage<'_>,
    artifact_type: &str,
    document: &Value,
    layer_annotations: Value,
) -> Result<(), String> {
    let err = |e: crate::LayoutError| e.to_string();
    let bytes = serde_json::to_vec(document).map_err(|e| e.to_string())?;
    let payload = layout.write_blob(&bytes, artifact_type).map_err(err)?;
    let empty = layout
        .write_blob(EMPTY_JSON, EMPTY_MEDIA_TYPE)
        .map_err(err)?;
    let mut layer = json!({
        "mediaType": artifact_type,
        "digest": payload.digest.to_string(),
        "size": payload.size,
    });
    if layer_annotations.as_object().is_some_and(|a| !a.is_empty()) {
        layer["annotations"] = layer_annotations;
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "artifactType": artifact_type,
        "config": {
            "mediaType": EMPTY_MEDIA_TYPE,
            "digest": empty.digest.to_string(),
            "size": empty.size,
        },
        "layers": [layer],
        "subject": {
            "mediaType": image.media_type,
            "digest": image.digest.to_string(),
            "size": image.size,
        },
        "annotations": {"org.opencontainers.image.created": image.created},
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let stored = layout
        .write_blob(&manifest_bytes, OCI_MANIFEST_MEDIA_TYPE)
        .map_err(err)?;
    layout
        .add_referrer(
            image.digest,
            &Referrer {
                digest: stored.digest,
                media_type: OCI_MANIFEST_MEDIA_TYPE.to_owned(),
                size: stored.size,
                artifact_type: artifact_type.to_owned(),
            },
        )
        .map_err(err)
}

/// `sha256:<hex>` → `<hex>` (and the algorithm).
pub(crate) fn split_digest(digest: &Digest) -> (&str, &str) {
    (digest.algorithm(), digest.encoded())
}
