//! The base image of a native build: its manifest and config for each platform
//! built, read from its registry (its layers stay there).

use serde_json::Value;
use shipflow_core::{Context, Digest, ImageRef};

use super::BuildError;
use crate::layout::is_index;
use crate::{OciError, Platform, RegistryClient, layer};

/// One platform's base image as far as the builder needs it.
#[derive(Debug)]
pub(super) struct Base {
    /// `registry/repository` of the base.
    pub(super) name: String,
    /// This platform's manifest digest.
    pub(super) digest: Digest,
    /// The image index it was picked from, if the base is one.
    pub(super) index: Option<Digest>,
    /// Its config JSON.
    pub(super) config: Value,
    /// Its manifest's layer descriptors.
    pub(super) layers: Vec<Value>,
}

impl Base {
    /// The platform its config names.
    pub(super) fn platform(&self) -> Option<Platform> {
        Platform::from_json(&self.config)
    }
}

/// Reads `base` for each of `platforms`, in their order; for no platforms (a
/// single-manifest build), the base as it is, or this machine's platform from
/// an index. `None` for `scratch`.
pub(super) async fn read(
    client: &RegistryClient,
    app: &str,
    base: &str,
    platforms: &[Platform],
    ctx: &Context,
) -> Result<Option<Vec<Base>>, BuildError> {
    if base.is_empty() || base == "scratch" {
        return Ok(None);
    }
    let reader = Reader {
        client,
        app,
        base,
        ctx,
    };
    let reference: ImageRef = base.parse().map_err(|e| reader.bad(format!("{e}")))?;
    let (bytes, _, digest) = client
        .fetch_manifest(&reference, ctx)
        .await
        .map_err(|e| reader.fetch_err(e))?;
    if !is_index(&bytes) {
        let single = reader.manifest(&reference, bytes, digest, None).await?;
        let have = single.platform();
        for platform in platforms {
            if !have.as_ref().is_some_and(|h| h.matches(platform)) {
                return Err(reader.missing(
                    platform,
                    have.map_or_else(|| "no platform".to_owned(), |h| h.to_string()),
                ));
            }
        }
        return Ok(Some(vec![single]));
    }
    let index: Value =
        serde_json::from_slice(&bytes).map_err(|e| reader.bad(format!("image index: {e}")))?;
    let entries = runnable_entries(&index);
    let wanted = if platforms.is_empty() {
        vec![Platform::host()]
    } else {
        platforms.to_vec()
    };
    let mut bases = Vec::with_capacity(wanted.len());
    for platform in &wanted {
        let Some((_, chosen)) = entries.iter().find(|(p, _)| platform.matches(p)) else {
            let available: Vec<String> = entries.iter().map(|(p, _)| p.to_string()).collect();
            return Err(reader.missing(
                platform,
                if available.is_empty() {
                    "no runnable platform".to_owned()
                } else {
                    available.join(", ")
                },
            ));
        };
        tracing::debug!(%app, %base, %platform, digest = %chosen, "base image index: picked this platform's manifest");
        let (bytes, _, child) = client
            .fetch_manifest(&reference.pinned(chosen.clone()), ctx)
            .await
            .map_err(|e| reader.fetch_err(e))?;
        if is_index(&bytes) {
            return Err(reader.bad(format!("its {platform} entry {chosen} is an index itself")));
        }
        bases.push(
            reader
                .manifest(&reference, bytes, child, Some(digest.clone()))
                .await?,
        );
    }
    Ok(Some(bases))
}

/// The entries of an index that are images to run: each with a platform and a
/// digest, leaving out attestation manifests (`unknown/unknown`, or BuildKit's
/// `vnd.docker.reference.type` annotation).
fn runnable_entries(index: &Value) -> Vec<(Platform, Digest)> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|entry| {
            entry
                .pointer("/annotations/vnd.docker.reference.type")
                .is_none()
        })
        .filter_map(|entry| {
            let platform = Platform::from_json(entry.get("platform")?)?;
            if platform.os == "unknown" || platform.architecture == "unknown" {
                return None;
            }
            Some((platform, entry.get("digest")?.as_str()?.parse().ok()?))
        })
        .collect()
}

struct Reader<'a> {
    client: &'a RegistryClient,
    app: &'a str,
    base: &'a str,
    ctx: &'a Context,
}

impl Reader<'_> {
    fn bad(&self, reason: String) -> BuildError {
        BuildError::BadBase {
            app: self.app.into(),
            base: self.base.into(),
            reason,
        }
    }

    fn fetch_err(&self, source: OciError) -> BuildError {
        BuildError::Base {
            app: self.app.into(),
            base: self.base.into(),
            source: Box::new(source),
        }
    }

    fn missing(&self, platform: &Platform, available: String) -> BuildError {
        BuildError::BasePlatformMissing {
            app: self.app.into(),
            base: self.base.into(),
            platform: platform.to_string(),
            available,
        }
    }

    /// The base of one manifest: its config fetched, its layers' media types made OCI's.
    async fn manifest(
        &self,
        reference: &ImageRef,
        bytes: Vec<u8>,
        digest: Digest,
        index: Option<Digest>,
    ) -> Result<Base, BuildError> {
        let manifest: Value =
            serde_json::from_slice(&bytes).map_err(|e| self.bad(format!("manifest: {e}")))?;
        let config_digest: Digest = manifest
            .pointer("/config/digest")
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad("the manifest has no config".into()))?
            .parse()
            .map_err(|e| self.bad(format!("config digest: {e}")))?;
        let config_bytes = self
            .client
            .fetch_blob(reference, &config_digest, self.ctx)
            .await
            .map_err(|e| self.fetch_err(e))?;
        let config: Value =
            serde_json::from_slice(&config_bytes).map_err(|e| self.bad(format!("config: {e}")))?;
        tracing::debug!(app = %self.app, base = %self.base, %digest, "base image read (manifest and config; its layers stay in the registry)");
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
        Ok(Base {
            name: reference.name(),
            digest,
            index,
            config,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attestation_entries_of_an_index_are_not_platforms() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({"manifests": [
            {"digest": d('a'), "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": d('b'), "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": d('c'), "platform": {"os": "linux", "architecture": "arm64"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            {"digest": d('e'), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": d('f')},
        ]});
        let entries = runnable_entries(&index);
        let names: Vec<String> = entries.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(names, ["linux/amd64", "linux/arm64/v8"]);
        assert_eq!(entries[1].1.to_string(), d('e'));
    }
}
