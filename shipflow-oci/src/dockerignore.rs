//! `.dockerignore` rules: which paths of a build context stay out of a layer.
//!
//! The semantics are Docker's: one pattern per line, `#` starts a comment, patterns
//! are relative to the context root (a leading `/` is ignored), `*` and `?` do not
//! cross `/`, `**` matches any number of directories, a pattern matching a directory
//! excludes everything under it, `!pattern` re-includes what it matches, and the last
//! matching line wins.

use globset::{GlobBuilder, GlobMatcher};

/// The parsed rules of one `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub(crate) struct IgnoreRules {
    rules: Vec<Rule>,
    has_exceptions: bool,
}

#[derive(Debug, Clone)]
struct Rule {
    matcher: GlobMatcher,
    exception: bool,
}

/// A line that is not a valid pattern.
#[derive(Debug, Clone)]
pub(crate) struct BadPattern {
    /// The line, as written.
    pub(crate) pattern: String,
    /// Why it is invalid.
    pub(crate) reason: String,
}

impl IgnoreRules {
    /// Parses the text of a `.dockerignore` file.
    pub(crate) fn parse(text: &str) -> Result<Self, BadPattern> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let cleaned = clean(pattern);
            if cleaned.is_empty() {
                continue;
            }
            let matcher = GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| BadPattern {
                    pattern: line.to_owned(),
                    reason: e.kind().to_string(),
                })?
                .compile_matcher();
            rules.push(Rule { matcher, exception });
        }
        let has_exceptions = rules.iter().any(|r| r.exception);
        Ok(Self {
            rules,
            has_exceptions,
        })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is excluded:
    /// the last rule that matches it or one of its parent directories decides.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            if ancestors_and_self(path).any(|p| rule.matcher.is_match(p)) {
                excluded = !rule.exception;
            }
        }
        excluded
    }

    /// Whether an excluded directory must still be walked, because an exception
    /// might re-include something under it.
    pub(crate) fn may_reinclude_below(&self) -> bool {
        self.has_exceptions
    }
}

/// `path` and each of its parent directories, e.g. `a/b/c`, `a/b`, `a`.
fn ancestors_and_self(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(path);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.rfind('/').map(|i| &current[..i]);
        Some(current)
    })
}

/// Docker's `filepath.Clean` of a pattern: no leading `/` or `./`, no empty or `.`
/// segments, `..` resolved lexically.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in pattern.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> IgnoreRules {
        IgnoreRules::parse(text).expect("valid rules")
    }

    #[test]
    fn patterns_exclude_paths_and_everything_below_directories() {
        let r = rules("# build output\ntarget\n/*.log\nsecrets/*.key\n");
        assert!(r.excludes("target"));
        assert!(r.excludes("target/debug/app"));
        assert!(r.excludes("build.log"));
        assert!(!r.excludes("logs/build.log"), "* does not cross /");
        assert!(r.excludes("secrets/a.key"));
        assert!(!r.excludes("secrets/a.pub"));
        assert!(!r.excludes("src/target.rs"));
    }

    #[test]
    fn double_star_crosses_directories() {
        let r = rules("**/*.tmp\ndocs/**\n");
        assert!(r.excludes("a.tmp"));
        assert!(r.excludes("a/b/c.tmp"));
        assert!(r.excludes("docs/x/y.md"));
        assert!(!r.excludes("src/main.rs"));
    }

    #[test]
    fn exceptions_reinclude_and_the_last_match_wins() {
        let r = rules("*.md\n!README.md\nREADME-secret.md\n");
        assert!(r.excludes("CHANGES.md"));
        assert!(!r.excludes("README.md"));
        assert!(r.excludes("README-secret.md"));
        assert!(r.may_reinclude_below());
        let r = rules("!README.md\n*.md\n");
        assert!(
            r.excludes("README.md"),
            "a later rule overrides the exception"
        );
    }

    #[test]
    fn invalid_patterns_are_reported() {
        let err = IgnoreRules::parse("ok\n[unclosed\n").expect_err("invalid");
        assert_eq!(err.pattern, "[unclosed");
    }
}
