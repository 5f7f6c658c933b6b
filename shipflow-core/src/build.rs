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
