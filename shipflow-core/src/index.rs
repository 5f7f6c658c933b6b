//! [`AppIndex`]: the apps of a workspace by the paths and globs that concern them, and by
//! the apps that depend on them. Built once per load, so that an impact analysis costs
//! what the change touches, not the number of apps.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use globset::GlobSet;

use crate::App;
use crate::paths::glob_set;

/// Apps by position in name order (the order of [`Workspace::apps`](crate::Workspace::apps)).
#[derive(Default)]
pub(crate) struct AppIndex {
    /// The app names, sorted.
    names: Vec<String>,
    /// Each app's directory and package paths, to the apps that have it.
    by_dir: HashMap<String, Vec<usize>>,
    /// Every app's input globs in one set.
    inputs: Inputs,
    /// For each app, the apps that list it in `depends_on`.
    dependents: Vec<Vec<usize>>,
}

/// Its sizes only: a workspace's `Debug` already lists the apps.
impl fmt::Debug for AppIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppIndex")
            .field("apps", &self.names.len())
            .field("paths", &self.by_dir.len())
            .finish_non_exhaustive()
    }
}

/// The apps' input globs: one set over all of them, each glob naming its app, or (should
/// the combined set not compile) the apps that have any.
enum Inputs {
    Set { globs: GlobSet, owners: Vec<usize> },
    Each(Vec<usize>),
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs::Each(Vec::new())
    }
}

impl AppIndex {
    /// Indexes `apps`, whose input globs and app dependencies are already valid.
    pub(crate) fn new(apps: &BTreeMap<String, App>) -> Self {
        let names: Vec<String> = apps.keys().cloned().collect();
        let mut by_dir: HashMap<String, Vec<usize>> = HashMap::new();
        let mut dependents = vec![Vec::new(); names.len()];
        let (mut globs, mut owners, mut with_inputs) = (Vec::new(), Vec::new(), Vec::new());
        for (i, app) in apps.values().enumerate() {
            for dir in std::iter::once(app.path.as_str()).chain(app.package_paths()) {
                let holders = by_dir.entry(dir.to_owned()).or_default();
                if holders.last() != Some(&i) {
                    holders.push(i);
                }
            }
            for upstream in app.app_dependencies() {
                if let Ok(u) = names.binary_search_by(|name| name.as_str().cmp(upstream)) {
                    dependents[u].push(i);
                }
            }
            if !app.inputs.is_empty() {
                with_inputs.push(i);
                globs.extend(app.inputs.iter().cloned());
                owners.extend(std::iter::repeat_n(i, app.inputs.len()));
            }
        }
        let inputs = match glob_set(&globs) {
            Ok(globs) => Inputs::Set { globs, owners },
            Err(_) => Inputs::Each(with_inputs),
        };
        Self {
            names,
            by_dir,
            inputs,
            dependents,
        }
    }

    /// The app names, in name order.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of app `i`.
    pub(crate) fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// The position of the app called `name`.
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.names
            .binary_search_by(|known| known.as_str().cmp(name))
            .ok()
    }

    /// The apps that list app `i` in `depends_on`, in name order.
    pub(crate) fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// Fills `out` with the apps `path` can concern, each once, in name order: those whose
    /// directory or package paths hold it (found by its prefixes), and those with an input
    /// glob that matches it. `matched` is scratch space.
    pub(crate) fn candidates(&self, path: &str, out: &mut Vec<usize>, matched: &mut Vec<usize>) {
        out.clear();
        match &self.inputs {
            Inputs::Set { globs, .. } if globs.is_empty() => {}
            Inputs::Set { globs, owners } => {
                globs.matches_into(path, matched);
                out.extend(matched.iter().map(|&g| owners[g]));
            }
            Inputs::Each(apps) => out.extend_from_slice(apps),
        }
        let prefixes = std::iter::once("")
            .chain(path.match_indices('/').map(|(i, _)| &path[..i]))
            .chain(std::iter::once(path));
        for prefix in prefixes {
            if let Some(apps) = self.by_dir.get(prefix) {
                out.extend_from_slice(apps);
            }
        }
        out.sort_unstable();
        out.dedup();
    }
}

#[cfg(test)]
mod tests {
    use crate::Workspace;

    fn workspace() -> Workspace {
        Workspace::from_toml(
            r#"
            [workspace]
            registry = "r.io"
            [apps.api]
            depends_on = ["packages/db"]
            inputs = ["proto/**/*.proto", "*.env"]
            [apps.web]
            path = "."
            depends_on = ["api"]
            [apps.worker]
            depends_on = ["packages/db", "api"]
            inputs = ["proto/v1/*"]
            "#,
            "/nonexistent-root",
        )
        .expect("valid")
    }

    fn candidates<'a>(ws: &'a Workspace, path: &str) -> Vec<&'a str> {
        let index = ws.index();
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        index.candidates(path, &mut out, &mut scratch);
        out.iter().map(|&i| index.name(i)).collect()
    }

    #[test]
    fn a_path_finds_the_apps_whose_directories_packages_or_globs_hold_it() {
        let ws = workspace();
        assert_eq!(candidates(&ws, "apps/api/main.rs"), ["api", "web"]);
        assert_eq!(
            candidates(&ws, "packages/db/lib.rs"),
            ["api", "web", "worker"]
        );
        assert_eq!(
            candidates(&ws, "proto/v1/user.proto"),
            ["api", "web", "worker"]
        );
        assert_eq!(candidates(&ws, "prod.env"), ["api", "web"]);
        assert_eq!(candidates(&ws, "apps/worker-docs/x"), ["web"]);
    }

    #[test]
    fn dependents_are_the_reverse_of_depends_on() {
        let ws = workspace();
        let index = ws.index();
        let api = index.position("api").expect("api");
        let names: Vec<&str> = index
            .dependents(api)
            .iter()
            .map(|&i| index.name(i))
            .collect();
        assert_eq!(names, ["web", "worker"]);
        assert_eq!(index.position("nope"), None);
    }
}
