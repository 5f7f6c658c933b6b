//! The tag at a commit, for `${TAG}`, found the way git finds it: from `packed-refs` text
//! where it can, reading objects only where it must.
//!
//! No index maps commits to tags, so every tag is a candidate. In a `packed-refs` file
//! written `fully-peeled` (as git and gix write it), an annotated tag's line is followed by
//! `^<commit>`, and a tag without that line names its commit directly: the tags at a commit
//! are exactly the lines that mention its id, found by a text search instead of parsing
//! every tag. Loose tags (one file each, a few after a clone) are read one by one, win over
//! packed ones, and cost a header lookup when they name another object.

use std::collections::HashSet;

use gix::ObjectId;
use gix::bstr::{BStr, ByteSlice};
use tracing::debug;

use crate::GitError;

/// A tag pointing exactly at commit `id`: the first by name when several do.
pub(crate) fn exact_tag(repo: &gix::Repository, id: ObjectId) -> Result<Option<String>, GitError> {
    let step = "listing tags";
    let mut tags = Vec::new();
    let mut loose = HashSet::new();
    let prefix = "refs/tags/"
        .try_into()
        .map_err(|err| GitError::git(step, err))?;
    let loose_tags = repo
        .refs
        .loose_iter_prefixed(prefix)
        .map_err(|err| GitError::git(step, err))?;
    for reference in loose_tags {
        let Ok(reference) = reference else {
            continue;
        };
        let points_at_id = match reference.target.try_id() {
            Some(target) => target == id || peels_to(repo, target.to_owned(), id),
            // A symbolic tag: follow it.
            None => repo
                .find_reference(reference.name.as_ref())
                .ok()
                .and_then(|mut tag| tag.peel_to_commit().ok())
                .is_some_and(|commit| commit.id == id),
        };
        if points_at_id {
            tags.push(reference.name.as_ref().shorten().to_string());
        }
        loose.insert(reference.name.as_bstr().to_owned());
    }

    let packed = repo
        .refs
        .cached_packed_buffer()
        .map_err(|err| GitError::git(step, err))?;
    if let Some(packed) = packed {
        let hex = id.to_string();
        let mut packed_tags = Vec::new();
        if is_fully_peeled(&repo.refs.packed_refs_path()) {
            let buffer: &gix::refs::packed::Buffer = &packed;
            let records: &[u8] = buffer.as_ref();
            packed_tags.extend(mentioning(records.as_bstr(), &hex));
        } else {
            // An older writer: a tag without a peeled line may still be annotated.
            let entries = packed
                .iter_prefixed("refs/tags/".into())
                .map_err(|err| GitError::git(step, err))?;
            for entry in entries.flatten() {
                let points_at_id = match entry.object {
                    Some(peeled) => peeled == hex.as_str(),
                    None => entry.target == hex.as_str() || peels_to(repo, entry.target(), id),
                };
                if points_at_id {
                    packed_tags.push(entry.name.as_bstr());
                }
            }
        }
        for name in packed_tags {
            if !loose.contains(name) {
                tags.push(
                    name.strip_prefix(b"refs/tags/")
                        .unwrap_or(name)
                        .to_str_lossy()
                        .into_owned(),
                );
            }
        }
    }
    tags.sort();
    debug!(commit = %id, tags = ?tags, "tags at the commit");
    Ok(tags.into_iter().next())
}

/// Whether `target` is an annotated tag that peels to commit `id`: a header lookup, and a
/// peel only for tag objects.
fn peels_to(repo: &gix::Repository, target: ObjectId, id: ObjectId) -> bool {
    let is_tag_object = repo
        .find_header(target)
        .is_ok_and(|header| header.kind() == gix::object::Kind::Tag);
    is_tag_object
        && repo
            .find_object(target)
            .and_then(|object| object.peel_to_commit())
            .is_ok_and(|commit| commit.id == id)
}

/// The full names of the tags among `records` (the lines of a fully-peeled `packed-refs`
/// file after its header) that point at the commit `hex`: a `<hex> <name>` line, or a
/// `^<hex>` line peeling the tag on the line before it.
fn mentioning<'a>(records: &'a BStr, hex: &str) -> Vec<&'a BStr> {
    let line_at = |position: usize| {
        let start = records[..position].rfind_byte(b'\n').map_or(0, |i| i + 1);
        let end = records[position..]
            .find_byte(b'\n')
            .map_or(records.len(), |i| position + i);
        (start, &records[start..end])
    };
    let mut names = Vec::new();
    for found in records.find_iter(hex) {
        let (start, line) = line_at(found);
        let record = if found == start {
            line
        } else if found == start + 1 && line.starts_with(b"^") && start > 0 {
            line_at(start - 1).1
        } else {
            // The id inside a name, not a target.
            continue;
        };
        let name = record.split_once_str(" ").map(|(_, name)| name.as_bstr());
        if let Some(name) = name.filter(|name| name.starts_with(b"refs/tags/")) {
            names.push(name);
        }
    }
    names
}

/// Whether the `packed-refs` file at `path` says every annotated tag in it has its peeled
/// commit written after it (git's `fully-peeled` trait).
fn is_fully_peeled(path: &std::path::Path) -> bool {
    use std::io::{BufRead, Read};
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut header = Vec::new();
    let read = std::io::BufReader::new(file.take(512)).read_until(b'\n', &mut header);
    read.is_ok()
        && header.starts_with(b"# pack-refs with:")
        && header
            .split(|byte| byte.is_ascii_whitespace())
            .any(|word| word == b"fully-peeled")
}

#[cfg(test)]
mod tests {
    use super::mentioning;
    use gix::bstr::ByteSlice;

    const AT: &str = "1111111111111111111111111111111111111111";
    const OTHER: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn only_lines_that_name_the_commit_as_target_or_peeled_count() {
        let records = format!(
            "{OTHER} refs/heads/main\n\
             {AT} refs/heads/feature\n\
             {AT} refs/tags/light\n\
             {OTHER} refs/tags/annotated\n\
             ^{AT}\n\
             {OTHER} refs/tags/elsewhere\n\
             ^{OTHER}\n\
             {OTHER} refs/tags/deploy-{AT}\n"
        );
        let names: Vec<String> = mentioning(records.as_bytes().as_bstr(), AT)
            .into_iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(names, ["refs/tags/light", "refs/tags/annotated"]);
    }

    #[test]
    fn a_peeled_line_first_names_nothing() {
        let records = format!("^{AT}\n{AT} refs/tags/last");
        let names: Vec<String> = mentioning(records.as_bytes().as_bstr(), AT)
            .into_iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(names, ["refs/tags/last"]);
    }
}
