//! [`Trees`]: what fingerprints read from a commit's trees, remembered by tree id.
//!
//! A plan fingerprints many apps at one commit, and their input paths pass through the same
//! few directories (the root, `apps/`, `packages/`), which in a large monorepo hold
//! thousands of entries. Each directory is parsed once into a map, so a step of a path is
//! one lookup and a fingerprint costs the depth of its paths, not the size of the
//! directories on the way. A glob's matches are remembered per tree the same way, so a
//! shared glob is matched once per plan, not once per app. Tree ids name content, so
//! nothing remembered goes stale.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use gix::ObjectId;
use gix::bstr::{BStr, BString, ByteSlice};
use gix::object::tree::EntryMode;
use tracing::debug;

use crate::{GitError, fingerprint};

/// A directory's entries, sorted by name for binary search; the names share one buffer, so
/// a directory of thousands of entries is two allocations.
struct Directory {
    names: Vec<u8>,
    entries: Vec<Entry>,
}

/// One entry of a [`Directory`]: its name as a range of the directory's names.
struct Entry {
    name: Range<usize>,
    mode: EntryMode,
    id: ObjectId,
}

impl Directory {
    fn read(repo: &gix::Repository, id: ObjectId) -> Result<Self, GitError> {
        let step = "looking up an input path";
        let tree = repo.find_tree(id).map_err(|err| GitError::git(step, err))?;
        // An entry takes at least 22 bytes (mode, space, a name byte, NUL, a 20-byte id),
        // so this is room enough for a directory of thousands without growing.
        let mut entries = Vec::with_capacity(tree.data.len() / 22);
        let mut names = Vec::with_capacity(tree.data.len());
        for entry in tree.iter() {
            let entry = entry.map_err(|err| GitError::git(step, err))?;
            let start = names.len();
            names.extend_from_slice(entry.filename());
            entries.push(Entry {
                name: start..names.len(),
                mode: entry.mode(),
                id: entry.object_id(),
            });
        }
        // Git orders a directory `name/` after `name.txt`; plain byte order is searched here.
        // Most directories are in both orders already, and checking is cheaper than sorting.
        let order = |a: &Entry, b: &Entry| names[a.name.clone()].cmp(&names[b.name.clone()]);
        if !entries.is_sorted_by(|a, b| order(a, b).is_le()) {
            entries.sort_by(order);
        }
        Ok(Directory { names, entries })
    }

    fn get(&self, name: &[u8]) -> Option<(EntryMode, ObjectId)> {
        let found = self
            .entries
            .binary_search_by(|entry| self.names[entry.name.clone()].cmp(name))
            .ok()?;
        let entry = &self.entries[found];
        Some((entry.mode, entry.id))
    }
}

/// A file a glob matched: its path from the root, mode and id.
pub(crate) type GlobMatch = (BString, EntryMode, ObjectId);

/// How many directory entries (or glob matches) a memo keeps, about 10 MB; past that, it
/// starts over.
const BUDGET: usize = 100_000;

/// Directories and glob matches of commit trees, shared by every call of a detector.
#[derive(Default)]
pub(crate) struct Trees {
    directories: Mutex<Memo<ObjectId, Directory>>,
    globs: Mutex<Memo<(ObjectId, String), Vec<GlobMatch>>>,
}

impl Trees {
    /// The mode and id of the entry at `path` under the tree `root`, or `None` when there is
    /// none. A path through a file or a submodule is absent: the submodule's commit is not
    /// in this repository.
    pub(crate) fn entry_at(
        &self,
        repo: &gix::Repository,
        root: ObjectId,
        path: &str,
    ) -> Result<Option<(EntryMode, ObjectId)>, GitError> {
        let mut components = path.split('/').filter(|c| !c.is_empty()).peekable();
        let mut dir = root;
        while let Some(name) = components.next() {
            let Some((mode, id)) = self.directory(repo, dir)?.get(name.as_bytes()) else {
                return Ok(None);
            };
            if components.peek().is_none() {
                return Ok(Some((mode, id)));
            }
            if !mode.is_tree() {
                return Ok(None);
            }
            dir = id;
        }
        Ok(None)
    }

    /// The files under the tree `root` that one of `globs` matches, sorted by path.
    pub(crate) fn glob_matches(
        &self,
        repo: &gix::Repository,
        root: ObjectId,
        globs: &[String],
    ) -> Result<Vec<GlobMatch>, GitError> {
        let mut matched = Vec::new();
        for glob in globs {
            let key = (root, glob.clone());
            if let Some(files) = recall(&self.globs, &key) {
                matched.extend(files.iter().cloned());
                continue;
            }
            let files = Arc::new(walk(repo, root, glob)?);
            matched.extend(files.iter().cloned());
            remember(&self.globs, key, files);
        }
        matched.sort_by(|a, b| a.0.cmp(&b.0));
        matched.dedup_by(|a, b| a.0 == b.0);
        Ok(matched)
    }

    fn directory(&self, repo: &gix::Repository, id: ObjectId) -> Result<Arc<Directory>, GitError> {
        if let Some(directory) = recall(&self.directories, &id) {
            return Ok(directory);
        }
        let directory = Arc::new(Directory::read(repo, id)?);
        remember(&self.directories, id, directory.clone());
        Ok(directory)
    }
}

/// Values kept until their weights add up to [`BUDGET`].
struct Memo<K, V> {
    values: HashMap<K, Arc<V>>,
    weight: usize,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Self {
            values: HashMap::new(),
            weight: 0,
        }
    }
}

/// What a value costs in a [`Memo`]'s budget: its entries.
trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for Directory {
    fn weight(&self) -> usize {
        self.entries.len().max(1)
    }
}

impl Weight for Vec<GlobMatch> {
    fn weight(&self) -> usize {
        self.len().max(1)
    }
}

fn recall<K: Hash + Eq, V>(memo: &Mutex<Memo<K, V>>, key: &K) -> Option<Arc<V>> {
    memo.lock().ok()?.values.get(key).cloned()
}

fn remember<K: Hash + Eq, V: Weight>(memo: &Mutex<Memo<K, V>>, key: K, value: Arc<V>) {
    // A poisoned lock only costs the memo.
    let Ok(mut memo) = memo.lock() else {
        return;
    };
    if memo.weight + value.weight() > BUDGET {
        memo.values.clear();
        memo.weight = 0;
    }
    memo.weight += value.weight();
    memo.values.insert(key, value);
}

/// The files under the tree `root` that `glob` matches. Only the directories the glob can
/// reach are read (see [`Reach`]), so `package-lock.json` costs one tree, not the whole
/// repository.
fn walk(repo: &gix::Repository, root: ObjectId, glob: &str) -> Result<Vec<GlobMatch>, GitError> {
    let step = "walking the tree for globs";
    let matcher = fingerprint::compile(glob)?.compile_matcher();
    let reach = Reach::of(fingerprint::normalize(glob));
    let mut matched = Vec::new();
    let mut pending = vec![(BString::default(), root)];
    let mut trees = 0usize;
    while let Some((dir, id)) = pending.pop() {
        trees += 1;
        let tree = repo.find_tree(id).map_err(|err| GitError::git(step, err))?;
        for entry in tree.iter() {
            let entry = entry.map_err(|err| GitError::git(step, err))?;
            let mut path = dir.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(entry.filename());
            if entry.mode().is_tree() {
                if reach.enters(path.as_ref()) {
                    pending.push((path, entry.object_id()));
                }
            } else if matcher.is_match(path.to_str_lossy().as_ref()) {
                matched.push((path, entry.mode(), entry.object_id()));
            }
        }
    }
    debug!(
        glob,
        trees,
        files = matched.len(),
        "walked the tree for a glob"
    );
    Ok(matched)
}

/// Where in the tree a glob can match: under `dir`, its leading components without
/// wildcards, and at most `depth` components below it (`None`: any depth, after a `**`
/// or where brackets, braces or escapes make the components uncertain).
#[derive(Debug, PartialEq, Eq)]
struct Reach<'a> {
    dir: Vec<&'a str>,
    depth: Option<usize>,
}

impl<'a> Reach<'a> {
    fn of(glob: &'a str) -> Self {
        let special = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\');
        let components: Vec<&str> = glob.split('/').collect();
        // A glob without wildcards names one file: its directory is the one to read.
        let literal = components
            .iter()
            .take_while(|component| !component.contains(special))
            .count()
            .min(components.len() - 1);
        let rest = &components[literal..];
        let bounded = rest
            .iter()
            .all(|component| !component.contains("**") && !component.contains(['[', '{', '\\']));
        Reach {
            dir: components[..literal].to_vec(),
            depth: bounded.then_some(rest.len()),
        }
    }

    /// Whether a file the glob matches can lie under directory `dir`.
    fn enters(&self, dir: &BStr) -> bool {
        let mut below = 0;
        for (i, component) in dir.split_str("/").enumerate() {
            match self.dir.get(i) {
                Some(literal) if literal.as_bytes() != component => return false,
                Some(_) => {}
                None => below += 1,
            }
        }
        // Files in `dir` lie `below + 1` components under the literal directory.
        self.depth.is_none_or(|depth| below < depth)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{BUDGET, GlobMatch, Memo, Reach, recall, remember};
    use gix::ObjectId;
    use gix::bstr::BStr;
    use gix::object::tree::EntryMode;

    #[test]
    fn a_memo_over_its_budget_starts_over() {
        let files = |n: usize| -> Arc<Vec<GlobMatch>> {
            let file = (
                "a".into(),
                EntryMode::from(gix::object::tree::EntryKind::Blob),
                ObjectId::null(gix::hash::Kind::Sha1),
            );
            Arc::new(vec![file; n])
        };
        let memo: Mutex<Memo<&str, Vec<GlobMatch>>> = Mutex::default();
        remember(&memo, "first", files(BUDGET / 2));
        remember(&memo, "second", files(BUDGET / 2));
        assert!(recall(&memo, &"first").is_some() && recall(&memo, &"second").is_some());
        remember(&memo, "third", files(1));
        assert!(recall(&memo, &"first").is_none() && recall(&memo, &"second").is_none());
        assert_eq!(recall(&memo, &"third").map(|files| files.len()), Some(1));
    }

    fn reach(dir: &[&'static str], depth: Option<usize>) -> Reach<'static> {
        Reach {
            dir: dir.to_vec(),
            depth,
        }
    }

    #[test]
    fn a_glob_reaches_its_literal_directory_and_as_deep_as_its_components() {
        assert_eq!(Reach::of("package-lock.json"), reach(&[], Some(1)));
        assert_eq!(Reach::of("*.lock"), reach(&[], Some(1)));
        assert_eq!(
            Reach::of("apps/api/Dockerfile"),
            reach(&["apps", "api"], Some(1))
        );
        assert_eq!(Reach::of("proto/*/*.proto"), reach(&["proto"], Some(2)));
        assert_eq!(
            Reach::of("packages/common/**"),
            reach(&["packages", "common"], None)
        );
        assert_eq!(Reach::of("**/*.lock"), reach(&[], None));
        assert_eq!(Reach::of("{apps,libs}/x"), reach(&[], None));
        assert_eq!(Reach::of("apps/[ab]/x"), reach(&["apps"], None));
    }

    #[test]
    fn only_directories_that_can_hold_a_match_are_entered() {
        let enters = |glob: &str, dir: &str| Reach::of(glob).enters(BStr::new(dir));
        assert!(!enters("package-lock.json", "apps"));
        assert!(enters("apps/api/Dockerfile", "apps"));
        assert!(enters("apps/api/Dockerfile", "apps/api"));
        assert!(!enters("apps/api/Dockerfile", "apps/web"));
        assert!(!enters("apps/api/Dockerfile", "apps/api/src"));
        assert!(enters("proto/*/*.proto", "proto/v1"));
        assert!(!enters("proto/*/*.proto", "proto/v1/old"));
        assert!(!enters("proto/*/*.proto", "protocol"));
        assert!(enters("packages/common/**", "packages/common/src/deep/er"));
        assert!(!enters("packages/common/**", "packages/other"));
        assert!(enters("**/*.lock", "any/where/at/all"));
    }
}
