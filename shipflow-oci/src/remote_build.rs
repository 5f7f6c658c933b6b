//! What a remote build runs (the program in a Kubernetes build Job's pod): fetch a
//! build context from the registry, build one app of it natively, push the image
//! to its repository by digest.

use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use shipflow_core::{
    Blob, BoxError, BuildRequest, Context, Digest, ImageBuilder, ImageRef, Registry, Workspace,
};

use crate::{NativeBuild, NativeBuilder, OciError, RegistryClient, Step, fetch_context};

/// Where a remote build's workspace lives: the context under `src`, the image
/// layouts under `images`.
const SOURCE_DIR: &str = "src";
const IMAGES_DIR: &str = "images";

/// The app a remote build builds, as the pipeline resolved it: its name, its
/// directory and its native build settings (with its environment's overrides),
/// so the builder needs neither the pipeline's registry nor its environment, nor
/// the rest of the workspace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct RemoteApp {
    /// The app's name.
    pub name: String,
    /// Its directory, relative to the repository root.
    pub path: String,
    /// Its native build settings.
    pub build: NativeBuild,
}

impl RemoteApp {
    /// `app` as resolved by its workspace.
    pub fn new(name: impl Into<String>, path: impl Into<String>, build: NativeBuild) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            build,
        }
    }

    /// A one-app workspace of this app imaged as `target`, rooted at `root`.
    fn workspace(&self, target: &ImageRef, root: &Path) -> Result<Workspace, BoxError> {
        let mut build = toml::Table::try_from(&self.build)?;
        build.insert("type".into(), crate::NATIVE_BUILD_TYPE.into());
        let mut app = toml::Table::new();
        app.insert("path".into(), self.path.clone().into());
        app.insert("image".into(), target.to_string().into());
        app.insert("build".into(), build.into());
        let mut apps = toml::Table::new();
        apps.insert(self.name.clone(), app.into());
        let mut doc = toml::Table::new();
        doc.insert("apps".into(), apps.into());
        let text = toml::to_string(&doc)?;
        Ok(Workspace::loader()
            .schema(crate::schema())
            .from_toml(&text, root)?)
    }
}

/// Builds `app` from the build context `context` (fetched into `workdir`, which
/// must be empty or missing) and pushes the image to `target` (a repository,
/// pushed by digest). `request` carries the revision, fingerprint, labels and tag
/// the pipeline gave the build; its `root` is replaced by the context's directory.
/// Returns the image's digest.
pub async fn build_from_context(
    client: &RegistryClient,
    context: &ImageRef,
    app: &RemoteApp,
    target: &ImageRef,
    request: &BuildRequest,
    workdir: &Path,
    ctx: &Context,
) -> Result<Digest, BoxError> {
    let source = workdir.join(SOURCE_DIR);
    let fetched = fetch_context(client, context, &source, ctx).await?;
    tracing::info!(%context, chunks = fetched.chunks, bytes = fetched.bytes, "build context fetched");
    let workspace = app
        .workspace(target, &source)
        .map_err(|e| format!("app {}: its build settings: {e}", app.name))?;
    let resolved = workspace
        .app(&app.name)
        .ok_or_else(|| format!("app {}: not in its own workspace", app.name))?;
    let mut request = request.clone();
    request.root = source;
    let image = NativeBuilder::new(workdir.join(IMAGES_DIR))
        .build(resolved, &request, ctx)
        .await?;
    let pushed = target.pinned(image.digest.clone());
    let report = client.push(&image, &pushed, ctx).await?;
    tracing::info!(target = %pushed, uploaded = report.blobs_uploaded, skipped = report.blobs_skipped, "image pushed");
    Ok(image.digest)
}

/// Describes the image `reference` (pinned by digest) as it is in its registry, for
/// `app`: manifest (or image index and its platforms' manifests), config and
/// layers, located [`ImageLocation::Registry`](shipflow_core::ImageLocation::Registry).
/// Every manifest read is checked against its digest.
pub async fn remote_image(
    client: &RegistryClient,
    app: &str,
    reference: &ImageRef,
    ctx: &Context,
) -> Result<shipflow_core::LocalImage, OciError> {
    let (bytes, media_type, digest) = client.fetch_manifest(reference, ctx).await?;
    let invalid = |what: &Digest, reason: String| OciError::Protocol {
        reference: reference.to_string(),
        step: Step::ManifestGet,
        reason: format!("app {app}: manifest {what}: {reason}"),
    };
    let location = shipflow_core::ImageLocation::Registry {
        reference: reference.pinned(digest.clone()).to_string(),
    };
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(&digest, e.to_string()))?;
    if value.get("manifests").is_none() {
        let single = single(&bytes, &digest).map_err(|r| invalid(&digest, r))?;
        return Ok(shipflow_core::LocalImage {
            app: app.to_owned(),
            digest,
            media_type,
            manifest_size: bytes.len() as u64,
            config: single.config,
            layers: single.layers,
            location,
            platforms: Vec::new(),
        });
    }
    let index = ImageIndex::from_reader(&bytes[..]).map_err(|e| invalid(&digest, e.to_string()))?;
    let mut platforms = Vec::new();
    for entry in index.manifests().iter().take(64) {
        let child: Digest = entry
            .digest()
            .to_string()
            .parse()
            .map_err(|e: shipflow_core::ReferenceError| invalid(&digest, e.to_string()))?;
        let Some(platform) = entry.platform() else {
            continue;
        };
        let platform = format!("{}/{}", platform.os(), platform.architecture());
        let (child_bytes, child_type, _) = client
            .fetch_manifest(&reference.pinned(child.clone()), ctx)
            .await?;
        let single = single(&child_bytes, &child).map_err(|r| invalid(&child, r))?;
        platforms.push(shipflow_core::PlatformImage {
            platform,
            digest: child,
            media_type: child_type,
            manifest_size: child_bytes.len() as u64,
            config: single.config,
            layers: single.layers,
        });
    }
    let first = platforms
        .first()
        .cloned()
        .ok_or_else(|| invalid(&digest, "it lists no platform's manifest".into()))?;
    Ok(shipflow_core::LocalImage {
        app: app.to_owned(),
        digest,
        media_type,
        manifest_size: bytes.len() as u64,
        config: first.config,
        layers: first.layers,
        location,
        platforms,
    })
}

/// A single manifest's config and layers.
struct Single {
    config: Blob,
    layers: Vec<Blob>,
}

fn single(bytes: &[u8], digest: &Digest) -> Result<Single, String> {
    let manifest = ImageManifest::from_reader(bytes).map_err(|e| format!("{digest}: {e}"))?;
    let blob = |d: &Descriptor| -> Result<Blob, String> {
        Ok(Blob {
            media_type: d.media_type().to_string(),
            digest: d
                .digest()
                .to_string()
                .parse()
                .map_err(|e: shipflow_core::ReferenceError| e.to_string())?,
            size: d.size(),
        })
    };
    Ok(Single {
        config: blob(manifest.config())?,
        layers: manifest
            .layers()
            .iter()
            .map(blob)
            .collect::<Result<_, _>>()?,
    })
}
