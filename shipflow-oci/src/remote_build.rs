//! What a remote build runs (the program in a Kubernetes build Job's pod): fetch a
//! build context from the registry, build one app of it natively, push the image
//! to its repository by digest.

use std::path::Path;

use shipflow_core::{
    BoxError, BuildRequest, Context, Digest, ImageBuilder, ImageRef, Registry, Workspace,
};

use crate::{NativeBuilder, RegistryClient, fetch_context};

/// Where a remote build's workspace lives: the context under `src`, the image
/// layouts under `images`.
const SOURCE_DIR: &str = "src";
const IMAGES_DIR: &str = "images";

/// Builds `app` from the build context `context` (fetched into `workdir`, which
/// must be empty or missing) and pushes the image to `target` (a repository,
/// pushed by digest). `request` carries the revision, fingerprint, labels and tag
/// the pipeline gave the build; its `root` is replaced by the context's directory.
/// Returns the image's digest.
pub async fn build_from_context(
    client: &RegistryClient,
    context: &ImageRef,
    app: &str,
    target: &ImageRef,
    request: &BuildRequest,
    workdir: &Path,
    ctx: &Context,
) -> Result<Digest, BoxError> {
    let source = workdir.join(SOURCE_DIR);
    let fetched = fetch_context(client, context, &source, ctx).await?;
    tracing::info!(%context, chunks = fetched.chunks, bytes = fetched.bytes, "build context fetched");
    let workspace = Workspace::load(source.join(shipflow_core::CONFIG_FILE)).map_err(|e| {
        format!(
            "app {app}: the build context's {}: {e}",
            shipflow_core::CONFIG_FILE
        )
    })?;
    let app = workspace.app(app).ok_or_else(|| {
        format!(
            "app {app}: not in the build context's {}",
            shipflow_core::CONFIG_FILE
        )
    })?;
    let mut request = request.clone();
    request.root = source;
    let image = NativeBuilder::new(workdir.join(IMAGES_DIR))
        .build(app, &request, ctx)
        .await?;
    let pushed = target.pinned(image.digest.clone());
    let report = client.push(&image, &pushed, ctx).await?;
    tracing::info!(target = %pushed, uploaded = report.blobs_uploaded, skipped = report.blobs_skipped, "image pushed");
    Ok(image.digest)
}
