//! A line-level YAML editor: finds the scalar that holds an image reference and
//! rewrites only that scalar's bytes, so comments, key order, quoting and indentation
//! stay as they were. It reads block-style YAML as manifests, kustomizations and Helm
//! values are written; a target in a flow collection or a block scalar is refused
//! rather than guessed at.

use serde::{Deserialize, Serialize};

/// Which part of an image reference a field holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The whole reference, `name:tag@digest`.
    #[default]
    Image,
    /// The repository name, `registry/team/app`.
    Name,
    /// The tag.
    Tag,
    /// The digest, `sha256:…`.
    Digest,
}

/// How a scalar is written, kept when it is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Plain,
    Single,
    Double,
}

/// One scalar found in a file: where its bytes are, what it says, what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    /// 1-based line.
    pub(crate) line: usize,
    /// Byte range of the scalar, quotes included.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The scalar's value, unquoted.
    pub(crate) value: String,
    pub(crate) style: Style,
    pub(crate) part: Part,
    /// The key the scalar belongs to (`newTag`), or the marker, for messages.
    pub(crate) label: String,
}

/// Why a file could not be read or edited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum YamlError {
    /// The target field is written in a form this editor does not rewrite.
    #[error("line {line}: {why}")]
    Unsupported {
        /// 1-based line.
        line: usize,
        /// What is in the way.
        why: String,
    },
    /// The edited text no longer parses (a bug of the editor, never written).
    #[error("the edited file would not parse: {0}")]
    Invalid(String),
}

/// A line with the structure the editor needs.
struct Line<'a> {
    /// 1-based number.
    number: usize,
    /// Byte offset of the line in the text.
    offset: usize,
    /// The line without its end (`\n` or `\r\n`).
    text: &'a str,
}

fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    let mut offset = 0;
    text.split_inclusive('\n').enumerate().map(move |(i, raw)| {
        let line = Line {
            number: i + 1,
            offset,
            text: raw.trim_end_matches('\n').trim_end_matches('\r'),
        };
        offset += raw.len();
        line
    })
}

/// A key, a scalar list item, or nothing worth noting, at a column of a line.
struct Entry<'a> {
    /// Columns of the `- ` list markers before the content.
    dashes: Vec<usize>,
    /// The key and its column, for `key: value`.
    key: Option<(String, usize)>,
    /// Where the value starts (after `key: ` or `- `), as a column.
    value_col: usize,
    /// The trailing comment, without `#`.
    comment: Option<&'a str>,
}

/// Reads the structure of one line: list markers, key, value start, comment.
fn entry(text: &str) -> Option<Entry<'_>> {
    let bytes = text.as_bytes();
    let mut col = bytes.iter().take_while(|b| **b == b' ').count();
    if col == bytes.len() || bytes[col] == b'#' {
        return None;
    }
    if text.starts_with("---") || text.starts_with("...") {
        return None;
    }
    let mut dashes = Vec::new();
    while bytes.get(col) == Some(&b'-') && matches!(bytes.get(col + 1), None | Some(b' ')) {
        dashes.push(col);
        col += 1;
        while bytes.get(col) == Some(&b' ') {
            col += 1;
        }
    }
    let comment = comment_start(text, col).map(|c| &text[c + 1..]);
    let end = comment_start(text, col).unwrap_or(text.len());
    let key = key_at(&text[..end], col);
    let value_col = match &key {
        Some((_, after)) => {
            let mut v = *after;
            while bytes.get(v) == Some(&b' ') {
                v += 1;
            }
            v
        }
        None => col,
    };
    Some(Entry {
        dashes,
        key: key.map(|(k, _)| (k, col)),
        value_col,
        comment,
    })
}

/// The column of a comment's `#`, outside quotes, at or after `from`.
fn comment_start(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(b'"') if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if (b == b'"' || b == b'\'') && (i == from || bytes[i - 1] == b' ') => {
                quote = Some(b);
            }
            None if b == b'#' && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') => {
                return Some(i);
            }
            None => {}
        }
        i += 1;
    }
    None
}

/// `key: ` at column `col` (plain or quoted key): the key and the column after `:`.
fn key_at(text: &str, col: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let (key, after_key) = match bytes.get(col) {
        Some(q @ (b'"' | b'\'')) => {
            let close = text[col + 1..].find(*q as char)? + col + 1;
            (text[col + 1..close].to_owned(), close + 1)
        }
        _ => {
            let mut i = col;
            loop {
                let colon = text[i..].find(':')? + i;
                if matches!(bytes.get(colon + 1), None | Some(b' ')) {
                    break (text[col..colon].trim_end().to_owned(), colon);
                }
                i = colon + 1;
            }
        }
    };
    if bytes.get(after_key) != Some(&b':') || !matches!(bytes.get(after_key + 1), None | Some(b' '))
    {
        return None;
    }
    if key.is_empty() || key.starts_with(['{', '[', '&', '*', '!', '|', '>']) {
        return None;
    }
    Some((key, after_key + 1))
}

/// The scalar starting at `col` of `line`: its byte range in the line, value and style.
fn scalar(line: &Line<'_>, col: usize) -> Result<(usize, usize, String, Style), YamlError> {
    let text = line.text;
    let bytes = text.as_bytes();
    let unsupported = |why: &str| YamlError::Unsupported {
        line: line.number,
        why: why.to_owned(),
    };
    match bytes.get(col) {
        None | Some(b'#') => Ok((col, col, String::new(), Style::Plain)),
        Some(b'"') => {
            let mut value = String::new();
            let i = col + 1;
            let mut chars = text[i..].char_indices();
            while let Some((at, c)) = chars.next() {
                match c {
                    '"' => return Ok((col, i + at + 1, value, Style::Double)),
                    '\\' => match chars.next() {
                        Some((_, e @ ('"' | '\\' | '/'))) => value.push(e),
                        _ => {
                            return Err(unsupported(
                                "an escape other than \\\" or \\\\ in the value",
                            ));
                        }
                    },
                    c => value.push(c),
                }
            }
            Err(unsupported(
                "a double-quoted value that continues on the next line",
            ))
        }
        Some(b'\'') => {
            let mut value = String::new();
            let rest = &text[col + 1..];
            let mut chars = rest.char_indices().peekable();
            while let Some((at, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().map(|(_, c)| *c) == Some('\'') {
                        chars.next();
                        value.push('\'');
                    } else {
                        return Ok((col, col + 1 + at + 1, value, Style::Single));
                    }
                } else {
                    value.push(c);
                }
            }
            Err(unsupported(
                "a single-quoted value that continues on the next line",
            ))
        }
        Some(b'|' | b'>') => Err(unsupported("a block scalar (| or >)")),
        Some(b'{' | b'[') => Err(unsupported("a flow collection ({…} or […])")),
        Some(b'&' | b'*' | b'!') => Err(unsupported("an anchor, alias or tag")),
        Some(_) => {
            let end = comment_start(text, col).unwrap_or(text.len());
            let value = text[col..end].trim_end();
            Ok((col, col + value.len(), value.to_owned(), Style::Plain))
        }
    }
}

/// A Flux setter marker, `{"$imagepolicy": "ns:policy[:tag|:name|:digest]"}`: the
/// policy and the part its field holds.
fn marker(comment: &str) -> Option<(String, Part)> {
    let body = comment.trim();
    let body = body.strip_prefix('{')?.strip_suffix('}')?.trim();
    let rest = body.strip_prefix("\"$imagepolicy\"")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim();
    let value = rest.strip_prefix('"')?.strip_suffix('"')?;
    let mut parts = value.split(':');
    let (ns, policy) = (parts.next()?, parts.next()?);
    let part = match parts.next() {
        None => Part::Image,
        Some("tag") => Part::Tag,
        Some("name") => Part::Name,
        Some("digest") => Part::Digest,
        Some(_) => return None,
    };
    if parts.next().is_some() || ns.is_empty() || policy.is_empty() {
        return None;
    }
    Some((format!("{ns}:{policy}"), part))
}

/// Where in a file an app's image is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Locator {
    /// The fields carrying a Flux setter marker of this policy (`ns:policy`).
    Setter(String),
    /// The `images:` entry of a kustomization whose `name` is this.
    Kustomize(String),
    /// The value at this dotted path of mapping keys, holding this part.
    Helm(String, Part),
}

/// A key of a kustomization entry and its field.
type KeyField = (String, Result<Field, YamlError>);

/// A key line seen while walking the file, with its path of keys.
struct Seen {
    path: Vec<String>,
    field: Result<Field, YamlError>,
}

/// Walks every `key: value` line and marked list item of `text`, with its key path;
/// list items appear in paths as `[n]`, n counting every item of the file.
fn walk(text: &str) -> Vec<(Seen, Option<(String, Part)>)> {
    let mut out = Vec::new();
    // (column, segment) from the document's root.
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut items = 0usize;
    for line in lines(text) {
        if line.text.starts_with("---") {
            stack.clear();
            continue;
        }
        let Some(e) = entry(line.text) else { continue };
        let first = e
            .dashes
            .first()
            .copied()
            .or(e.key.as_ref().map(|k| k.1))
            .unwrap_or(e.value_col);
        // A sequence may sit at its key's own indentation (`images:` then `- name:`).
        let dashed = !e.dashes.is_empty();
        stack.retain(|(col, seg)| {
            *col < first || (dashed && *col == first && !seg.starts_with('['))
        });
        for dash in &e.dashes {
            items += 1;
            stack.push((*dash, format!("[{items}]")));
        }
        let mark = e.comment.and_then(marker);
        if let Some((key, col)) = &e.key {
            stack.push((*col, key.clone()));
        }
        if e.key.is_some() || mark.is_some() {
            let path: Vec<String> = stack.iter().map(|(_, s)| s.clone()).collect();
            let label = e
                .key
                .as_ref()
                .map_or_else(|| "list item".to_owned(), |k| k.0.clone());
            let field = scalar(&line, e.value_col).map(|(s, end, value, style)| Field {
                line: line.number,
                start: line.offset + s,
                end: line.offset + end,
                value,
                style,
                part: Part::Image,
                label,
            });
            out.push((Seen { path, field }, mark));
        }
    }
    out
}

/// The fields `locator` names in `text`, in file order. None found is not an error
/// here: the caller knows whether the file must hold one.
pub(crate) fn find(text: &str, locator: &Locator) -> Result<Vec<Field>, YamlError> {
    let mut fields = Vec::new();
    let seen = walk(text);
    match locator {
        Locator::Setter(policy) => {
            for (s, mark) in seen {
                if let Some((p, part)) = mark
                    && &p == policy
                {
                    let mut field = s.field?;
                    field.part = part;
                    fields.push(field);
                }
            }
        }
        Locator::Helm(path, part) => {
            let want: Vec<&str> = path.split('.').collect();
            for (s, _) in seen {
                if s.path.iter().map(String::as_str).eq(want.iter().copied()) {
                    let mut field = s.field?;
                    field.part = *part;
                    fields.push(field);
                }
            }
        }
        Locator::Kustomize(name) => {
            // Entries of the top-level `images:` list: images.[n].<key>.
            let mut entries: Vec<(String, Vec<KeyField>)> = Vec::new();
            for (s, _) in seen {
                if let [images, item, key] = s.path.as_slice()
                    && images == "images"
                    && item.starts_with('[')
                {
                    match entries.last_mut() {
                        Some((i, keys)) if i == item => keys.push((key.clone(), s.field)),
                        _ => entries.push((item.clone(), vec![(key.clone(), s.field)])),
                    }
                }
            }
            for (_, keys) in entries {
                let names = keys
                    .iter()
                    .any(|(k, f)| k == "name" && f.as_ref().is_ok_and(|f| &f.value == name));
                if !names {
                    continue;
                }
                for (key, field) in keys {
                    let part = match key.as_str() {
                        "newName" => Part::Name,
                        "newTag" => Part::Tag,
                        "digest" => Part::Digest,
                        _ => continue,
                    };
                    let mut field = field?;
                    field.part = part;
                    fields.push(field);
                }
            }
        }
    }
    Ok(fields)
}

/// Where to add a `digest:` key to the kustomization entry of `name` that lacks one:
/// the byte offset after the entry's last key line, and that line's indentation.
pub(crate) fn kustomize_insertion(text: &str, name: &str) -> Option<(usize, String)> {
    let fields = find(text, &Locator::Kustomize(name.to_owned())).ok()?;
    // The `name:` line starts the entry's keys; the new key goes after its last field.
    let name_line = walk(text).into_iter().find_map(|(s, _)| {
        let f = s.field.ok()?;
        (s.path.len() == 3 && s.path[0] == "images" && s.path[2] == "name" && f.value == name)
            .then_some(f.line)
    })?;
    let last = fields
        .iter()
        .map(|f| f.line)
        .max()
        .unwrap_or(name_line)
        .max(name_line);
    let line = lines(text).find(|l| l.number == last)?;
    let key_col = {
        let e = entry(line.text)?;
        e.key?.1
    };
    let end = line.offset + line.text.len();
    let eol = if text[end..].starts_with("\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    Some((end, format!("{eol}{}digest: ", " ".repeat(key_col))))
}

/// `value` written in `style`, for a field of `line`.
pub(crate) fn encode(value: &str, style: Style, line: usize) -> Result<String, YamlError> {
    match style {
        Style::Double => Ok(format!(
            "\"{}\"",
            value.replace('\\', "\\\\").replace('"', "\\\"")
        )),
        Style::Single => Ok(format!("'{}'", value.replace('\'', "''"))),
        Style::Plain => {
            let safe = !value.is_empty()
                && !value.contains(": ")
                && !value.contains(" #")
                && !value.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c) || c == ' ')
                && !value.ends_with([' ', ':']);
            if safe {
                Ok(value.to_owned())
            } else {
                Err(YamlError::Unsupported {
                    line,
                    why: format!(
                        "{value:?} cannot be written as a plain scalar; quote the value in the file"
                    ),
                })
            }
        }
    }
}

/// `text` with each `(field, new value)` written in place, nothing else changed.
pub(crate) fn replace(text: &str, edits: &[(Field, String)]) -> Result<String, YamlError> {
    let mut edits: Vec<&(Field, String)> = edits.iter().collect();
    edits.sort_by_key(|(f, _)| std::cmp::Reverse(f.start));
    let mut out = text.to_owned();
    for (field, value) in edits {
        let mut encoded = encode(value, field.style, field.line)?;
        // An empty value (`digest:`) needs the space YAML puts after the colon.
        if field.start == field.end && !out[..field.start].ends_with(' ') {
            encoded.insert(0, ' ');
        }
        out.replace_range(field.start..field.end, &encoded);
    }
    Ok(out)
}

/// Checks that every document of `text` still parses.
pub(crate) fn validate(text: &str) -> Result<(), YamlError> {
    serde_saphyr::from_multiple::<serde::de::IgnoredAny>(text)
        .map(|_| ())
        .map_err(|e| YamlError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str, locator: &Locator) -> Vec<(usize, Part, String)> {
        find(text, locator)
            .expect("finds")
            .into_iter()
            .map(|f| (f.line, f.part, f.value))
            .collect()
    }

    #[test]
    fn markers_name_policy_and_part() {
        assert_eq!(
            marker(r#" {"$imagepolicy": "flux-system:podinfo"}"#),
            Some(("flux-system:podinfo".into(), Part::Image))
        );
        assert_eq!(
            marker(r#"{"$imagepolicy":"flux-system:podinfo:tag"}"#),
            Some(("flux-system:podinfo".into(), Part::Tag))
        );
        assert_eq!(
            marker(r#" {"$imagepolicy": "a:b:digest"} "#),
            Some(("a:b".into(), Part::Digest))
        );
        assert_eq!(marker(r#" {"$imagepolicy": "a:b:size"}"#), None);
        assert_eq!(marker(" just a comment"), None);
        assert_eq!(marker(r#" {"$imagepolicy": "nonamespace"}"#), None);
    }

    #[test]
    fn setters_find_key_values_and_list_items() {
        let text = "spec:\n  containers:\n    - name: app\n      image: ghcr.io/a/b:1.0 # {\"$imagepolicy\": \"ns:p\"}\n      args:\n        - \"1.0\" # {\"$imagepolicy\": \"ns:p:tag\"}\n    - image: 'x/y:2' # {\"$imagepolicy\": \"ns:other\"}\n";
        assert_eq!(
            values(text, &Locator::Setter("ns:p".into())),
            [
                (4, Part::Image, "ghcr.io/a/b:1.0".into()),
                (6, Part::Tag, "1.0".into())
            ]
        );
        assert_eq!(
            values(text, &Locator::Setter("ns:other".into())),
            [(7, Part::Image, "x/y:2".into())]
        );
    }

    #[test]
    fn helm_paths_follow_indentation_not_text() {
        let text =
            "image:\n  repository: r/app\n  tag: \"1.0\"\nsidecar:\n  image:\n    tag: 9.9\n";
        assert_eq!(
            values(text, &Locator::Helm("image.tag".into(), Part::Tag)),
            [(3, Part::Tag, "1.0".into())]
        );
        assert_eq!(
            values(text, &Locator::Helm("sidecar.image.tag".into(), Part::Tag)),
            [(6, Part::Tag, "9.9".into())]
        );
    }

    #[test]
    fn kustomize_entries_are_matched_by_name() {
        let text = "images:\n- name: r/web\n  newTag: v1\n- name: r/api\n  newName: r2/api # moved\n  newTag: \"v2\"\n  digest: sha256:00\nresources: [a.yaml]\n";
        assert_eq!(
            values(text, &Locator::Kustomize("r/api".into())),
            [
                (5, Part::Name, "r2/api".into()),
                (6, Part::Tag, "v2".into()),
                (7, Part::Digest, "sha256:00".into())
            ]
        );
        let (at, prefix) = kustomize_insertion(text, "r/web").expect("place");
        assert_eq!(&text[..at], "images:\n- name: r/web\n  newTag: v1");
        assert_eq!(prefix, "\n  digest: ");
    }

    #[test]
    fn replace_keeps_quoting_comments_and_line_ends() {
        let text = "a:\r\n  tag: \"1.0\"   # keep me\r\n  other: 'x'\r\n";
        let found = find(text, &Locator::Helm("a.tag".into(), Part::Tag)).expect("finds");
        let out = replace(text, &[(found[0].clone(), "2.0@sha256:ab".into())]).expect("edits");
        assert_eq!(
            out,
            "a:\r\n  tag: \"2.0@sha256:ab\"   # keep me\r\n  other: 'x'\r\n"
        );
        validate(&out).expect("parses");
    }

    #[test]
    fn empty_values_get_their_space() {
        let text = "images:\n- name: a\n  digest:\n";
        let found = find(text, &Locator::Kustomize("a".into())).expect("finds");
        let out = replace(text, &[(found[0].clone(), "sha256:01".into())]).expect("edits");
        assert_eq!(out, "images:\n- name: a\n  digest: sha256:01\n");
    }

    #[test]
    fn unsupported_forms_are_refused_with_the_line() {
        let text = "image: |\n  x\n";
        let err = find(text, &Locator::Helm("image".into(), Part::Image)).expect_err("fails");
        assert_eq!(err.to_string(), "line 1: a block scalar (| or >)");
        let text = "image: {a: b}\n";
        assert!(find(text, &Locator::Helm("image".into(), Part::Image)).is_err());
        assert!(encode("- x", Style::Plain, 3).is_err());
        assert_eq!(encode("it's", Style::Single, 1).expect("single"), "'it''s'");
    }

    #[test]
    fn invalid_yaml_is_reported() {
        assert!(validate("a: [1, 2\n").is_err());
        validate("a: 1\n---\nb: 2\n").expect("two documents");
    }
}
