//! Image policies: which tag of a repository to run, chosen from its tags as
//! Flux's `ImagePolicy` chooses, and resolved to the digest it names.
//!
//! An [`ImagePolicy`] orders a repository's tags by a [`PolicyRule`] — a
//! `semver` range, `numerical` or `alphabetical` order — after an optional
//! filter (Flux's `filterTags`) that keeps the tags a regex matches and orders
//! them by a value extracted from the tag itself, e.g. the timestamp of
//! `main-1a2b3c4-1700000000` with `^main-[a-f0-9]+-(?P<ts>[0-9]+)` and `$ts`.
//! Never by the image's `config.created`: reproducible images all share one.
//!
//! A [`TagCache`] lists each repository once per poll, however many policies
//! watch it, and resolves each chosen tag once.
//!
//! ```
//! use shipflow_oci::{ImagePolicy, PolicyRule, SortOrder};
//!
//! let latest_main = ImagePolicy::new("api-main", "ghcr.io/acme/api", PolicyRule::Numerical {
//!     order: SortOrder::Asc,
//! })?
//! .filter_tags(r"^main-[a-f0-9]+-(?P<ts>[0-9]+)$", Some("$ts"))?;
//! let tags = ["main-1a2b3c4-1700000100", "main-9f8e7d6-1700000050", "v1.2.0", "latest"];
//! assert_eq!(latest_main.choose(&tags)?, "main-1a2b3c4-1700000100");
//!
//! let stable: ImagePolicy = toml::from_str(
//!     r#"
//!     name = "api-stable"
//!     repository = "ghcr.io/acme/api"
//!     policy = { semver = { range = ">=1.0.0 <2.0.0" } }
//!     "#,
//! )?;
//! assert_eq!(stable.choose(&["1.4.0", "1.10.1", "2.0.0-rc.1", "2.1.0"])?, "1.10.1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod error;
mod filter;
mod number;
mod range;

use std::cmp::Ordering;

use semver::Version;
use serde::{Deserialize, Serialize};
use shipflow_core::{Digest, ImageRef};

pub use self::cache::TagCache;
pub use self::error::PolicyError;
use self::filter::{FilterError, TagFilter};
use self::number::Decimal;
use self::range::SemverRange;

/// How a policy orders the tags it considers; the greatest in that order wins.
///
/// In configuration (TOML shown; YAML alike): `policy = { semver = { range =
/// ">=1.0.0" } }`, `policy = { numerical = { order = "asc" } }`, `policy = {
/// alphabetical = { order = "desc" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyRule {
    /// The highest semver version in `range` (Flux's syntax: see below). A tag
    /// is a version when it is strict semver, with an optional leading `v`.
    ///
    /// Ranges: alternatives joined by `||`; comparators separated by spaces or
    /// commas; operators `=` `!=` `>` `>=` `<` `<=` `~` `^`; a bare version is
    /// exact (`1.2` is `1.2.x`); wildcards `x` `*`; hyphen ranges `1.2 - 1.4`.
    /// A pre-release version matches only comparators that name a pre-release,
    /// as in Flux: `>=1.0.0` skips `2.0.0-rc.1`, `>=1.0.0-0` takes it.
    Semver {
        /// The range, e.g. `>=1.0.0 <2.0.0` or `^1.2`.
        range: String,
    },
    /// The tags (or extracted values) read as decimal numbers (`42`, `-1.5`,
    /// compared exactly at any length); others are skipped.
    Numerical {
        /// `asc` (default) takes the highest number, `desc` the lowest.
        #[serde(default)]
        order: SortOrder,
    },
    /// The tags (or extracted values) compared byte by byte.
    Alphabetical {
        /// `asc` (default) takes the last in alphabetical order, `desc` the first.
        #[serde(default)]
        order: SortOrder,
    },
}

/// Flux's `order`: with `asc` the policy takes the last value in ascending
/// order (the highest), with `desc` the first (the lowest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Take the highest (the default).
    #[default]
    Asc,
    /// Take the lowest.
    Desc,
}

/// A policy choosing one tag of one repository. Made by [`ImagePolicy::new`] or
/// deserialized; an invalid range, pattern, extract template or repository is
/// refused then, with a [`PolicyError::Invalid`] naming it.
///
/// Serialized form (TOML shown; `filterTags`, Flux's spelling, is accepted too):
///
/// ```toml
/// name = "api-main"
/// repository = "ghcr.io/acme/api"
/// policy = { numerical = { order = "asc" } }
/// filter_tags = { pattern = '^main-[a-f0-9]+-(?P<ts>[0-9]+)$', extract = '$ts' }
/// ```
///
/// Ties (tags whose values compare equal, such as `1.2.3` and `v1.2.3`, or two
/// tags extracting the same timestamp) go to the tag that sorts last
/// alphabetically, whatever order the registry listed them in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "Spec", into = "Spec")]
pub struct ImagePolicy {
    spec: Spec,
    repository: ImageRef,
    range: Option<SemverRange>,
    filter: Option<TagFilter>,
}

/// The serialized form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    name: String,
    repository: String,
    policy: PolicyRule,
    #[serde(default, alias = "filterTags", skip_serializing_if = "Option::is_none")]
    filter_tags: Option<FilterTags>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterTags {
    pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    extract: Option<String>,
}

impl TryFrom<Spec> for ImagePolicy {
    type Error = PolicyError;

    fn try_from(spec: Spec) -> Result<Self, PolicyError> {
        let invalid = |setting, value: &str, reason: String| PolicyError::Invalid {
            policy: spec.name.clone(),
            setting,
            value: value.to_owned(),
            reason,
        };
        let repository: ImageRef = spec
            .repository
            .parse()
            .map_err(|e| invalid("repository", &spec.repository, format!("{e}")))?;
        if repository.tag().is_some() || repository.digest().is_some() {
            return Err(invalid(
                "repository",
                &spec.repository,
                "name the repository alone, without a tag or digest: the policy chooses the tag"
                    .into(),
            ));
        }
        let range = match &spec.policy {
            PolicyRule::Semver { range } => Some(
                SemverRange::parse(range)
                    .map_err(|reason| invalid("semver range", range, reason))?,
            ),
            _ => None,
        };
        let filter = match &spec.filter_tags {
            None => None,
            Some(f) => Some(TagFilter::new(&f.pattern, f.extract.as_deref()).map_err(
                |e| match e {
                    FilterError::Pattern(e) => invalid("filter pattern", &f.pattern, e.to_string()),
                    FilterError::Extract(reason) => invalid(
                        "extract template",
                        f.extract.as_deref().unwrap_or_default(),
                        reason,
                    ),
                },
            )?),
        };
        Ok(Self {
            spec,
            repository,
            range,
            filter,
        })
    }
}

impl From<ImagePolicy> for Spec {
    fn from(policy: ImagePolicy) -> Self {
        policy.spec
    }
}

/// A tag's value under a rule.
enum Key {
    Version(Version),
    Number(Decimal),
    Text(String),
}

impl Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Key::Version(a), Key::Version(b)) => a.cmp_precedence(b),
            (Key::Number(a), Key::Number(b)) => a.cmp(b),
            (Key::Text(a), Key::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            // One rule gives one kind of key.
            _ => Ordering::Equal,
        }
    }
}

impl ImagePolicy {
    /// A policy named `name` (what setter markers and logs call it) choosing a
    /// tag of `repository` (`registry/repository`, no tag) by `rule`.
    pub fn new(
        name: impl Into<String>,
        repository: &str,
        rule: PolicyRule,
    ) -> Result<Self, PolicyError> {
        Spec {
            name: name.into(),
            repository: repository.to_owned(),
            policy: rule,
            filter_tags: None,
        }
        .try_into()
    }

    /// Considers only the tags `pattern` (a regex) matches, ordered by
    /// `extract` (a template such as `$ts` or `${ts}`, naming the pattern's
    /// captures) expanded over the match; without `extract`, by the tag.
    pub fn filter_tags(self, pattern: &str, extract: Option<&str>) -> Result<Self, PolicyError> {
        let mut spec = self.spec;
        spec.filter_tags = Some(FilterTags {
            pattern: pattern.to_owned(),
            extract: extract.map(str::to_owned),
        });
        spec.try_into()
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The repository it chooses from (no tag).
    pub fn repository(&self) -> &ImageRef {
        &self.repository
    }

    /// Its rule.
    pub fn rule(&self) -> &PolicyRule {
        &self.spec.policy
    }

    /// The tag this policy takes from `tags` (a repository's tags, in any order),
    /// or [`PolicyError::NoMatch`] saying what the filter and the rule left.
    pub fn choose<'t, T: AsRef<str>>(&self, tags: &'t [T]) -> Result<&'t str, PolicyError> {
        let (mut filtered, mut keyed) = (0usize, 0usize);
        let mut best: Option<(Key, &str)> = None;
        for tag in tags.iter().map(AsRef::as_ref) {
            let value = match &self.filter {
                Some(filter) => match filter.apply(tag) {
                    Some(value) => value,
                    None => continue,
                },
                None => tag.to_owned(),
            };
            filtered += 1;
            let Some(key) = self.key(value) else { continue };
            keyed += 1;
            if let (Key::Version(v), Some(range)) = (&key, &self.range)
                && !range.matches(v)
            {
                continue;
            }
            let better = match &best {
                None => true,
                Some((best_key, best_tag)) => {
                    let order = match self.spec.policy {
                        PolicyRule::Numerical {
                            order: SortOrder::Desc,
                        }
                        | PolicyRule::Alphabetical {
                            order: SortOrder::Desc,
                        } => best_key.cmp(&key),
                        _ => key.cmp(best_key),
                    };
                    order.then_with(|| tag.cmp(best_tag)) == Ordering::Greater
                }
            };
            if better {
                best = Some((key, tag));
            }
        }
        best.map(|(_, tag)| tag)
            .ok_or_else(|| PolicyError::NoMatch {
                policy: self.name().to_owned(),
                repository: self.repository.name(),
                listed: tags.len(),
                why: self.why_none(tags.len(), filtered, keyed),
            })
    }

    /// `value` as the rule reads it, or `None` when it is no such value.
    fn key(&self, value: String) -> Option<Key> {
        match self.spec.policy {
            PolicyRule::Semver { .. } => {
                // As Flux: strict semver, after one leading `v`.
                let bare = value.strip_prefix('v').unwrap_or(&value);
                Version::parse(bare).ok().map(Key::Version)
            }
            PolicyRule::Numerical { .. } => Decimal::parse(&value).map(Key::Number),
            PolicyRule::Alphabetical { .. } => Some(Key::Text(value)),
        }
    }

    fn why_none(&self, listed: usize, filtered: usize, keyed: usize) -> String {
        if listed == 0 {
            return "the repository has no tags".into();
        }
        if let (Some(f), 0) = (&self.spec.filter_tags, filtered) {
            return format!("none matches the filter pattern `{}`", f.pattern);
        }
        let considered = if self.filter.is_some() {
            format!("{filtered} matched the filter, ")
        } else {
            String::new()
        };
        match &self.spec.policy {
            PolicyRule::Semver { .. } if keyed == 0 => {
                format!("{considered}none of them is a semver version")
            }
            PolicyRule::Semver { range } => {
                format!("{considered}{keyed} semver version(s), none in range `{range}`")
            }
            _ => format!("{considered}none of them is a decimal number"),
        }
    }
}

/// What a policy chose: the tag, and the digest the registry said it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Resolution {
    /// The policy's name.
    pub policy: String,
    /// The repository with the chosen tag.
    pub image: ImageRef,
    /// The digest of the tag's manifest (an image index for a multi-platform image).
    pub digest: Digest,
}

impl Resolution {
    /// The chosen tag.
    pub fn tag(&self) -> &str {
        self.image.tag().unwrap_or_default()
    }

    /// `registry/repository:tag@sha256:…`, what a manifest should name: the tag
    /// for people, the digest for the runtime.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.image, self.digest)
    }
}
