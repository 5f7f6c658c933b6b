//! [`EngineBuilder`]: Dockerfile builds through the engine.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::query_parameters::{BuildImageOptions, BuilderVersion};
use futures_util::{StreamExt, TryStreamExt};
use shipflow_core::{
    App, Blob, BoxError, BuildRequest, Context, Digest, ImageBuilder, ImageLocation, LocalImage,
};

use crate::config::{DOCKERFILE_BUILD_TYPE, DockerfileBuild};
use crate::{DockerError, Engine, context};

/// How many lines of build output a failure carries.
const OUTPUT_LINES: usize = 30;

/// Builds `type = "dockerfile"` apps through the engine: the context directory is
/// streamed as a tar without what `.dockerignore` excludes, without `.shipflow/`
/// and, unless `include_git = true`, without `.git/`, with the app's build args
/// and target stage, and the request's labels (plus the revision and fingerprint).
/// Docker Engine builds with its classic builder (not BuildKit: no `RUN --mount`,
/// heredocs or `# syntax=` frontends); Podman with Buildah. Both give the same files
/// from the same Dockerfile (a test compares them).
/// The image is tagged `<app image>:<request tag>` in the engine; push it with
/// [`crate::EngineRegistry`].
///
/// The [`LocalImage`] describes an engine image by its image id (the config
/// digest): `digest` and `config.digest` are that id, `layers` the uncompressed
/// layer digests; the manifest digest exists once pushed ([`shipflow_core::PushReport::digest`]).
#[derive(Debug, Clone)]
pub struct EngineBuilder {
    engine: Engine,
}

impl EngineBuilder {
    /// A builder on `engine`.
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

fn build_err(app: &App, cause: impl Into<String>) -> DockerError {
    DockerError::Build {
        app: app.name.clone(),
        cause: cause.into(),
    }
}

/// Follows a build's output to its end: the error with the last lines of output.
async fn stream_build(
    mut stream: impl futures_util::Stream<
        Item = Result<bollard::models::BuildInfo, bollard::errors::Error>,
    > + Unpin,
) -> Result<(), String> {
    let mut output: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| format!("{e}\n{}", output.join("\n")))?;
        if let Some(line) = info
            .stream
            .as_deref()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
        {
            output.push(line.to_owned());
            if output.len() > OUTPUT_LINES {
                output.remove(0);
            }
        }
        if let Some(error) = info.error.or(info.error_detail.and_then(|d| d.message)) {
            return Err(format!("{error}\n{}", output.join("\n")));
        }
    }
    Ok(())
}

#[async_trait]
impl ImageBuilder for EngineBuilder {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        Ok(self.build_inner(app, request, ctx).await?)
    }
}

impl EngineBuilder {
    async fn build_inner(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, DockerError> {
        if app.build_type() != DOCKERFILE_BUILD_TYPE {
            return Err(build_err(
                app,
                "EngineBuilder builds only `type = \"dockerfile\"` apps; use shipflow_oci's native builder for the others",
            ));
        }
        let spec = app
            .build_spec::<DockerfileBuild>()
            .map_err(|source| DockerError::Settings {
                app: app.name.clone(),
                source,
            })?;
        let DockerfileBuild {
            dockerfile,
            context: context_dir,
            target,
            args,
            include_git,
            ..
        } = spec.as_ref();
        let dir = request.root.join(context_dir.as_deref().unwrap_or(""));
        let dockerfile = request.root.join(
            dockerfile
                .clone()
                .unwrap_or_else(|| format!("{}/Dockerfile", app.path)),
        );
        let context = {
            let (from, dockerfile, git) = (dir.clone(), dockerfile.clone(), *include_git);
            tokio::task::spawn_blocking(move || {
                context::BuildContext::scan(&from, &dockerfile, git)
            })
            .await
            .map_err(|e| build_err(app, format!("scan the context: {e}")))?
            .map_err(|e| build_err(app, format!("context {}: {e}", dir.display())))?
        };
        let (files, bytes) = context.size();
        ctx.message(format!("sending a context of {files} files, {bytes} bytes"));
        let dockerfile_name = context.dockerfile_name().to_owned();
        let tag = if request.tag.is_empty() {
            "latest"
        } else {
            &request.tag
        };
        let reference = app
            .image
            .with_tag(tag)
            .map_err(|e| build_err(app, e.to_string()))?
            .to_string();
        let mut labels: HashMap<String, String> = request.labels.clone().into_iter().collect();
        if !request.revision.sha.is_empty() {
            labels.insert(
                "org.opencontainers.image.revision".into(),
                request.revision.sha.clone(),
            );
        }
        if let Some(fingerprint) = &request.fingerprint {
            labels.insert("dev.shipflow.fingerprint".into(), fingerprint.0.clone());
        }
        let options = BuildImageOptions {
            dockerfile: dockerfile_name,
            t: Some(reference.clone()),
            rm: true,
            buildargs: Some(args.clone().into_iter().collect()),
            labels: Some(labels),
            target: target.clone().unwrap_or_default(),
            // The classic builder: BuildKit through the API needs a gRPC session
            // (bollard's `buildkit` feature) that this crate does not open.
            version: BuilderVersion::BuilderV1,
            ..Default::default()
        };
        let docker = self.engine.client();
        let (body, packing) = context.stream();
        let body = bollard::body_try_stream(body.map_ok(Into::into));
        let built = stream_build(docker.build_image(options, None, Some(body))).await;
        // A context that could not be read says why, rather than the broken upload.
        match packing.await {
            Ok(Err(e)) if !e.contains("stopped reading") => {
                return Err(build_err(app, format!("context {}: {e}", dir.display())));
            }
            Err(e) => return Err(build_err(app, format!("send the context: {e}"))),
            Ok(_) => {}
        }
        built.map_err(|e| build_err(app, e))?;
        let inspect = docker
            .inspect_image(&reference)
            .await
            .map_err(|e| build_err(app, format!("inspect {reference}: {e}")))?;
        let id: Digest = inspect
            .id
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| build_err(app, format!("image id of {reference}: {e}")))?;
        let layers = inspect
            .root_fs
            .and_then(|r| r.layers)
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l.parse().ok())
            .map(|digest| Blob {
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                digest,
                size: 0,
            })
            .collect();
        Ok(LocalImage {
            app: app.name.clone(),
            digest: id.clone(),
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            manifest_size: 0,
            config: Blob {
                media_type: "application/vnd.oci.image.config.v1+json".into(),
                digest: id.clone(),
                size: inspect.size.unwrap_or_default().max(0) as u64,
            },
            layers,
            location: ImageLocation::Engine { id: id.to_string() },
            platforms: Vec::new(),
        })
    }
}
