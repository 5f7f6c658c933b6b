//! [`NativeBuilder`]: daemonless, reproducible images for apps built
//! `type = "native"`: a base image (or `scratch`) plus layers made from directories,
//! written into an [`OciLayout`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use shipflow_core::{
    App, BoxError, BuildRequest, Context, Digest, ImageBuilder, ImageRef, LocalImage,
};

use crate::layer::{self, Compression, WrittenLayer};
use crate::layer_cache::LayerCache;
use crate::layout::{LayoutError, OCI_MANIFEST_MEDIA_TYPE, OciLayout};
use crate::spec::{NATIVE_BUILD_TYPE, NativeBuild, exposed_port};
use crate::{OciError, RegistryClient};

const DEFAULT_LEVEL: u32 = NativeBuilder::DEFAULT_LEVEL;
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// The annotation naming the base image, read back at push time to mount its layers.
pub(crate) const ANNOTATION_BASE_NAME: &str = "org.opencontainers.image.base.name";
const ANNOTATION_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// Why a native build failed. Every variant names the app, and the path or image
/// involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `SOURCE_DATE_EPOCH` is set but is not a number of seconds.
    #[error(
        "app {app}: build failed: SOURCE_DATE_EPOCH={value:?} is not a number of seconds since 1970; set it to one (e.g. `git log -1 --format=%ct`) or unset it"
    )]
    SourceDateEpoch {
        /// The app.
        app: String,
        /// The value given.
        value: String,
    },
    /// The app is not built `type = "native"`.
    #[error(
        "app {app}: build failed: its build is not native; use the engine builder for Dockerfile builds, or set build = {{ type = \"native\", ... }}"
    )]
    NotNative {
        /// The app.
        app: String,
    },
    /// A file of the build context could not be read, or the layout written.
    #[error(
        "app {app}: build failed: cannot {action} {path}: {source}; check the path exists and is readable"
    )]
    Io {
        /// The app.
        app: String,
        /// What was being done, e.g. `read`.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A symbolic link points outside its layer's source directory.
    #[error(
        "app {app}: build failed: symlink {path} points to {target}, outside the build context {context}; make the link relative and inside the context, or exclude it in .dockerignore"
    )]
    LinkOutsideContext {
        /// The app.
        app: String,
        /// The link.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
        /// The layer's source directory.
        context: PathBuf,
    },
    /// A socket, FIFO or device file is in the build context.
    #[error(
        "app {app}: build failed: {path} is not a regular file, directory or symlink; exclude it in .dockerignore"
    )]
    UnsupportedFile {
        /// The app.
        app: String,
        /// The file.
        path: PathBuf,
    },
    /// A `.dockerignore` line is not a valid pattern.
    #[error("app {app}: build failed: {path}: invalid pattern {pattern:?}: {reason}; fix the line")]
    BadIgnorePattern {
        /// The app.
        app: String,
        /// The `.dockerignore` file.
        path: PathBuf,
        /// The line.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The image config in `shipflow.toml` is invalid.
    #[error("app {app}: build failed: apps.{app}.build.{key}: {reason}")]
    InvalidConfig {
        /// The app.
        app: String,
        /// The key, e.g. `expose`.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The base image could not be read from its registry.
    #[error("app {app}: build failed: base image {base}: {source}")]
    Base {
        /// The app.
        app: String,
        /// The base image reference.
        base: String,
        /// The cause.
        #[source]
        source: Box<OciError>,
    },
    /// The base image's manifest or config is not usable.
    #[error(
        "app {app}: build failed: base image {base}: {reason}; pick a single-platform OCI or Docker v2 image"
    )]
    BadBase {
        /// The app.
        app: String,
        /// The base image reference.
        base: String,
        /// What is wrong.
        reason: String,
    },
    /// The OCI layout could not be written.
    #[error("app {app}: build failed: {source}")]
    Layout {
        /// The app.
        app: String,
        /// The cause.
        #[source]
        source: Box<LayoutError>,
    },
    /// The build was cancelled.
    #[error("app {app}: build stopped: cancelled")]
    Cancelled {
        /// The app.
        app: String,
    },
}

impl BuildError {
    pub(crate) fn io(app: &str, action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            app: app.to_owned(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn layout(app: &str, source: LayoutError) -> Self {
        Self::Layout {
            app: app.to_owned(),
            source: Box::new(source),
        }
    }
}

/// Builds `type = "native"` apps into reproducible OCI images, without a daemon.
///
/// Each app's image goes into the layout `<images>/<app>`, tagged with the request's
/// tag. Each layer's `from` (relative to the request's root) is a directory, whose
/// own `.dockerignore` applies, or a single file. Layers are tars with sorted entries, mtimes set to `SOURCE_DATE_EPOCH`
/// (default 0), owners 0, modes normalised to 0644/0755, no extended attributes,
/// gzip level 5 in fixed 1 MiB members compressed on all cores: the same inputs give
/// the same digests on any machine. A base image other than `scratch` is read from
/// its registry (manifest and config only); its layers stay there, and a push to the
/// same registry mounts them from the base's repository.
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
        let base = self.base(name, &spec.base, ctx).await?;
        let layout = OciLayout::create(self.layout_path(name))
            .map_err(|source| BuildError::layout(name, source))?;
        let mut written = Vec::new();
        for layer_spec in &spec.layers {
            if ctx.cancelled() {
                return Err(BuildError::Cancelled { app: name.into() });
            }
            let source = request.root.join(&layer_spec.from);
            let to = layer_spec.to.clone();
            let (app_name, layout, cancel) =
                (name.to_owned(), layout.clone(), ctx.cancellation().clone());
            let (mtime, compression) = (epoch, self.compression);
            let cache = LayerCache::new(&self.images);
            let layer = tokio::task::spawn_blocking(move || {
                let entries = layer::list_entries(&app_name, &source, &to)?;
                let key = LayerCache::key(&entries, mtime, compression.level);
                if let Some(hit) = key.as_deref().and_then(|k| cache.get(k, &layout)) {
                    tracing::debug!(app = %app_name, source = %source.display(), digest = %hit.blob.digest, "layer unchanged: reused from the cache");
                    return Ok((hit, true));
                }
                tracing::debug!(app = %app_name, source = %source.display(), entries = entries.len(), "writing a layer");
                let layer =
                    layer::write_layer(&app_name, &layout, &entries, mtime, compression, &cancel)?;
                if let Some(key) = &key {
                    cache.put(key, &layer);
                }
                Ok((layer, false))
            })
            .await
            .unwrap_or_else(|join| match join.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(BuildError::Cancelled { app: name.into() }),
            })?;
            let (layer, cached) = layer;
            ctx.message(format!(
                "layer {} → {}: {} ({} bytes{})",
                layer_spec.from,
                layer_spec.to,
                layer.blob.digest,
                layer.blob.size,
                if cached { ", unchanged: reused" } else { "" }
            ));
            written.push(layer);
        }

        let created = rfc3339(epoch);
        let config = image_config(name, spec, request, base.as_ref(), &written, &created)?;
        let config_bytes = serde_json::to_vec(&config).map_err(|e| BuildError::InvalidConfig {
            app: name.into(),
            key: "config",
            reason: e.to_string(),
        })?;
        let config_blob = layout
            .write_blob(&config_bytes, CONFIG_MEDIA_TYPE)
            .map_err(|source| BuildError::layout(name, source))?;

        let mut layers: Vec<Value> = base.as_ref().map_or_else(Vec::new, |b| b.layers.clone());
        layers.extend(written.iter().map(|l| {
            json!({"mediaType": l.blob.media_type, "digest": l.blob.digest.to_string(), "size": l.blob.size})
        }));
        let mut annotations = BTreeMap::new();
        annotations.insert(ANNOTATION_CREATED.to_owned(), created);
        if !request.revision.sha.is_empty() {
            annotations.insert(ANNOTATION_REVISION.to_owned(), request.revision.sha.clone());
        }
        if let Some(source) = self
            .source
            .clone()
            .or_else(|| request.labels.get(ANNOTATION_SOURCE).cloned())
        {
            annotations.insert(ANNOTATION_SOURCE.to_owned(), source);
        }
        if let Some(base) = &base {
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
            "layers": layers,
            "annotations": annotations,
        });
        let manifest_bytes =
            serde_json::to_vec(&manifest).map_err(|e| BuildError::InvalidConfig {
                app: name.into(),
                key: "config",
                reason: e.to_string(),
            })?;
        let digest = layout
            .put_manifest(&manifest_bytes, &request.tag)
            .map_err(|source| BuildError::layout(name, source))?;
        layout
            .local_image_by_digest(name, &digest)
            .map_err(|source| BuildError::layout(name, source))
    }

    /// Reads the base image's manifest and config, or `None` for `scratch`.
    async fn base(&self, app: &str, base: &str, ctx: &Context) -> Result<Option<Base>, BuildError> {
        if base.is_empty() || base == "scratch" {
            return Ok(None);
        }
        let bad = |reason: String| BuildError::BadBase {
            app: app.into(),
            base: base.into(),
            reason,
        };
        let fetch_err = |source: OciError| BuildError::Base {
            app: app.into(),
            base: base.into(),
            source: Box::new(source),
        };
        let reference: ImageRef = base.parse().map_err(|e| bad(format!("{e}")))?;
        let client = match &self.registry {
            Some(client) => client.clone(),
            None => RegistryClient::builder().build().map_err(fetch_err)?,
        };
        let (mut bytes, _, mut digest) = client
            .fetch_manifest(&reference, ctx)
            .await
            .map_err(fetch_err)?;
        let mut manifest: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
        if let Some(platforms) = manifest.get("manifests").and_then(Value::as_array) {
            let (os, arch) = host_platform();
            let chosen = platforms
                .iter()
                .find(|m| {
                    m.pointer("/platform/os").and_then(Value::as_str) == Some(os)
                        && m.pointer("/platform/architecture").and_then(Value::as_str) == Some(arch)
                })
                .and_then(|m| m.get("digest").and_then(Value::as_str))
                .ok_or_else(|| bad(format!("the index has no {os}/{arch} image")))?;
            let chosen: Digest = chosen.parse().map_err(|e| bad(format!("{e}")))?;
            tracing::debug!(%app, %base, %os, %arch, digest = %chosen, "base image index: picked this platform's manifest");
            let pinned = reference.pinned(chosen);
            (bytes, _, digest) = client
                .fetch_manifest(&pinned, ctx)
                .await
                .map_err(fetch_err)?;
            manifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
        }
        let config_digest: Digest = manifest
            .pointer("/config/digest")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the manifest has no config".into()))?
            .parse()
            .map_err(|e| bad(format!("config digest: {e}")))?;
        let config_bytes = client
            .fetch_blob(&reference, &config_digest, ctx)
            .await
            .map_err(fetch_err)?;
        let config: Value =
            serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("config: {e}")))?;
        tracing::debug!(%app, %base, %digest, "base image read (manifest and config; its layers stay in the registry)");
        let layers = manifest
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|mut layer| {
                // Docker's layer media types name the same bytes; an OCI manifest uses OCI's.
                if let Some(m) = layer.get_mut("mediaType")
                    && m.as_str() == Some("application/vnd.docker.image.rootfs.diff.tar.gzip")
                {
                    *m = Value::from(layer::LAYER_MEDIA_TYPE);
                }
                layer
            })
            .collect();
        Ok(Some(Base {
            name: reference.name(),
            digest,
            config,
            layers,
        }))
    }
}

/// A base image as far as the builder needs it.
#[derive(Debug)]
struct Base {
    /// `registry/repository` of the base.
    name: String,
    /// Its manifest digest.
    digest: Digest,
    /// Its config JSON.
    config: Value,
    /// Its manifest's layer descriptors.
    layers: Vec<Value>,
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

/// The image config: the base's, with the app's settings, labels and layers applied.
fn image_config(
    app: &str,
    spec: &NativeBuild,
    request: &BuildRequest,
    base: Option<&Base>,
    layers: &[WrittenLayer],
    created: &str,
) -> Result<Value, BuildError> {
    let (os, arch) = host_platform();
    let mut root = base
        .and_then(|b| b.config.as_object().cloned())
        .unwrap_or_default();
    root.insert("created".into(), created.into());
    root.entry("architecture").or_insert_with(|| arch.into());
    root.entry("os").or_insert_with(|| os.into());

    let mut config = root
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut env: Vec<String> = config
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for (key, value) in &spec.env {
        let prefix = format!("{key}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{key}={value}"));
    }
    if !env.is_empty() {
        config.insert("Env".into(), json!(env));
    }
    if !spec.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(spec.entrypoint));
        // As in a Dockerfile, a new entrypoint drops the base's command.
        config.remove("Cmd");
    }
    if !spec.cmd.is_empty() {
        config.insert("Cmd".into(), json!(spec.cmd));
    }
    if let Some(workdir) = &spec.workdir {
        config.insert("WorkingDir".into(), workdir.as_str().into());
    }
    if let Some(user) = &spec.user {
        config.insert("User".into(), user.as_str().into());
    }
    if !spec.expose.is_empty() {
        let mut ports = config
            .get("ExposedPorts")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for port in &spec.expose {
            let port = exposed_port(port).map_err(|reason| BuildError::InvalidConfig {
                app: app.into(),
                key: "expose",
                reason,
            })?;
            ports.insert(port, json!({}));
        }
        config.insert("ExposedPorts".into(), Value::Object(ports));
    }
    let mut labels = config
        .get("Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (key, value) in spec.labels.iter().chain(&request.labels) {
        labels.insert(key.clone(), value.as_str().into());
    }
    if !labels.is_empty() {
        config.insert("Labels".into(), Value::Object(labels));
    }
    root.insert("config".into(), Value::Object(config));

    let mut diff_ids: Vec<Value> = root
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    diff_ids.extend(layers.iter().map(|l| Value::from(l.diff_id.to_string())));
    root.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let mut history: Vec<Value> = root
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for layer_spec in spec.layers.iter().take(layers.len()) {
        history.push(json!({
            "created": created,
            "created_by": format!("shipflow native: {} -> {}", layer_spec.from, layer_spec.to),
        }));
    }
    root.insert("history".into(), Value::Array(history));
    Ok(Value::Object(Map::from_iter(root)))
}

/// The OS and architecture of this machine, in Go's names.
fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux", arch)
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
