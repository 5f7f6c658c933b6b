//! [`EngineRegistry`]: pushes engine-built images through the engine.

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{PushImageOptions, TagImageOptions};
use futures_util::StreamExt;
use reqwest::StatusCode;
use shipflow_core::{
    BoxError, Context, Digest, ImageLocation, ImageRef, LocalImage, PushReport, Registry,
};

use crate::{DockerError, Engine, RegistryCredentials};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// A [`Registry`] for images in the engine's store ([`ImageLocation::Engine`]): a
/// push tags the image and lets the engine push it, which checks each layer first
/// and uploads only those the registry lacks. `resolve` and `tag` talk to the
/// registry's HTTP API directly (plain HTTP for loopback registries).
#[derive(Debug, Clone)]
pub struct EngineRegistry {
    engine: Engine,
    credentials: Option<RegistryCredentials>,
    http: reqwest::Client,
}

impl EngineRegistry {
    /// A registry pushing through `engine`.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            credentials: None,
            http: reqwest::Client::new(),
        }
    }

    /// Credentials for the registry.
    pub fn with_credentials(mut self, credentials: RegistryCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    fn manifest_url(reference: &ImageRef, tag_or_digest: &str) -> String {
        let scheme = if reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        format!(
            "{scheme}://{}/v2/{}/manifests/{tag_or_digest}",
            reference.registry(),
            reference.repository()
        )
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.credentials {
            Some(c) => request.basic_auth(&c.username, Some(&c.password)),
            None => request,
        }
    }

    fn push_err(target: &ImageRef, cause: impl Into<String>) -> DockerError {
        DockerError::Push {
            image: target.to_string(),
            cause: cause.into(),
        }
    }

    async fn resolve_inner(&self, reference: &ImageRef) -> Result<Option<Digest>, DockerError> {
        let wanted = reference.manifest_reference();
        let url = Self::manifest_url(reference, &wanted);
        let response = self
            .request(reqwest::Method::HEAD, &url)
            .header("Accept", MANIFEST_TYPES)
            .send()
            .await
            .map_err(|e| Self::push_err(reference, format!("HEAD {url}: {e}")))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => response
                .headers()
                .get("Docker-Content-Digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| Self::push_err(reference, format!("HEAD {url}: no digest header"))),
            s => Err(Self::push_err(reference, format!("HEAD {url}: HTTP {s}"))),
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
            report.digest = self.resolve_inner(target).await?;
        }
        report.manifest_written = true;
        Ok(report)
    }

    async fn tag_inner(&self, digest: &Digest, target: &ImageRef) -> Result<(), DockerError> {
        let tag = target
            .tag()
            .ok_or_else(|| Self::push_err(target, "no tag to point at the digest"))?;
        let url = Self::manifest_url(target, &digest.to_string());
        let response = self
            .request(reqwest::Method::GET, &url)
            .header("Accept", MANIFEST_TYPES)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Self::push_err(target, format!("GET {url}: {e}")))?;
        let media_type = response
            .headers()
            .get("Content-Type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_owned();
        let body = response
            .bytes()
            .await
            .map_err(|e| Self::push_err(target, format!("GET {url}: {e}")))?;
        let url = Self::manifest_url(target, tag);
        self.request(reqwest::Method::PUT, &url)
            .header("Content-Type", media_type)
            .body(body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| Self::push_err(target, format!("PUT {url}: {e}")))?;
        Ok(())
    }
}

#[async_trait]
impl Registry for EngineRegistry {
    async fn resolve(
        &self,
        reference: &ImageRef,
        _ctx: &Context,
    ) -> Result<Option<Digest>, BoxError> {
        Ok(self.resolve_inner(reference).await?)
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        Ok(self.push_inner(image, target, ctx).await?)
    }

    async fn tag(
        &self,
        digest: &Digest,
        target: &ImageRef,
        _ctx: &Context,
    ) -> Result<(), BoxError> {
        Ok(self.tag_inner(digest, target).await?)
    }
}
