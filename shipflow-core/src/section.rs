//! Configuration that adapters own.
//!
//! Core reads the keys every pipeline needs (apps, paths, inputs, `depends_on`,
//! `shared`, images, the tag template, the registry). Everything else in
//! `shipflow.toml` belongs to an adapter and is kept as a [`Section`]: an app's
//! `build` table, its `deploy.<target>` tables, and the `[workspace]` keys core does
//! not know. An adapter reads its section into a type of its own
//! ([`ConfigSection`]: serde plus a validation step), and a program lists the
//! sections it understands in a [`Schema`], so that loading rejects a bad setting
//! before anything runs, naming the whole key and its line.
//!
//! ```
//! use serde::Deserialize;
//! use shipflow_core::{ConfigSection, Schema, SectionContext, SectionError, Workspace};
//!
//! /// `[apps.<app>.deploy.releases]` of a user-written deployer.
//! #[derive(Debug, Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Releases {
//!     channel: String,
//!     #[serde(default)]
//!     canary_percent: u8,
//! }
//!
//! impl ConfigSection for Releases {
//!     fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
//!         if self.canary_percent > 100 {
//!             return Err(SectionError::new("canary_percent", "must be at most 100"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let toml = r#"
//! [workspace]
//! registry = "registry.example.com/acme"
//! [apps.api]
//! deploy.releases = { channel = "stable", canary_percent = 150 }
//! "#;
//! let schema = Schema::new().deploy_target::<Releases>("releases");
//! let err = Workspace::loader().schema(schema).from_toml(toml, ".").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "apps.api.deploy.releases.canary_percent: must be at most 100 (shipflow.toml, line 5, column 58)"
//! );
//! ```

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;

use crate::ConfigError;
use crate::paths::repo_path;

/// A type an adapter reads its section of `shipflow.toml` into.
///
/// Deserialisation checks the shape (use `#[serde(deny_unknown_fields)]` so typos
/// are caught); [`validate`](ConfigSection::validate) checks what types cannot say
/// (ranges, formats, paths inside the repository) and fills defaults that depend on
/// the app or the workspace.
pub trait ConfigSection: DeserializeOwned + Send + Sync + 'static {
    /// Checks the value and completes it. An error names the field (relative to the
    /// section, `health.interval` or `ports[1]`); core adds the section's key and
    /// the line. The default accepts everything serde accepted.
    fn validate(&mut self, ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        let _ = ctx;
        Ok(())
    }
}

impl ConfigSection for String {}

/// What a section's validation can see: the app it belongs to and the repository.
#[derive(Debug)]
pub struct SectionContext<'a> {
    section: &'a Section,
}

impl SectionContext<'_> {
    /// The section's whole key, e.g. `apps.web.deploy.docker`.
    pub fn key(&self) -> String {
        self.section.key()
    }

    /// The app the section belongs to; `None` for a `[workspace]` key.
    pub fn app(&self) -> Option<&str> {
        self.section.0.app.as_ref().map(|a| a.name.as_str())
    }

    /// The app's directory, relative to the repository root (`apps/web`).
    pub fn app_path(&self) -> Option<&str> {
        self.section.0.app.as_ref().map(|a| a.path.as_str())
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.section.0.doc.root
    }

    /// Normalises `raw`, a path relative to the repository root, and refuses one that
    /// is absolute or leaves the repository, lexically or through symbolic links
    /// (dangling and chained ones included).
    pub fn repo_path(&self, field: &str, raw: &str) -> Result<String, SectionError> {
        repo_path(raw, &self.section.0.doc.real_root).map_err(|why| SectionError::new(field, why))
    }

    /// The typed `[workspace]` key `key`, for a workspace-wide default of the
    /// adapter (say, the default Kubernetes namespace).
    pub fn workspace_section<T: ConfigSection>(
        &self,
        key: &str,
    ) -> Result<Option<Arc<T>>, SectionError> {
        let Some(app) = &self.section.0.app else {
            return Ok(None);
        };
        match app.workspace.get(key) {
            Some(section) => section
                .parse::<T>()
                .map(Some)
                .map_err(|e| SectionError::new("", e.to_string())),
            None => Ok(None),
        }
    }
}

/// Why a section's value cannot be used: the field, relative to the section, and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SectionError {
    field: String,
    message: String,
}

impl SectionError {
    /// `field` is relative to the section (`health.interval`, `ports[1]`, or empty
    /// for the section as a whole).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The text of one `shipflow.toml`, kept to place errors on their line.
#[derive(Debug)]
pub(crate) struct Document {
    /// The file, as named in messages.
    pub(crate) file: PathBuf,
    pub(crate) text: String,
    pub(crate) root: PathBuf,
    /// `root` as the kernel resolves it, for path checks.
    pub(crate) real_root: PathBuf,
}

impl Document {
    /// `(line, column)`, 1-based, of `offset`.
    fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// Where the value at `path` (keys and array indices from the document's root)
    /// starts, as `(file), line L, column C`.
    pub(crate) fn locate(&self, path: &[Segment]) -> Option<String> {
        let document = toml::de::DeTable::parse(&self.text).ok()?;
        let mut span = document.span();
        let mut table = Some(document.get_ref());
        let mut value: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
        for segment in path {
            let next = match (segment, value.map(|v| v.get_ref()), table) {
                (Segment::Key(key), Some(toml::de::DeValue::Table(t)), _)
                | (Segment::Key(key), None, Some(t)) => t.get(key.as_str()),
                (Segment::Index(i), Some(toml::de::DeValue::Array(a)), _) => a.get(*i),
                _ => None,
            };
            let next = next?;
            span = next.span();
            value = Some(next);
            table = None;
        }
        let (line, column) = self.line_column(span.start);
        Some(format!(
            "{}, line {line}, column {column}",
            self.file.display()
        ))
    }

    /// Deserialises the spanned value at `path` into `T`, to get serde's error with
    /// the line and a snippet of the file; `None` when that cannot be done (the
    /// value was merged from elsewhere, say).
    fn located_error<T: DeserializeOwned>(
        &self,
        path: &[Segment],
        strip: Option<&str>,
    ) -> Option<String> {
        let document = toml::de::DeTable::parse(&self.text).ok()?;
        let mut current: toml::Spanned<toml::de::DeValue<'_>> = {
            let span = document.span();
            toml::Spanned::new(span, toml::de::DeValue::Table(document.into_inner()))
        };
        for segment in path {
            let span_inner = current.into_inner();
            current = match (segment, span_inner) {
                (Segment::Key(key), toml::de::DeValue::Table(mut t)) => t.remove(key.as_str())?,
                (Segment::Index(i), toml::de::DeValue::Array(a)) => a.into_iter().nth(*i)?,
                _ => return None,
            };
        }
        if let Some(strip) = strip {
            let span = current.span();
            if let toml::de::DeValue::Table(mut t) = current.into_inner() {
                t.remove(strip);
                current = toml::Spanned::new(span, toml::de::DeValue::Table(t));
            } else {
                return None;
            }
        }
        let mut error = T::deserialize(toml::de::ValueDeserializer::from(current)).err()?;
        error.set_input(Some(&self.text));
        Some(format!(
            "{}: {}",
            self.file.display(),
            error.to_string().trim_end()
        ))
    }
}

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

impl Segment {
    /// Splits a dotted field such as `health.interval` or `ports[1]` into segments.
    pub(crate) fn parse_field(field: &str) -> Vec<Segment> {
        let mut segments = Vec::new();
        for part in field.split('.').filter(|p| !p.is_empty()) {
            let mut rest = part;
            if let Some(open) = rest.find('[') {
                if open > 0 {
                    segments.push(Segment::Key(rest[..open].to_owned()));
                }
                rest = &rest[open..];
                while let Some(tail) = rest.strip_prefix('[') {
                    let Some(close) = tail.find(']') else { break };
                    if let Ok(i) = tail[..close].parse() {
                        segments.push(Segment::Index(i));
                    }
                    rest = &tail[close + 1..];
                }
            } else {
                segments.push(Segment::Key(rest.to_owned()));
            }
        }
        segments
    }
}

fn dotted(path: &[Segment]) -> String {
    let mut key = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Index(i) => key.push_str(&format!("[{i}]")),
        }
    }
    key
}

/// The app a section belongs to, for its validation.
#[derive(Debug)]
pub(crate) struct AppScope {
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) workspace: Arc<BTreeMap<String, Section>>,
}

/// A section of `shipflow.toml` that an adapter owns, kept as raw TOML until the
/// adapter reads it with [`Section::parse`]. The typed value is kept after the
/// first read, so a schema's check at load time and the adapter's later read parse
/// once.
#[derive(Clone)]
pub struct Section(Arc<Inner>);

struct Inner {
    path: Vec<Segment>,
    /// A key of the raw table that is core's, not the adapter's (`type` in `build`).
    strip: Option<&'static str>,
    value: toml::Value,
    doc: Arc<Document>,
    app: Option<AppScope>,
    typed: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Section")
            .field("key", &self.key())
            .finish_non_exhaustive()
    }
}

impl Section {
    /// The section's table as written (after environment overlays).
    pub(crate) fn raw(&self) -> &toml::Value {
        &self.0.value
    }

    pub(crate) fn new(
        path: Vec<Segment>,
        mut value: toml::Value,
        strip: Option<&'static str>,
        doc: Arc<Document>,
        app: Option<AppScope>,
    ) -> Self {
        if let (Some(strip), toml::Value::Table(t)) = (strip, &mut value) {
            t.remove(strip);
        }
        Self(Arc::new(Inner {
            path,
            strip,
            value,
            doc,
            app,
            typed: OnceLock::new(),
        }))
    }

    /// The section's whole key, e.g. `apps.web.deploy.docker`.
    pub fn key(&self) -> String {
        dotted(&self.0.path)
    }

    /// Reads the section into `T` and validates it. The result is kept, so reading
    /// it again as the same type is cheap. Errors name the whole key and the line.
    pub fn parse<T: ConfigSection>(&self) -> Result<Arc<T>, ConfigError> {
        if let Some(typed) = self.0.typed.get()
            && let Ok(value) = Arc::clone(typed).downcast::<T>()
        {
            return Ok(value);
        }
        let mut value = T::deserialize(self.0.value.clone()).map_err(|e| {
            let message = self
                .0
                .doc
                .located_error::<T>(&self.0.path, self.0.strip)
                .unwrap_or_else(|| e.to_string());
            ConfigError::Section {
                key: self.key(),
                message,
            }
        })?;
        value
            .validate(&SectionContext { section: self })
            .map_err(|e| self.field_error(&e))?;
        let value = Arc::new(value);
        let _ = self.0.typed.set(value.clone());
        Ok(value)
    }

    fn field_error(&self, error: &SectionError) -> ConfigError {
        let mut path = self.0.path.clone();
        path.extend(Segment::parse_field(&error.field));
        // The field may not be written (a missing key): place the section instead.
        let location = self
            .0
            .doc
            .locate(&path)
            .or_else(|| self.0.doc.locate(&self.0.path));
        let message = match location {
            Some(at) => format!("{} ({at})", error.message),
            None => error.message.clone(),
        };
        ConfigError::Section {
            key: dotted(&path),
            message,
        }
    }
}

type Check = Arc<dyn Fn(&Section) -> Result<(), ConfigError> + Send + Sync>;

fn check<T: ConfigSection>() -> Check {
    Arc::new(|section: &Section| section.parse::<T>().map(|_| ()))
}

/// The sections a program understands, so that loading checks them all up front.
/// Each adapter offers its own (`shipflow_docker::schema()`, say); a program merges
/// those it uses and hands the result to [`Workspace::loader`](crate::Workspace::loader).
/// A deploy target, build type or `[workspace]` key that a schema does not list is
/// an error that lists the known ones, for each of the three kinds the schema lists
/// any of; sections of a kind it lists none of (and all, without a schema) are read
/// only when an adapter asks.
#[derive(Clone, Default)]
pub struct Schema {
    pub(crate) deploy: BTreeMap<String, Check>,
    pub(crate) build: BTreeMap<String, Check>,
    pub(crate) workspace: BTreeMap<String, Check>,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema")
            .field("deploy", &self.deploy.keys().collect::<Vec<_>>())
            .field("build", &self.build.keys().collect::<Vec<_>>())
            .field("workspace", &self.workspace.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Self {
        Self::default()
    }

    /// `[apps.<app>.deploy.<name>]` reads as `T`.
    pub fn deploy_target<T: ConfigSection>(mut self, name: &str) -> Self {
        self.deploy.insert(name.to_owned(), check::<T>());
        self
    }

    /// `build = { type = "<name>", … }` reads as `T` (without the `type` key).
    pub fn build_type<T: ConfigSection>(mut self, name: &str) -> Self {
        self.build.insert(name.to_owned(), check::<T>());
        self
    }

    /// The `[workspace]` key `key` reads as `T`.
    pub fn workspace_key<T: ConfigSection>(mut self, key: &str) -> Self {
        self.workspace.insert(key.to_owned(), check::<T>());
        self
    }

    /// Everything `other` lists too.
    pub fn merge(mut self, other: Schema) -> Self {
        self.deploy.extend(other.deploy);
        self.build.extend(other.build);
        self.workspace.extend(other.workspace);
        self
    }

    /// The deploy targets listed, in name order.
    pub fn deploy_targets(&self) -> impl Iterator<Item = &str> {
        self.deploy.keys().map(String::as_str)
    }

    /// The build types listed, in name order.
    pub fn build_types(&self) -> impl Iterator<Item = &str> {
        self.build.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_split_into_keys_and_indices() {
        assert_eq!(
            Segment::parse_field("health.interval"),
            [
                Segment::Key("health".into()),
                Segment::Key("interval".into())
            ]
        );
        assert_eq!(
            Segment::parse_field("ports[1]"),
            [Segment::Key("ports".into()), Segment::Index(1)]
        );
        assert_eq!(
            Segment::parse_field("layers[0].to"),
            [
                Segment::Key("layers".into()),
                Segment::Index(0),
                Segment::Key("to".into())
            ]
        );
        assert!(Segment::parse_field("").is_empty());
    }

    #[test]
    fn locations_count_lines_and_characters() {
        let doc = Document {
            file: "shipflow.toml".into(),
            text: "[apps.api]\ndeploy.x = { a = [1, 2] }\n".into(),
            root: ".".into(),
            real_root: ".".into(),
        };
        let path = [
            Segment::Key("apps".into()),
            Segment::Key("api".into()),
            Segment::Key("deploy".into()),
            Segment::Key("x".into()),
            Segment::Key("a".into()),
            Segment::Index(1),
        ];
        assert_eq!(
            doc.locate(&path).as_deref(),
            Some("shipflow.toml, line 2, column 22")
        );
        assert_eq!(
            doc.locate(&path[..2]).as_deref(),
            Some("shipflow.toml, line 1, column 1")
        );
    }
}
