//! [`TagFilter`]: which tags a policy considers, and the value it orders them by
//! (Flux's `filterTags`: a regex `pattern`, and an `extract` template such as
//! `$ts` naming its captures).

use regex::Regex;

/// A compiled `filterTags`: tags the pattern finds no match in are left out; the
/// others are ordered by `extract` expanded over the match (the whole tag when
/// there is no template).
#[derive(Debug, Clone)]
pub(crate) struct TagFilter {
    pattern: Regex,
    extract: Option<String>,
}

impl TagFilter {
    /// Compiles `pattern`; checks that every capture `extract` names (`$name`,
    /// `${name}`, `$1`) is one the pattern has, since an unknown one would
    /// expand to nothing and every tag would tie.
    pub(crate) fn new(pattern: &str, extract: Option<&str>) -> Result<Self, FilterError> {
        let regex = Regex::new(pattern).map_err(FilterError::Pattern)?;
        let extract = extract.filter(|e| !e.is_empty());
        if let Some(template) = extract {
            let names = captures_named(template);
            if names.is_empty() {
                return Err(FilterError::Extract(
                    "it names no capture (`$name` or `${name}`): every tag would extract the same value".into(),
                ));
            }
            for name in names {
                let known = match name.parse::<usize>() {
                    Ok(index) => index < regex.captures_len(),
                    Err(_) => regex.capture_names().flatten().any(|n| n == name),
                };
                if !known {
                    return Err(FilterError::Extract(format!(
                        "it names capture `{name}`, which the pattern does not have"
                    )));
                }
            }
        }
        Ok(Self {
            pattern: regex,
            extract: extract.map(str::to_owned),
        })
    }

    /// The value `tag` is ordered by, or `None` when the pattern does not match.
    pub(crate) fn apply(&self, tag: &str) -> Option<String> {
        let captures = self.pattern.captures(tag)?;
        Some(match &self.extract {
            Some(template) => {
                let mut value = String::new();
                captures.expand(template, &mut value);
                value
            }
            None => tag.to_owned(),
        })
    }
}

/// What is wrong with a filter.
#[derive(Debug)]
pub(crate) enum FilterError {
    Pattern(regex::Error),
    Extract(String),
}

/// The capture names or indexes `template` refers to, read as
/// `regex::Captures::expand` reads them (`$$` is a literal `$`).
fn captures_named(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => {
                    names.push(&braced[..end]);
                    rest = &braced[end + 1..];
                }
                None => rest = braced,
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if end > 0 {
                names.push(&rest[..end]);
            }
            rest = &rest[end..];
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_named_capture() {
        let filter = TagFilter::new(r"^main-[a-f0-9]+-(?P<ts>[0-9]+)", Some("$ts")).expect("ok");
        assert_eq!(
            filter.apply("main-1a2b3c-1700000000").as_deref(),
            Some("1700000000")
        );
        assert_eq!(filter.apply("v1.2.3"), None);
        let braced = TagFilter::new(r"^(?P<v>\d+)-(\w+)$", Some("${v}.$2")).expect("ok");
        assert_eq!(braced.apply("12-ab").as_deref(), Some("12.ab"));
        let whole = TagFilter::new("^rc-", None).expect("ok");
        assert_eq!(whole.apply("rc-7").as_deref(), Some("rc-7"));
    }

    #[test]
    fn unknown_captures_and_bad_patterns_are_refused() {
        assert!(matches!(
            TagFilter::new("(?P<ts>[0-9]+", None),
            Err(FilterError::Pattern(_))
        ));
        for extract in ["$tss", "${build}", "$2", "plain", "$$ts"] {
            assert!(
                matches!(
                    TagFilter::new(r"^(?P<ts>[0-9]+)$", Some(extract)),
                    Err(FilterError::Extract(_))
                ),
                "{extract}"
            );
        }
    }
}
