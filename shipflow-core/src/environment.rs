//! `[environments.<name>]`: which refs ship where, and what differs there.
//!
//! ```toml
//! [environments.staging]
//! branches = ["main"]                      # a push to main ships to staging
//! namespace = "staging"                    # [workspace] keys of adapters, overridden here
//!
//! [environments.production]
//! tags = ["v*"]                            # a tag v1.2.0 ships to production
//! registry = "registry.example.com/prod"   # the registry images go to there
//! namespace = "prod"
//! [environments.production.apps.web.deploy.kubernetes]
//! replicas = 6                             # deep-merged into apps.web.deploy.kubernetes
//! ```
//!
//! A workspace loaded for an environment ([`WorkspaceLoader::environment`]) is the
//! same file with that environment laid over it, checked by the same schema.
//!
//! [`WorkspaceLoader::environment`]: crate::WorkspaceLoader::environment

use std::collections::BTreeMap;

use globset::GlobSet;
use serde::Deserialize;

use crate::paths::{GlobError, glob_set};
use crate::{ConfigError, RevisionInfo};

/// `[environments.<name>]` as written.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawEnvironment {
    #[serde(default)]
    branches: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    registry: Option<String>,
    #[serde(default)]
    apps: BTreeMap<String, toml::Table>,
    /// `[workspace]` keys of adapters, overridden in this environment.
    #[serde(flatten)]
    workspace: BTreeMap<String, toml::Value>,
}

/// The `[workspace]` keys that are core's and the same in every environment.
const CORE_WORKSPACE_KEYS: [&str; 5] = ["shared", "tag", "tags", "hooks", "registry"];
/// What an environment may override in an app.
const APP_KEYS: [&str; 2] = ["build", "deploy"];

/// An environment: its name and the refs that ship to it.
#[derive(Debug, Clone)]
pub struct Environment {
    name: String,
    branches: Vec<String>,
    tags: Vec<String>,
    branch_globs: GlobSet,
    tag_globs: GlobSet,
}

impl Environment {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The branch patterns that ship here.
    pub fn branches(&self) -> &[String] {
        &self.branches
    }

    /// The git tag patterns that ship here.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Whether `revision` ships here: a tag on it matches a tag pattern, or its
    /// branch a branch pattern.
    pub fn matches(&self, revision: &RevisionInfo) -> bool {
        revision
            .tag
            .as_deref()
            .is_some_and(|t| self.tag_globs.is_match(t))
            || revision
                .branch
                .as_deref()
                .is_some_and(|b| self.branch_globs.is_match(b))
    }
}

/// Checks every environment's rules and names, and that its app overrides name
/// apps of the workspace.
pub(crate) fn environments(
    raw: &BTreeMap<String, RawEnvironment>,
    apps: &[&str],
) -> Result<BTreeMap<String, Environment>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, env) in raw {
        let key = |k: &str| format!("environments.{name}.{k}");
        let valid_name = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(ConfigError::Section {
                key: format!("environments.{name}"),
                message: "environment names are lowercase letters, digits, '-' and '_'".into(),
            });
        }
        let refs = |k: &str, patterns: &[String]| {
            glob_set(patterns).map_err(|e| match e {
                GlobError::Outside(glob) | GlobError::Invalid(glob, _) => ConfigError::BadGlob {
                    key: key(k),
                    glob,
                    reason: "not a ref pattern".into(),
                },
            })
        };
        for core in CORE_WORKSPACE_KEYS {
            if core != "registry" && env.workspace.contains_key(core) {
                return Err(ConfigError::Section {
                    key: key(core),
                    message: "is the same in every environment; set it in [workspace]".into(),
                });
            }
        }
        for (app, table) in &env.apps {
            if !apps.contains(&app.as_str()) {
                return Err(ConfigError::Section {
                    key: key(&format!("apps.{app}")),
                    message: format!("{app:?} is not an app (known apps: {})", apps.join(", ")),
                });
            }
            if let Some(other) = table.keys().find(|k| !APP_KEYS.contains(&k.as_str())) {
                return Err(ConfigError::Section {
                    key: key(&format!("apps.{app}.{other}")),
                    message: "an environment overrides only an app's build and deploy tables"
                        .into(),
                });
            }
        }
        out.insert(
            name.clone(),
            Environment {
                name: name.clone(),
                branches: env.branches.clone(),
                tags: env.tags.clone(),
                branch_globs: refs("branches", &env.branches)?,
                tag_globs: refs("tags", &env.tags)?,
            },
        );
    }
    Ok(out)
}

/// What an environment lays over the file: its registry, its `[workspace]` keys,
/// and its apps' `build` and `deploy` tables, deep-merged.
pub(crate) struct Overlay<'a> {
    pub(crate) registry: Option<&'a str>,
    pub(crate) workspace: &'a BTreeMap<String, toml::Value>,
    pub(crate) apps: &'a BTreeMap<String, toml::Table>,
}

impl RawEnvironment {
    pub(crate) fn overlay(&self) -> Overlay<'_> {
        Overlay {
            registry: self.registry.as_deref(),
            workspace: &self.workspace,
            apps: &self.apps,
        }
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else replaces.
pub(crate) fn deep_merge(base: &mut toml::Value, over: &toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// The one environment `revision` ships to, if any. A tag rule wins over a branch
/// rule (a release tag on `main` goes where tags go); two environments matching
/// the same way is an error, since the rules must say where a ref goes.
pub(crate) fn environment_for<'a>(
    environments: &'a BTreeMap<String, Environment>,
    revision: &RevisionInfo,
) -> Result<Option<&'a Environment>, ConfigError> {
    let by = |name: Option<&str>,
              globs: fn(&Environment) -> &GlobSet|
     -> Result<Option<&'a Environment>, ConfigError> {
        let Some(name) = name else { return Ok(None) };
        let matching: Vec<&Environment> = environments
            .values()
            .filter(|e| globs(e).is_match(name))
            .collect();
        match matching.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            many => Err(ConfigError::AmbiguousEnvironment {
                reference: name.to_owned(),
                environments: many
                    .iter()
                    .map(|e| e.name.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    };
    match by(revision.tag.as_deref(), |e| &e.tag_globs)? {
        Some(env) => Ok(Some(env)),
        None => by(revision.branch.as_deref(), |e| &e.branch_globs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_merge_and_values_replace() {
        let mut base: toml::Value = toml::from_str(
            "[deploy.kubernetes]\nnamespace = \"dev\"\nreplicas = 1\n[deploy.docker]\nports = [\"80\"]\n",
        )
        .expect("toml");
        let over: toml::Value =
            toml::from_str("[deploy.kubernetes]\nreplicas = 5\nenv = { A = \"1\" }\n")
                .expect("toml");
        deep_merge(&mut base, &over);
        let expected: toml::Value = toml::from_str(
            "[deploy.kubernetes]\nnamespace = \"dev\"\nreplicas = 5\nenv = { A = \"1\" }\n[deploy.docker]\nports = [\"80\"]\n",
        )
        .expect("toml");
        assert_eq!(base, expected);
    }
}
