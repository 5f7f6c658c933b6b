//! Push and tag webhooks of GitHub, Gitea and GitLab: each verified by its
//! provider's signature or token, then reduced to a ref and a commit.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::config::Secret;

/// A provider's webhook format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    GitHub,
    Gitea,
    GitLab,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    /// No secret is configured for the provider: its deliveries are all refused.
    #[error("no secret is configured for {0:?} webhooks")]
    NotConfigured(Provider),
    /// The signature or token header is absent.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// The signature or token does not match.
    #[error("the {0} header does not match the configured secret")]
    Mismatch(&'static str),
    /// The body is not the provider's push payload.
    #[error("the payload is not a push event: {0}")]
    Payload(String),
}

/// What a push says: the ref, and the commit it now points at (`None` when deleted).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Push {
    pub(crate) reference: String,
    pub(crate) sha: Option<String>,
}

/// What a delivery is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A push to a branch or a tag.
    Push(Push),
    /// Another event (a ping, an issue…), acknowledged and ignored.
    Other(String),
}

/// The fields of a push payload the three providers share.
#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "ref")]
    reference: String,
    after: String,
    #[serde(default)]
    deleted: bool,
}

impl Provider {
    /// The provider's name in paths and the run history.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::GitLab => "gitlab",
        }
    }

    /// The id of a delivery, when the provider sent one (at most 128 bytes of
    /// printable ASCII). It is not signed: it tells redeliveries apart, while a
    /// replay under a new id meets the ancestry check of the run.
    pub(crate) fn delivery_id(self, headers: &HeaderMap) -> Option<String> {
        let name = match self {
            Provider::GitHub => "x-github-delivery",
            Provider::Gitea => "x-gitea-delivery",
            Provider::GitLab => "x-gitlab-event-uuid",
        };
        let id = headers.get(name)?.to_str().ok()?.trim();
        (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| id.to_owned())
    }

    /// The header naming the event.
    fn event_header(self) -> &'static str {
        match self {
            Provider::GitHub => "x-github-event",
            Provider::Gitea => "x-gitea-event",
            Provider::GitLab => "x-gitlab-event",
        }
    }

    /// Checks the signature (or token) of `body`, then reads it.
    pub(crate) fn verify(
        self,
        secret: Option<&Secret>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Delivery, Refused> {
        let secret = secret.ok_or(Refused::NotConfigured(self))?;
        let header = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(Refused::Missing(name))
        };
        match self {
            Provider::GitHub => {
                let name = "x-hub-signature-256";
                let hex = header(name)?
                    .strip_prefix("sha256=")
                    .ok_or(Refused::Mismatch(name))?;
                check_hmac(secret, body, hex).map_err(|()| Refused::Mismatch(name))?;
            }
            Provider::Gitea => {
                let name = "x-gitea-signature";
                check_hmac(secret, body, header(name)?).map_err(|()| Refused::Mismatch(name))?;
            }
            Provider::GitLab => {
                let name = "x-gitlab-token";
                // Compared through their digests: equal time whatever the prefix in common.
                let given = Sha256::digest(header(name)?.as_bytes());
                if given != Sha256::digest(secret.expose().as_bytes()) {
                    return Err(Refused::Mismatch(name));
                }
            }
        }
        let event = headers
            .get(self.event_header())
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let is_push = match self {
            Provider::GitHub | Provider::Gitea => event == "push",
            Provider::GitLab => event == "Push Hook" || event == "Tag Push Hook",
        };
        if !is_push {
            return Ok(Delivery::Other(event.chars().take(64).collect()));
        }
        let payload: Payload =
            serde_json::from_slice(body).map_err(|e| Refused::Payload(e.to_string()))?;
        if !payload.reference.starts_with("refs/heads/")
            && !payload.reference.starts_with("refs/tags/")
        {
            return Err(Refused::Payload(format!(
                "unexpected ref {:?}",
                payload.reference
            )));
        }
        let deleted = payload.deleted || payload.after.bytes().all(|b| b == b'0');
        let valid_sha =
            payload.after.len() >= 40 && payload.after.bytes().all(|b| b.is_ascii_hexdigit());
        if !deleted && !valid_sha {
            return Err(Refused::Payload("`after` is not a commit id".into()));
        }
        Ok(Delivery::Push(Push {
            reference: payload.reference,
            sha: (!deleted).then_some(payload.after),
        }))
    }
}

/// Whether `hex` is the HMAC-SHA256 of `body` under `secret`, compared in constant time.
fn check_hmac(secret: &Secret, body: &[u8], hex: &str) -> Result<(), ()> {
    let expected = hex::decode(hex.trim()).map_err(|_| ())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).map_err(|_| ())?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| ())
}
