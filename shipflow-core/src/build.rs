//! [`ImageBuilder`]: turns an app into a local image.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{App, BoxError, Context, Digest, Fingerprint, Reason, RevisionInfo};

/// A blob of an image (config or layer) by digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Blob {
    /// The media type, e.g. `application/vnd.oci.image.layer.v1.tar+gzip`.
    pub media_type: String,
    /// The content digest.
    pub digest: Digest,
    /// The size in bytes.
    pub size: u64,
}

/// Where a built image lives until it is pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ImageLocation {
    /// An OCI image layout directory.
    OciLayout {
        /// The layout's root directory.
        path: PathBuf,
    },
    /// A container engine's image store, by image id.
    Engine {
        /// The engine's image id.
        id: String,
    },
    /// Already in a registry (built remotely, e.g. by a Kubernetes Job): a push
    /// only copies or tags it there.
    Registry {
        /// Where it is, pinned by digest: `registry/repository@sha256:…`.
        reference: String,
    },
    /// Nowhere but memory (the testing fakes).
    Memory,
}

/// An image built locally: its manifest digest and the blobs it is made of.
///
/// A multi-platform image is an image index: `digest`, `media_type` and
/// `manifest_size` are the index's, `platforms` lists its manifests, and `config`
/// and `layers` are those of its first platform, so that code that knows only
/// single-platform images still sees a runnable one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalImage {
    /// The app it was built for.
    pub app: String,
    /// The manifest's (or image index's) digest: the image's identity.
    pub digest: Digest,
    /// The manifest's (or image index's) media type.
    pub media_type: String,
    /// The manifest's (or image index's) size in bytes.
    pub manifest_size: u64,
    /// The config blob.
    pub config: Blob,
    /// The layers, base first.
    pub layers: Vec<Blob>,
    /// Where it is stored.
    pub location: ImageLocation,
    /// The manifest of each platform when the image is an image index; empty for
    /// a single manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformImage>,
}

/// One platform's manifest of a multi-platform [`LocalImage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformImage {
    /// The platform, `os/architecture[/variant]`, e.g. `linux/arm64`.
    pub platform: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
    /// The config blob.
    pub config: Blob,
    /// The layers, base first.
    pub layers: Vec<Blob>,
}

impl LocalImage {
    /// Whether the image is an image index of several platforms' manifests.
    pub fn is_index(&self) -> bool {
        !self.platforms.is_empty()
    }

    /// Every config and layer blob of the image, each digest once (a layer
    /// several platforms share is listed once).
    pub fn blobs(&self) -> Vec<&Blob> {
        let mut seen = std::collections::BTreeSet::new();
        let own = std::iter::once(&self.config).chain(&self.layers);
        let platforms = self
            .platforms
            .iter()
            .flat_map(|p| std::iter::once(&p.config).chain(&p.layers));
        own.chain(platforms)
            .filter(|b| seen.insert(&b.digest))
            .collect()
    }

    /// The total size of config and layers (of every platform, each blob once).
    pub fn size(&self) -> u64 {
        self.blobs().iter().map(|b| b.size).sum()
    }
}

/// What a build gets besides the app: where the repository is, and facts to stamp
/// into the image (labels and annotations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// The repository root: build contexts are relative to it.
    pub root: PathBuf,
    /// The tag the image will be pushed under.
    pub tag: String,
    /// The revision built.
    pub revision: RevisionInfo,
    /// The app's input fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// Labels to add to the image config (OCI annotations go to the manifest).
    pub labels: BTreeMap<String, String>,
    /// Why the app is in the run, for hooks and records.
    #[serde(default)]
    pub reasons: Vec<Reason>,
}

/// Builds images. Adapters: `shipflow_oci::NativeBuilder` (daemonless, reproducible)
/// and `shipflow_docker::EngineBuilder` (Dockerfile builds through an engine).
#[async_trait]
pub trait ImageBuilder: Send + Sync {
    /// Builds `app` into a local image.
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError>;
}

/// An [`ImageBuilder`] that hands each app to the builder for its build type (the
/// `type` of its `build` table): `"native"` apps to one (e.g.
/// `shipflow_oci::NativeBuilder`), `"dockerfile"` apps to another (e.g.
/// `shipflow_docker::EngineBuilder`), any type of your own to yours. A workspace can
/// mix them.
///
/// ```
/// use std::sync::Arc;
/// use shipflow_core::{BuilderByType, testing::FakeBuilder};
///
/// let builder = BuilderByType::new().route("native", Arc::new(FakeBuilder::new()));
/// // Apps of another build type fail with a message naming the types it knows.
/// # let _ = builder;
/// ```
#[derive(Clone, Default)]
pub struct BuilderByType {
    builders: BTreeMap<String, Arc<dyn ImageBuilder>>,
}

impl std::fmt::Debug for BuilderByType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuilderByType")
            .field("types", &self.builders.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// An app's build type has no builder in [`BuilderByType`].
#[derive(Debug, thiserror::Error)]
#[error(
    "{app}: build: no builder for build type {build_type:?} (builders: {known}); {}",
    hint(build_type)
)]
pub struct NoBuilder {
    /// The app.
    pub app: String,
    /// Its build type.
    pub build_type: String,
    /// The build types that have a builder, comma separated.
    pub known: String,
}

fn hint(build_type: &str) -> &'static str {
    match build_type {
        "dockerfile" => {
            "start a Docker or Podman engine (DOCKER_HOST), or switch the app to `type = \"native\"`"
        }
        _ => "give the pipeline a builder for it",
    }
}

impl BuilderByType {
    /// A dispatcher with no builders yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Apps whose build type is `build_type` go to `builder`.
    pub fn route(mut self, build_type: &str, builder: Arc<dyn ImageBuilder>) -> Self {
        self.builders.insert(build_type.to_owned(), builder);
        self
    }

    /// Whether apps of `build_type` have a builder.
    pub fn handles(&self, build_type: &str) -> bool {
        self.builders.contains_key(build_type)
    }
}

#[async_trait]
impl<B: ImageBuilder + ?Sized> ImageBuilder for Arc<B> {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        (**self).build(app, request, ctx).await
    }
}

#[async_trait]
impl ImageBuilder for BuilderByType {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        match self.builders.get(app.build_type()) {
            Some(builder) => builder.build(app, request, ctx).await,
            None => Err(NoBuilder {
                app: app.name.clone(),
                build_type: app.build_type().to_owned(),
                known: if self.builders.is_empty() {
                    "none".to_owned()
                } else {
                    self.builders.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Workspace;
    use crate::testing::FakeBuilder;

    #[tokio::test]
    async fn each_app_goes_to_the_builder_for_its_kind_of_build() {
        let ws = Workspace::from_toml(
            "[workspace]\nregistry = \"r.io/acme\"\n\
             [apps.api]\nbuild = { type = \"native\" }\n\
             [apps.web]\nbuild = { type = \"dockerfile\" }\n",
            ".",
        )
        .expect("workspace");
        let native = Arc::new(FakeBuilder::new());
        let builder = BuilderByType::new().route("native", native.clone());
        let (api, web) = (ws.app("api").expect("api"), ws.app("web").expect("web"));
        let request = BuildRequest::default();
        let ctx = Context::new();

        builder
            .build(api, &request, &ctx)
            .await
            .expect("native build");
        assert_eq!(native.builds(), ["api"]);
        let err = builder
            .build(web, &request, &ctx)
            .await
            .expect_err("no Dockerfile builder");
        assert!(err.is::<NoBuilder>());
        assert!(
            err.to_string()
                .starts_with("web: build: no builder for build type \"dockerfile\" (builders: native); start a Docker"),
            "{err}"
        );
        assert_eq!(native.builds(), ["api"], "the native builder never saw web");
    }
}
