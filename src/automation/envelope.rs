//! The registry's notification envelope (CNCF Distribution's `notifications`):
//! which repositories a batch of events says were pushed to.
//!
//! ```json
//! {"events": [{"id": "…", "timestamp": "…", "action": "push",
//!   "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
//!              "repository": "team/api", "tag": "1.4.0", "digest": "sha256:…"},
//!   "request": {"host": "registry:5000", "method": "PUT"}}]}
//! ```

use serde::Deserialize;

/// A tag pushed (or deleted) in a repository, as a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagEvent {
    /// `push` or `delete`.
    pub(crate) action: String,
    /// The repository path, `team/api`.
    pub(crate) repository: String,
    /// The tag, when the event names one.
    pub(crate) tag: Option<String>,
    /// The manifest's digest, when given.
    pub(crate) digest: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    action: String,
    #[serde(default)]
    target: Option<Target>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
}

/// The longest repository path taken (Distribution's limit is 255).
const MAX_REPOSITORY: usize = 255;

/// The events of `body` that may change what a policy chooses: a manifest pushed
/// by tag, or a manifest or tag deleted. Pulls and blob uploads are left out.
/// `Err` with a reason when `body` is not a notification envelope.
pub(crate) fn tag_events(body: &[u8]) -> Result<Vec<TagEvent>, String> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for event in envelope.events {
        let Some(target) = event.target else { continue };
        let Some(repository) = target.repository else {
            continue;
        };
        if repository.is_empty()
            || repository.len() > MAX_REPOSITORY
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            return Err(format!("{repository:?} is not a repository name"));
        }
        let tag = target.tag.filter(|t| !t.is_empty());
        let relevant = match event.action.as_str() {
            "push" => tag.is_some() && !is_blob(target.media_type.as_deref()),
            "delete" => true,
            _ => false,
        };
        if relevant {
            out.push(TagEvent {
                action: event.action,
                repository,
                tag,
                digest: target.digest,
            });
        }
    }
    Ok(out)
}

/// Whether a media type is a layer or config blob rather than a manifest.
fn is_blob(media_type: Option<&str>) -> bool {
    media_type.is_some_and(|m| {
        m == "application/octet-stream" || m.contains(".layer.") || m.contains(".config.")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_by_tag_and_deletes_count_pulls_and_blobs_do_not() {
        let body = br#"{"events": [
            {"action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "repository": "team/api", "tag": "1.4.0", "digest": "sha256:ab"}, "request": {"host": "r:5000"}},
            {"action": "pull", "target": {"repository": "team/web", "tag": "1"}},
            {"action": "push", "target": {"mediaType": "application/octet-stream", "repository": "team/web", "digest": "sha256:cd"}},
            {"action": "push", "target": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "repository": "team/web", "digest": "sha256:ef"}},
            {"action": "delete", "target": {"repository": "team/db", "digest": "sha256:01"}},
            {"action": "mount", "target": {"repository": "team/x"}}
        ]}"#;
        let events = tag_events(body).expect("an envelope");
        assert_eq!(
            events,
            [
                TagEvent {
                    action: "push".into(),
                    repository: "team/api".into(),
                    tag: Some("1.4.0".into()),
                    digest: Some("sha256:ab".into()),
                },
                TagEvent {
                    action: "delete".into(),
                    repository: "team/db".into(),
                    tag: None,
                    digest: Some("sha256:01".into()),
                },
            ]
        );
    }

    #[test]
    fn what_is_not_an_envelope_is_refused() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"[]",
            br#"{"events": {"action": "push"}}"#,
            br#"{"events": [{"target": {"repository": "a"}}]}"#,
            br#"{"events": [{"action": "push", "target": {"repository": "Team/API", "tag": "1"}}]}"#,
        ] {
            assert!(
                tag_events(body).is_err(),
                "{:?} is refused",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(tag_events(br#"{"events": []}"#), Ok(vec![]));
    }
}
