//! [`SemverRange`]: a semver range as Flux's image policies write it (the
//! Masterminds/semver syntax), evaluated with the `semver` crate.
//!
//! Syntax: alternatives joined by `||`; within one, comparators separated by
//! spaces or commas (`>=1.2.0 <2.0.0`, `>= 1.2, < 2`); operators `=`, `!=`, `>`,
//! `>=` (`=>`), `<`, `<=` (`=<`), `~` (`~>`), `^`; a bare version means `=`
//! (`1.2` is `1.2.x`); wildcards `x`, `X`, `*`; hyphen ranges `1.2 - 1.4.5`;
//! versions may start with `v`.
//!
//! Pre-releases, as Flux: a version with a pre-release matches a comparator only
//! if that comparator names a pre-release too, so `>=1.0.0` never picks
//! `2.0.0-rc.1` while `>=1.0.0-0` does (every comparator of the alternative must
//! name one: `>=1.0.0-0 <2.0.0` still refuses pre-releases, `<2.0.0-0` does not).
//! A version without one matches as Cargo's requirements say.

use std::cmp::Ordering;

use semver::{Comparator, Op, Version};

/// A parsed semver range; see the module documentation for its syntax.
#[derive(Debug, Clone)]
pub(crate) struct SemverRange {
    /// Alternatives (`||`), each a conjunction of terms.
    any_of: Vec<Vec<Term>>,
}

#[derive(Debug, Clone)]
enum Term {
    /// `*`, `x`: any release.
    Any,
    /// A comparator, or with `negated` its exact match refused (`!=`).
    Compare { cmp: Comparator, negated: bool },
}

impl SemverRange {
    /// Parses `text`, or says what is wrong with it.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut any_of = Vec::new();
        for alternative in text.split("||") {
            let terms = parse_conjunction(alternative)?;
            if terms.is_empty() {
                return Err(if text.trim().is_empty() {
                    "the range is empty".to_owned()
                } else {
                    "an alternative of `||` is empty".to_owned()
                });
            }
            any_of.push(terms);
        }
        Ok(Self { any_of })
    }

    /// Whether `version` is in the range.
    pub(crate) fn matches(&self, version: &Version) -> bool {
        self.any_of
            .iter()
            .any(|terms| terms.iter().all(|term| term.matches(version)))
    }
}

/// The operators, longest first so that `>=` is not read as `>`.
const OPERATORS: [&str; 11] = [">=", "=>", "<=", "=<", "!=", "~>", ">", "<", "=", "~", "^"];

/// One alternative: its comparators, hyphen ranges expanded.
fn parse_conjunction(text: &str) -> Result<Vec<Term>, String> {
    let spaced = text.replace(',', " ");
    let mut words = spaced.split_whitespace().peekable();
    let mut terms = Vec::new();
    while let Some(word) = words.next() {
        let mut comparator = word.to_owned();
        // `>= 1.2`: an operator alone takes the next word as its version.
        if OPERATORS.contains(&word) {
            let version = words
                .next()
                .ok_or_else(|| format!("operator `{word}` has no version after it"))?;
            comparator.push_str(version);
        }
        if words.peek() == Some(&"-") {
            words.next();
            let upper = words
                .next()
                .ok_or_else(|| format!("hyphen range `{word} -` has no upper bound"))?;
            if starts_with_operator(word) || starts_with_operator(upper) {
                return Err(format!(
                    "hyphen range `{word} - {upper}` takes bare versions, not operators"
                ));
            }
            terms.push(parse_term(&format!(">={word}"))?);
            terms.push(parse_term(&format!("<={upper}"))?);
            continue;
        }
        terms.push(parse_term(&comparator)?);
    }
    Ok(terms)
}

fn starts_with_operator(word: &str) -> bool {
    OPERATORS.iter().any(|op| word.starts_with(op))
}

/// One comparator: `op version`, the operator normalised to the `semver` crate's.
fn parse_term(word: &str) -> Result<Term, String> {
    let op = OPERATORS
        .iter()
        .find(|op| word.starts_with(**op))
        .copied()
        .unwrap_or("");
    let version = word[op.len()..].trim_start();
    let version = version
        .strip_prefix(['v', 'V'])
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(version);
    if matches!(version, "*" | "x" | "X") {
        return match op {
            "" | "=" | ">=" | "=>" | "<=" | "=<" | "~" | "~>" | "^" => Ok(Term::Any),
            _ => Err(format!("`{word}`: a wildcard takes no operator `{op}`")),
        };
    }
    let (cargo_op, negated) = match op {
        // A bare version is an exact one (Cargo would read it as `^`).
        "" | "=" => ("=", false),
        "!=" => ("=", true),
        "=>" => (">=", false),
        "=<" => ("<=", false),
        "~>" => ("~", false),
        other => (other, false),
    };
    let cmp =
        Comparator::parse(&format!("{cargo_op}{version}")).map_err(|e| format!("`{word}`: {e}"))?;
    Ok(Term::Compare { cmp, negated })
}

impl Term {
    fn matches(&self, version: &Version) -> bool {
        let (cmp, negated) = match self {
            Term::Any => return version.pre.is_empty(),
            Term::Compare { cmp, negated } => (cmp, *negated),
        };
        // Flux (Masterminds): a pre-release only matches a comparator that
        // names a pre-release.
        if !version.pre.is_empty() && cmp.pre.is_empty() {
            return false;
        }
        let matched = if version.pre.is_empty() {
            // Cargo's rule for pre-releases does not apply to a release.
            cmp.matches(version)
        } else {
            full_matches(cmp, version)
        };
        matched != negated
    }
}

/// Whether `version` (with a pre-release) satisfies `cmp` (with a pre-release,
/// hence a full version), by semver precedence alone: Cargo's requirement that
/// the two share major, minor and patch is not Flux's.
fn full_matches(cmp: &Comparator, version: &Version) -> bool {
    let (minor, patch) = (cmp.minor.unwrap_or(0), cmp.patch.unwrap_or(0));
    let mut bound = Version::new(cmp.major, minor, patch);
    bound.pre = cmp.pre.clone();
    let order = version.cmp_precedence(&bound);
    let at_least = order != Ordering::Less;
    match cmp.op {
        Op::Exact | Op::Wildcard => order == Ordering::Equal,
        Op::Greater => order == Ordering::Greater,
        Op::GreaterEq => at_least,
        Op::Less => order == Ordering::Less,
        Op::LessEq => order != Ordering::Greater,
        Op::Tilde => at_least && version.major == cmp.major && version.minor == minor,
        Op::Caret => {
            at_least
                && version.major == cmp.major
                && (cmp.major > 0 || version.minor == minor)
                && (cmp.major > 0 || minor > 0 || version.patch == patch)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(range: &str, yes: &[&str], no: &[&str]) {
        let parsed = SemverRange::parse(range).unwrap_or_else(|e| panic!("{range}: {e}"));
        for v in yes {
            let version = Version::parse(v).expect("version");
            assert!(parsed.matches(&version), "{range} should match {v}");
        }
        for v in no {
            let version = Version::parse(v).expect("version");
            assert!(!parsed.matches(&version), "{range} should not match {v}");
        }
    }

    #[test]
    fn masterminds_syntax() {
        check("1.2", &["1.2.0", "1.2.9"], &["1.3.0", "1.1.9"]);
        check("1.2.3", &["1.2.3"], &["1.2.4", "1.3.0"]);
        check("=v1.2.3", &["1.2.3"], &["1.2.4"]);
        check(
            ">=1.2.0 <2.0.0",
            &["1.2.0", "1.9.9"],
            &["2.0.0", "1.1.0", "1.5.0-rc.1"],
        );
        check(">= 1.2, < 2", &["1.2.0", "1.99.0"], &["2.0.0"]);
        check("1.2 - 1.4", &["1.2.0", "1.4.7"], &["1.5.0", "1.1.9"]);
        check("~> 1.2.3", &["1.2.3", "1.2.9"], &["1.3.0"]);
        check("^0.2.3", &["0.2.3", "0.2.9"], &["0.3.0"]);
        check("^0.0.3", &["0.0.3"], &["0.0.4"]);
        check("!=1.2.3", &["1.2.4"], &["1.2.3", "1.2.4-rc.1"]);
        check("1.x || >=3.1", &["1.0.0", "3.1.0"], &["2.0.0", "3.0.9"]);
        check("*", &["0.0.1", "99.0.0"], &["1.0.0-rc.1"]);
        check("=<1.4", &["1.4.9"], &["1.5.0"]);
    }

    #[test]
    fn pre_releases_as_flux() {
        check(
            ">=1.0.0",
            &["1.0.0", "2.0.0"],
            &["2.0.0-rc.1", "1.0.0-rc.1"],
        );
        check(
            ">=1.0.0-0",
            &["1.0.0-0", "1.0.0-rc.1", "2.0.0-rc.1", "2.0.0"],
            &["0.9.0", "0.9.0-rc.1"],
        );
        check(">=1.0.0-0 <2.0.0", &["1.5.0"], &["1.5.0-rc.1"]);
        check(
            ">=1.0.0-0 <2.0.0-0",
            &["1.5.0-rc.1", "1.0.0-alpha"],
            &["2.0.0-rc.1", "0.9.0-rc.1"],
        );
        check(
            "~1.2.3-rc.1",
            &["1.2.3-rc.2", "1.2.9-beta"],
            &["1.3.0-rc.1"],
        );
        check("^1.2.3-0", &["1.9.0-rc.1"], &["2.0.0-rc.1"]);
    }

    #[test]
    fn invalid_ranges_say_why() {
        for (range, says) in [
            ("", "empty"),
            (">=1.0.0 ||", "empty"),
            ("banana", "banana"),
            (">=", "no version"),
            ("1.2 -", "upper bound"),
            (">=1.2 - 2", "bare versions"),
            ("1.0.x-0", "1.0.x-0"),
            (">*", "wildcard"),
        ] {
            let err = SemverRange::parse(range).expect_err(range);
            assert!(err.contains(says), "{range}: {err}");
        }
    }
}
