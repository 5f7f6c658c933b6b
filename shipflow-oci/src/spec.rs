//! `build = { type = "native", … }`: the native builder's section of `shipflow.toml`.
//!
//! ```toml
//! [apps.web]
//! build = { type = "native", base = "scratch", layers = [{ from = "apps/web/dist", to = "/srv" }], entrypoint = ["/srv/server"], expose = ["8080/tcp"] }
//!
//! [apps.api]   # one image index for two platforms, from cross-compiled binaries
//! build = { type = "native", platforms = ["linux/amd64", "linux/arm64"], layers = [
//!     { from = "apps/api/static", to = "/srv/static" },                   # built once, shared
//!     { from = "target/${TARGET_TRIPLE}/release/api", to = "/usr/bin/" }, # one per platform
//! ], entrypoint = ["/usr/bin/api"] }
//! ```
//!
//! A layer's `from` may name the platform: `${OS}`, `${ARCH}`, `${VARIANT}` (empty
//! when the platform has none) and `${TARGET_TRIPLE}` (the Rust target triple,
//! GNU libc by default, or the platform's entry in `target_triples`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shipflow_core::{ConfigSection, ImageRef, Schema, SectionContext, SectionError};

use crate::Platform;

/// The build type [`NativeBuild`] is read for.
pub const NATIVE_BUILD_TYPE: &str = "native";

/// The sections this crate reads: `build = { type = "native", … }`.
pub fn schema() -> Schema {
    Schema::new().build_type::<NativeBuild>(NATIVE_BUILD_TYPE)
}

/// A native image: a base and layers made from directories, plus config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NativeBuild {
    /// The base image, or `scratch` (the default).
    #[serde(default = "scratch")]
    pub base: String,
    /// Layers, base-most first (dependencies first, app code last).
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `CMD`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `WORKDIR`.
    pub workdir: Option<String>,
    /// Exposed ports, e.g. `8080/tcp`.
    #[serde(default)]
    pub expose: Vec<String>,
    /// `USER`.
    pub user: Option<String>,
    /// Image labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The platforms to build, e.g. `["linux/amd64", "linux/arm64"]`: the image is
    /// then an image index with one manifest each. Empty (the default): one
    /// manifest, for the base's platform or this machine's.
    #[serde(default)]
    pub platforms: Vec<Platform>,
    /// `${TARGET_TRIPLE}` per platform where the default (GNU libc) is not the
    /// one, e.g. `{ "linux/arm64" = "aarch64-unknown-linux-musl" }`.
    #[serde(default)]
    pub target_triples: BTreeMap<String, String>,
    /// Whether to attach an SBOM (CycloneDX 1.5: every file of every layer, and
    /// the packages of the app's `Cargo.lock` or `package-lock.json`); default true.
    #[serde(default = "yes")]
    pub sbom: bool,
    /// Whether to attach a provenance statement (in-toto v1, SLSA provenance
    /// v1); default true.
    #[serde(default = "yes")]
    pub provenance: bool,
}

fn scratch() -> String {
    "scratch".into()
}

fn yes() -> bool {
    true
}

/// The variables a layer's `from` may use.
const PLATFORM_VARIABLES: [&str; 4] = ["OS", "ARCH", "VARIANT", "TARGET_TRIPLE"];

/// A layer of a native image: the files under `from` placed at `to`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LayerSpec {
    /// A file or directory, relative to the repository root.
    pub from: String,
    /// Where it goes in the image: an absolute path.
    pub to: String,
}

impl LayerSpec {
    /// The files under `from` (relative to the repository root) placed at `to`.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
        }
    }
}

impl Default for NativeBuild {
    fn default() -> Self {
        Self {
            base: scratch(),
            layers: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: BTreeMap::new(),
            workdir: None,
            expose: Vec::new(),
            user: None,
            labels: BTreeMap::new(),
            platforms: Vec::new(),
            target_triples: BTreeMap::new(),
            sbom: true,
            provenance: true,
        }
    }
}

impl NativeBuild {
    /// A build on `base` (`scratch` for none) with no layers yet.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            ..Self::default()
        }
    }

    /// Builds for `platforms`, into an image index.
    pub fn platforms(mut self, platforms: impl IntoIterator<Item = Platform>) -> Self {
        self.platforms = platforms.into_iter().collect();
        self
    }

    /// `from` of `layer` with the variables of `platform` filled in.
    pub fn layer_source(&self, layer: &LayerSpec, platform: &Platform) -> Result<String, String> {
        expand(&layer.from, |name| match name {
            "OS" => Ok(platform.os.clone()),
            "ARCH" => Ok(platform.architecture.clone()),
            "VARIANT" => Ok(platform.variant.clone().unwrap_or_default()),
            "TARGET_TRIPLE" => self.target_triple(platform),
            other => Err(format!(
                "${{{other}}} is not a layer variable (known: {})",
                PLATFORM_VARIABLES.map(|v| format!("${{{v}}}")).join(", ")
            )),
        })
    }

    fn target_triple(&self, platform: &Platform) -> Result<String, String> {
        self.target_triples
            .get(&platform.to_string())
            .cloned()
            .or_else(|| platform.rust_target_triple().map(str::to_owned))
            .ok_or_else(|| {
                format!(
                    "${{TARGET_TRIPLE}} has no default for {platform}; give it in target_triples = {{ \"{platform}\" = \"…\" }}"
                )
            })
    }

    /// Adds a layer on top.
    pub fn layer(mut self, layer: LayerSpec) -> Self {
        self.layers.push(layer);
        self
    }
}

impl ConfigSection for NativeBuild {
    fn validate(&mut self, ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        if self.base != "scratch" {
            self.base.parse::<ImageRef>().map_err(|e| {
                SectionError::new(
                    "base",
                    format!("{e}; give an image reference or \"scratch\""),
                )
            })?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, platform) in self.platforms.iter().enumerate() {
            if !seen.insert(platform.to_string()) {
                return Err(SectionError::new(
                    format!("platforms[{i}]"),
                    format!("{platform} is listed twice"),
                ));
            }
        }
        for key in self.target_triples.keys() {
            key.parse::<Platform>()
                .map_err(|why| SectionError::new(format!("target_triples.{key}"), why))?;
        }
        let platforms = if self.platforms.is_empty() {
            vec![Platform::host()]
        } else {
            self.platforms.clone()
        };
        for i in 0..self.layers.len() {
            let field = format!("layers[{i}].from");
            self.layers[i].from = ctx.repo_path(&field, &self.layers[i].from)?;
            // Every platform's source must be a path in the repository too.
            for platform in &platforms {
                let source = self
                    .layer_source(&self.layers[i], platform)
                    .map_err(|why| SectionError::new(&field, why))?;
                ctx.repo_path(&field, &source)?;
            }
            let layer = &mut self.layers[i];
            layer.to = image_path(&layer.to)
                .map_err(|why| SectionError::new(format!("layers[{i}].to"), why))?;
        }
        for (i, port) in self.expose.iter().enumerate() {
            exposed_port(port).map_err(|why| SectionError::new(format!("expose[{i}]"), why))?;
        }
        if let Some(workdir) = &self.workdir
            && !workdir.starts_with('/')
        {
            return Err(SectionError::new(
                "workdir",
                format!("{workdir:?} must be an absolute path in the image"),
            ));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') {
                return Err(SectionError::new(
                    format!("env.{key}"),
                    "an environment variable name must be non-empty and without '='",
                ));
            }
        }
        Ok(())
    }
}

/// `template` with each `${NAME}` replaced by `value(NAME)`.
fn expand(
    template: &str,
    value: impl Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{template:?}: a ${{ is not closed"))?;
        out.push_str(&value(&after[..end])?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A path inside the image: absolute, normalised, never climbing above `/`.
fn image_path(to: &str) -> Result<String, String> {
    if !to.starts_with('/') {
        return Err(format!(
            "{to:?} must be an absolute path in the image, like \"/srv\""
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in to.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("{to:?} climbs above the image's root"));
                }
            }
            p => parts.push(p),
        }
    }
    // A trailing '/' says "into this directory": keep it.
    let into = to.ends_with('/') && !parts.is_empty();
    Ok(format!(
        "/{}{}",
        parts.join("/"),
        if into { "/" } else { "" }
    ))
}

/// `8080` → `8080/tcp`; checks the port number and protocol.
pub(crate) fn exposed_port(port: &str) -> Result<String, String> {
    let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
    let valid_number = number.parse::<u16>().is_ok_and(|n| n > 0);
    if !valid_number || !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(format!(
            "{port:?} is not a port like \"8080\" or \"53/udp\""
        ));
    }
    Ok(format!("{number}/{proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use shipflow_core::Workspace;

    fn load(build: &str) -> Result<NativeBuild, String> {
        let toml = format!(
            "[workspace]\nregistry = \"r.io\"\n[apps.web]\nbuild = {{ type = \"native\", {build} }}\n"
        );
        Workspace::loader()
            .schema(schema())
            .from_toml(&toml, "/nonexistent-root")
            .and_then(|ws| ws.app("web").expect("web").build_spec::<NativeBuild>())
            .map(|b| b.as_ref().clone())
            .map_err(|e| e.to_string())
    }

    #[rstest]
    #[case::layer_outside_repo(
        "layers = [{ from = \"../../secrets\", to = \"/s\" }]",
        "apps.web.build.layers[0].from: \"../../secrets\" is outside the repository (shipflow.toml, line 4, column 47)"
    )]
    #[case::layer_to_climbs(
        "layers = [{ from = \"dist\", to = \"/../../../etc\" }]",
        "apps.web.build.layers[0].to: \"/../../../etc\" climbs above the image's root (shipflow.toml, line 4, column 60)"
    )]
    #[case::layer_to_relative(
        "layers = [{ from = \"dist\", to = \"../../../etc\" }]",
        "apps.web.build.layers[0].to: \"../../../etc\" must be an absolute path in the image, like \"/srv\" (shipflow.toml, line 4, column 60)"
    )]
    #[case::bad_expose(
        "expose = [\"8080\", \"http\"]",
        "apps.web.build.expose[1]: \"http\" is not a port like \"8080\" or \"53/udp\" (shipflow.toml, line 4, column 46)"
    )]
    #[case::bad_base(
        "base = \"NOT A REF\"",
        "apps.web.build.base: invalid image reference \"NOT A REF\""
    )]
    #[case::relative_workdir(
        "workdir = \"srv\"",
        "apps.web.build.workdir: \"srv\" must be an absolute path in the image (shipflow.toml, line 4, column 38)"
    )]
    #[case::unknown_layer_variable(
        "platforms = [\"linux/amd64\"], layers = [{ from = \"target/${TRIPLE}/app\", to = \"/bin/\" }]",
        "apps.web.build.layers[0].from: ${TRIPLE} is not a layer variable (known: ${OS}, ${ARCH}, ${VARIANT}, ${TARGET_TRIPLE})"
    )]
    #[case::no_default_triple(
        "platforms = [\"linux/mips64le\"], layers = [{ from = \"target/${TARGET_TRIPLE}/app\", to = \"/bin/\" }]",
        "apps.web.build.layers[0].from: ${TARGET_TRIPLE} has no default for linux/mips64le; give it in target_triples"
    )]
    #[case::bad_platform(
        "platforms = [\"linux\"]",
        "apps.web.build: shipflow.toml: TOML parse error at line 4, column 40"
    )]
    #[case::platform_twice(
        "platforms = [\"linux/amd64\", \"linux/amd64\"]",
        "apps.web.build.platforms[1]: linux/amd64 is listed twice"
    )]
    fn bad_settings_are_refused_at_load(#[case] build: &str, #[case] start: &str) {
        let err = load(build).expect_err("refused");
        assert!(err.starts_with(start), "{err}\n---\n{start}");
    }

    #[test]
    fn layer_sources_name_each_platform() {
        let build = load(
            "platforms = [\"linux/amd64\", \"linux/arm64\", \"linux/arm/v7\"], target_triples = { \"linux/arm64\" = \"aarch64-unknown-linux-musl\" }, layers = [{ from = \"./target/${TARGET_TRIPLE}/release/${OS}-${ARCH}${VARIANT}\", to = \"/bin/\" }]",
        )
        .expect("valid");
        let sources: Vec<String> = build
            .platforms
            .iter()
            .map(|p| build.layer_source(&build.layers[0], p).expect("source"))
            .collect();
        assert_eq!(
            sources,
            [
                "target/x86_64-unknown-linux-gnu/release/linux-amd64",
                "target/aarch64-unknown-linux-musl/release/linux-arm64",
                "target/armv7-unknown-linux-gnueabihf/release/linux-armv7",
            ]
        );
        assert!(build.sbom && build.provenance, "on by default");
    }

    #[test]
    fn ports_default_to_tcp_and_are_checked() {
        assert_eq!(exposed_port("8080").as_deref(), Ok("8080/tcp"));
        assert_eq!(exposed_port("53/udp").as_deref(), Ok("53/udp"));
        assert!(exposed_port("0").is_err());
        assert!(exposed_port("80/http").is_err());
    }

    #[test]
    fn paths_are_normalised() {
        let build = load("base = \"r.io/base:1\", layers = [{ from = \"./apps/web/dist/\", to = \"/srv/./app\" }, { from = \"a\", to = \"/etc/\" }]")
            .expect("valid");
        assert_eq!(
            build.layers,
            [
                LayerSpec::new("apps/web/dist", "/srv/app"),
                LayerSpec::new("a", "/etc/")
            ]
        );
        assert_eq!(build.base, "r.io/base:1");
    }
}
