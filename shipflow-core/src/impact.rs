//! Impact analysis: which apps a set of changed paths touches, and why. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::index::AppIndex;
use crate::paths::is_under;
use crate::workspace::CONFIG_FILE;
use crate::{ChangedPath, Workspace};

/// Why an app is in a [`ChangeSet`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Reason {
    /// A path under the app's own directory changed.
    OwnPath {
        /// The changed path.
        path: String,
    },
    /// A path matching one of the app's input globs changed.
    Input {
        /// The changed path.
        path: String,
        /// The glob it matched.
        glob: String,
    },
    /// A path under a package the app depends on changed.
    Package {
        /// The changed path.
        path: String,
        /// The package path in `depends_on`.
        package: String,
    },
    /// A path matching a workspace-wide shared glob changed.
    Shared {
        /// The changed path.
        path: String,
        /// The shared glob.
        glob: String,
    },
    /// An app this app depends on is in the change set.
    Upstream {
        /// The upstream app.
        app: String,
    },
    /// The workspace's configuration file changed: the app's settings may have (its
    /// fingerprint covers them), so it ships unless its fingerprint already runs.
    Config {
        /// The configuration file.
        path: String,
    },
    /// Every app was asked for (`--all`): it ships even if its fingerprint already runs.
    All,
    /// There was no base revision to compare with: every app is a candidate, and
    /// ships unless its fingerprint already runs.
    NoBase,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::OwnPath { path } => write!(f, "{path} changed (own path)"),
            Reason::Input { path, glob } => write!(f, "{path} changed (input {glob})"),
            Reason::Package { path, package } => write!(f, "{path} changed (depends on {package})"),
            Reason::Shared { path, glob } => write!(f, "{path} changed (shared {glob})"),
            Reason::Upstream { app } => write!(f, "depends on app {app}, which changed"),
            Reason::Config { path } => write!(f, "{path} changed (the app's settings may have)"),
            Reason::All => f.write_str("all apps requested"),
            Reason::NoBase => f.write_str("no base revision: compared with what runs"),
        }
    }
}

/// Which apps to consider.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Take every app, changed or not.
    pub all: bool,
    /// Keep only these apps (empty: no filter).
    pub apps: Vec<String>,
}

/// The apps to ship, each with the reasons it is in, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// App name to reasons.
    pub apps: BTreeMap<String, Vec<Reason>>,
    /// The apps that are not in, in name order.
    pub unchanged: Vec<String>,
}

impl ChangeSet {
    /// Whether `app` is in.
    pub fn contains(&self, app: &str) -> bool {
        self.apps.contains_key(app)
    }

    /// Whether no app is in.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

/// The selection names an app the workspace lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown app {app:?} in the app filter (known apps: {known})")]
pub struct UnknownApp {
    /// The name given.
    pub app: String,
    /// The known apps, comma separated.
    pub known: String,
}

/// Works out which apps `changes` touch, transitively through `depends_on`.
///
/// A changed path counts for an app when it is under the app's path, matches one
/// of its input globs, is under a package path it depends on, or matches a shared
/// glob (which counts for every app). Both sides of a rename count. An app that
/// depends on a changed app is changed too.
///
/// ```
/// use shipflow_core::{analyze, ChangeKind, ChangedPath, Selection, Workspace};
///
/// let ws = Workspace::from_toml(
///     "[workspace]\nregistry = \"r.io\"\n[apps.api]\n[apps.web]",
///     ".")?;
/// let changes = [ChangedPath::new("apps/api/main.rs", ChangeKind::Modified)];
/// let set = analyze(&ws, &changes, &Selection::default())?;
/// assert!(set.contains("api") && !set.contains("web"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn analyze(
    workspace: &Workspace,
    changes: &[ChangedPath],
    selection: &Selection,
) -> Result<ChangeSet, UnknownApp> {
    for name in &selection.apps {
        if workspace.app(name).is_none() {
            return Err(UnknownApp {
                app: name.clone(),
                known: workspace
                    .apps()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let index = workspace.index();
    let app = |i: usize| {
        workspace
            .app(index.name(i))
            .expect("the index holds the workspace's apps")
    };
    let mut reasons: BTreeMap<String, Vec<Reason>> = BTreeMap::new();
    if selection.all {
        for app in workspace.apps() {
            reasons.insert(app.name.clone(), vec![Reason::All]);
        }
    }
    // Each changed path gives each app at most one reason: shared, else its own
    // path, else a package it depends on, else one of its input globs. Only the
    // apps the index finds for the path (by its prefixes and the input globs that
    // match it) are looked at: the cost follows the change, not the number of apps.
    let (mut candidates, mut scratch) = (Vec::new(), Vec::new());
    for path in changes.iter().flat_map(ChangedPath::paths) {
        if path == CONFIG_FILE {
            for app in workspace.apps() {
                reasons
                    .entry(app.name.clone())
                    .or_default()
                    .push(Reason::Config { path: path.into() });
            }
            continue;
        }
        if let Some(glob) = workspace.matching_shared(path) {
            for app in workspace.apps() {
                reasons
                    .entry(app.name.clone())
                    .or_default()
                    .push(Reason::Shared {
                        path: path.into(),
                        glob: glob.into(),
                    });
            }
            continue;
        }
        index.candidates(path, &mut candidates, &mut scratch);
        for &i in &candidates {
            let app = app(i);
            let reason = if app.owns(path) {
                Reason::OwnPath { path: path.into() }
            } else if let Some(package) = app.package_paths().find(|p| is_under(path, p)) {
                Reason::Package {
                    path: path.into(),
                    package: package.into(),
                }
            } else if let Some(glob) = app.matching_input(path) {
                Reason::Input {
                    path: path.into(),
                    glob: glob.into(),
                }
            } else {
                continue;
            };
            reasons.entry(app.name.clone()).or_default().push(reason);
        }
    }
    for own in reasons.values_mut() {
        own.dedup();
    }
    // Propagate through app dependencies until nothing new is added, in passes over
    // the apps in name order. Only the apps downstream of one already in can gain a
    // reason, so the passes go over those alone.
    let downstream = downstream(index, reasons.keys());
    loop {
        let mut added = false;
        for &i in &downstream {
            let app = app(i);
            for upstream in app.app_dependencies() {
                let reason = Reason::Upstream {
                    app: upstream.into(),
                };
                let known = reasons
                    .get(&app.name)
                    .is_some_and(|r| r.contains(&reason) || r.contains(&Reason::All));
                if reasons.contains_key(upstream) && !known {
                    reasons.entry(app.name.clone()).or_default().push(reason);
                    added = true;
                }
            }
        }
        if !added {
            break;
        }
    }
    if !selection.apps.is_empty() {
        reasons.retain(|name, _| selection.apps.contains(name));
    }
    // Both in name order: one walk over the index's names, no lookups.
    let mut changed = reasons.keys().peekable();
    let unchanged = index
        .names()
        .iter()
        .filter(|name| changed.next_if(|&changed| changed == *name).is_none())
        .cloned()
        .collect();
    Ok(ChangeSet {
        apps: reasons,
        unchanged,
    })
}

/// The apps that depend, directly or through others, on one of `starts`, in name order.
fn downstream<'a>(index: &AppIndex, starts: impl Iterator<Item = &'a String>) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    let mut pending: Vec<usize> = starts.filter_map(|name| index.position(name)).collect();
    while let Some(i) = pending.pop() {
        for &down in index.dependents(i) {
            if seen.insert(down) {
                pending.push(down);
            }
        }
    }
    seen.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChangeKind;
    use rstest::{fixture, rstest};

    #[fixture]
    fn workspace() -> Workspace {
        Workspace::from_toml(
            r#"
            [workspace]
            registry = "r.io/acme"
            shared = ["Cargo.lock", "*.config.js"]
            [apps.api]
            depends_on = ["packages/db"]
            inputs = ["proto/**/*.proto"]
            [apps.worker]
            depends_on = ["packages/db", "api"]
            [apps.web]
            depends_on = ["packages/ui"]
            [apps.admin]
            depends_on = ["web"]
            "#,
            ".",
        )
        .expect("valid workspace")
    }

    fn modified(path: &str) -> ChangedPath {
        ChangedPath::new(path, ChangeKind::Modified)
    }

    #[rstest]
    fn own_path_marks_only_that_app_and_its_dependents(workspace: Workspace) {
        let set = analyze(
            &workspace,
            &[modified("apps/web/src/main.ts")],
            &Selection::default(),
        )
        .expect("ok");
        assert_eq!(set.apps.keys().collect::<Vec<_>>(), ["admin", "web"]);
        assert_eq!(
            set.apps["web"],
            [Reason::OwnPath {
                path: "apps/web/src/main.ts".into()
            }]
        );
        assert_eq!(set.apps["admin"], [Reason::Upstream { app: "web".into() }]);
        assert_eq!(set.unchanged, ["api", "worker"]);
    }

    #[rstest]
    fn sibling_prefix_is_not_ownership(workspace: Workspace) {
        let set = analyze(
            &workspace,
            &[modified("apps/api-docs/README.md")],
            &Selection::default(),
        )
        .expect("ok");
        assert!(set.is_empty(), "{set:?}");
    }

    #[rstest]
    fn shared_path_marks_every_app(workspace: Workspace) {
        let set =
            analyze(&workspace, &[modified("Cargo.lock")], &Selection::default()).expect("ok");
        assert_eq!(set.apps.len(), 4);
        for reasons in set.apps.values() {
            assert!(reasons.contains(&Reason::Shared {
                path: "Cargo.lock".into(),
                glob: "Cargo.lock".into()
            }));
        }
        let nested = analyze(
            &workspace,
            &[modified("apps/web/vite.config.js")],
            &Selection::default(),
        )
        .expect("ok");
        assert!(!nested.contains("api"), "`*` must not cross directories");
    }

    #[rstest]
    fn package_change_marks_both_dependents_each_with_its_reason(workspace: Workspace) {
        let set = analyze(
            &workspace,
            &[modified("packages/db/src/lib.rs")],
            &Selection::default(),
        )
        .expect("ok");
        assert_eq!(set.apps.keys().collect::<Vec<_>>(), ["api", "worker"]);
        let package = Reason::Package {
            path: "packages/db/src/lib.rs".into(),
            package: "packages/db".into(),
        };
        assert_eq!(set.apps["api"], std::slice::from_ref(&package));
        assert_eq!(
            set.apps["worker"],
            [package, Reason::Upstream { app: "api".into() }]
        );
    }

    #[rstest]
    fn input_glob_counts(workspace: Workspace) {
        let set = analyze(
            &workspace,
            &[modified("proto/v1/user.proto")],
            &Selection::default(),
        )
        .expect("ok");
        assert_eq!(
            set.apps["api"],
            [Reason::Input {
                path: "proto/v1/user.proto".into(),
                glob: "proto/**/*.proto".into()
            }]
        );
        assert!(set.contains("worker"));
        assert!(!set.contains("web"));
    }

    #[rstest]
    fn rename_between_apps_marks_both(workspace: Workspace) {
        let set = analyze(
            &workspace,
            &[ChangedPath::renamed("apps/web/util.ts", "apps/api/util.ts")],
            &Selection::default(),
        )
        .expect("ok");
        assert_eq!(
            set.apps["web"],
            [Reason::OwnPath {
                path: "apps/web/util.ts".into()
            }]
        );
        assert_eq!(
            set.apps["api"],
            [Reason::OwnPath {
                path: "apps/api/util.ts".into()
            }]
        );
    }

    #[rstest]
    fn all_and_filter(workspace: Workspace) {
        let all = analyze(
            &workspace,
            &[],
            &Selection {
                all: true,
                apps: vec![],
            },
        )
        .expect("ok");
        assert_eq!(all.apps.len(), 4);
        assert!(all.apps.values().all(|r| r == &[Reason::All]));

        let filtered = analyze(
            &workspace,
            &[modified("Cargo.lock")],
            &Selection {
                all: false,
                apps: vec!["web".into()],
            },
        )
        .expect("ok");
        assert_eq!(filtered.apps.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(filtered.unchanged, ["admin", "api", "worker"]);

        let err = analyze(
            &workspace,
            &[],
            &Selection {
                all: false,
                apps: vec!["nope".into()],
            },
        )
        .expect_err("unknown app");
        assert_eq!(
            err.to_string(),
            "unknown app \"nope\" in the app filter (known apps: admin, api, web, worker)"
        );
    }

    /// The first implementation, one app at a time over every path, then passes over
    /// every app for their dependencies: the oracle the indexed one must agree with.
    fn naive(workspace: &Workspace, changes: &[ChangedPath], all: bool) -> ChangeSet {
        let mut reasons: BTreeMap<String, Vec<Reason>> = BTreeMap::new();
        for app in workspace.apps() {
            let mut own = Vec::new();
            if all {
                own.push(Reason::All);
            }
            for path in changes.iter().flat_map(ChangedPath::paths) {
                if let Some(glob) = workspace.matching_shared(path) {
                    own.push(Reason::Shared {
                        path: path.into(),
                        glob: glob.into(),
                    });
                } else if app.owns(path) {
                    own.push(Reason::OwnPath { path: path.into() });
                } else if let Some(package) = app.package_paths().find(|p| is_under(path, p)) {
                    own.push(Reason::Package {
                        path: path.into(),
                        package: package.into(),
                    });
                } else if let Some(glob) = app.matching_input(path) {
                    own.push(Reason::Input {
                        path: path.into(),
                        glob: glob.into(),
                    });
                }
            }
            if !own.is_empty() {
                own.dedup();
                reasons.insert(app.name.clone(), own);
            }
        }
        loop {
            let mut added = false;
            for app in workspace.apps() {
                for upstream in app.app_dependencies() {
                    let reason = Reason::Upstream {
                        app: upstream.into(),
                    };
                    let known = reasons
                        .get(&app.name)
                        .is_some_and(|r| r.contains(&reason) || r.contains(&Reason::All));
                    if reasons.contains_key(upstream) && !known {
                        reasons.entry(app.name.clone()).or_default().push(reason);
                        added = true;
                    }
                }
            }
            if !added {
                break;
            }
        }
        let unchanged = workspace
            .apps()
            .filter(|a| !reasons.contains_key(&a.name))
            .map(|a| a.name.clone())
            .collect();
        ChangeSet {
            apps: reasons,
            unchanged,
        }
    }

    #[test]
    fn the_index_agrees_with_looking_at_every_app() {
        // A small deterministic generator: many workspaces and change sets.
        let mut state: u64 = 0x5eed;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let dirs = [
            "apps/a",
            "apps/a/sub",
            "apps/b",
            "packages/db",
            "packages/ui",
            "libs",
            "",
        ];
        let files = [
            "x.rs",
            "proto/m.proto",
            "Cargo.lock",
            "a/b.ts",
            "conf.config.js",
        ];
        let mut upstream_rounds = 0;
        for round in 0..300 {
            let mut toml =
                String::from("[workspace]\nregistry = \"r.io\"\nshared = [\"Cargo.lock\"]\n");
            let apps = 1 + next(6) as usize;
            // Apps depend on apps made before them, whose names sort before or after
            // theirs, so propagation takes several passes in some rounds.
            let name = |a: usize| ["m", "c", "x", "a", "q", "b"][a];
            for a in 0..apps {
                let path = dirs[next(dirs.len() as u64) as usize];
                let path = if path.is_empty() { "." } else { path };
                toml.push_str(&format!("[apps.{}]\npath = \"{path}\"\n", name(a)));
                if next(2) == 0 {
                    toml.push_str("inputs = [\"proto/**\", \"**/*.config.js\"]\n");
                }
                let package = ["packages/db", "packages/ui", "libs/"][next(3) as usize];
                let mut depends_on = vec![format!("\"{package}\"")];
                for _ in 0..if a > 0 { next(3) } else { 0 } {
                    let upstream = format!("\"{}\"", name(next(a as u64) as usize));
                    if !depends_on.contains(&upstream) {
                        depends_on.insert(next(2) as usize, upstream);
                    }
                }
                toml.push_str(&format!("depends_on = [{}]\n", depends_on.join(", ")));
            }
            let ws = Workspace::from_toml(&toml, "/nonexistent-root").expect("valid");
            let changes: Vec<ChangedPath> = (0..1 + next(4))
                .map(|_| {
                    let dir = dirs[next(dirs.len() as u64) as usize];
                    let file = files[next(files.len() as u64) as usize];
                    let path = if dir.is_empty() {
                        file.to_owned()
                    } else {
                        format!("{dir}/{file}")
                    };
                    modified(&path)
                })
                .collect();
            let all = next(5) == 0;
            let selection = Selection {
                all,
                apps: Vec::new(),
            };
            let fast = analyze(&ws, &changes, &selection).expect("ok");
            let slow = naive(&ws, &changes, all);
            assert_eq!(fast, slow, "round {round}: {toml}\n{changes:?}");
            upstream_rounds += usize::from(
                fast.apps
                    .values()
                    .flatten()
                    .any(|r| matches!(r, Reason::Upstream { .. })),
            );
        }
        assert!(
            upstream_rounds > 50,
            "only {upstream_rounds} rounds propagated"
        );
    }
}
