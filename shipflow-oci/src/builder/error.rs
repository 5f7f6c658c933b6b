//! [`BuildError`]: why a native build failed.

use std::path::{Path, PathBuf};

use crate::{LayoutError, OciError};

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
        "app {app}: build failed: base image {base}: {reason}; pick a base that is an OCI or Docker v2 image or image index"
    )]
    BadBase {
        /// The app.
        app: String,
        /// The base image reference.
        base: String,
        /// What is wrong.
        reason: String,
    },
    /// A platform to build is not among the base image's platforms.
    #[error(
        "app {app}: build failed: base image {base} has no {platform} image (it has: {available}); pick a base built for {platform}, or leave {platform} out of platforms"
    )]
    BasePlatformMissing {
        /// The app.
        app: String,
        /// The base image reference.
        base: String,
        /// The platform asked for, e.g. `linux/arm64`.
        platform: String,
        /// The platforms the base has, comma separated.
        available: String,
    },
    /// A layer's `from` could not be filled in for a platform.
    #[error("app {app}: build failed: apps.{app}.build.layers[{layer}].from: {reason}")]
    LayerSource {
        /// The app.
        app: String,
        /// The layer's index.
        layer: usize,
        /// Why.
        reason: String,
    },
    /// An SBOM or provenance statement could not be made.
    #[error("app {app}: build failed: {what}: {reason}")]
    Attestation {
        /// The app.
        app: String,
        /// What was being made, e.g. `SBOM`.
        what: &'static str,
        /// Why.
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
        /// Always [`shipflow_core::Cancelled`], so the pipeline sees a cancellation.
        #[source]
        source: shipflow_core::Cancelled,
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
