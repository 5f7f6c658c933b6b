//! [`ImageBuilder`]: turns an app into a local image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{App, BoxError, Context, Digest, Fingerprint, RevisionInfo};

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
    /// Nowhere but memory (the testing fakes).
    Memory,
}

/// An image built locally: its manifest digest and the blobs it is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalImage {
    /// The app it was built for.
    pub app: String,
    /// The manifest's digest: the image's identity.
    pub digest: Digest,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
    /// The config blob.
    pub config: Blob,
    /// The layers, base first.
    pub layers: Vec<Blob>,
    /// Where it is stored.
    pub location: ImageLocation,
}

impl LocalImage {
    /// The total size of config and layers.
    pub fn size(&self) -> u64 {
        self.config.size + self.layers.iter().map(|l| l.size).sum::<u64>()
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

/// An [`ImageBuilder`] that hands each app to the builder for its kind of build:
/// `type = "native"` apps to one (e.g. `shipflow_oci::NativeBuilder`), Dockerfile
/// apps to another (e.g. `shipflow_docker::EngineBuilder`). A workspace can mix both.
///
/// ```
/// use std::sync::Arc;
/// use shipflow_core::{BuilderBySpec, testing::FakeBuilder};
///
/// let builder = BuilderBySpec::new().native(Arc::new(FakeBuilder::new()));
/// // Dockerfile apps fail with a message saying an engine builder is needed.
/// # let _ = builder;
/// ```
#[derive(Clone, Default)]
pub struct BuilderBySpec {
    native: Option<std::sync::Arc<dyn ImageBuilder>>,
    dockerfile: Option<std::sync::Arc<dyn ImageBuilder>>,
}

impl std::fmt::Debug for BuilderBySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuilderBySpec")
            .field("native", &self.native.is_some())
            .field("dockerfile", &self.dockerfile.is_some())
            .finish()
    }
}

/// An app's build needs a builder that was not given to [`BuilderBySpec`].
#[derive(Debug, thiserror::Error)]
#[error("{app}: build: it is a {kind} build, and no {kind} builder is configured; {hint}")]
pub struct NoBuilder {
    /// The app.
    pub app: String,
    /// `native` or `Dockerfile`.
    pub kind: &'static str,
    /// What to do about it.
    pub hint: &'static str,
}

impl BuilderBySpec {
    /// A dispatcher with no builders yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The builder for `type = "native"` apps.
    pub fn native(mut self, builder: std::sync::Arc<dyn ImageBuilder>) -> Self {
        self.native = Some(builder);
        self
    }

    /// The builder for Dockerfile apps.
    pub fn dockerfile(mut self, builder: std::sync::Arc<dyn ImageBuilder>) -> Self {
        self.dockerfile = Some(builder);
        self
    }
}

#[async_trait]
impl ImageBuilder for BuilderBySpec {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        let (builder, kind, hint) = match app.build {
            crate::BuildSpec::Native(_) => (
                &self.native,
                "native",
                "use the native builder (shipflow_oci::NativeBuilder)",
            ),
            crate::BuildSpec::Dockerfile { .. } => (
                &self.dockerfile,
                "Dockerfile",
                "start a Docker or Podman engine (DOCKER_HOST), or switch the app to `type = \"native\"`",
            ),
        };
        match builder {
            Some(builder) => builder.build(app, request, ctx).await,
            None => Err(NoBuilder {
                app: app.name.clone(),
                kind,
                hint,
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::FakeBuilder;
    use crate::{EnvOverrides, Workspace};

    #[tokio::test]
    async fn each_app_goes_to_the_builder_for_its_kind_of_build() {
        let ws = Workspace::from_toml(
            "[workspace]\nregistry = \"r.io/acme\"\n\
             [apps.api]\nbuild = { type = \"native\" }\n\
             [apps.web]\nbuild = { type = \"dockerfile\" }\n",
            ".",
            &EnvOverrides::default(),
        )
        .expect("workspace");
        let native = Arc::new(FakeBuilder::new());
        let builder = BuilderBySpec::new().native(native.clone());
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
                .starts_with("web: build: it is a Dockerfile build, and no Dockerfile builder"),
            "{err}"
        );
        assert_eq!(native.builds(), ["api"], "the native builder never saw web");
    }
}
