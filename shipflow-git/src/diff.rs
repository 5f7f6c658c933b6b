//! Changed paths between two commits, by tree diff with rename tracking.

use gix::ObjectId;
use gix::diff::tree_with_rewrites::Change;
use gix::object::tree::EntryKind;
use gix::objs::TreeRefIter;
use gix::worktree::stack::state::attributes::Source as AttributeSource;
use shipflow_core::{ChangeKind, ChangedPath, ChangedPaths};

use tracing::debug;

use crate::GitError;
use crate::revision::{resolve_base, resolve_commit};

/// The paths that differ between `base` (which may be `A...B`) and `head`, sorted by path.
pub(crate) fn changed(
    repo: &gix::Repository,
    base: &str,
    head: &str,
) -> Result<ChangedPaths, GitError> {
    let base_id = resolve_base(repo, base)?;
    let head_id = resolve_commit(repo, head)?;
    let paths = changed_between(repo, base_id, head_id)?;
    debug!(base, head, %base_id, %head_id, paths = paths.len(), "diffed the commits' trees");
    Ok(ChangedPaths {
        base: Some(base_id.to_string()),
        head: head_id.to_string(),
        paths,
    })
}

/// The tree of commit `id`.
pub(crate) fn tree_of(repo: &gix::Repository, id: ObjectId) -> Result<gix::Tree<'_>, GitError> {
    repo.find_commit(id)
        .and_then(|commit| commit.tree())
        .map_err(|err| GitError::git("reading the commit's tree", err))
}

fn changed_between(
    repo: &gix::Repository,
    base: ObjectId,
    head: ObjectId,
) -> Result<Vec<ChangedPath>, GitError> {
    if base == head {
        return Ok(Vec::new());
    }
    let old = tree_of(repo, base)?;
    let new = tree_of(repo, head)?;
    let mut cache = resource_cache(repo)?;
    // Like `git diff -M`: renames at 50% similarity, no copies, whatever the config says.
    let options = gix::diff::Options::default().with_rewrites(Some(gix::diff::Rewrites::default()));
    let mut changes = Vec::new();
    gix::diff::tree_with_rewrites(
        TreeRefIter::from_bytes(&old.data, old.id.kind()),
        TreeRefIter::from_bytes(&new.data, new.id.kind()),
        &mut cache,
        &mut Default::default(),
        &repo.objects,
        |change| {
            changes.push(change.into_owned());
            Ok(std::ops::ControlFlow::Continue(()))
        },
        options.into(),
    )
    .map_err(|err| GitError::git("diffing trees", err))?;
    let mut paths: Vec<ChangedPath> = changes.into_iter().filter_map(to_changed_path).collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The blob cache rename tracking reads through, with the global and repository attributes
/// but none from the index: `Repository::diff_tree_to_tree` would load the index (or build
/// one from `HEAD`'s tree, which costs as much as the diff on a large repository).
fn resource_cache(repo: &gix::Repository) -> Result<gix::diff::blob::Platform, GitError> {
    let step = "preparing the diff";
    let no_index = gix::index::State::new(repo.object_hash());
    let attributes = repo
        .attributes_only(&no_index, AttributeSource::IdMapping)
        .map_err(|err| GitError::git(step, err))?
        .detach();
    gix::diff::resource_cache(
        repo,
        gix::diff::blob::pipeline::Mode::ToGit,
        attributes,
        Default::default(),
    )
    .map_err(|err| GitError::git(step, err))
}

/// One tree change as a changed file; `None` for directories, which only contain changes.
fn to_changed_path(change: Change) -> Option<ChangedPath> {
    let path = |location: gix::bstr::BString| location.to_string();
    match change {
        Change::Addition {
            location,
            entry_mode,
            ..
        } => (!entry_mode.is_tree()).then(|| ChangedPath::new(path(location), ChangeKind::Added)),
        Change::Deletion {
            location,
            entry_mode,
            ..
        } => (!entry_mode.is_tree()).then(|| ChangedPath::new(path(location), ChangeKind::Deleted)),
        Change::Modification {
            location,
            previous_entry_mode,
            entry_mode,
            ..
        } => {
            let kind = match (previous_entry_mode.kind(), entry_mode.kind()) {
                (EntryKind::Tree, EntryKind::Tree) => return None,
                // The directory's files show up as changes of their own.
                (EntryKind::Tree, _) => ChangeKind::Added,
                (_, EntryKind::Tree) => ChangeKind::Deleted,
                (before, after) if before == after => ChangeKind::Modified,
                _ => ChangeKind::TypeChanged,
            };
            Some(ChangedPath::new(path(location), kind))
        }
        // A renamed directory also shows up as renames of each of its files.
        Change::Rewrite { entry_mode, .. } if entry_mode.is_tree() => None,
        Change::Rewrite {
            source_location,
            location,
            copy,
            ..
        } => Some(if copy {
            ChangedPath::new(path(location), ChangeKind::Added)
        } else {
            ChangedPath::renamed(path(source_location), path(location))
        }),
    }
}
