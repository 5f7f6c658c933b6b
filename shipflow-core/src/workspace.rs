//! The workspace: `shipflow.toml` parsed, overridden from the environment, validated.
//!
//! ```toml
//! [workspace]
//! registry = "registry.example.com/acme"   # images default to <registry>/<app>
//! shared = ["packages/common/**", "Cargo.lock"]   # a change here rolls every app
//! tag = "${BRANCH}-${SHORT_SHA}"
//! namespace = "prod"                        # default Kubernetes namespace
//!
//! [apps.api]
//! path = "apps/api"                         # default: apps/<name>
//! inputs = ["proto/*.proto"]                # more globs that feed the app
//! depends_on = ["auth", "packages/db"]      # other apps, or package paths
//! build = { type = "dockerfile", dockerfile = "apps/api/Dockerfile", target = "runtime" }
//! deploy.kubernetes = { deployment = "api", container = "api" }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use crate::{AppInputs, ImageRef, ReferenceError, TagTemplate};

/// The file name shipflow looks for.
pub const CONFIG_FILE: &str = "shipflow.toml";

/// Why a `shipflow.toml` cannot be used. Each variant names the key (`apps.<app>.<key>`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// An app name cannot be used in image names and container names.
    #[error(
        "apps.{app}: app names must be lowercase letters, digits, '-' and '_', starting with a letter or digit"
    )]
    AppName {
        /// The app.
        app: String,
    },
    /// `depends_on` names neither an app nor a path.
    #[error(
        "apps.{app}.depends_on: {name:?} is not an app (known apps: {known}) and not a package path (write paths with a '/', e.g. \"packages/{name}\")"
    )]
    UnknownDependency {
        /// The app.
        app: String,
        /// The name that matched nothing.
        name: String,
        /// The known apps, comma separated.
        known: String,
    },
    /// Apps depend on each other in a circle.
    #[error("apps.{}.depends_on: dependency cycle {}", cycle[0], cycle.join(" -> "))]
    DependencyCycle {
        /// The apps on the cycle, the first repeated at the end.
        cycle: Vec<String>,
    },
    /// Two apps push to the same image repository.
    #[error(
        "apps.{app}.image: {image} is already the image of app {other:?}; give each app its own repository"
    )]
    DuplicateImage {
        /// The second app.
        app: String,
        /// The app that has the image first.
        other: String,
        /// The repository.
        image: String,
    },
    /// A path points outside the repository.
    #[error("{key}: {path:?} is outside the repository")]
    PathOutsideRepo {
        /// The key, e.g. `apps.api.path`.
        key: String,
        /// The path.
        path: String,
    },
    /// A glob does not parse.
    #[error("{key}: invalid glob {glob:?}: {reason}")]
    BadGlob {
        /// The key, e.g. `workspace.shared`.
        key: String,
        /// The glob.
        glob: String,
        /// Why.
        reason: String,
    },
    /// The tag template is invalid.
    #[error("workspace.tag: {source}")]
    Template {
        /// Why.
        #[source]
        source: crate::TemplateError,
    },
    /// An image is not a valid repository reference.
    #[error("apps.{app}.image: {source}")]
    Image {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: ReferenceError,
    },
    /// An image names a tag or digest; tags come from `workspace.tag`.
    #[error(
        "apps.{app}.image: {image:?} must be a repository without tag or digest (tags come from workspace.tag)"
    )]
    ImageHasTag {
        /// The app.
        app: String,
        /// The image as written.
        image: String,
    },
    /// An app has no image and the workspace no registry to derive one from.
    #[error(
        "apps.{app}.image: no image repository; set `image` for the app, or `registry` in [workspace] (or SHIPFLOW_REGISTRY)"
    )]
    NoImage {
        /// The app.
        app: String,
    },
    /// The file defines no app.
    #[error("{}: no [apps.<name>] table; define at least one app", path.display())]
    NoApps {
        /// The file.
        path: PathBuf,
    },
}

/// `shipflow.toml` as written, before validation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Workspace-wide settings.
    #[serde(default)]
    pub workspace: WorkspaceSection,
    /// The apps, by name.
    #[serde(default)]
    pub apps: BTreeMap<String, AppSection>,
}

/// `[workspace]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSection {
    /// Registry and path prefix that images default under: `<registry>/<app>`.
    pub registry: Option<String>,
    /// Globs whose change marks every app changed (packages, lock files, root config).
    #[serde(default)]
    pub shared: Vec<String>,
    /// The tag template; default `${SHORT_SHA}`.
    pub tag: Option<String>,
    /// The default Kubernetes namespace.
    pub namespace: Option<String>,
}

/// `[apps.<name>]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    /// The app's directory; default `apps/<name>`.
    pub path: Option<String>,
    /// More globs that feed the app.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Other apps (by name) or package paths (with a `/`) the app is built from.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// The image repository; default `<workspace.registry>/<name>`.
    pub image: Option<String>,
    /// How to build it; default a Dockerfile at `<path>/Dockerfile`, context the repository root.
    pub build: Option<BuildSpec>,
    /// Where to deploy it.
    #[serde(default)]
    pub deploy: DeployTargets,
}

/// How an app is built.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BuildSpec {
    /// A Dockerfile build through a container engine.
    Dockerfile {
        /// The Dockerfile, relative to the repository root.
        dockerfile: Option<String>,
        /// The build context, relative to the repository root; default `.`.
        context: Option<String>,
        /// The target stage.
        target: Option<String>,
        /// Build arguments.
        #[serde(default)]
        args: BTreeMap<String, String>,
    },
    /// A daemonless, reproducible build: a base image plus layers from directories.
    Native(NativeBuild),
}

/// A native image: a base and layers made from directories, plus config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
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
}

fn scratch() -> String {
    "scratch".into()
}

/// A layer of a native image: the files under `from` placed at `to`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// A file or directory, relative to the repository root.
    pub from: String,
    /// Where it goes in the image.
    pub to: String,
}

/// `[apps.<name>.deploy]`: the targets an app can be deployed to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployTargets {
    /// A Kubernetes Deployment.
    pub kubernetes: Option<KubernetesTarget>,
    /// A container on one Docker or Podman host.
    pub docker: Option<DockerTarget>,
}

/// A Kubernetes Deployment's container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesTarget {
    /// The namespace; default `workspace.namespace`, then `K8S_NAMESPACE`, then `default`.
    pub namespace: Option<String>,
    /// The Deployment; default the app's name.
    pub deployment: Option<String>,
    /// The container in it; default the app's name.
    pub container: Option<String>,
}

/// A container on one Docker or Podman host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DockerTarget {
    /// The container name; default the app's name.
    pub container: Option<String>,
    /// Published ports, `host:container` (e.g. `8080:80`).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Volumes, `source:destination[:options]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Restart policy: `no`, `always`, `unless-stopped`, `on-failure`.
    pub restart: Option<String>,
    /// How the container's health is checked.
    pub health: Option<HealthCheck>,
    /// `recreate` (default) or `start-first`.
    #[serde(default)]
    pub strategy: Strategy,
    /// How many old containers to keep for rollback without a pull; default 3.
    pub keep: Option<u32>,
    /// The reverse proxy that `start-first` switches.
    pub proxy: Option<ProxyTarget>,
}

/// How a container is replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old container, start the new one.
    #[default]
    Recreate,
    /// Start the new one beside the old, switch the proxy, then stop the old.
    StartFirst,
}

/// A health check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP path probed on the container's port, e.g. `/healthz`.
    pub http: Option<String>,
    /// A command run in the container instead.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The container port to probe; default the first published one.
    pub port: Option<u16>,
    /// Seconds between probes; default 1.
    pub interval: Option<u64>,
    /// Seconds until the container must be healthy; default 30.
    pub timeout: Option<u64>,
}

/// A reverse proxy with an admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTarget {
    /// Caddy's admin address, e.g. `http://127.0.0.1:2019`.
    pub caddy_admin: String,
    /// The `@id` of the route whose upstreams are switched.
    pub route: String,
}

/// The environment variables that the old deploy scripts used, read once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvOverrides {
    /// `SHIPFLOW_REGISTRY`, else `PRIVATE_REGISTRY`: replaces `workspace.registry`.
    pub registry: Option<String>,
    /// `K8S_NAMESPACE`: the default namespace.
    pub namespace: Option<String>,
    /// `GIT_SHA`: the commit to tag with, instead of the one git reports.
    pub git_sha: Option<String>,
}

impl EnvOverrides {
    /// Reads the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads through `lookup` (for tests and embedders); empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        Self {
            registry: get("SHIPFLOW_REGISTRY").or_else(|| get("PRIVATE_REGISTRY")),
            namespace: get("K8S_NAMESPACE"),
            git_sha: get("GIT_SHA"),
        }
    }
}

/// A dependency of an app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Dependency {
    /// Another app of the workspace.
    App(String),
    /// A path in the repository (a shared package).
    Path(String),
}

/// A validated app.
#[derive(Debug, Clone, Serialize)]
pub struct App {
    /// Its name.
    pub name: String,
    /// Its directory, relative to the repository root, `/`-separated.
    pub path: String,
    /// Its extra input globs.
    pub inputs: Vec<String>,
    /// What it depends on.
    pub depends_on: Vec<Dependency>,
    /// Its image repository (no tag).
    #[serde(serialize_with = "serialize_display")]
    pub image: ImageRef,
    /// How it is built.
    pub build: BuildSpec,
    /// Where it is deployed; the Kubernetes namespace is resolved.
    pub deploy: DeployTargets,
    #[serde(skip)]
    input_globs: GlobSet,
}

fn serialize_display<S: serde::Serializer>(
    value: &impl std::fmt::Display,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

impl App {
    /// Whether `path` is the app's directory or under it.
    pub fn owns(&self, path: &str) -> bool {
        is_under(path, &self.path)
    }

    /// The extra input glob `path` matches, if any.
    pub fn matching_input(&self, path: &str) -> Option<&str> {
        self.input_globs
            .matches(path)
            .first()
            .map(|&i| self.inputs[i].as_str())
    }

    /// The app's package-path dependencies.
    pub fn package_paths(&self) -> impl Iterator<Item = &str> {
        self.depends_on.iter().filter_map(|d| match d {
            Dependency::Path(p) => Some(p.as_str()),
            Dependency::App(_) => None,
        })
    }

    /// The apps it depends on directly.
    pub fn app_dependencies(&self) -> impl Iterator<Item = &str> {
        self.depends_on.iter().filter_map(|d| match d {
            Dependency::App(a) => Some(a.as_str()),
            Dependency::Path(_) => None,
        })
    }
}

/// Whether `path` equals `dir` or lies under it (`dir` has no trailing `/`).
pub(crate) fn is_under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A validated workspace: the apps, the shared globs, the tag template, the overrides.
///
/// ```
/// use shipflow_core::{EnvOverrides, Workspace};
///
/// let toml = r#"
///     [workspace]
///     registry = "127.0.0.1:5000/acme"
///     shared = ["packages/**"]
///     [apps.api]
///     [apps.web]
///     depends_on = ["api"]
/// "#;
/// let ws = Workspace::from_toml(toml, ".", &EnvOverrides::default())?;
/// assert_eq!(ws.app("api").unwrap().path, "apps/api");
/// assert_eq!(ws.app("web").unwrap().image.to_string(), "127.0.0.1:5000/acme/web");
/// # Ok::<(), shipflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Workspace {
    root: PathBuf,
    apps: BTreeMap<String, App>,
    shared: Vec<String>,
    #[serde(skip)]
    shared_globs: GlobSet,
    tag: TagTemplate,
    git_sha: Option<String>,
}

impl Workspace {
    /// Reads `shipflow.toml` at `path`, applies the process environment's overrides
    /// and validates. The repository root is the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let root = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let config = Self::parse(&text, path)?;
        Self::new(config, root, &EnvOverrides::from_env())
    }

    /// Parses TOML text into a [`Config`]; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Parses and validates TOML text for a repository at `root`.
    pub fn from_toml(
        text: &str,
        root: impl Into<PathBuf>,
        env: &EnvOverrides,
    ) -> Result<Self, ConfigError> {
        let config = Self::parse(text, Path::new(CONFIG_FILE))?;
        Self::new(config, root.into(), env)
    }

    /// Validates `config` for a repository at `root`, with `env` applied.
    pub fn new(config: Config, root: PathBuf, env: &EnvOverrides) -> Result<Self, ConfigError> {
        if config.apps.is_empty() {
            return Err(ConfigError::NoApps {
                path: root.join(CONFIG_FILE),
            });
        }
        let ws = config.workspace;
        let registry = env.registry.clone().or(ws.registry);
        let namespace = env.namespace.clone().or(ws.namespace);
        let tag = match &ws.tag {
            Some(t) => t
                .parse()
                .map_err(|source| ConfigError::Template { source })?,
            None => TagTemplate::default(),
        };
        let shared_globs = glob_set("workspace.shared", &ws.shared)?;

        let names: BTreeSet<&str> = config.apps.keys().map(String::as_str).collect();
        let mut apps = BTreeMap::new();
        let mut images: BTreeMap<String, String> = BTreeMap::new();
        for (name, section) in &config.apps {
            let app = validate_app(
                name,
                section,
                &names,
                &root,
                registry.as_deref(),
                namespace.as_deref(),
            )?;
            if let Some(other) = images.insert(app.image.name(), name.clone()) {
                return Err(ConfigError::DuplicateImage {
                    app: name.clone(),
                    other,
                    image: app.image.name(),
                });
            }
            apps.insert(name.clone(), app);
        }
        check_cycles(&apps)?;
        Ok(Self {
            root,
            apps,
            shared: ws.shared,
            shared_globs,
            tag,
            git_sha: env.git_sha.clone(),
        })
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The apps, by name.
    pub fn apps(&self) -> impl ExactSizeIterator<Item = &App> {
        self.apps.values()
    }

    /// The app called `name`.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.get(name)
    }

    /// The shared globs.
    pub fn shared(&self) -> &[String] {
        &self.shared
    }

    /// The shared glob `path` matches, if any.
    pub fn matching_shared(&self, path: &str) -> Option<&str> {
        self.shared_globs
            .matches(path)
            .first()
            .map(|&i| self.shared[i].as_str())
    }

    /// The tag template.
    pub fn tag_template(&self) -> &TagTemplate {
        &self.tag
    }

    /// `GIT_SHA` from the environment, which replaces the commit git reports in tags.
    pub fn git_sha_override(&self) -> Option<&str> {
        self.git_sha.as_deref()
    }

    /// Everything `app` is built from: its path, its dependencies' paths (apps
    /// transitively), its input globs and the shared globs.
    pub fn inputs(&self, app: &App) -> AppInputs {
        let mut paths = BTreeSet::new();
        let mut globs: BTreeSet<String> = self.shared.iter().cloned().collect();
        let mut stack = vec![app];
        let mut seen = BTreeSet::new();
        while let Some(a) = stack.pop() {
            if !seen.insert(a.name.as_str()) {
                continue;
            }
            paths.insert(a.path.clone());
            paths.extend(a.package_paths().map(str::to_owned));
            globs.extend(a.inputs.iter().cloned());
            stack.extend(a.app_dependencies().filter_map(|d| self.apps.get(d)));
        }
        AppInputs {
            app: app.name.clone(),
            paths: paths.into_iter().collect(),
            globs: globs.into_iter().collect(),
        }
    }
}

fn validate_app(
    name: &str,
    section: &AppSection,
    names: &BTreeSet<&str>,
    root: &Path,
    registry: Option<&str>,
    namespace: Option<&str>,
) -> Result<App, ConfigError> {
    let name_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !name_ok {
        return Err(ConfigError::AppName { app: name.into() });
    }
    let key = |k: &str| format!("apps.{name}.{k}");
    let path = match &section.path {
        Some(p) => repo_path(&key("path"), p, root)?,
        None => format!("apps/{name}"),
    };
    let input_globs = glob_set(&key("inputs"), &section.inputs)?;
    let mut depends_on = Vec::new();
    for dep in &section.depends_on {
        if names.contains(dep.as_str()) {
            depends_on.push(Dependency::App(dep.clone()));
        } else if dep.contains('/') || root.join(dep).exists() {
            depends_on.push(Dependency::Path(repo_path(&key("depends_on"), dep, root)?));
        } else {
            return Err(ConfigError::UnknownDependency {
                app: name.into(),
                name: dep.clone(),
                known: names.iter().copied().collect::<Vec<_>>().join(", "),
            });
        }
    }
    let image_text = match (&section.image, registry) {
        (Some(image), _) => image.clone(),
        (None, Some(registry)) => format!("{}/{name}", registry.trim_end_matches('/')),
        (None, None) => return Err(ConfigError::NoImage { app: name.into() }),
    };
    let image: ImageRef = image_text.parse().map_err(|source| ConfigError::Image {
        app: name.into(),
        source,
    })?;
    if image.tag().is_some() || image.digest().is_some() {
        return Err(ConfigError::ImageHasTag {
            app: name.into(),
            image: image_text,
        });
    }
    let build = match &section.build {
        Some(BuildSpec::Dockerfile {
            dockerfile,
            context,
            target,
            args,
        }) => BuildSpec::Dockerfile {
            dockerfile: Some(match dockerfile {
                Some(d) => repo_path(&key("build.dockerfile"), d, root)?,
                None => format!("{path}/Dockerfile"),
            }),
            context: Some(match context {
                Some(c) => repo_path(&key("build.context"), c, root)?,
                None => String::new(),
            }),
            target: target.clone(),
            args: args.clone(),
        },
        Some(BuildSpec::Native(native)) => {
            let mut native = native.clone();
            for layer in &mut native.layers {
                layer.from = repo_path(&key("build.layers.from"), &layer.from, root)?;
            }
            BuildSpec::Native(native)
        }
        None => BuildSpec::Dockerfile {
            dockerfile: Some(format!("{path}/Dockerfile")),
            context: Some(String::new()),
            target: None,
            args: BTreeMap::new(),
        },
    };
    let mut deploy = section.deploy.clone();
    if let Some(k8s) = &mut deploy.kubernetes {
        k8s.namespace = Some(
            k8s.namespace
                .clone()
                .or_else(|| namespace.map(str::to_owned))
                .unwrap_or_else(|| "default".into()),
        );
        k8s.deployment.get_or_insert_with(|| name.to_owned());
        k8s.container.get_or_insert_with(|| name.to_owned());
    }
    if let Some(docker) = &mut deploy.docker {
        docker.container.get_or_insert_with(|| name.to_owned());
    }
    Ok(App {
        name: name.to_owned(),
        path,
        inputs: section.inputs.clone(),
        depends_on,
        image,
        build,
        deploy,
        input_globs,
    })
}

/// Normalises a repository-relative path (`./apps/x/` → `apps/x`, `.` → ``) and
/// refuses absolute paths and paths that leave the repository, lexically or through
/// a symlink.
fn repo_path(key: &str, raw: &str, root: &Path) -> Result<String, ConfigError> {
    let outside = || ConfigError::PathOutsideRepo {
        key: key.to_owned(),
        path: raw.to_owned(),
    };
    let mut parts: Vec<&str> = Vec::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(c) => parts.push(c.to_str().ok_or_else(outside)?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(outside)?;
            }
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    let normalised = parts.join("/");
    let on_disk = root.join(&normalised);
    if let (Ok(real), Ok(real_root)) = (on_disk.canonicalize(), root.canonicalize())
        && !real.starts_with(&real_root)
    {
        return Err(outside());
    }
    Ok(normalised)
}

fn glob_set(key: &str, globs: &[String]) -> Result<GlobSet, ConfigError> {
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let bad = |reason: String| ConfigError::BadGlob {
            key: key.to_owned(),
            glob: glob.clone(),
            reason,
        };
        if glob.starts_with('/') || glob.split('/').any(|c| c == "..") {
            return Err(ConfigError::PathOutsideRepo {
                key: key.to_owned(),
                path: glob.clone(),
            });
        }
        set.add(compile_glob(glob).map_err(|e| bad(e.kind().to_string()))?);
    }
    set.build().map_err(|e| ConfigError::BadGlob {
        key: key.to_owned(),
        glob: globs.join(", "),
        reason: e.to_string(),
    })
}

/// Globs match repository-relative paths; `*` stays within a directory, `**` crosses them.
fn compile_glob(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

fn check_cycles(apps: &BTreeMap<String, App>) -> Result<(), ConfigError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        apps: &'a BTreeMap<String, App>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), ConfigError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = path.iter().position(|n| *n == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(name.to_owned());
                return Err(ConfigError::DependencyCycle { cycle });
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        path.push(name);
        if let Some(app) = apps.get(name) {
            for dep in app.app_dependencies() {
                visit(dep, apps, marks, path)?;
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
        Ok(())
    }
    let mut marks = BTreeMap::new();
    for name in apps.keys() {
        visit(name, apps, &mut marks, &mut Vec::new())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn load(toml: &str) -> Result<Workspace, ConfigError> {
        Workspace::from_toml(toml, "/nonexistent-root", &EnvOverrides::default())
    }

    const HEAD: &str = "[workspace]\nregistry = \"r.io/acme\"\n";

    #[rstest]
    #[case::unknown_dependency(
        "[apps.api]\n[apps.web]\ndepends_on = [\"auth\"]",
        "apps.web.depends_on: \"auth\" is not an app (known apps: api, web) and not a package path (write paths with a '/', e.g. \"packages/auth\")"
    )]
    #[case::cycle(
        "[apps.a]\ndepends_on = [\"b\"]\n[apps.b]\ndepends_on = [\"c\"]\n[apps.c]\ndepends_on = [\"a\"]",
        "apps.a.depends_on: dependency cycle a -> b -> c -> a"
    )]
    #[case::self_cycle(
        "[apps.a]\ndepends_on = [\"a\"]",
        "apps.a.depends_on: dependency cycle a -> a"
    )]
    #[case::duplicate_image(
        "[apps.api]\nimage = \"r.io/acme/shared\"\n[apps.web]\nimage = \"r.io/acme/shared\"",
        "apps.web.image: r.io/acme/shared is already the image of app \"api\"; give each app its own repository"
    )]
    #[case::path_outside_repo(
        "[apps.api]\npath = \"../elsewhere\"",
        "apps.api.path: \"../elsewhere\" is outside the repository"
    )]
    #[case::absolute_path(
        "[apps.api]\npath = \"/etc\"",
        "apps.api.path: \"/etc\" is outside the repository"
    )]
    #[case::dependency_outside_repo(
        "[apps.api]\ndepends_on = [\"packages/../../x\"]",
        "apps.api.depends_on: \"packages/../../x\" is outside the repository"
    )]
    #[case::layer_outside_repo(
        "[apps.api]\nbuild = { type = \"native\", layers = [{ from = \"../../secrets\", to = \"/s\" }] }",
        "apps.api.build.layers.from: \"../../secrets\" is outside the repository"
    )]
    #[case::bad_glob(
        "[apps.api]\ninputs = [\"proto/[a-\"]",
        "apps.api.inputs: invalid glob \"proto/[a-\": unclosed character class; missing ']'"
    )]
    #[case::bad_shared_glob(
        "[workspace]\nshared = [\"{a,b\"]\n[apps.api]",
        "workspace.shared: invalid glob \"{a,b\": unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)"
    )]
    #[case::glob_outside_repo(
        "[apps.api]\ninputs = [\"../**\"]",
        "apps.api.inputs: \"../**\" is outside the repository"
    )]
    #[case::unknown_template_variable(
        "[workspace]\ntag = \"${BRANCH}-${COMMIT}\"\n[apps.api]",
        "workspace.tag: unknown variable ${COMMIT} (known: BRANCH, SHORT_SHA, SHA, TAG, BUILD_NUMBER, TIMESTAMP, FINGERPRINT)"
    )]
    #[case::bad_image(
        "[apps.api]\nimage = \"r.io/Acme/API\"",
        "apps.api.image: invalid image reference \"r.io/Acme/API\": repository name must be lowercase (try \"r.io/acme/api\")"
    )]
    #[case::image_with_tag(
        "[apps.api]\nimage = \"r.io/acme/api:v1\"",
        "apps.api.image: \"r.io/acme/api:v1\" must be a repository without tag or digest (tags come from workspace.tag)"
    )]
    #[case::bad_app_name(
        "[apps.Api]",
        "apps.Api: app names must be lowercase letters, digits, '-' and '_', starting with a letter or digit"
    )]
    fn validation_errors_name_app_and_key(#[case] body: &str, #[case] message: &str) {
        let toml = if body.starts_with("[workspace]") {
            body.replacen("[workspace]", HEAD.trim_end(), 1)
        } else {
            format!("{HEAD}{body}")
        };
        let err = load(&toml).expect_err("invalid config");
        assert_eq!(err.to_string(), message);
    }

    #[test]
    fn no_image_and_no_registry_is_explained() {
        let err = load("[apps.api]").expect_err("no registry");
        assert_eq!(
            err.to_string(),
            "apps.api.image: no image repository; set `image` for the app, or `registry` in [workspace] (or SHIPFLOW_REGISTRY)"
        );
    }

    #[test]
    fn no_apps_is_explained() {
        let err = load(HEAD).expect_err("no apps");
        assert!(
            err.to_string()
                .ends_with("no [apps.<name>] table; define at least one app"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_parse_errors_with_location() {
        let err = load(&format!("{HEAD}[apps.api]\ndepend_on = [\"x\"]")).expect_err("typo");
        let message = err.to_string();
        assert!(
            message.starts_with("shipflow.toml: TOML parse error at line 4"),
            "{message}"
        );
        assert!(message.contains("unknown field `depend_on`"), "{message}");
    }

    #[test]
    fn symlink_out_of_the_repository_is_refused() {
        let root = std::env::temp_dir().join(format!("shipflow-ws-{}", std::process::id()));
        std::fs::create_dir_all(root.join("apps")).expect("mkdir");
        let link = root.join("apps/escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/etc", &link).expect("symlink");
        let toml = format!("{HEAD}[apps.api]\npath = \"apps/escape\"");
        let err = Workspace::from_toml(&toml, &root, &EnvOverrides::default()).expect_err("escape");
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert_eq!(
            err.to_string(),
            "apps.api.path: \"apps/escape\" is outside the repository"
        );
    }

    #[test]
    fn defaults_are_filled_in() {
        let ws = load(&format!(
            "{HEAD}[apps.api]\ndeploy.kubernetes = {{}}\ndeploy.docker = {{ ports = [\"8080:80\"] }}\n[apps.web]\npath = \"./frontends/web/\"\ndepends_on = [\"api\", \"packages/ui\"]\nbuild = {{ type = \"native\" }}"
        ))
        .expect("valid");
        let api = ws.app("api").expect("api");
        assert_eq!(api.path, "apps/api");
        assert_eq!(api.image.to_string(), "r.io/acme/api");
        let k8s = api.deploy.kubernetes.as_ref().expect("k8s");
        assert_eq!(k8s.namespace.as_deref(), Some("default"));
        assert_eq!(k8s.deployment.as_deref(), Some("api"));
        assert_eq!(k8s.container.as_deref(), Some("api"));
        assert_eq!(
            api.deploy
                .docker
                .as_ref()
                .and_then(|d| d.container.as_deref()),
            Some("api")
        );
        assert!(
            matches!(&api.build, BuildSpec::Dockerfile { dockerfile: Some(d), .. } if d == "apps/api/Dockerfile")
        );
        let web = ws.app("web").expect("web");
        assert_eq!(web.path, "frontends/web");
        assert_eq!(
            web.depends_on,
            vec![
                Dependency::App("api".into()),
                Dependency::Path("packages/ui".into())
            ]
        );
        assert!(matches!(&web.build, BuildSpec::Native(n) if n.base == "scratch"));
        assert_eq!(ws.tag_template().as_str(), "${SHORT_SHA}");
    }

    #[test]
    fn environment_overrides_registry_namespace_and_sha() {
        let vars = [
            ("PRIVATE_REGISTRY", "old.example.com/team"),
            ("K8S_NAMESPACE", "staging"),
            ("GIT_SHA", "abc123"),
        ];
        let env = EnvOverrides::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        });
        let toml = format!("{HEAD}[apps.api]\ndeploy.kubernetes = {{}}");
        let ws = Workspace::from_toml(&toml, ".", &env).expect("valid");
        let api = ws.app("api").expect("api");
        assert_eq!(api.image.to_string(), "old.example.com/team/api");
        assert_eq!(
            api.deploy
                .kubernetes
                .as_ref()
                .and_then(|k| k.namespace.as_deref()),
            Some("staging")
        );
        assert_eq!(ws.git_sha_override(), Some("abc123"));

        let both = EnvOverrides::from_lookup(|k| match k {
            "SHIPFLOW_REGISTRY" => Some("new.example.com".into()),
            "PRIVATE_REGISTRY" => Some("old.example.com".into()),
            _ => None,
        });
        assert_eq!(both.registry.as_deref(), Some("new.example.com"));
    }

    #[test]
    fn inputs_follow_app_dependencies_transitively() {
        let ws = Workspace::from_toml(
            "[workspace]\nregistry = \"r.io\"\nshared = [\"Cargo.lock\"]\n[apps.a]\ndepends_on = [\"b\"]\ninputs = [\"proto/**\"]\n[apps.b]\ndepends_on = [\"c\", \"packages/db\"]\n[apps.c]",
            ".",
            &EnvOverrides::default(),
        )
        .expect("valid");
        let inputs = ws.inputs(ws.app("a").expect("a"));
        assert_eq!(inputs.paths, ["apps/a", "apps/b", "apps/c", "packages/db"]);
        assert_eq!(inputs.globs, ["Cargo.lock", "proto/**"]);
    }
}
