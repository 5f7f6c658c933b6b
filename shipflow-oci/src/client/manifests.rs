//! Manifests and tags: `HEAD`, `GET` and `PUT` of manifests, and the tag list.

use std::collections::HashSet;
use std::sync::atomic::AtomicU32;

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use shipflow_core::{Context, Digest, ImageRef};

use super::RegistryClient;
use super::transport::{Body, Call, DOCUMENT_LIMIT, read_limited};
use crate::error::{OciError, Step};

/// The manifest media types this client asks for.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
const DIGEST_HEADER: &str = "docker-content-digest";
/// The most tag list pages [`RegistryClient::list_tags`] follows (a million tags at
/// Distribution's default page size of 100).
const MAX_TAG_PAGES: usize = 10_000;

impl RegistryClient {
    /// `GET` the manifest of `reference` (by digest, else tag, else `latest`): its
    /// bytes, media type and digest. A digest reference is verified against the content.
    pub async fn fetch_manifest(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<(Vec<u8>, String, Digest), OciError> {
        let requests = AtomicU32::new(0);
        let call = Call::new(reference, false, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let by = reference.manifest_reference();
        let (bytes, media_type) = self.get_manifest(&call, &by).await?;
        let actual = Digest::sha256(&bytes);
        if let Some(expected) = reference.digest()
            && expected != &actual
        {
            return Err(OciError::DigestMismatch {
                reference: reference.to_string(),
                step: Step::ManifestGet,
                expected: expected.clone(),
                actual,
            });
        }
        Ok((bytes, media_type, actual))
    }

    /// All tags of the repository of `reference`, in the registry's order, following
    /// the `Link: <…>; rel="next"` pages; `page_size` sets `n` (the registry's
    /// default when `None`).
    pub async fn list_tags(
        &self,
        reference: &ImageRef,
        page_size: Option<u32>,
        ctx: &Context,
    ) -> Result<Vec<String>, OciError> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let requests = AtomicU32::new(0);
        let call = Call::new(reference, false, &requests, ctx);
        self.ensure_pinged(&call).await?;
        let mut url = self.url(reference, "tags/list")?;
        if let Some(n) = page_size {
            url.query_pairs_mut().append_pair("n", &n.to_string());
        }
        let mut tags = Vec::new();
        // A registry whose `Link`s loop, or never end, must not keep the client
        // paging: each page is fetched once, and at most MAX_TAG_PAGES of them.
        let mut visited = HashSet::new();
        loop {
            if !visited.insert(url.clone()) {
                return Err(OciError::Protocol {
                    reference: call.name(),
                    step: Step::TagList,
                    reason: format!(
                        "its Link headers loop back to page {} after {} page(s)",
                        super::transport::redacted(&url),
                        visited.len()
                    ),
                });
            }
            if visited.len() > MAX_TAG_PAGES {
                return Err(OciError::Protocol {
                    reference: call.name(),
                    step: Step::TagList,
                    reason: format!("the tag list goes on past {MAX_TAG_PAGES} pages"),
                });
            }
            let response = self
                .send(
                    &call,
                    Step::TagList,
                    Method::GET,
                    url.clone(),
                    HeaderMap::new(),
                    Body::Empty,
                )
                .await?;
            if !response.status().is_success() {
                return Err(self.failure(&call, Step::TagList, response).await);
            }
            let next = next_page(response.headers())
                .map(|link| url.join(&link))
                .transpose()
                .map_err(|e| OciError::Protocol {
                    reference: call.name(),
                    step: Step::TagList,
                    reason: format!("Link header: {e}"),
                })?;
            let bytes = read_limited(
                &call,
                Step::TagList,
                "tag list page",
                response,
                DOCUMENT_LIMIT,
            )
            .await?;
            let page: Page = serde_json::from_slice(&bytes).map_err(|e| OciError::Protocol {
                reference: call.name(),
                step: Step::TagList,
                reason: format!("tag list: {e}"),
            })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => {
                    // The next page may be on another host (it gets no
                    // credentials), but never off HTTPS.
                    self.check_no_downgrade(&call, Step::TagList, &next)?;
                    url = next;
                }
                None => return Ok(tags),
            }
        }
    }

    /// `HEAD` the manifest `reference` (a tag or digest): its digest, or `None` on 404.
    pub(super) async fn manifest_digest(
        &self,
        call: &Call<'_>,
        reference: &str,
    ) -> Result<Option<Digest>, OciError> {
        let url = self.url(call.reference, &format!("manifests/{reference}"))?;
        let response = self
            .send(
                call,
                Step::ManifestHead,
                Method::HEAD,
                url,
                accept_manifests(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.failure(call, Step::ManifestHead, response).await),
        }
        if let Some(digest) = header_digest(response.headers()) {
            return Ok(Some(digest));
        }
        // Some registries omit the header on HEAD: fetch and hash.
        let (bytes, _) = self.get_manifest(call, reference).await?;
        Ok(Some(Digest::sha256(&bytes)))
    }

    /// `GET` the manifest `reference`, or `None` when the registry has none
    /// (404).
    pub(super) async fn find_manifest(
        &self,
        call: &Call<'_>,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, OciError> {
        let url = self.url(call.reference, &format!("manifests/{reference}"))?;
        let response = self
            .send(
                call,
                Step::ManifestGet,
                Method::GET,
                url,
                accept_manifests(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.failure(call, Step::ManifestGet, response).await),
        }
        read_limited(
            call,
            Step::ManifestGet,
            "manifest",
            response,
            DOCUMENT_LIMIT,
        )
        .await
        .map(Some)
    }

    /// `GET` the manifest `reference`: its bytes and media type.
    pub(super) async fn get_manifest(
        &self,
        call: &Call<'_>,
        reference: &str,
    ) -> Result<(Vec<u8>, String), OciError> {
        let url = self.url(call.reference, &format!("manifests/{reference}"))?;
        let response = self
            .send(
                call,
                Step::ManifestGet,
                Method::GET,
                url,
                accept_manifests(),
                Body::Empty,
            )
            .await?;
        match response.status() {
            s if s.is_success() => {}
            _ => return Err(self.failure(call, Step::ManifestGet, response).await),
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(crate::layout::OCI_MANIFEST_MEDIA_TYPE)
            .to_owned();
        let bytes = read_limited(
            call,
            Step::ManifestGet,
            "manifest",
            response,
            DOCUMENT_LIMIT,
        )
        .await?;
        Ok((bytes, media_type))
    }

    /// `PUT` the manifest `bytes` under `reference` (a tag or its digest).
    /// Returns whether the registry said it indexed the manifest's `subject`
    /// (the `OCI-Subject` header of registries with the referrers API).
    pub(super) async fn put_manifest(
        &self,
        call: &Call<'_>,
        reference: &str,
        bytes: Vec<u8>,
        media_type: &str,
        expected: &Digest,
    ) -> Result<bool, OciError> {
        let url = self.url(call.reference, &format!("manifests/{reference}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            media_type.parse().map_err(|_| OciError::Protocol {
                reference: call.name(),
                step: Step::ManifestPut,
                reason: format!("media type {media_type:?} is not a valid header value"),
            })?,
        );
        let response = self
            .send(
                call,
                Step::ManifestPut,
                Method::PUT,
                url,
                headers,
                Body::Bytes(bytes),
            )
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::OK => {}
            _ => return Err(self.failure(call, Step::ManifestPut, response).await),
        }
        match header_digest(response.headers()) {
            Some(actual) if &actual != expected => Err(OciError::DigestMismatch {
                reference: call.name(),
                step: Step::ManifestPut,
                expected: expected.clone(),
                actual,
            }),
            _ => Ok(response.headers().contains_key("oci-subject")),
        }
    }
}

/// The target of a `Link: <url>; rel="next"` header.
pub(super) fn next_page(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find(|link| link.contains("rel=\"next\"") || link.contains("rel=next"))
        .and_then(|link| {
            let start = link.find('<')? + 1;
            let end = link[start..].find('>')? + start;
            Some(link[start..end].to_owned())
        })
}

pub(super) fn accept_manifests() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        ACCEPT,
        reqwest::header::HeaderValue::from_static(MANIFEST_ACCEPT),
    );
    headers
}

pub(super) fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get(DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
