//! Tag templates: `${BRANCH}-${SHORT_SHA}` and friends, rendered to valid tags.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::reference::sanitize_tag;
use crate::{Fingerprint, RevisionInfo};

/// The variables a tag template may use.
pub const TAG_VARIABLES: [&str; 7] = [
    "BRANCH",
    "SHORT_SHA",
    "SHA",
    "TAG",
    "BUILD_NUMBER",
    "TIMESTAMP",
    "FINGERPRINT",
];

/// Why a tag template cannot be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${NAME}` names no known variable.
    #[error("unknown variable ${{{variable}}} (known: {})", TAG_VARIABLES.join(", "))]
    UnknownVariable {
        /// The name used.
        variable: String,
    },
    /// A `${` has no closing `}`.
    #[error("unclosed '${{' in {template:?}")]
    Unclosed {
        /// The template.
        template: String,
    },
    /// A variable has no value here and no `:-default`.
    #[error(
        "${{{variable}}} has no value here ({hint}); give a default with ${{{variable}:-value}}"
    )]
    Missing {
        /// The variable.
        variable: &'static str,
        /// Where its value would come from.
        hint: &'static str,
    },
    /// The rendered tag has no character a tag can hold.
    #[error("template {template:?} rendered {rendered:?}, which leaves no valid tag")]
    Empty {
        /// The template.
        template: String,
        /// What it rendered to.
        rendered: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var {
        name: &'static str,
        default: Option<String>,
    },
}

/// A parsed tag template such as `${BRANCH}-${SHORT_SHA}` or `${TAG:-dev}`.
///
/// ```
/// use shipflow_core::{TagTemplate, TagValues};
///
/// let template: TagTemplate = "${BRANCH}-${SHORT_SHA}".parse()?;
/// let values = TagValues {
///     branch: Some("feature/login".into()),
///     short_sha: Some("1a2b3c4".into()),
///     ..TagValues::default()
/// };
/// assert_eq!(template.render(&values)?, "feature-login-1a2b3c4");
/// # Ok::<(), shipflow_core::TemplateError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTemplate {
    source: String,
    parts: Vec<Part>,
}

impl Default for TagTemplate {
    /// `${SHORT_SHA}`.
    fn default() -> Self {
        "${SHORT_SHA}"
            .parse()
            .expect("the default template is valid")
    }
}

/// The values of a template's variables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagValues {
    /// `${BRANCH}`.
    pub branch: Option<String>,
    /// `${SHORT_SHA}`.
    pub short_sha: Option<String>,
    /// `${SHA}`.
    pub sha: Option<String>,
    /// `${TAG}`: a git tag on the commit.
    pub tag: Option<String>,
    /// `${BUILD_NUMBER}`: the CI's build number.
    pub build_number: Option<String>,
    /// `${TIMESTAMP}`: `YYYYMMDDHHMMSS` in UTC, sortable.
    pub timestamp: Option<String>,
    /// `${FINGERPRINT}`: the app's input fingerprint (short form).
    pub fingerprint: Option<String>,
}

impl TagValues {
    /// Values from a revision, a fingerprint and the CI's build number
    /// (`BUILD_NUMBER`, `GITHUB_RUN_NUMBER`, `CI_PIPELINE_IID`, read by the caller).
    /// `TIMESTAMP` is the commit time.
    pub fn new(
        revision: &RevisionInfo,
        fingerprint: Option<&Fingerprint>,
        build_number: Option<String>,
    ) -> Self {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Self {
            branch: revision.branch.clone(),
            short_sha: nonempty(&revision.short_sha),
            sha: nonempty(&revision.sha),
            tag: revision.tag.clone(),
            build_number,
            timestamp: revision.committed_at.map(sortable_timestamp),
            fingerprint: fingerprint.map(|f| f.short().to_owned()),
        }
    }

    fn get(&self, name: &str) -> (Option<&str>, &'static str) {
        let (value, hint) = match name {
            "BRANCH" => (&self.branch, "detached HEAD and no CI branch variable"),
            "SHORT_SHA" => (&self.short_sha, "no commit"),
            "SHA" => (&self.sha, "no commit"),
            "TAG" => (&self.tag, "no git tag points at the commit"),
            "BUILD_NUMBER" => (&self.build_number, "BUILD_NUMBER is not set"),
            "TIMESTAMP" => (&self.timestamp, "no commit time"),
            _ => (&self.fingerprint, "no fingerprint"),
        };
        (value.as_deref(), hint)
    }
}

/// Formats seconds since the epoch as `YYYYMMDDHHMMSS` (UTC).
pub fn sortable_timestamp(unix_seconds: i64) -> String {
    let (year, month, day, h, m, s) = civil_time(unix_seconds);
    format!("{year:04}{month:02}{day:02}{h:02}{m:02}{s:02}")
}

/// Formats seconds since the epoch as RFC 3339 in UTC, `1970-01-01T00:00:00Z`.
pub fn rfc3339_timestamp(unix_seconds: i64) -> String {
    let (year, month, day, h, m, s) = civil_time(unix_seconds);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Year, month, day, hour, minute, second (UTC) of seconds since the epoch.
fn civil_time(unix_seconds: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3600, secs % 3600 / 60, secs % 60)
}

impl TagTemplate {
    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The variables the template uses.
    pub fn variables(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { name, .. } => Some(*name),
            Part::Text(_) => None,
        })
    }

    /// Renders the template and sanitises the result to a valid tag
    /// (`feature/x` becomes `feature-x`, at most 128 characters).
    pub fn render(&self, values: &TagValues) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var { name, default } => match (values.get(name), default) {
                    ((Some(value), _), _) => out.push_str(value),
                    ((None, _), Some(default)) => out.push_str(default),
                    ((None, hint), None) => {
                        return Err(TemplateError::Missing {
                            variable: name,
                            hint,
                        });
                    }
                },
            }
        }
        sanitize_tag(&out).ok_or_else(|| TemplateError::Empty {
            template: self.source.clone(),
            rendered: out,
        })
    }
}

impl std::str::FromStr for TagTemplate {
    type Err = TemplateError;

    fn from_str(source: &str) -> Result<Self, Self::Err> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| TemplateError::Unclosed {
                template: source.to_owned(),
            })?;
            let body = &after[..end];
            let (name, default) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default.to_owned())),
                None => (body, None),
            };
            let name = TAG_VARIABLES
                .iter()
                .find(|known| **known == name)
                .ok_or_else(|| TemplateError::UnknownVariable {
                    variable: name.to_owned(),
                })?;
            parts.push(Part::Var { name, default });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }
}

impl fmt::Display for TagTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for TagTemplate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn values() -> TagValues {
        TagValues {
            branch: Some("feature/Login_v2".into()),
            short_sha: Some("1a2b3c4".into()),
            sha: Some("1a2b3c4d5e6f".into()),
            tag: None,
            build_number: Some("42".into()),
            timestamp: Some(sortable_timestamp(1_764_062_000)),
            fingerprint: Some("f00dfeedbeef".into()),
        }
    }

    #[rstest]
    #[case("${BRANCH}-${SHORT_SHA}", "feature-Login_v2-1a2b3c4")]
    #[case("v${BUILD_NUMBER}", "v42")]
    #[case("${SHA}", "1a2b3c4d5e6f")]
    #[case("${TIMESTAMP}-${SHORT_SHA}", "20251125091320-1a2b3c4")]
    #[case("fp-${FINGERPRINT}", "fp-f00dfeedbeef")]
    #[case("${TAG:-dev}", "dev")]
    #[case("${BRANCH:-none}", "feature-Login_v2")]
    #[case("latest", "latest")]
    fn renders(#[case] template: &str, #[case] expected: &str) {
        let template: TagTemplate = template.parse().expect("valid template");
        assert_eq!(template.render(&values()).expect("renders"), expected);
    }

    #[rstest]
    #[case(
        "${COMMIT}",
        "unknown variable ${COMMIT} (known: BRANCH, SHORT_SHA, SHA, TAG, BUILD_NUMBER, TIMESTAMP, FINGERPRINT)"
    )]
    #[case("${SHA", "unclosed '${' in \"${SHA\"")]
    fn rejects_bad_templates(#[case] template: &str, #[case] message: &str) {
        let err = template.parse::<TagTemplate>().expect_err("invalid");
        assert_eq!(err.to_string(), message);
    }

    #[test]
    fn missing_value_names_variable_and_default_syntax() {
        let template: TagTemplate = "${TAG}".parse().expect("valid");
        let err = template.render(&values()).expect_err("no tag");
        assert_eq!(
            err.to_string(),
            "${TAG} has no value here (no git tag points at the commit); give a default with ${TAG:-value}"
        );
    }

    #[test]
    fn long_results_are_cut_and_empty_ones_refused() {
        let long = TagValues {
            branch: Some("b".repeat(200)),
            ..values()
        };
        let template: TagTemplate = "${BRANCH}".parse().expect("valid");
        assert_eq!(template.render(&long).expect("renders").len(), 128);
        let empty = TagValues {
            branch: Some("///".into()),
            ..values()
        };
        assert!(matches!(
            template.render(&empty),
            Err(TemplateError::Empty { .. })
        ));
    }

    #[rstest]
    #[case(0, "19700101000000")]
    #[case(951_782_400, "20000229000000")]
    #[case(1_764_062_000, "20251125091320")]
    #[case(4_102_444_799, "20991231235959")]
    fn timestamps_are_utc_and_sortable(#[case] secs: i64, #[case] expected: &str) {
        assert_eq!(sortable_timestamp(secs), expected);
    }

    #[rstest]
    #[case(0, "1970-01-01T00:00:00Z")]
    #[case(951_782_400, "2000-02-29T00:00:00Z")]
    #[case(1_700_000_000, "2023-11-14T22:13:20Z")]
    fn rfc3339_timestamps_are_utc(#[case] secs: i64, #[case] expected: &str) {
        assert_eq!(rfc3339_timestamp(secs), expected);
    }
}
