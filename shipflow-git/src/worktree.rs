//! Uncommitted and untracked changes: what differs between `HEAD` and the work tree, and how
//! to merge that into a commit diff.

use std::collections::BTreeMap;

use gix::status::index_worktree::Item as WorktreeItem;
use gix::status::plumbing::index_as_worktree::{Change as WorktreeChange, EntryStatus};
use shipflow_core::{ChangeKind, ChangedPath};

use tracing::debug;

use crate::GitError;

/// What is known about one path on each side: `None` means "same as the next side in".
#[derive(Default)]
struct Sides {
    in_head: Option<bool>,
    in_index: Option<bool>,
    in_worktree: Option<bool>,
    type_changed: bool,
}

/// The paths that differ between `HEAD` and the work tree (staged or not, plus untracked files
/// that are not ignored), sorted by path. Renames show as a deletion and an addition.
///
/// A path changed in the index and changed back in the work tree is still reported as
/// modified: shipflow rather rebuilds once too often than misses a change.
///
/// `within` limits the walk to those paths (files or directories, as git pathspecs);
/// empty means the whole work tree.
pub(crate) fn changes(
    repo: &gix::Repository,
    within: &[&str],
) -> Result<Vec<ChangedPath>, GitError> {
    let step = "reading the work tree's status";
    let status = repo
        .status(gix::progress::Discard)
        .map_err(|err| GitError::git(step, err))?
        .untracked_files(gix::status::UntrackedFiles::Files)
        // From the root, whatever the current directory.
        .dirwalk_options(|options| options.empty_patterns_match_prefix(false))
        .index_worktree_rewrites(None)
        .tree_index_track_renames(gix::status::tree_index::TrackRenames::Disabled)
        .into_iter(within.iter().map(|p| gix::bstr::BString::from(*p)))
        .map_err(|err| GitError::git(step, err))?;
    let mut sides: BTreeMap<String, Sides> = BTreeMap::new();
    for item in status {
        let item = item.map_err(|err| GitError::git(step, err))?;
        record(&mut sides, item);
    }
    debug!(within = ?within, paths = sides.len(), "read the index and work tree");
    Ok(sides
        .into_iter()
        .filter_map(|(path, sides)| {
            let in_index = sides.in_index.unwrap_or(true);
            let in_head = sides.in_head.unwrap_or(in_index);
            let in_worktree = sides.in_worktree.unwrap_or(in_index);
            let kind = match (in_head, in_worktree) {
                (false, false) => return None,
                (false, true) => ChangeKind::Added,
                (true, false) => ChangeKind::Deleted,
                (true, true) if sides.type_changed => ChangeKind::TypeChanged,
                (true, true) => ChangeKind::Modified,
            };
            Some(ChangedPath::new(path, kind))
        })
        .collect())
}

/// The entry for `location`, made empty on first use.
fn at<'a>(sides: &'a mut BTreeMap<String, Sides>, location: &gix::bstr::BStr) -> &'a mut Sides {
    sides.entry(location.to_string()).or_default()
}

fn record(sides: &mut BTreeMap<String, Sides>, item: gix::status::Item) {
    use gix::diff::index::ChangeRef;
    match item {
        gix::status::Item::TreeIndex(change) => match change {
            ChangeRef::Addition { location, .. } => {
                let sides = at(sides, location.as_ref());
                sides.in_head = Some(false);
                sides.in_index = Some(true);
            }
            ChangeRef::Deletion { location, .. } => {
                let sides = at(sides, location.as_ref());
                sides.in_head = Some(true);
                sides.in_index = Some(false);
            }
            ChangeRef::Modification {
                location,
                previous_entry_mode,
                entry_mode,
                ..
            } => {
                let sides = at(sides, location.as_ref());
                sides.in_head = Some(true);
                sides.in_index = Some(true);
                sides.type_changed |= previous_entry_mode != entry_mode;
            }
            // Rename tracking is off, but should one arrive: the source is gone, the target new.
            ChangeRef::Rewrite {
                source_location,
                location,
                ..
            } => {
                let source = at(sides, source_location.as_ref());
                source.in_head = Some(true);
                source.in_index = Some(false);
                let target = at(sides, location.as_ref());
                target.in_head = Some(false);
                target.in_index = Some(true);
            }
        },
        gix::status::Item::IndexWorktree(item) => match item {
            WorktreeItem::Modification {
                rela_path, status, ..
            } => {
                let sides = at(sides, rela_path.as_ref());
                match status {
                    EntryStatus::Change(WorktreeChange::Removed) => {
                        sides.in_worktree = Some(false);
                    }
                    EntryStatus::Change(WorktreeChange::Type { .. }) => {
                        sides.in_worktree = Some(true);
                        sides.type_changed = true;
                    }
                    EntryStatus::Change(WorktreeChange::Modification {
                        executable_bit_changed,
                        ..
                    }) => {
                        sides.in_worktree = Some(true);
                        sides.type_changed |= executable_bit_changed;
                    }
                    // A dirty submodule, a conflict, an intent-to-add: the file is there and
                    // not as committed.
                    EntryStatus::Change(WorktreeChange::SubmoduleModification(_))
                    | EntryStatus::Conflict { .. }
                    | EntryStatus::IntentToAdd => {
                        sides.in_worktree = Some(true);
                        sides.in_head.get_or_insert(true);
                    }
                    // Only the index's cached stat is stale; the content is unchanged.
                    EntryStatus::NeedsUpdate(_) => {}
                }
            }
            WorktreeItem::DirectoryContents { entry, .. } => untracked(sides, &entry),
            WorktreeItem::Rewrite {
                source,
                dirwalk_entry,
                ..
            } => {
                at(sides, source.rela_path()).in_worktree = Some(false);
                untracked(sides, &dirwalk_entry);
            }
        },
    }
}

/// An untracked file (not an ignored one, and not a directory, whose files come on their own).
fn untracked(sides: &mut BTreeMap<String, Sides>, entry: &gix::dir::Entry) {
    use gix::dir::entry::{Kind, Status};
    let is_file = matches!(
        entry.disk_kind,
        Some(Kind::File | Kind::Symlink | Kind::Untrackable)
    );
    if entry.status == Status::Untracked && is_file {
        let sides = at(sides, entry.rela_path.as_ref());
        sides.in_index = Some(false);
        sides.in_worktree = Some(true);
    }
}

/// `commit` (base to `HEAD`) followed by `worktree` (`HEAD` to the work tree), as one list of
/// changes from base to the work tree, sorted by path, one entry per path.
pub(crate) fn merge(commit: Vec<ChangedPath>, worktree: Vec<ChangedPath>) -> Vec<ChangedPath> {
    let mut by_path: BTreeMap<String, ChangedPath> = commit
        .into_iter()
        .map(|change| (change.path.clone(), change))
        .collect();
    for later in worktree {
        let Some(earlier) = by_path.remove(&later.path) else {
            by_path.insert(later.path.clone(), later);
            continue;
        };
        if let Some(change) = compose(earlier, later) {
            by_path.insert(change.path.clone(), change);
        }
    }
    let mut paths: Vec<ChangedPath> = by_path.into_values().collect();
    paths.sort();
    paths.dedup();
    paths
}

/// One path changed by a commit, then again in the work tree; `None` when it ends as it began.
fn compose(earlier: ChangedPath, later: ChangedPath) -> Option<ChangedPath> {
    use ChangeKind::{Added, Deleted, Modified, Renamed, TypeChanged};
    let kind = match (earlier.kind, later.kind) {
        // Renamed and then deleted: only the old name's deletion remains.
        (Renamed, Deleted) => {
            return earlier
                .previous
                .map(|previous| ChangedPath::new(previous, Deleted));
        }
        (Renamed, _) => return Some(earlier),
        (Added, Deleted) => return None,
        (Added, _) => Added,
        (Deleted, _) => Modified,
        (_, Deleted) => Deleted,
        (TypeChanged, _) | (_, TypeChanged) => TypeChanged,
        _ => Modified,
    };
    Some(ChangedPath::new(later.path, kind))
}
