//! Whether a policy's choice is new for an app, and how its reason reads.

use shipflow_git::gitops::{Format, ImageFields};
use shipflow_oci::{PolicyRule, Resolution, SortOrder};

/// What the config repository names for an app, or what the loop last wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Known {
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
}

impl From<ImageFields> for Known {
    fn from(fields: ImageFields) -> Self {
        Self {
            tag: fields.tag,
            digest: fields.digest,
        }
    }
}

impl Known {
    /// What the loop wrote for `resolution`: its tag and digest.
    pub(crate) fn written(resolution: &Resolution) -> Self {
        Self {
            tag: Some(resolution.tag().to_owned()),
            digest: Some(resolution.digest.to_string()),
        }
    }

    /// Whether this already names what a policy chose (`tag`, `digest`): the same
    /// digest, whatever the tag (a digest is never committed twice); with the
    /// tag-only `format`, which writes no digest, the same tag.
    pub(crate) fn names(&self, tag: &str, digest: &str, format: Format) -> bool {
        match &self.digest {
            Some(known) => known == digest,
            None => format == Format::Tag && self.tag.as_deref() == Some(tag),
        }
    }
}

/// A rule in words, for reasons: "semver range `>=1.0.0`".
pub(crate) fn rule_words(rule: &PolicyRule) -> String {
    let order = |o: &SortOrder| match o {
        SortOrder::Asc => "highest",
        SortOrder::Desc => "lowest",
    };
    match rule {
        PolicyRule::Semver { range } => format!("semver range `{range}`"),
        PolicyRule::Numerical { order: o } => format!("numerical order ({})", order(o)),
        PolicyRule::Alphabetical { order: o } => format!("alphabetical order ({})", order(o)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    #[test]
    fn the_same_digest_under_any_tag_is_named_already() {
        let written = Known {
            tag: Some("1.0.0".into()),
            digest: Some(digest(1)),
        };
        assert!(written.names("1.0.0", &digest(1), Format::NameTagDigest));
        assert!(written.names("1.0.1", &digest(1), Format::NameTagDigest));
        assert!(!written.names("1.0.0", &digest(2), Format::NameTagDigest));
        assert!(!Known::default().names("1.0.0", &digest(1), Format::NameTagDigest));
        let tag_only = Known {
            tag: Some("1.0.0".into()),
            digest: None,
        };
        assert!(tag_only.names("1.0.0", &digest(1), Format::Tag));
        assert!(!tag_only.names("1.0.1", &digest(1), Format::Tag));
        assert!(!tag_only.names("1.0.0", &digest(1), Format::NameTagDigest));
    }

    #[test]
    fn rules_read_as_words() {
        assert_eq!(
            rule_words(&PolicyRule::Semver {
                range: ">=1.0.0".into()
            }),
            "semver range `>=1.0.0`"
        );
        assert_eq!(
            rule_words(&PolicyRule::Numerical {
                order: SortOrder::Desc
            }),
            "numerical order (lowest)"
        );
    }
}
