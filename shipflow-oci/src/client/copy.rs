//! Base layers copied across registries: a layer of the base image that the
//! target repository lacks, and that cannot be mounted, is streamed from the
//! base's repository into the target, chunk by chunk, never held whole. Each
//! side gets its own credentials only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt as _;
use reqwest::Method;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, HeaderMap};
use sha2::{Digest as _, Sha256};
use shipflow_core::{Blob, Digest, ImageRef};

use super::RegistryClient;
use super::blobs::{octet_stream, with_digest};
use super::push::BaseImage;
use super::transport::{Body, Call};
use crate::error::{OciError, Step};
use crate::progress::Progress;

impl RegistryClient {
    /// Streams `blob` from `base`'s repository (on any registry) into the
    /// call's repository. A transfer cut off or answered 5xx starts over, a
    /// bounded number of times.
    pub(super) async fn copy_blob(
        &self,
        call: &Call<'_>,
        base: &BaseImage,
        blob: &Blob,
        progress: &Arc<Progress>,
    ) -> Result<(), OciError> {
        let source: ImageRef = base.name.parse().map_err(|e| OciError::Protocol {
            reference: call.name(),
            step: Step::BlobGet,
            reason: format!("base image {:?}: {e}", base.name),
        })?;
        let from = Call::new(&source, false, call.requests, call.ctx);
        self.ensure_pinged(&from).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let counted = Arc::new(AtomicU64::new(0));
            match self.copy_once(call, &from, blob, progress, &counted).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < self.inner.config.max_attempts && retryable(&e) => {
                    progress.sub(counted.load(Ordering::Relaxed));
                    tracing::debug!(reference = %call.reference, digest = %blob.digest, attempt, error = %e, "base layer copy interrupted, starting over");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn copy_once(
        &self,
        to: &Call<'_>,
        from: &Call<'_>,
        blob: &Blob,
        progress: &Arc<Progress>,
        counted: &Arc<AtomicU64>,
    ) -> Result<(), OciError> {
        let url = self.url(from.reference, &format!("blobs/{}", blob.digest))?;
        let response = self
            .send(
                from,
                Step::BlobGet,
                Method::GET,
                url,
                HeaderMap::new(),
                Body::Empty,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.failure(from, Step::BlobGet, response).await);
        }
        if let Some(len) = response.content_length()
            && len != blob.size
        {
            return Err(OciError::Protocol {
                reference: from.name(),
                step: Step::BlobGet,
                reason: format!(
                    "blob {} is {len} bytes there, the manifest says {}",
                    blob.digest, blob.size
                ),
            });
        }
        let put_url = with_digest(self.start_upload(to).await?, &blob.digest);
        let body = checked(response, blob, progress.clone(), counted.clone());
        let mut headers = octet_stream();
        headers.insert(CONTENT_LENGTH, blob.size.into());
        let response = self
            .send_with(
                to,
                Step::BlobUpload,
                Method::PUT,
                put_url,
                headers,
                Body::Once(Arc::new(Mutex::new(Some(body)))),
                1,
            )
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(()),
            _ => Err(self.failure(to, Step::BlobUpload, response).await),
        }
    }
}

/// The body of `response` as an upload body that fails (and so fails the
/// upload) when it carries more bytes than `blob` has or content that does not
/// hash to its digest; it counts the bytes into `progress` as they pass.
fn checked(
    response: reqwest::Response,
    blob: &Blob,
    progress: Arc<Progress>,
    counted: Arc<AtomicU64>,
) -> reqwest::Body {
    let (size, digest) = (blob.size, blob.digest.clone());
    let mut hash = Sha256::new();
    let mut seen = 0u64;
    let stream = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len() as u64;
        if seen > size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the base's registry sent more than the {size} bytes of blob {digest}"),
            ));
        }
        hash.update(&chunk);
        counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        progress.add(chunk.len() as u64);
        if seen == size && Digest::from_sha256_hasher(hash.clone()) != digest {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the base's registry sent content that is not blob {digest}"),
            ));
        }
        Ok(chunk)
    });
    reqwest::Body::wrap_stream(stream)
}

/// Whether trying the copy again can help: the connection broke, or a registry
/// answered 5xx or 429.
fn retryable(error: &OciError) -> bool {
    match error {
        OciError::Connect { .. } => true,
        OciError::Status { status, .. } => *status >= 500 || *status == 429,
        _ => false,
    }
}
