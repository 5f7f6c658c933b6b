//! Image references and content digests, per the OCI distribution reference grammar.
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component ( "/" path-component )*
//! domain     := host [ ":" port ]
//! tag        := [\w][\w.-]{0,127}
//! digest     := algorithm ":" encoded
//! ```
//!
//! Names without a domain are Docker Hub names and are normalised the way the
//! Docker CLI does it: `nginx` is `docker.io/library/nginx`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// The registry that names without a domain refer to.
pub const DOCKER_HUB: &str = "docker.io";

const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a string is not a valid image reference or digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is empty.
    #[error("image reference is empty")]
    Empty,
    /// The repository name has upper-case letters (only the domain may).
    #[error(
        "invalid image reference {input:?}: repository name must be lowercase (try {suggestion:?})"
    )]
    Uppercase {
        /// The reference as given.
        input: String,
        /// The same reference with the repository lower-cased.
        suggestion: String,
    },
    /// A component of the repository path breaks the grammar.
    #[error(
        "invalid image reference {input:?}: path component {component:?} must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    PathComponent {
        /// The reference as given.
        input: String,
        /// The offending component.
        component: String,
    },
    /// The domain (registry host and port) breaks the grammar.
    #[error("invalid image reference {input:?}: {domain:?} is not a valid registry host[:port]")]
    Domain {
        /// The reference as given.
        input: String,
        /// The offending domain.
        domain: String,
    },
    /// The tag breaks the grammar.
    #[error(
        "invalid image reference {input:?}: tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
    )]
    Tag {
        /// The reference as given.
        input: String,
        /// The offending tag.
        tag: String,
    },
    /// The repository name is longer than 255 characters.
    #[error("invalid image reference {input:?}: repository name is {len} characters, at most 255")]
    NameTooLong {
        /// The reference as given.
        input: String,
        /// The name's length.
        len: usize,
    },
    /// The digest breaks the grammar.
    #[error("invalid digest {input:?}: {reason}")]
    Digest {
        /// The digest as given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A content digest such as `sha256:9f86d0…`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: String,
    encoded: String,
}

impl Digest {
    /// The SHA-256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        Self::from_sha256_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest of what a SHA-256 hasher has been fed.
    pub fn from_sha256_hasher(hasher: Sha256) -> Self {
        Self {
            algorithm: "sha256".into(),
            encoded: hex(&hasher.finalize()),
        }
    }

    /// The algorithm, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        &self.algorithm
    }

    /// The hex-encoded hash.
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// The first 12 hex digits, the short form people read.
    pub fn short(&self) -> &str {
        &self.encoded[..12.min(self.encoded.len())]
    }
}

/// Lower-case hex encoding of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ReferenceError::Digest {
            input: input.to_owned(),
            reason,
        };
        let (algorithm, encoded) = input
            .split_once(':')
            .ok_or_else(|| fail("expected <algorithm>:<hex>"))?;
        let algorithm_ok = !algorithm.is_empty()
            && algorithm.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !algorithm_ok {
            return Err(fail("algorithm must be lowercase letters and digits"));
        }
        let expected_len = match algorithm {
            "sha256" => Some(64),
            "sha512" => Some(128),
            _ => None,
        };
        if !encoded.bytes().all(|b| b.is_ascii_hexdigit()) || encoded.len() < 32 {
            return Err(fail("hash must be at least 32 hex digits"));
        }
        if let Some(len) = expected_len {
            if encoded.len() != len {
                return Err(fail(if len == 64 {
                    "sha256 hash must be 64 hex digits"
                } else {
                    "sha512 hash must be 128 hex digits"
                }));
            }
            if encoded.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(fail("hash must be lowercase hex"));
            }
        }
        Ok(Self {
            algorithm: algorithm.to_owned(),
            encoded: encoded.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.encoded)
    }
}

/// A reference to an image: registry, repository, and a tag and/or a digest.
///
/// ```
/// use shipflow_core::ImageRef;
///
/// let r: ImageRef = "nginx:1.27".parse()?;
/// assert_eq!(r.registry(), "docker.io");
/// assert_eq!(r.repository(), "library/nginx");
/// assert_eq!(r.to_string(), "docker.io/library/nginx:1.27");
///
/// let local: ImageRef = "127.0.0.1:5000/team/api@sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".parse()?;
/// assert_eq!(local.registry(), "127.0.0.1:5000");
/// assert!(local.digest().is_some());
/// # Ok::<(), shipflow_core::ReferenceError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// The registry host and optional port, e.g. `ghcr.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry, e.g. `team/api`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What the distribution API's `/manifests/<reference>` takes for this image:
    /// the digest, else the tag, else `latest`.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !is_valid_tag(tag) {
            return Err(ReferenceError::Tag {
                input: format!("{}:{tag}", self.name()),
                tag: tag.to_owned(),
            });
        }
        Ok(Self {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        })
    }

    /// The same repository pinned to `digest` (`repo@sha256:…`), without a tag:
    /// what a workload should run, so that a re-pushed tag can never be served stale.
    pub fn pinned(&self, digest: Digest) -> Self {
        Self {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Whether the registry is on the loopback interface (where plain HTTP is acceptable).
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => &self.registry,
        };
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && !is_valid_tag(tag)
        {
            return Err(ReferenceError::Tag {
                input: input.to_owned(),
                tag: tag.to_owned(),
            });
        }
        let (registry, repository) = split_domain(name);
        if let Some(domain) = registry
            && !is_valid_domain(domain)
        {
            return Err(ReferenceError::Domain {
                input: input.to_owned(),
                domain: domain.to_owned(),
            });
        }
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            let suggestion = match registry {
                Some(domain) => format!("{domain}/{}", &input[domain.len() + 1..].to_lowercase()),
                None => input.to_lowercase(),
            };
            return Err(ReferenceError::Uppercase {
                input: input.to_owned(),
                suggestion,
            });
        }
        if let Some(component) = repository.split('/').find(|c| !is_valid_path_component(c)) {
            return Err(ReferenceError::PathComponent {
                input: input.to_owned(),
                component: component.to_owned(),
            });
        }
        let (registry, repository) = match registry {
            None | Some("index.docker.io" | "docker.io") if !repository.contains('/') => {
                (DOCKER_HUB.to_owned(), format!("library/{repository}"))
            }
            None | Some("index.docker.io" | "docker.io") => {
                (DOCKER_HUB.to_owned(), repository.to_owned())
            }
            Some(domain) => (domain.to_owned(), repository.to_owned()),
        };
        // The limit is on the name as it is used, `docker.io/library/…` included
        // (as Docker's ParseNormalizedNamed checks it), so what prints parses again.
        let len = registry.len() + 1 + repository.len();
        if len > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong {
                input: input.to_owned(),
                len,
            });
        }
        Ok(Self {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

/// Splits `name` into its domain, if its first component is one (Docker's rule:
/// it has a `.` or `:`, is `localhost`, or has upper-case letters), and the path.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        // [IPv6]:port
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        return after.is_empty() || after.strip_prefix(':').is_some_and(is_valid_port);
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    host_ok && port.is_none_or(is_valid_port)
}

fn is_valid_port(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// `[a-z0-9]+ ( ( [._] | __ | [-]+ ) [a-z0-9]+ )*`
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `tag` is a valid tag: `[\w][\w.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && word(tag.as_bytes()[0])
        && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// Turns any string into a valid tag: characters a tag cannot hold become `-`,
/// leading `.` and `-` are dropped, and a result longer than 128 characters is cut
/// to 119 and ends in `-` and 8 hex digits of a hash of the whole, so two long tags
/// that differ only past the cut (a long branch name, then `${FINGERPRINT}`) stay
/// different. Returns `None` when nothing usable is left.
///
/// ```
/// assert_eq!(shipflow_core::sanitize_tag("feature/x").as_deref(), Some("feature-x"));
/// ```
pub fn sanitize_tag(raw: &str) -> Option<String> {
    let mapped: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '-' => c,
            _ => '-',
        })
        .collect();
    let trimmed = mapped.trim_start_matches(['.', '-']);
    if trimmed.len() <= MAX_TAG_LEN {
        return (!trimmed.is_empty()).then(|| trimmed.to_owned());
    }
    let hash = Sha256::digest(trimmed.as_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Every character is ASCII here, so byte and character counts agree.
    Some(format!("{}-{hex}", &trimmed[..MAX_TAG_LEN - 9]))
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_serde!(Digest);
string_serde!(ImageRef);

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[rstest]
    #[case("nginx", "docker.io", "library/nginx", None, "docker.io/library/nginx")]
    #[case(
        "nginx:1.27",
        "docker.io",
        "library/nginx",
        Some("1.27"),
        "docker.io/library/nginx:1.27"
    )]
    #[case(
        "bitnami/redis",
        "docker.io",
        "bitnami/redis",
        None,
        "docker.io/bitnami/redis"
    )]
    #[case(
        "docker.io/nginx",
        "docker.io",
        "library/nginx",
        None,
        "docker.io/library/nginx"
    )]
    #[case(
        "index.docker.io/nginx",
        "docker.io",
        "library/nginx",
        None,
        "docker.io/library/nginx"
    )]
    #[case(
        "ghcr.io/acme/api:v1",
        "ghcr.io",
        "acme/api",
        Some("v1"),
        "ghcr.io/acme/api:v1"
    )]
    #[case("localhost/api", "localhost", "api", None, "localhost/api")]
    #[case(
        "localhost:5000/team/api:main-1a2b3c",
        "localhost:5000",
        "team/api",
        Some("main-1a2b3c"),
        "localhost:5000/team/api:main-1a2b3c"
    )]
    #[case(
        "127.0.0.1:5000/a/b/c",
        "127.0.0.1:5000",
        "a/b/c",
        None,
        "127.0.0.1:5000/a/b/c"
    )]
    #[case("[::1]:5000/api", "[::1]:5000", "api", None, "[::1]:5000/api")]
    #[case(
        "Registry.Example.com/api",
        "Registry.Example.com",
        "api",
        None,
        "Registry.Example.com/api"
    )]
    #[case(
        "r.io/a__b/c.d/e-f/g--h",
        "r.io",
        "a__b/c.d/e-f/g--h",
        None,
        "r.io/a__b/c.d/e-f/g--h"
    )]
    #[case(
        "r.io/api:_Tag.1-x",
        "r.io",
        "api",
        Some("_Tag.1-x"),
        "r.io/api:_Tag.1-x"
    )]
    fn parses_valid_references(
        #[case] input: &str,
        #[case] registry: &str,
        #[case] repository: &str,
        #[case] tag: Option<&str>,
        #[case] printed: &str,
    ) {
        let r: ImageRef = input.parse().expect("valid reference");
        assert_eq!(r.registry(), registry);
        assert_eq!(r.repository(), repository);
        assert_eq!(r.tag(), tag);
        assert_eq!(r.to_string(), printed);
        assert_eq!(printed.parse::<ImageRef>().expect("round trip"), r);
    }

    #[test]
    fn parses_tag_and_digest_together() {
        let r: ImageRef = format!("r.io/api:v1@sha256:{SHA}").parse().expect("valid");
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest().map(Digest::encoded), Some(SHA));
        assert_eq!(
            r.pinned(r.digest().cloned().expect("digest")).to_string(),
            format!("r.io/api@sha256:{SHA}")
        );
    }

    #[rstest]
    #[case("", "image reference is empty")]
    #[case(
        "Nginx",
        "invalid image reference \"Nginx\": repository name must be lowercase (try \"nginx\")"
    )]
    #[case(
        "r.io/Team/API:v1",
        "invalid image reference \"r.io/Team/API:v1\": repository name must be lowercase (try \"r.io/team/api:v1\")"
    )]
    #[case(
        "r.io/api:",
        "invalid image reference \"r.io/api:\": tag \"\" must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
    )]
    #[case(
        "r.io/api:-x",
        "invalid image reference \"r.io/api:-x\": tag \"-x\" must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
    )]
    #[case(
        "r.io/api:a/b",
        "invalid image reference \"r.io/api:a/b\": path component \"api:a\" must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    #[case(
        "r.io//api",
        "invalid image reference \"r.io//api\": path component \"\" must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    #[case(
        "r.io/a___b",
        "invalid image reference \"r.io/a___b\": path component \"a___b\" must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    #[case(
        "r.io/-api",
        "invalid image reference \"r.io/-api\": path component \"-api\" must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    #[case(
        "r.io/api.",
        "invalid image reference \"r.io/api.\": path component \"api.\" must be lowercase letters and digits, separated by '.', '_', '__' or '-'"
    )]
    #[case(
        "-r.io/api",
        "invalid image reference \"-r.io/api\": \"-r.io\" is not a valid registry host[:port]"
    )]
    #[case(
        "r.io:port/api",
        "invalid image reference \"r.io:port/api\": \"r.io:port\" is not a valid registry host[:port]"
    )]
    #[case(
        "r.io:/api",
        "invalid image reference \"r.io:/api\": \"r.io:\" is not a valid registry host[:port]"
    )]
    #[case(
        "r.io/api@sha256:abc",
        "invalid digest \"sha256:abc\": hash must be at least 32 hex digits"
    )]
    #[case("r.io/api@md5", "invalid digest \"md5\": expected <algorithm>:<hex>")]
    fn rejects_invalid_references(#[case] input: &str, #[case] message: &str) {
        let err = input.parse::<ImageRef>().expect_err("invalid reference");
        assert_eq!(err.to_string(), message);
    }

    #[test]
    fn rejects_overlong_names_and_tags() {
        let long = format!("r.io/{}", "a".repeat(260));
        assert!(matches!(
            long.parse::<ImageRef>(),
            Err(ReferenceError::NameTooLong { len: 265, .. })
        ));
        // Short as written, too long once docker.io/library/ is added (a fuzz finding).
        let short = "a".repeat(240);
        assert!(matches!(
            short.parse::<ImageRef>(),
            Err(ReferenceError::NameTooLong { len: 258, .. })
        ));
        let fits = "a".repeat(255 - "docker.io/library/".len());
        let parsed: ImageRef = fits.parse().expect("fits");
        assert_eq!(parsed.to_string().parse::<ImageRef>().expect("round trip"), parsed);
        let tag = "t".repeat(129);
        assert!(matches!(
            format!("r.io/a:{tag}").parse::<ImageRef>(),
            Err(ReferenceError::Tag { .. })
        ));
        assert!(
            format!("r.io/a:{}", "t".repeat(128))
                .parse::<ImageRef>()
                .is_ok()
        );
    }

    #[rstest]
    #[case(&format!("sha256:{SHA}"), None)]
    #[case(&format!("sha512:{}", "ab".repeat(64)), None)]
    #[case(&format!("multihash+base58:{}", "0".repeat(32)), None)]
    #[case(&format!("sha256:{}", SHA.to_uppercase()), Some("invalid digest \"sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\": hash must be lowercase hex"))]
    #[case(&format!("sha256:{}", &SHA[..63]), Some("invalid digest \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0\": sha256 hash must be 64 hex digits"))]
    #[case(&format!("SHA256:{SHA}"), Some("invalid digest \"SHA256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\": algorithm must be lowercase letters and digits"))]
    fn parses_digests(#[case] input: &str, #[case] error: Option<&str>) {
        match (input.parse::<Digest>(), error) {
            (Ok(d), None) => assert_eq!(d.to_string(), input),
            (Err(e), Some(message)) => assert_eq!(e.to_string(), message),
            (result, expected) => panic!("{input}: got {result:?}, expected error {expected:?}"),
        }
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(Digest::sha256(b"test").encoded(), SHA);
    }

    #[rstest]
    #[case("feature/x", Some("feature-x"))]
    #[case("main", Some("main"))]
    #[case("-.lead", Some("lead"))]
    #[case("renovate/npm-@types/node", Some("renovate-npm--types-node"))]
    #[case("///", None)]
    #[case("ünïcode", Some("n-code"))]
    fn sanitizes_tags(#[case] raw: &str, #[case] expected: Option<&str>) {
        let tag = sanitize_tag(raw);
        assert_eq!(tag.as_deref(), expected);
        if let Some(tag) = tag {
            assert!(is_valid_tag(&tag), "{tag}");
        }
    }

    #[test]
    fn long_tags_are_cut_to_128_and_stay_distinct() {
        let tag = sanitize_tag(&"x".repeat(300)).expect("tag");
        assert_eq!(tag.len(), 128);
        assert!(is_valid_tag(&tag), "{tag}");
        let branch = "feature/".to_owned() + &"long-name-".repeat(13);
        let a = sanitize_tag(&format!("{branch}-fp0123")).expect("tag");
        let b = sanitize_tag(&format!("{branch}-fp4567")).expect("tag");
        assert_ne!(a, b, "the part past the cut still tells them apart");
        assert_eq!(a.len(), 128);
        assert_eq!(
            sanitize_tag(&"y".repeat(128)).expect("tag"),
            "y".repeat(128)
        );
    }

    #[rstest]
    #[case("localhost:5000/a", true)]
    #[case("127.0.0.1:5000/a", true)]
    #[case("127.1.2.3/a", true)]
    #[case("[::1]:5000/a", true)]
    #[case("127.mycorp.net/a", false)]
    #[case("127.0.0.1.nip.io/a", false)]
    #[case("registry.local:5000/a", false)]
    fn loopback_means_a_loopback_address(#[case] reference: &str, #[case] loopback: bool) {
        let r: ImageRef = reference.parse().expect("valid");
        assert_eq!(r.is_loopback(), loopback, "{reference}");
    }
}
