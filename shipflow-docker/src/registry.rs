//! [`EngineRegistry`]: pushes engine-built images through the engine.

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptions, TagImageOptions};
use futures_util::StreamExt;
use shipflow_core::{
    BoxError, Context, Digest, ImageLocation, ImageRef, LocalImage, PushReport, Registry,
};
use shipflow_oci::{Credentials, RegistryClient};

use crate::{DockerError, Engine, RegistryCredentials};

/// A [`Registry`] for images in the engine's store ([`ImageLocation::Engine`]): a
/// push tags the image and lets the engine push it, which checks each layer first
/// and uploads only those the registry lacks. `resolve` and `tag` go to the
/// registry through [`shipflow_oci::RegistryClient`]: basic or bearer-token auth,
/// Docker Hub at `registry-1.docker.io`, plain HTTP for loopback registries.
#[derive(Debug, Clone)]
pub struct EngineRegistry {
    engine: Engine,
    credentials: Option<RegistryCredentials>,
}

impl EngineRegistry {
    /// A registry pushing through `engine`.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            credentials: None,
        }
    }

    /// Credentials for the registry.
    pub fn with_credentials(mut self, credentials: RegistryCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// A registry client for `reference`'s registry, the credentials bound to it.
    fn client(&self, reference: &ImageRef) -> Result<RegistryClient, DockerError> {
        client_with(self.credentials.as_ref(), reference.registry())
            .map_err(|e| Self::push_err(reference, format!("registry client: {e}")))
    }

    fn push_err(target: &ImageRef, cause: impl Into<String>) -> DockerError {
        DockerError::Push {
            image: target.to_string(),
            cause: cause.into(),
        }
    }

    async fn push_inner(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, DockerError> {
        let ImageLocation::Engine { id } = &image.location else {
            return Err(Self::push_err(
                target,
                "EngineRegistry pushes engine images only; push OCI layouts with shipflow_oci",
            ));
        };
        let tag = target.tag().unwrap_or("latest").to_owned();
        let docker = self.engine.client();
        docker
            .tag_image(
                id,
                Some(TagImageOptions {
                    repo: Some(target.name()),
                    tag: Some(tag.clone()),
                }),
            )
            .await
            .map_err(|e| Self::push_err(target, format!("tag {id}: {e}")))?;
        let credentials = self
            .credentials
            .as_ref()
            .map(|c| DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                serveraddress: Some(target.registry().to_owned()),
                ..Default::default()
            })
            .unwrap_or_default();
        let mut stream = docker.push_image(
            &target.name(),
            Some(PushImageOptions {
                tag: Some(tag),
                platform: None,
            }),
            Some(credentials),
        );
        let mut report = PushReport::default();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| Self::push_err(target, e.to_string()))?;
            if let Some(error) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                return Err(Self::push_err(target, error));
            }
            let status = info.status.unwrap_or_default();
            if let Some((_, rest)) = status.split_once("digest: ") {
                report.digest = rest.split_whitespace().next().and_then(|d| d.parse().ok());
            } else if status == "Pushed" {
                report.blobs_uploaded += 1;
            } else if status == "Layer already exists" {
                report.blobs_skipped += 1;
            } else if status.starts_with("Mounted from") {
                report.blobs_mounted += 1;
            }
            if !status.is_empty() {
                ctx.message(status);
            }
        }
        if report.digest.is_none() {
            report.digest = self
                .client(target)?
                .resolve(target, ctx)
                .await
                .map_err(|e| Self::push_err(target, e.to_string()))?;
        }
        report.manifest_written = true;
        Ok(report)
    }
}

#[async_trait]
impl Registry for EngineRegistry {
    async fn resolve(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<Option<Digest>, BoxError> {
        self.client(reference)?.resolve(reference, ctx).await
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        Ok(self.push_inner(image, target, ctx).await?)
    }

    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError> {
        self.client(target)?.tag(digest, target, ctx).await
    }
}

/// A registry client with `credentials` only: like the engine's push, it reads no
/// docker config.
fn client_with(
    credentials: Option<&RegistryCredentials>,
    registry: &str,
) -> Result<RegistryClient, String> {
    let mut builder = RegistryClient::builder().without_docker_config();
    if let Some(c) = credentials {
        builder = builder.credentials(registry, Credentials::basic(&c.username, &c.password));
    }
    builder.build().map_err(|e| e.to_string())
}
