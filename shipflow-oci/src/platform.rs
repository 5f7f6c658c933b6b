//! [`Platform`]: an OS, an architecture and its variant, as OCI image indexes
//! name them (`linux/amd64`, `linux/arm64`, `linux/arm/v7`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A platform an image runs on, in the Go names OCI uses. Written
/// `os/architecture[/variant]` in `shipflow.toml`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, `arm`, …
    pub architecture: String,
    /// `v7`, `v8`, …, or none.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this machine (Linux, since images run on Linux here).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "riscv64" => "riscv64",
            "s390x" => "s390x",
            "arm" => "arm",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an index entry of platform `other` runs here, as containerd
    /// matches them: same OS and architecture, and the same variant once the
    /// default variants (`arm64` is `v8`) are filled in.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && self.normalized_variant() == other.normalized_variant()
    }

    fn normalized_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm64", None | Some("v8")) => None,
            ("arm", None) => Some("v7"),
            (_, variant) => variant,
        }
    }

    /// The Rust target triple of the platform (GNU libc), for
    /// `${TARGET_TRIPLE}` in layer sources; `None` for a platform without a
    /// well-known one.
    pub fn rust_target_triple(&self) -> Option<&'static str> {
        if self.os != "linux" {
            return None;
        }
        Some(
            match (self.architecture.as_str(), self.normalized_variant()) {
                ("amd64", _) => "x86_64-unknown-linux-gnu",
                ("arm64", _) => "aarch64-unknown-linux-gnu",
                ("arm", Some("v7")) => "armv7-unknown-linux-gnueabihf",
                ("arm", Some("v6")) => "arm-unknown-linux-gnueabihf",
                ("386", _) => "i686-unknown-linux-gnu",
                ("ppc64le", _) => "powerpc64le-unknown-linux-gnu",
                ("s390x", _) => "s390x-unknown-linux-gnu",
                ("riscv64", _) => "riscv64gc-unknown-linux-gnu",
                _ => return None,
            },
        )
    }

    /// The `platform` object of an index entry.
    pub(crate) fn to_json(&self) -> Value {
        let mut platform = json!({"architecture": self.architecture, "os": self.os});
        if let Some(variant) = &self.variant {
            platform["variant"] = Value::from(variant.as_str());
        }
        platform
    }

    /// The platform of an index entry or image config (`os`, `architecture`,
    /// `variant` keys), if it names one.
    pub(crate) fn from_json(value: &Value) -> Option<Self> {
        Some(Self {
            os: value.get("os")?.as_str()?.to_owned(),
            architecture: value.get("architecture")?.as_str()?.to_owned(),
            variant: value
                .get("variant")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        match parts.as_slice() {
            [os, arch] if valid(os) && valid(arch) => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: None,
            }),
            [os, arch, variant] if valid(os) && valid(arch) && valid(variant) => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: Some((*variant).into()),
            }),
            _ => Err(format!(
                "{s:?} is not a platform like \"linux/amd64\" or \"linux/arm/v7\""
            )),
        }
    }
}

impl TryFrom<String> for Platform {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Platform> for String {
    fn from(platform: Platform) -> Self {
        platform.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().expect("platform")
    }

    #[test]
    fn platforms_parse_print_and_match_with_default_variants() {
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(p("linux/arm").matches(&p("linux/arm/v7")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        assert!(!p("linux/amd64").matches(&p("linux/arm64")));
        assert!("linux".parse::<Platform>().is_err());
        assert!("Linux/AMD64".parse::<Platform>().is_err());
        assert!("linux/amd64/v2/x".parse::<Platform>().is_err());
        assert_eq!(
            p("linux/arm64").rust_target_triple(),
            Some("aarch64-unknown-linux-gnu")
        );
        assert_eq!(p("windows/amd64").rust_target_triple(), None);
    }
}
