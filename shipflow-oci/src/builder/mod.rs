//! [`NativeBuilder`]: daemonless, reproducible images for apps built
//! `type = "native"`: a base image (or `scratch`) plus layers made from directories,
//! written into an [`OciLayout`].

mod base;
mod config;
mod error;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::{Value, json};
use shipflow_core::{App, BoxError, BuildRequest, Context, Digest, ImageBuilder, LocalImage};

use self::base::Base;
pub use self::error::BuildError;
use crate::attest::{self, BuiltImage, BuiltPlatform};
use crate::layer::{self, Compression, WrittenLayer};
use crate::layer_cache::LayerCache;
use crate::layout::{OCI_INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, OciLayout};
use crate::spec::{NATIVE_BUILD_TYPE, NativeBuild};
use crate::{Platform, RegistryClient};

const DEFAULT_LEVEL: u32 = NativeBuilder::DEFAULT_LEVEL;
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// The annotation naming the base image, read back at push time to mount its layers.
pub(crate) const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Builds `type = "native"` apps into reproducible OCI images, without a daemon.
///
/// Each app's image goes into the layout `<images>/<app>`, tagged with the request's
/// tag. Each layer's `from` (relative to the request's root) is a directory, whose
/// own `.dockerignore` applies, or a single file. Layers are tars with sorted entries, mtimes set to `SOURCE_DATE_EPOCH`
/// (default 0), owners 0, modes normalised to 0644/0755, no extended attributes,
/// gzip level 5 in fixed 1 MiB members compressed on all cores: the same inputs give
/// the same digests on any machine. A base image other than `scratch` is read from
/// its registry (manifest and config only); its layers stay there, and a push
/// mounts them from the base's repository, or copies them from the base's registry.
///
/// With `platforms`, the image is an OCI image index with one manifest per
/// platform: each on that platform's manifest of the base (an index), with the
/// layers whose `from` names the platform (`${TARGET_TRIPLE}`, `${ARCH}`, …) built
/// per platform and the others built once and shared. Unless turned off
/// (`sbom = false`, `provenance = false`), the image gets a CycloneDX SBOM and an
/// in-toto SLSA provenance statement, stored in the layout as its OCI referrers
/// and pushed with it.
///
/// ```no_run
/// use shipflow_core::{BuildRequest, Context, ImageBuilder, Workspace};
/// use shipflow_oci::NativeBuilder;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let workspace = Workspace::load("shipflow.toml")?;
/// let app = workspace.app("api").expect("app api");
/// let builder = NativeBuilder::new("target/images").source_date_epoch(1_700_000_000);
/// let request = BuildRequest { root: ".".into(), tag: "v1".into(), ..BuildRequest::default() };
/// let image = builder.build(app, &request, &Context::new()).await?;
/// println!("{} built as {}", image.app, image.digest);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NativeBuilder {
    images: PathBuf,
    registry: Option<RegistryClient>,
    /// Seconds, or the `SOURCE_DATE_EPOCH` value that is not a number.
    source_date_epoch: Result<u64, String>,
    source: Option<String>,
    compression: Compression,
}

impl NativeBuilder {
    /// The default gzip level of layers: 5, measured on a 200 MB tree at 0.4 of
    /// `tar | gzip -6`'s time for a layer 4 % larger (level 6 costs 2.6 × level 5's
    /// time for that last 4 %; see `benches/build.rs`).
    pub const DEFAULT_LEVEL: u32 = 5;

    /// A builder writing images under `images`, with `SOURCE_DATE_EPOCH` from the
    /// environment (0 when unset or empty; a value that is not a number fails
    /// every build with [`BuildError::SourceDateEpoch`]).
    pub fn new(images: impl Into<PathBuf>) -> Self {
        let builder = Self {
            images: images.into(),
            registry: None,
            source_date_epoch: Ok(0),
            source: None,
            compression: Compression {
                level: DEFAULT_LEVEL,
                threads: std::thread::available_parallelism().map_or(1, usize::from),
            },
        };
        match std::env::var_os("SOURCE_DATE_EPOCH") {
            Some(value) => builder.source_date_epoch_value(&value.to_string_lossy()),
            None => builder,
        }
    }

    /// The timestamp (seconds since the epoch) of every file and of the image.
    pub fn source_date_epoch(mut self, seconds: u64) -> Self {
        self.source_date_epoch = Ok(seconds);
        self
    }

    /// The timestamp as `SOURCE_DATE_EPOCH` gives it: a number of seconds (empty
    /// means 0, as unset). Anything else fails each build with
    /// [`BuildError::SourceDateEpoch`], never a silent 0.
    pub fn source_date_epoch_value(mut self, value: &str) -> Self {
        let value = value.trim();
        self.source_date_epoch = if value.is_empty() {
            Ok(0)
        } else {
            value.parse().map_err(|_| value.to_owned())
        };
        self
    }

    /// The URL of the source repository, for the `org.opencontainers.image.source`
    /// annotation (also taken from a request label of that name).
    pub fn source_url(mut self, url: impl Into<String>) -> Self {
        self.source = Some(url.into());
        self
    }

    /// The client base images are read with; default an anonymous [`RegistryClient`].
    pub fn registry_client(mut self, client: RegistryClient) -> Self {
        self.registry = Some(client);
        self
    }

    /// How many threads compress a layer; default the number of cores. The output
    /// does not depend on it.
    pub fn compression_threads(mut self, threads: usize) -> Self {
        self.compression.threads = threads.max(1);
        self
    }

    /// The gzip level of layers, 1 (fastest) to 9 (smallest); default
    /// [`NativeBuilder::DEFAULT_LEVEL`]. Part of the image's identity: another
    /// level gives other digests.
    pub fn compression_level(mut self, level: u32) -> Self {
        self.compression.level = level.clamp(1, 9);
        self
    }

    /// The layout an app's images are written to.
    pub fn layout_path(&self, app: &str) -> PathBuf {
        self.images.join(app)
    }

    async fn build_native(
        &self,
        app: &App,
        spec: &NativeBuild,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BuildError> {
        let name = app.name.as_str();
        let epoch =
            self.source_date_epoch
                .clone()
                .map_err(|value| BuildError::SourceDateEpoch {
                    app: name.into(),
                    value,
                })?;
        let client = match &self.registry {
            Some(client) => client.clone(),
            None => RegistryClient::builder()
                .build()
                .map_err(|source| BuildError::Base {
                    app: name.into(),
                    base: spec.base.clone(),
                    source: Box::new(source),
                })?,
        };
        let bases = base::read(&client, name, &spec.base, &spec.platforms, ctx).await?;
        let layout = OciLayout::create(self.layout_path(name))
            .map_err(|source| BuildError::layout(name, source))?;
        // What each manifest is built for: the platforms asked for (an index), or
        // the base's platform, or this machine's (one manifest).
        let index = !spec.platforms.is_empty();
        let targets: Vec<(Platform, Option<&Base>)> = match (&bases, index) {
            (Some(bases), true) => spec
                .platforms
                .iter()
                .cloned()
                .zip(bases.iter().map(Some))
                .collect(),
            (None, true) => spec.platforms.iter().map(|p| (p.clone(), None)).collect(),
            (Some(bases), false) => bases
                .iter()
                .take(1)
                .map(|b| (b.platform().unwrap_or_else(Platform::host), Some(b)))
                .collect(),
            (None, false) => vec![(Platform::host(), None)],
        };

        // Each distinct (source, destination) is built once, whatever the number
        // of platforms that use it.
        let mut built: BTreeMap<(String, String), WrittenLayer> = BTreeMap::new();
        let mut per_platform: Vec<Vec<(String, String)>> = Vec::new();
        for (platform, _) in &targets {
            let mut keys = Vec::new();
            for (i, layer_spec) in spec.layers.iter().enumerate() {
                let from = spec.layer_source(layer_spec, platform).map_err(|reason| {
                    BuildError::LayerSource {
                        app: name.into(),
                        layer: i,
                        reason,
                    }
                })?;
                let key = (from, layer_spec.to.clone());
                if !built.contains_key(&key) {
                    let layer = self
                        .build_layer(
                            name, &layout, request, &key.0, &key.1, epoch, spec.sbom, ctx,
                        )
                        .await?;
                    built.insert(key.clone(), layer);
                }
                keys.push(key);
            }
            per_platform.push(keys);
        }

        let created = rfc3339(epoch);
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_CREATED.to_owned(), created.clone());
        if !request.revision.sha.is_empty() {
            annotations.insert(ANNOTATION_REVISION.to_owned(), request.revision.sha.clone());
        }
        if let Some(source) = self.source_url_for(request) {
            annotations.insert(ANNOTATION_SOURCE.to_owned(), source);
        }

        let mut manifests = Vec::with_capacity(targets.len());
        for ((platform, base), keys) in targets.iter().zip(&per_platform) {
            let layers: Vec<&WrittenLayer> = keys.iter().filter_map(|k| built.get(k)).collect();
            let manifest = self.write_manifest(
                name,
                spec,
                request,
                &layout,
                platform,
                *base,
                &layers,
                &created,
                &annotations,
            )?;
            manifests.push(manifest);
        }

        let (digest, media_type, size) = if index {
            let entries: Vec<Value> = manifests
                .iter()
                .zip(&targets)
                .map(|((digest, size), (platform, _))| {
                    json!({
                        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
                        "digest": digest.to_string(),
                        "size": size,
                        "platform": platform.to_json(),
                    })
                })
                .collect();
            let index = json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX_MEDIA_TYPE,
                "manifests": entries,
                "annotations": annotations,
            });
            let bytes = to_json(name, &index)?;
            let digest = layout
                .put_manifest(&bytes, &request.tag)
                .map_err(|source| BuildError::layout(name, source))?;
            (digest, OCI_INDEX_MEDIA_TYPE, bytes.len() as u64)
        } else {
            let (digest, size) =
                manifests
                    .first()
                    .cloned()
                    .ok_or_else(|| BuildError::Cancelled {
                        app: name.into(),
                        source: shipflow_core::Cancelled,
                    })?;
            let bytes = layout
                .read_blob(&digest)
                .map_err(|source| BuildError::layout(name, source))?;
            layout
                .put_manifest(&bytes, &request.tag)
                .map_err(|source| BuildError::layout(name, source))?;
            (digest, OCI_MANIFEST_MEDIA_TYPE, size)
        };

        if spec.sbom || spec.provenance {
            let image = BuiltImage {
                app,
                spec,
                request,
                name: app.image.name(),
                digest: &digest,
                media_type,
                size,
                created: &created,
                source: self.source_url_for(request),
                compression_level: self.compression.level,
                source_date_epoch: epoch,
                platforms: targets
                    .iter()
                    .zip(&per_platform)
                    .zip(&manifests)
                    .map(|(((platform, base), keys), (manifest, _))| BuiltPlatform {
                        platform: platform.clone(),
                        manifest: manifest.clone(),
                        base_name: base.map(|b| b.name.clone()),
                        base_digest: base
                            .map(|b| b.index.clone().unwrap_or_else(|| b.digest.clone())),
                        base_platform_digest: base.map(|b| b.digest.clone()),
                        base_layers: base.map(|b| b.layers.clone()).unwrap_or_default(),
                        layers: keys.iter().filter_map(|k| built.get(k).cloned()).collect(),
                    })
                    .collect(),
            };
            attest::attach_to(&layout, &image).map_err(|reason| BuildError::Attestation {
                app: name.into(),
                what: "SBOM and provenance",
                reason,
            })?;
        }
        layout
            .local_image_by_digest(name, &digest)
            .map_err(|source| BuildError::layout(name, source))
    }

    fn source_url_for(&self, request: &BuildRequest) -> Option<String> {
        self.source
            .clone()
            .or_else(|| request.labels.get(ANNOTATION_SOURCE).cloned())
    }

    /// Writes one layer (or reuses it from the cache).
    #[allow(clippy::too_many_arguments)]
    async fn build_layer(
        &self,
        app: &str,
        layout: &OciLayout,
        request: &BuildRequest,
        from: &str,
        to: &str,
        epoch: u64,
        list_files: bool,
        ctx: &Context,
    ) -> Result<WrittenLayer, BuildError> {
        if ctx.cancelled() {
            return Err(BuildError::Cancelled {
                app: app.into(),
                source: shipflow_core::Cancelled,
            });
        }
        let source = request.root.join(from);
        let (app_name, layout_c, cancel) =
            (app.to_owned(), layout.clone(), ctx.cancellation().clone());
        let (dest, compression) = (to.to_owned(), self.compression);
        let cache = LayerCache::new(&self.images);
        let (layer, cached) = tokio::task::spawn_blocking(move || {
            let entries = layer::list_entries(&app_name, &source, &dest)?;
            let key = LayerCache::key(&entries, epoch, compression.level);
            if let Some(hit) = key
                .as_deref()
                .and_then(|k| cache.get(k, &layout_c, list_files))
            {
                tracing::debug!(app = %app_name, source = %source.display(), digest = %hit.blob.digest, "layer unchanged: reused from the cache");
                return Ok((hit, true));
            }
            tracing::debug!(app = %app_name, source = %source.display(), entries = entries.len(), "writing a layer");
            let layer = layer::write_layer(
                &app_name, &layout_c, &entries, epoch, compression, list_files, &cancel,
            )?;
            if let Some(key) = &key {
                cache.put(key, &layer);
            }
            Ok((layer, false))
        })
        .await
        .unwrap_or_else(|join| match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(BuildError::Cancelled { app: app.into(), source: shipflow_core::Cancelled }),
        })?;
        ctx.message(format!(
            "layer {from} → {to}: {} ({} bytes{})",
            layer.blob.digest,
            layer.blob.size,
            if cached { ", unchanged: reused" } else { "" }
        ));
        Ok(layer)
    }

    /// Writes the config and manifest of one platform (untagged); returns the
    /// manifest's digest and size.
    #[allow(clippy::too_many_arguments)]
    fn write_manifest(
        &self,
        app: &str,
        spec: &NativeBuild,
        request: &BuildRequest,
        layout: &OciLayout,
        platform: &Platform,
        base: Option<&Base>,
        layers: &[&WrittenLayer],
        created: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(Digest, u64), BuildError> {
        let config = config::image_config(app, spec, request, base, layers, created, platform)?;
        let config_blob = layout
            .write_blob(&to_json(app, &config)?, CONFIG_MEDIA_TYPE)
            .map_err(|source| BuildError::layout(app, source))?;
        let mut descriptors: Vec<Value> = base.map_or_else(Vec::new, |b| b.layers.clone());
        descriptors.extend(layers.iter().map(|l| {
            json!({"mediaType": l.blob.media_type, "digest": l.blob.digest.to_string(), "size": l.blob.size})
        }));
        let mut annotations = annotations.clone();
        if let Some(base) = base {
            annotations.insert(ANNOTATION_BASE_NAME.to_owned(), base.name.clone());
            annotations.insert(ANNOTATION_BASE_DIGEST.to_owned(), base.digest.to_string());
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_blob.digest.to_string(),
                "size": config_blob.size,
            },
            "layers": descriptors,
            "annotations": annotations,
        });
        let bytes = to_json(app, &manifest)?;
        let blob = layout
            .write_blob(&bytes, OCI_MANIFEST_MEDIA_TYPE)
            .map_err(|source| BuildError::layout(app, source))?;
        Ok((blob.digest, blob.size))
    }
}

fn to_json(app: &str, value: &Value) -> Result<Vec<u8>, BuildError> {
    serde_json::to_vec(value).map_err(|e| BuildError::InvalidConfig {
        app: app.into(),
        key: "config",
        reason: e.to_string(),
    })
}

#[async_trait]
impl ImageBuilder for NativeBuilder {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        if app.build_type() != NATIVE_BUILD_TYPE {
            return Err(BuildError::NotNative {
                app: app.name.clone(),
            }
            .into());
        }
        let spec = app.build_spec::<NativeBuild>()?;
        Ok(self.build_native(app, &spec, request, ctx).await?)
    }
}

/// `1970-01-01T00:00:00Z` for `seconds` since the epoch.
fn rfc3339(seconds: u64) -> String {
    shipflow_core::rfc3339_timestamp(i64::try_from(seconds).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_is_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
