//! The workspace: `shipflow.toml` parsed and validated.
//!
//! ```toml
//! [workspace]
//! registry = "registry.example.com/acme"   # images default to <registry>/<app>
//! shared = ["packages/common/**", "Cargo.lock"]   # a change here rolls every app
//! tag = "${BRANCH}-${SHORT_SHA}"
//!
//! [apps.api]
//! path = "apps/api"                         # default: apps/<name>
//! inputs = ["proto/*.proto"]                # more globs that feed the app
//! depends_on = ["auth", "packages/db"]      # other apps, or package paths
//! build = { type = "dockerfile", dockerfile = "apps/api/Dockerfile", target = "runtime" }
//! deploy.kubernetes = { deployment = "api", container = "api" }
//! ```
//!
//! Core reads the keys above that every pipeline needs; `build`, `deploy.<target>`
//! and any other `[workspace]` key belong to adapters and are kept as
//! [`Section`]s (see [`crate::section`](crate::Schema) for how adapters read them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::GlobSet;
use serde::{Deserialize, Serialize};

use crate::environment::{Environment, RawEnvironment, deep_merge, environment_for, environments};
use crate::hooks::Hooks;
use crate::index::AppIndex;
use crate::paths::{GlobError, glob_set, is_under, real_root, repo_path};
use crate::section::{AppScope, ConfigSection, Document, Schema, Section, Segment};
use crate::{AppInputs, ImageRef, ReferenceError, RevisionInfo, TagTemplate};

/// The file name shipflow looks for.
pub const CONFIG_FILE: &str = "shipflow.toml";

/// The build type of an app without a `build` table: a Dockerfile at
/// `<path>/Dockerfile`.
pub const DEFAULT_BUILD_TYPE: &str = "dockerfile";

/// Why a `shipflow.toml` cannot be used. Each variant names the key (`apps.<app>.<key>`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// An adapter's section (or a core table such as `hooks`) has a bad value.
    #[error("{key}: {message}")]
    Section {
        /// The whole key, e.g. `apps.web.deploy.docker.ports[0]`.
        key: String,
        /// What is wrong, with the line where it is.
        message: String,
    },
    /// The environment asked for is not in `[environments]`.
    #[error("no environment {name:?} (known: {known}); add [environments.{name}] to shipflow.toml")]
    UnknownEnvironment {
        /// The name asked for.
        name: String,
        /// The known environments, comma separated.
        known: String,
    },
    /// A ref matches the rules of more than one environment.
    #[error(
        "{reference} matches the rules of several environments ({environments}); make their branches and tags exclusive"
    )]
    AmbiguousEnvironment {
        /// The tag or branch.
        reference: String,
        /// The environments it matches, comma separated.
        environments: String,
    },
    /// A deploy target, build type or `[workspace]` key that no adapter in use reads.
    #[error("{key}: unknown {what} {name:?} (known: {known})")]
    UnknownSection {
        /// The whole key, e.g. `apps.web.deploy.dokcer`.
        key: String,
        /// `deploy target`, `build type` or `workspace key`.
        what: &'static str,
        /// The name as written.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
}

/// `shipflow.toml` as written: the keys core reads, adapters' sections raw.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    workspace: RawWorkspace,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
}

/// `[workspace]`.
#[derive(Debug, Default, Deserialize)]
struct RawWorkspace {
    registry: Option<String>,
    #[serde(default)]
    shared: Vec<String>,
    tag: Option<String>,
    tags: Option<Vec<String>>,
    #[serde(default)]
    hooks: Hooks,
    /// Keys of adapters (`namespace`, `[workspace.docker]`, …).
    #[serde(flatten)]
    adapters: BTreeMap<String, toml::Value>,
}

/// `[apps.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    path: Option<String>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    image: Option<String>,
    build: Option<toml::Value>,
    #[serde(default)]
    deploy: BTreeMap<String, toml::Value>,
    #[serde(default)]
    hooks: Hooks,
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
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    pub image: ImageRef,
    /// Its hooks (the workspace's run too, first).
    pub hooks: Hooks,
    build_type: String,
    build: Section,
    deploy: BTreeMap<String, Section>,
    input_globs: GlobSet,
}

impl App {
    /// Whether `path` is the app's directory or under it.
    pub fn owns(&self, path: &str) -> bool {
        is_under(path, &self.path)
    }

    /// The app's settings as `shipflow.toml` (and its environment) gives them: its
    /// build and deploy tables, in a stable text form. A change of them changes the
    /// app's fingerprint, so a new memory limit or replica count ships even when no
    /// file of the app changed. The image's registry is not in it: a registry given
    /// on the command line or by the environment says where the same image goes.
    pub fn settings(&self) -> String {
        let mut text = format!("build {}\n{}\n", self.build_type, self.build.raw());
        for (target, section) in &self.deploy {
            text.push_str(&format!("deploy {target}\n{}\n", section.raw()));
        }
        text
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

    /// The `type` of its `build` table ([`DEFAULT_BUILD_TYPE`] without one).
    pub fn build_type(&self) -> &str {
        &self.build_type
    }

    /// Its `build` table (without `type`) read as `T`, the builder's own type.
    pub fn build_spec<T: ConfigSection>(&self) -> Result<Arc<T>, ConfigError> {
        self.build.parse()
    }

    /// The names of its `deploy.<target>` tables, in name order.
    pub fn deploy_targets(&self) -> impl Iterator<Item = &str> {
        self.deploy.keys().map(String::as_str)
    }

    /// Its `deploy.<target>` table read as `T`, the deployer's own type; `None` when
    /// the app has no such table.
    pub fn deploy_target<T: ConfigSection>(
        &self,
        target: &str,
    ) -> Result<Option<Arc<T>>, ConfigError> {
        self.deploy.get(target).map(Section::parse).transpose()
    }
}

/// A validated workspace: the apps, the shared globs, the tag template, the adapters'
/// sections.
///
/// ```
/// use shipflow_core::Workspace;
///
/// let toml = r#"
///     [workspace]
///     registry = "127.0.0.1:5000/acme"
///     shared = ["packages/**"]
///     [apps.api]
///     [apps.web]
///     depends_on = ["api"]
/// "#;
/// let ws = Workspace::from_toml(toml, ".")?;
/// assert_eq!(ws.app("api").unwrap().path, "apps/api");
/// assert_eq!(ws.app("web").unwrap().image.to_string(), "127.0.0.1:5000/acme/web");
/// # Ok::<(), shipflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    apps: BTreeMap<String, App>,
    shared: Vec<String>,
    shared_globs: GlobSet,
    tag: TagTemplate,
    extra_tags: Vec<TagTemplate>,
    environments: BTreeMap<String, Environment>,
    environment: Option<String>,
    /// The file and how it was loaded, to load it again for another environment.
    source: Arc<(String, PathBuf, WorkspaceLoader)>,
    registry: Option<String>,
    git_sha: Option<String>,
    hooks: Hooks,
    sections: Arc<BTreeMap<String, Section>>,
    /// The apps by path, input glob and dependents, for impact analysis.
    index: Arc<AppIndex>,
}

/// Loads a [`Workspace`]: with the [`Schema`] of the adapters in use (so their
/// settings are checked before anything runs) and the values a caller overrides
/// (the CLI takes them from `SHIPFLOW_REGISTRY` and `GIT_SHA`; the library reads no
/// environment variable).
///
/// ```
/// use shipflow_core::{Schema, Workspace};
///
/// let ws = Workspace::loader()
///     .schema(Schema::new().workspace_key::<String>("namespace"))
///     .registry(Some("registry.internal/team".into()))
///     .from_toml("[workspace]\nnamespace = \"prod\"\n[apps.api]", ".")?;
/// assert_eq!(ws.app("api").unwrap().image.to_string(), "registry.internal/team/api");
/// assert_eq!(ws.section::<String>("namespace")?.as_deref().map(String::as_str), Some("prod"));
/// # Ok::<(), shipflow_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct WorkspaceLoader {
    schema: Option<Schema>,
    registry: Option<String>,
    git_sha: Option<String>,
    environment: Option<String>,
}

impl WorkspaceLoader {
    /// Checks every section against `schema` at load time (merged with any schema
    /// given before); sections it does not list are errors.
    pub fn schema(mut self, schema: Schema) -> Self {
        self.schema = Some(match self.schema.take() {
            Some(given) => given.merge(schema),
            None => schema,
        });
        self
    }

    /// Replaces `workspace.registry` (the CLI's `SHIPFLOW_REGISTRY`).
    pub fn registry(mut self, registry: Option<String>) -> Self {
        self.registry = registry.filter(|r| !r.trim().is_empty());
        self
    }

    /// The commit to put in tags instead of the one git reports (the CLI's `GIT_SHA`).
    pub fn git_sha(mut self, sha: Option<String>) -> Self {
        self.git_sha = sha.filter(|s| !s.trim().is_empty());
        self
    }

    /// Loads the workspace as it is in `environment` (`[environments.<name>]` laid
    /// over the file); `None` for the file as written.
    pub fn environment(mut self, environment: Option<String>) -> Self {
        self.environment = environment;
        self
    }

    /// Reads `shipflow.toml` at `path` and validates it. The repository root is the
    /// file's directory.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Workspace, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let root = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        self.build(text, path.to_owned(), root)
    }

    /// Parses and validates TOML text for a repository at `root`.
    pub fn from_toml(
        &self,
        text: &str,
        root: impl Into<PathBuf>,
    ) -> Result<Workspace, ConfigError> {
        self.build(text.to_owned(), PathBuf::from(CONFIG_FILE), root.into())
    }

    fn build(&self, text: String, file: PathBuf, root: PathBuf) -> Result<Workspace, ConfigError> {
        let mut raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: file.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if raw.apps.is_empty() {
            return Err(ConfigError::NoApps {
                path: root.join(CONFIG_FILE),
            });
        }
        let app_names: Vec<&str> = raw.apps.keys().map(String::as_str).collect();
        let environments = environments(&raw.environments, &app_names)?;
        // Each environment's [workspace] overrides are checked against the file's own.
        let file_adapters = self.schema.as_ref().map(|_| raw.workspace.adapters.clone());
        if let Some(name) = &self.environment {
            lay_over(&mut raw, name)?;
        }
        let source = Arc::new((text.clone(), file.clone(), self.clone()));
        let real_root = real_root(&root);
        let doc = Arc::new(Document {
            file,
            text,
            root,
            real_root,
        });
        let ws = raw.workspace;
        check_hooks("workspace.hooks", &ws.hooks, &doc)?;
        let registry = self.registry.clone().or(ws.registry);
        let templates = match (&ws.tag, &ws.tags) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Section {
                    key: "workspace.tags".into(),
                    message: "give tag or tags, not both".into(),
                });
            }
            (Some(t), None) => vec![t.clone()],
            (None, Some(list)) if list.is_empty() => {
                return Err(ConfigError::Section {
                    key: "workspace.tags".into(),
                    message: "give at least one tag template".into(),
                });
            }
            (None, Some(list)) => list.clone(),
            (None, None) => Vec::new(),
        };
        let mut templates = templates
            .iter()
            .map(|t| t.parse::<TagTemplate>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ConfigError::Template { source })?;
        let tag = if templates.is_empty() {
            TagTemplate::default()
        } else {
            templates.remove(0)
        };
        let shared_globs = globs("workspace.shared", &ws.shared)?;

        let sections: BTreeMap<String, Section> = ws
            .adapters
            .into_iter()
            .map(|(key, value)| {
                let path = vec![Segment::Key("workspace".into()), Segment::Key(key.clone())];
                (key, Section::new(path, value, None, doc.clone(), None))
            })
            .collect();
        if let Some(schema) = &self.schema {
            for (key, section) in &sections {
                check_section(schema, Kind::Workspace, key, section)?;
            }
            check_environment_keys(
                schema,
                &raw.environments,
                file_adapters.as_ref().unwrap_or(&BTreeMap::new()),
                &doc,
            )?;
        }
        let sections = Arc::new(sections);

        let names: BTreeSet<&str> = raw.apps.keys().map(String::as_str).collect();
        let mut apps = BTreeMap::new();
        let mut images: BTreeMap<String, String> = BTreeMap::new();
        for (name, section) in raw.apps.iter() {
            let app = AppLoader {
                name,
                names: &names,
                doc: &doc,
                registry: registry.as_deref(),
                sections: &sections,
            }
            .load(section)?;
            if let Some(schema) = &self.schema {
                check_section(schema, Kind::Build, &app.build_type, &app.build)?;
                for (target, section) in &app.deploy {
                    check_section(schema, Kind::Deploy, target, section)?;
                }
            }
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
        let index = Arc::new(AppIndex::new(&apps));
        Ok(Workspace {
            root: doc.root.clone(),
            apps,
            shared: ws.shared,
            shared_globs,
            tag,
            extra_tags: templates,
            environments,
            environment: self.environment.clone(),
            source,
            registry,
            git_sha: self.git_sha.clone(),
            hooks: ws.hooks,
            sections,
            index,
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Workspace,
    Build,
    Deploy,
}

/// Checks `section` with the schema's reader for `name`, or refuses a name the
/// schema does not list.
fn check_section(
    schema: &Schema,
    kind: Kind,
    name: &str,
    section: &Section,
) -> Result<(), ConfigError> {
    let (checks, what) = match kind {
        Kind::Workspace => (&schema.workspace, "workspace key"),
        Kind::Build => (&schema.build, "build type"),
        Kind::Deploy => (&schema.deploy, "deploy target"),
    };
    match checks.get(name) {
        Some(check) => check(section),
        // The program said nothing about this kind of section: read when asked.
        None if checks.is_empty() => Ok(()),
        None => {
            let key = match kind {
                Kind::Build => format!("{}.type", section.key()),
                _ => section.key(),
            };
            let known: Vec<&str> = checks.keys().map(String::as_str).collect();
            Err(ConfigError::UnknownSection {
                key,
                what,
                name: name.to_owned(),
                known: known.join(", "),
            })
        }
    }
}

/// Checks every environment's `[workspace]` overrides with the schema, as each
/// environment would see them (laid over the file's), so a bad setting in any
/// environment fails every load and names `environments.<name>.<key>`.
fn check_environment_keys(
    schema: &Schema,
    raw: &BTreeMap<String, RawEnvironment>,
    file: &BTreeMap<String, toml::Value>,
    doc: &Arc<Document>,
) -> Result<(), ConfigError> {
    for (name, env) in raw {
        for (key, value) in env.overlay().workspace {
            let mut merged = file.get(key).cloned().unwrap_or_else(|| value.clone());
            deep_merge(&mut merged, value);
            let path = vec![
                Segment::Key("environments".into()),
                Segment::Key(name.clone()),
                Segment::Key(key.clone()),
            ];
            let section = Section::new(path, merged, None, doc.clone(), None);
            check_section(schema, Kind::Workspace, key, &section)?;
        }
    }
    Ok(())
}

/// Lays environment `name` over the file as written.
fn lay_over(raw: &mut RawConfig, name: &str) -> Result<(), ConfigError> {
    let Some(env) = raw.environments.get(name) else {
        return Err(ConfigError::UnknownEnvironment {
            name: name.to_owned(),
            known: raw
                .environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let overlay = env.overlay();
    if let Some(registry) = overlay.registry {
        raw.workspace.registry = Some(registry.to_owned());
    }
    for (key, value) in overlay.workspace {
        match raw.workspace.adapters.get_mut(key) {
            Some(base) => deep_merge(base, value),
            None => {
                raw.workspace.adapters.insert(key.clone(), value.clone());
            }
        }
    }
    for (app, table) in overlay.apps {
        let Some(raw_app) = raw.apps.get_mut(app) else {
            continue; // checked by `environments`
        };
        if let Some(build) = table.get("build") {
            match &mut raw_app.build {
                Some(base) => deep_merge(base, build),
                None => raw_app.build = Some(build.clone()),
            }
        }
        if let Some(toml::Value::Table(targets)) = table.get("deploy") {
            for (target, value) in targets {
                match raw_app.deploy.get_mut(target) {
                    Some(base) => deep_merge(base, value),
                    None => {
                        raw_app.deploy.insert(target.clone(), value.clone());
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_hooks(key: &str, hooks: &Hooks, doc: &Document) -> Result<(), ConfigError> {
    hooks.check().map_err(|(field, message)| {
        let mut path: Vec<Segment> = Segment::parse_field(key);
        path.extend(Segment::parse_field(&field));
        let message = match doc.locate(&path) {
            Some(at) => format!("{message} ({at})"),
            None => message,
        };
        ConfigError::Section {
            key: format!("{key}.{field}"),
            message,
        }
    })
}

fn globs(key: &str, globs: &[String]) -> Result<GlobSet, ConfigError> {
    glob_set(globs).map_err(|e| match e {
        GlobError::Outside(glob) => ConfigError::PathOutsideRepo {
            key: key.to_owned(),
            path: glob,
        },
        GlobError::Invalid(glob, reason) => ConfigError::BadGlob {
            key: key.to_owned(),
            glob,
            reason,
        },
    })
}

fn path_in_repo(key: &str, raw: &str, root: &Path) -> Result<String, ConfigError> {
    repo_path(raw, root).map_err(|_| ConfigError::PathOutsideRepo {
        key: key.to_owned(),
        path: raw.to_owned(),
    })
}

/// What validating one app needs to know of the rest.
struct AppLoader<'a> {
    name: &'a str,
    names: &'a BTreeSet<&'a str>,
    doc: &'a Arc<Document>,
    registry: Option<&'a str>,
    sections: &'a Arc<BTreeMap<String, Section>>,
}

impl AppLoader<'_> {
    fn key(&self, k: &str) -> String {
        format!("apps.{}.{k}", self.name)
    }

    fn load(&self, raw: &RawApp) -> Result<App, ConfigError> {
        let name = self.name;
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
        let root = &self.doc.real_root;
        // The default path is checked too: apps/<name> may be a link out.
        let path = path_in_repo(
            &self.key("path"),
            raw.path.as_deref().unwrap_or(&format!("apps/{name}")),
            root,
        )?;
        let input_globs = globs(&self.key("inputs"), &raw.inputs)?;
        let mut depends_on = Vec::new();
        for dep in &raw.depends_on {
            if self.names.contains(dep.as_str()) {
                depends_on.push(Dependency::App(dep.clone()));
            } else if dep.contains('/') || root.join(dep).exists() {
                depends_on.push(Dependency::Path(path_in_repo(
                    &self.key("depends_on"),
                    dep,
                    root,
                )?));
            } else {
                return Err(ConfigError::UnknownDependency {
                    app: name.into(),
                    name: dep.clone(),
                    known: self.names.iter().copied().collect::<Vec<_>>().join(", "),
                });
            }
        }
        let image = self.image(raw)?;
        check_hooks(&self.key("hooks"), &raw.hooks, self.doc)?;

        let scope = || {
            Some(AppScope {
                name: name.to_owned(),
                path: path.clone(),
                workspace: self.sections.clone(),
            })
        };
        let app_path = |rest: &[&str]| -> Vec<Segment> {
            ["apps", name]
                .iter()
                .chain(rest)
                .map(|k| Segment::Key((*k).to_owned()))
                .collect()
        };
        let (build_type, build_value) = match &raw.build {
            Some(value) => {
                let build_type = match value.get("type") {
                    Some(toml::Value::String(t)) => t.clone(),
                    Some(_) => {
                        return Err(ConfigError::Section {
                            key: self.key("build.type"),
                            message: "must be a string, the kind of build (e.g. \"native\" or \"dockerfile\")".into(),
                        });
                    }
                    None => {
                        return Err(ConfigError::Section {
                            key: self.key("build.type"),
                            message: "missing: say which kind of build (e.g. type = \"native\" or \"dockerfile\")".into(),
                        });
                    }
                };
                (build_type, value.clone())
            }
            None => (
                DEFAULT_BUILD_TYPE.to_owned(),
                toml::Value::Table(toml::Table::new()),
            ),
        };
        let build = Section::new(
            app_path(&["build"]),
            build_value,
            Some("type"),
            self.doc.clone(),
            scope(),
        );
        let deploy = raw
            .deploy
            .iter()
            .map(|(target, value)| {
                let section = Section::new(
                    app_path(&["deploy", target]),
                    value.clone(),
                    None,
                    self.doc.clone(),
                    scope(),
                );
                (target.clone(), section)
            })
            .collect();
        Ok(App {
            name: name.to_owned(),
            path,
            inputs: raw.inputs.clone(),
            depends_on,
            image,
            hooks: raw.hooks.clone(),
            build_type,
            build,
            deploy,
            input_globs,
        })
    }

    fn image(&self, raw: &RawApp) -> Result<ImageRef, ConfigError> {
        let name = self.name;
        let image_text = match (&raw.image, self.registry) {
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
        Ok(image)
    }
}

impl Workspace {
    /// A loader, to give a [`Schema`] or override values before loading.
    pub fn loader() -> WorkspaceLoader {
        WorkspaceLoader::default()
    }

    /// Reads `shipflow.toml` at `path` and validates it, with no schema (adapters'
    /// sections are checked when an adapter reads them) and no overrides.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::loader().load(path)
    }

    /// Parses and validates TOML text for a repository at `root`, with no schema
    /// and no overrides.
    pub fn from_toml(text: &str, root: impl Into<PathBuf>) -> Result<Self, ConfigError> {
        Self::loader().from_toml(text, root)
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

    /// The registry images default under, after overrides.
    pub fn registry(&self) -> Option<&str> {
        self.registry.as_deref()
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

    /// The tag template: the tag an image is pushed under.
    pub fn tag_template(&self) -> &TagTemplate {
        &self.tag
    }

    /// The further tags moved to the pushed image (`tags = [...]` past the first,
    /// such as `latest`).
    pub fn extra_tag_templates(&self) -> &[TagTemplate] {
        &self.extra_tags
    }

    /// The environments of `[environments]`, by name.
    pub fn environments(&self) -> impl Iterator<Item = &Environment> {
        self.environments.values()
    }

    /// The environment this workspace was loaded for, if any.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    /// The environment `revision` ships to by the rules of `[environments]` (a
    /// tag on it, else its branch); `None` when no rule matches, an error when
    /// several do.
    pub fn environment_for(
        &self,
        revision: &RevisionInfo,
    ) -> Result<Option<&Environment>, ConfigError> {
        environment_for(&self.environments, revision)
    }

    /// The same file loaded for environment `name`, with the same schema and
    /// overrides.
    pub fn for_environment(&self, name: &str) -> Result<Workspace, ConfigError> {
        let (text, file, loader) = self.source.as_ref();
        loader.clone().environment(Some(name.to_owned())).build(
            text.clone(),
            file.clone(),
            self.root.clone(),
        )
    }

    /// The commit to put in tags instead of the one git reports, if the caller gave one.
    pub fn git_sha_override(&self) -> Option<&str> {
        self.git_sha.as_deref()
    }

    /// The hooks of `[workspace.hooks]`, run for every changed app.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    /// The `[workspace]` key `key` (one core does not read) as `T`, the adapter's type.
    pub fn section<T: ConfigSection>(&self, key: &str) -> Result<Option<Arc<T>>, ConfigError> {
        self.sections.get(key).map(Section::parse).transpose()
    }

    /// The apps by path, input glob and dependents.
    pub(crate) fn index(&self) -> &AppIndex {
        &self.index
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
        Workspace::from_toml(toml, "/nonexistent-root")
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
    #[case::build_without_type(
        "[apps.api]\nbuild = { dockerfile = \"x\" }",
        "apps.api.build.type: missing: say which kind of build (e.g. type = \"native\" or \"dockerfile\")"
    )]
    #[case::hook_timeout(
        "[apps.api]\nhooks = { pre_build = \"make\", timeout = 0 }",
        "apps.api.hooks.timeout: 0 is out of range: give 1 to 86400 seconds (shipflow.toml, line 4, column 41)"
    )]
    #[case::empty_hook(
        "[workspace.hooks]\npost_deploy = []\n[apps.api]",
        "workspace.hooks.post_deploy: the command is empty (shipflow.toml, line 4, column 15)"
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
    fn links_out_of_the_repository_are_refused_for_default_paths_too() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(root.path().join("apps")).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.path().join("apps/escape")).expect("symlink");
        std::os::unix::fs::symlink("/nowhere/at/all", root.path().join("apps/dangling"))
            .expect("symlink");
        let explicit = format!("{HEAD}[apps.api]\npath = \"apps/escape\"");
        let err = Workspace::from_toml(&explicit, root.path()).expect_err("escape");
        assert_eq!(
            err.to_string(),
            "apps.api.path: \"apps/escape\" is outside the repository"
        );
        for app in ["escape", "dangling"] {
            let by_default = format!("{HEAD}[apps.{app}]");
            let err = Workspace::from_toml(&by_default, root.path()).expect_err("escape");
            assert_eq!(
                err.to_string(),
                format!("apps.{app}.path: \"apps/{app}\" is outside the repository")
            );
        }
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
        assert_eq!(api.build_type(), DEFAULT_BUILD_TYPE);
        assert_eq!(
            api.deploy_targets().collect::<Vec<_>>(),
            ["docker", "kubernetes"]
        );
        let web = ws.app("web").expect("web");
        assert_eq!(web.path, "frontends/web");
        assert_eq!(web.build_type(), "native");
        assert_eq!(
            web.depends_on,
            vec![
                Dependency::App("api".into()),
                Dependency::Path("packages/ui".into())
            ]
        );
        assert_eq!(ws.tag_template().as_str(), "${SHORT_SHA}");
    }

    #[test]
    fn the_caller_overrides_registry_and_sha() {
        let ws = Workspace::loader()
            .registry(Some("old.example.com/team".into()))
            .git_sha(Some("abc123".into()))
            .from_toml(&format!("{HEAD}[apps.api]"), ".")
            .expect("valid");
        assert_eq!(
            ws.app("api").expect("api").image.to_string(),
            "old.example.com/team/api"
        );
        assert_eq!(ws.registry(), Some("old.example.com/team"));
        assert_eq!(ws.git_sha_override(), Some("abc123"));
        let blank = Workspace::loader()
            .registry(Some(" ".into()))
            .from_toml(&format!("{HEAD}[apps.api]"), ".")
            .expect("valid");
        assert_eq!(
            blank.registry(),
            Some("r.io/acme"),
            "a blank override is no override"
        );
    }

    #[test]
    fn inputs_follow_app_dependencies_transitively() {
        let ws = Workspace::from_toml(
            "[workspace]\nregistry = \"r.io\"\nshared = [\"Cargo.lock\"]\n[apps.a]\ndepends_on = [\"b\"]\ninputs = [\"proto/**\"]\n[apps.b]\ndepends_on = [\"c\", \"packages/db\"]\n[apps.c]",
            ".",
        )
        .expect("valid");
        let inputs = ws.inputs(ws.app("a").expect("a"));
        assert_eq!(inputs.paths, ["apps/a", "apps/b", "apps/c", "packages/db"]);
        assert_eq!(inputs.globs, ["Cargo.lock", "proto/**"]);
    }

    /// A section type as an adapter would write it.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Target {
        port: Option<u16>,
        #[serde(default)]
        names: Vec<String>,
        #[serde(skip)]
        app: String,
        #[serde(skip)]
        namespace: Option<String>,
    }

    impl ConfigSection for Target {
        fn validate(&mut self, ctx: &crate::SectionContext<'_>) -> Result<(), crate::SectionError> {
            for (i, name) in self.names.iter().enumerate() {
                if name.is_empty() {
                    return Err(crate::SectionError::new(
                        format!("names[{i}]"),
                        "must not be empty",
                    ));
                }
            }
            self.app = ctx.app().unwrap_or_default().to_owned();
            self.namespace = ctx
                .workspace_section::<String>("namespace")?
                .map(|n| n.as_ref().clone());
            Ok(())
        }
    }

    fn schema() -> Schema {
        Schema::new()
            .deploy_target::<Target>("thing")
            .build_type::<Target>("native")
            .workspace_key::<String>("namespace")
    }

    const NATIVE: &str = "build = { type = \"native\" }";

    #[rstest]
    #[case::serde_error(
        "[apps.api]\nNATIVE\ndeploy.thing = { port = 99999 }",
        "apps.api.deploy.thing: shipflow.toml: TOML parse error at line 5, column 25"
    )]
    #[case::unknown_field(
        "[apps.api]\nNATIVE\n[apps.api.deploy.thing]\nprot = 1",
        "apps.api.deploy.thing: shipflow.toml: TOML parse error at line 6, column 1"
    )]
    #[case::validation(
        "[apps.api]\nNATIVE\ndeploy.thing = { names = [\"a\", \"\"] }",
        "apps.api.deploy.thing.names[1]: must not be empty (shipflow.toml, line 5, column 32)"
    )]
    #[case::unknown_target(
        "[apps.api]\nNATIVE\ndeploy.thnig = {}",
        "apps.api.deploy.thnig: unknown deploy target \"thnig\" (known: thing)"
    )]
    #[case::unknown_build_type(
        "[apps.api]\nbuild = { type = \"nativ\" }",
        "apps.api.build.type: unknown build type \"nativ\" (known: native)"
    )]
    #[case::default_build_type_unknown(
        "[apps.api]",
        "apps.api.build.type: unknown build type \"dockerfile\" (known: native)"
    )]
    #[case::unknown_workspace_key(
        "namespce = \"x\"\n[apps.api]\nNATIVE",
        "workspace.namespce: unknown workspace key \"namespce\" (known: namespace)"
    )]
    #[case::workspace_key_type(
        "namespace = 3\n[apps.api]\nNATIVE",
        "workspace.namespace: shipflow.toml: TOML parse error at line 3, column 13"
    )]
    fn a_schema_checks_sections_at_load(#[case] body: &str, #[case] start: &str) {
        let toml = format!("{HEAD}{}", body.replace("NATIVE", NATIVE));
        let err = Workspace::loader()
            .schema(schema())
            .from_toml(&toml, ".")
            .expect_err("refused");
        assert!(err.to_string().starts_with(start), "{err}\n---\n{start}");
    }

    #[test]
    fn sections_read_as_the_adapters_type_with_workspace_defaults() {
        let toml = format!(
            "{HEAD}namespace = \"prod\"\n[apps.api]\nbuild = {{ type = \"native\", port = 1 }}\n[apps.api.deploy.thing]\nport = 8080\nnames = [\"a\"]\n[apps.web]\nbuild = {{ type = \"native\" }}\n"
        );
        let ws = Workspace::loader()
            .schema(schema())
            .from_toml(&toml, ".")
            .expect("valid");
        let api = ws.app("api").expect("api");
        let target = api
            .deploy_target::<Target>("thing")
            .expect("valid")
            .expect("present");
        assert_eq!(target.port, Some(8080));
        assert_eq!(target.app, "api");
        assert_eq!(target.namespace.as_deref(), Some("prod"));
        let again = api
            .deploy_target::<Target>("thing")
            .expect("valid")
            .expect("present");
        assert!(Arc::ptr_eq(&target, &again), "read once, kept");
        assert_eq!(
            api.build_spec::<Target>().expect("build").port,
            Some(1),
            "type is core's"
        );
        assert!(
            ws.app("web")
                .expect("web")
                .deploy_target::<Target>("thing")
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn without_a_schema_sections_are_checked_when_read() {
        let toml =
            format!("{HEAD}[apps.api]\ndeploy.thing = {{ port = \"http\" }}\ndeploy.other = {{}}");
        let ws = Workspace::from_toml(&toml, ".").expect("loads: nobody asked for the sections");
        let err = ws
            .app("api")
            .expect("api")
            .deploy_target::<Target>("thing")
            .expect_err("bad port");
        assert!(
            err.to_string().starts_with(
                "apps.api.deploy.thing: shipflow.toml: TOML parse error at line 4, column 25"
            ),
            "{err}"
        );
    }

    const ENVIRONMENTS: &str = r#"
[workspace]
registry = "r.io/dev"
namespace = "dev"
tags = ["${SHORT_SHA}", "latest"]

[apps.api]
deploy.thing = { port = 80, names = ["a"] }
build = { type = "native" }
[apps.web]
build = { type = "native" }

[environments.staging]
branches = ["main"]
namespace = "staging"

[environments.production]
tags = ["v*"]
registry = "r.io/prod"
namespace = "prod"
[environments.production.apps.api.deploy.thing]
port = 443
[environments.production.apps.web.deploy.thing]
names = ["b"]
"#;

    fn revision(branch: Option<&str>, tag: Option<&str>) -> RevisionInfo {
        RevisionInfo {
            branch: branch.map(str::to_owned),
            tag: tag.map(str::to_owned),
            ..RevisionInfo::default()
        }
    }

    #[test]
    fn refs_map_to_environments_by_their_rules() {
        let ws = Workspace::loader()
            .schema(schema())
            .from_toml(ENVIRONMENTS, ".")
            .expect("valid");
        let name = |r: &RevisionInfo| {
            ws.environment_for(r)
                .expect("one")
                .map(|e| e.name().to_owned())
        };
        assert_eq!(
            name(&revision(Some("main"), None)).as_deref(),
            Some("staging")
        );
        assert_eq!(
            name(&revision(Some("main"), Some("v1.2.0"))).as_deref(),
            Some("production"),
            "a tag rule wins over a branch rule"
        );
        assert_eq!(
            name(&revision(None, Some("v1.2.0"))).as_deref(),
            Some("production")
        );
        assert_eq!(name(&revision(Some("feature/x"), None)), None);
        let twice = ENVIRONMENTS.replace(
            "branches = [\"main\"]",
            "branches = [\"main\"]\ntags = [\"v2*\"]",
        );
        let ws = Workspace::loader()
            .schema(schema())
            .from_toml(&twice, ".")
            .expect("valid");
        let err = ws
            .environment_for(&revision(None, Some("v2.0.0")))
            .expect_err("v2.0.0 matches two environments");
        assert_eq!(
            err.to_string(),
            "v2.0.0 matches the rules of several environments (production, staging); make their branches and tags exclusive"
        );
    }

    #[test]
    fn an_environment_lays_its_settings_over_the_file() {
        let ws = Workspace::loader()
            .schema(schema())
            .from_toml(ENVIRONMENTS, ".")
            .expect("valid");
        assert_eq!(ws.environment(), None);
        assert_eq!(ws.extra_tag_templates().len(), 1, "latest");
        let prod = ws.for_environment("production").expect("valid");
        assert_eq!(prod.environment(), Some("production"));
        assert_eq!(prod.registry(), Some("r.io/prod"));
        assert_eq!(
            prod.app("api").expect("api").image.to_string(),
            "r.io/prod/api"
        );
        let api = prod
            .app("api")
            .expect("api")
            .deploy_target::<Target>("thing")
            .expect("ok")
            .expect("some");
        assert_eq!(
            (api.port, api.names.as_slice(), api.namespace.as_deref()),
            (Some(443), ["a".to_owned()].as_slice(), Some("prod"))
        );
        let web = prod
            .app("web")
            .expect("web")
            .deploy_target::<Target>("thing")
            .expect("ok")
            .expect("added");
        assert_eq!(web.names, ["b"]);
        let staging = ws.for_environment("staging").expect("valid");
        assert_eq!(staging.registry(), Some("r.io/dev"));
        let api = staging
            .app("api")
            .expect("api")
            .deploy_target::<Target>("thing")
            .expect("ok")
            .expect("some");
        assert_eq!(
            (api.port, api.namespace.as_deref()),
            (Some(80), Some("staging"))
        );
        let err = ws.for_environment("qa").expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "no environment \"qa\" (known: production, staging); add [environments.qa] to shipflow.toml"
        );
    }

    #[rstest]
    #[case::unknown_app(
        "[environments.prod.apps.nope.deploy.thing]\nport = 1",
        "environments.prod.apps.nope: \"nope\" is not an app (known apps: api, web)"
    )]
    #[case::core_key(
        "[environments.prod]\nshared = [\"x\"]",
        "environments.prod.shared: is the same in every environment; set it in [workspace]"
    )]
    #[case::app_key(
        "[environments.prod.apps.api]\npath = \"x\"",
        "environments.prod.apps.api.path: an environment overrides only an app's build and deploy tables"
    )]
    #[case::bad_override(
        "[environments.prod.apps.api.deploy.thing]\nnames = [\"\"]",
        "apps.api.deploy.thing.names[0]: must not be empty"
    )]
    #[case::bad_workspace_key(
        "[environments.prod]\nnamespace = 5",
        "environments.prod.namespace: "
    )]
    #[case::unknown_workspace_key(
        "[environments.prod]\nnamespaces = \"x\"",
        "environments.prod.namespaces: "
    )]
    fn environment_errors_name_their_key(#[case] env: &str, #[case] start: &str) {
        let toml = format!(
            "{HEAD}namespace = \"dev\"\n[apps.api]\n{NATIVE}\n[apps.web]\n{NATIVE}\n{env}\n"
        );
        let result = Workspace::loader()
            .schema(schema())
            .from_toml(&toml, ".")
            .and_then(|ws| ws.for_environment("prod"));
        let err = result.expect_err("refused");
        assert!(err.to_string().starts_with(start), "{err}\n---\n{start}");
    }

    #[test]
    fn tag_and_tags_are_one_or_the_other() {
        let err =
            load(&format!("{HEAD}tag = \"a\"\ntags = [\"b\"]\n[apps.api]")).expect_err("both");
        assert_eq!(
            err.to_string(),
            "workspace.tags: give tag or tags, not both"
        );
        let ws = load(&format!(
            "{HEAD}tags = [\"${{BRANCH}}\", \"latest\", \"${{SHORT_SHA}}\"]\n[apps.api]"
        ))
        .expect("valid");
        assert_eq!(ws.tag_template().as_str(), "${BRANCH}");
        assert_eq!(
            ws.extra_tag_templates()
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>(),
            ["latest", "${SHORT_SHA}"]
        );
    }
}
