//! App names for people: lists cut to a readable length, and the closest names
//! to one that is not there.

use shipflow_kit::{App, CONFIG_FILE, Workspace};

use crate::exit::UsageError;

/// How many names a list shows before "… and N more".
const SHOWN: usize = 3;

/// `names` joined with commas, cut after a few: `a, b, c, … and 297 more`.
pub(crate) fn cut<S: AsRef<str>>(names: &[S]) -> String {
    let shown: Vec<&str> = names.iter().take(SHOWN).map(AsRef::as_ref).collect();
    match names.len().saturating_sub(SHOWN) {
        // Cutting one name would save nothing.
        0 | 1 => names
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", "),
        more => format!("{}, … and {more} more", shown.join(", ")),
    }
}

/// The names in `known` closest to `name`, by name; none when nothing is close:
/// a typo or two away (by Damerau-Levenshtein distance), or sharing most of a
/// prefix (Jaro-Winkler, as clap's "a similar argument exists").
pub(crate) fn closest<'k>(name: &str, known: impl Iterator<Item = &'k str>) -> Vec<&'k str> {
    let typos = (name.chars().count() / 3).max(1);
    let mut near: Vec<(usize, &str)> = known
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(distance, k)| *distance <= typos || strsim::jaro_winkler(name, k) >= 0.85)
        .collect();
    near.sort();
    // Only the nearest: one typo away beats two.
    let best = near.first().map_or(0, |(distance, _)| *distance);
    near.into_iter()
        .take_while(|(distance, _)| *distance == best)
        .take(SHOWN)
        .map(|(_, k)| k)
        .collect()
}

/// Every name in `names` is an app of `workspace`; else a usage error suggesting
/// the closest names and saying how to list them all.
pub(crate) fn check_apps(workspace: &Workspace, names: &[String]) -> Result<(), UsageError> {
    match names.iter().find(|n| workspace.app(n).is_none()) {
        None => Ok(()),
        Some(unknown) => Err(unknown_app(workspace, unknown)),
    }
}

/// The app `name` of `workspace`, or a usage error as [`check_apps`] makes it.
pub(crate) fn app<'w>(workspace: &'w Workspace, name: &str) -> Result<&'w App, UsageError> {
    workspace
        .app(name)
        .ok_or_else(|| unknown_app(workspace, name))
}

fn unknown_app(workspace: &Workspace, name: &str) -> UsageError {
    let near = closest(name, workspace.apps().map(|a| a.name.as_str()));
    let hint = match near.as_slice() {
        [] => ", nor one with a similar name".to_owned(),
        [one] => format!(": did you mean {one}?"),
        many => format!(": did you mean one of {}?", many.join(", ")),
    };
    UsageError(format!(
        "no app {name} in {CONFIG_FILE}{hint} (`shipflow plan --all` lists all {} apps)",
        workspace.apps().len()
    ))
}

#[cfg(test)]
mod tests {
    use super::{closest, cut};

    #[test]
    fn long_lists_are_cut_and_short_ones_are_not() {
        let many: Vec<String> = (0..300).map(|i| format!("app-{i:04}")).collect();
        assert_eq!(cut(&many), "app-0000, app-0001, app-0002, … and 297 more");
        assert_eq!(cut(&many[..4]), "app-0000, app-0001, app-0002, app-0003");
        assert_eq!(cut(&["web"]), "web");
        assert_eq!(cut::<&str>(&[]), "");
    }

    #[test]
    fn the_closest_names_come_first_and_unlike_ones_not_at_all() {
        let known = ["api", "web", "webhooks", "worker"];
        assert_eq!(closest("wbe", known.into_iter()), ["web"]);
        assert_eq!(closest("webhook", known.into_iter()), ["webhooks"]);
        assert_eq!(closest("wroker", known.into_iter()), ["worker"]);
        assert!(closest("nope", known.into_iter()).is_empty());
        let many: Vec<String> = (0..300).map(|i| format!("app-{i:04}")).collect();
        assert_eq!(
            closest("app-0299x", many.iter().map(String::as_str)),
            ["app-0299"]
        );
    }
}
