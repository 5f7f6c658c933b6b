//! What to write into each field of an app: image references taken apart and put
//! back together in the configured [`Format`], and one file's edit applied (again) on
//! whatever the branch holds, refusing to overwrite a value someone else changed.

use serde::{Deserialize, Serialize};
use shipflow_core::ImageRef;

use super::yaml::{self, Field, Locator, Part, YamlError};

/// How an image is written into a whole-reference field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[non_exhaustive]
pub enum Format {
    /// `name:tag@sha256:…` (`name@sha256:…` when the tag is not known).
    #[default]
    #[serde(rename = "name:tag@digest")]
    NameTagDigest,
    /// `name@sha256:…`.
    #[serde(rename = "digest")]
    Digest,
    /// `name:tag`: not pinned; for repositories whose tags never move.
    #[serde(rename = "tag")]
    Tag,
}

/// An image reference taken apart: what a field of each [`Part`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageParts {
    pub(crate) name: Option<String>,
    pub(crate) tag: Option<String>,
    pub(crate) digest: Option<String>,
}

impl ImageParts {
    /// `name[:tag][@digest]` taken apart.
    pub(crate) fn parse(image: &str) -> Self {
        let (rest, digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d.to_owned())),
            None => (image, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        Self {
            name: (!name.is_empty()).then(|| name.to_owned()),
            tag,
            digest,
        }
    }

    pub(crate) fn from_ref(image: &ImageRef) -> Self {
        Self {
            name: Some(image.name()),
            tag: image.tag().map(str::to_owned),
            digest: image.digest().map(ToString::to_string),
        }
    }

    /// Adds what `field` says, keeping what is known already.
    fn learn(&mut self, field: &Field) {
        let value = &field.value;
        let found = match field.part {
            Part::Image => Self::parse(value),
            Part::Name => Self {
                name: Some(value.clone()),
                ..Self::default()
            },
            Part::Tag => match value.split_once('@') {
                Some((t, d)) => Self {
                    tag: (!t.is_empty()).then(|| t.to_owned()),
                    digest: Some(d.to_owned()),
                    ..Self::default()
                },
                None => Self {
                    tag: (!value.is_empty()).then(|| value.clone()),
                    ..Self::default()
                },
            },
            Part::Digest => Self {
                digest: (!value.is_empty()).then(|| value.clone()),
                ..Self::default()
            },
        };
        self.name = self.name.take().or(found.name);
        self.tag = self.tag.take().or(found.tag);
        self.digest = self.digest.take().or(found.digest);
    }

    /// `name[:tag][@digest]`, with `fallback` for a name no field holds.
    pub(crate) fn render(&self, fallback: &str) -> String {
        let mut out = self.name.clone().unwrap_or_else(|| fallback.to_owned());
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.name.is_none() && self.tag.is_none() && self.digest.is_none()
    }
}

/// What the fields `locator` finds in `text` say, together.
pub(crate) fn read(text: &str, locator: &Locator) -> Result<(Vec<Field>, ImageParts), YamlError> {
    let fields = yaml::find(text, locator)?;
    let mut parts = ImageParts::default();
    for field in &fields {
        parts.learn(field);
    }
    Ok((fields, parts))
}

/// Why a field cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The file has no field for the app.
    #[error("no field for the app: add a marker or entry, or fix the deploy.gitops settings")]
    NotFound,
    /// The format needs something the image does not carry.
    #[error("line {line} ({label}): {why}")]
    Cannot {
        /// 1-based line.
        line: usize,
        /// The field's key or marker.
        label: String,
        /// What is missing.
        why: String,
    },
    /// Someone else changed the field since this edit was planned.
    #[error(
        "line {line} ({label}) was changed by someone else to {theirs:?} (it was {base:?}; this run writes {ours:?}): pull, check which image should run, and deploy again"
    )]
    Conflict {
        /// 1-based line.
        line: usize,
        /// The field's key or marker.
        label: String,
        /// The value when the edit was planned.
        base: String,
        /// The value on the branch now.
        theirs: String,
        /// The value this edit writes.
        ours: String,
    },
    /// The file is not YAML the editor can rewrite.
    #[error(transparent)]
    Yaml(#[from] YamlError),
}

/// The value a field of `part` gets for `image` in `format`; `None` leaves it alone.
fn value_for(
    field: &Field,
    image: &ImageParts,
    format: Format,
    digest_field: bool,
) -> Result<Option<String>, EditError> {
    let cannot = |why: &str| EditError::Cannot {
        line: field.line,
        label: field.label.clone(),
        why: why.to_owned(),
    };
    let digest = image.digest.as_deref();
    let tag = image.tag.as_deref();
    Ok(match (field.part, format) {
        (Part::Name, _) => image.name.clone(),
        (Part::Digest, Format::Tag) => None,
        (Part::Digest, _) => Some(
            digest
                .ok_or_else(|| cannot("the image has no digest to write"))?
                .to_owned(),
        ),
        (Part::Tag, Format::Tag) => Some(
            tag.ok_or_else(|| cannot("the image has no tag to write"))?
                .to_owned(),
        ),
        (Part::Tag, _) if digest_field => tag.map(str::to_owned),
        (Part::Tag, Format::NameTagDigest) => match (tag, digest) {
            (Some(t), Some(d)) => Some(format!("{t}@{d}")),
            _ => {
                return Err(cannot(
                    "a tag field without a digest field needs the image's tag and digest; deploy a name:tag@digest reference or add a digest field",
                ));
            }
        },
        (Part::Tag, Format::Digest) => {
            return Err(cannot(
                "format \"digest\" cannot be written into a tag field; add a digest field or use another format",
            ));
        }
        (Part::Image, _) => {
            let name = image
                .name
                .as_deref()
                .ok_or_else(|| cannot("the image has no name"))?;
            let mut out = name.to_owned();
            if matches!(format, Format::NameTagDigest | Format::Tag)
                && let Some(t) = tag
            {
                out = format!("{out}:{t}");
            }
            if format == Format::Tag && tag.is_none() {
                return Err(cannot("format \"tag\" needs the image's tag"));
            }
            if format != Format::Tag {
                let d = digest.ok_or_else(|| cannot("the image has no digest to pin"))?;
                out = format!("{out}@{d}");
            }
            Some(out)
        }
    })
}

/// One file's edit for one app: planned once, applied on any later text of the file.
#[derive(Debug, Clone)]
pub(crate) struct FileEdit {
    pub(crate) locator: Locator,
    pub(crate) image: ImageParts,
    pub(crate) format: Format,
    /// The fields' values when the edit was first applied; a later text whose field
    /// holds neither this nor the new value conflicts.
    pub(crate) base: Option<Vec<String>>,
}

/// The result of applying a [`FileEdit`] to one text.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) text: String,
    /// The app's image in the file before the edit.
    pub(crate) before: ImageParts,
}

impl FileEdit {
    /// Applies the edit to `text`; records the base values the first time.
    pub(crate) fn apply(&mut self, text: &str) -> Result<Applied, EditError> {
        let (fields, before) = read(text, &self.locator)?;
        if fields.is_empty() {
            return Err(EditError::NotFound);
        }
        let digest_field = fields.iter().any(|f| f.part == Part::Digest)
            || matches!(self.locator, Locator::Kustomize(_));
        let mut edits = Vec::new();
        let values: Vec<String> = fields.iter().map(|f| f.value.clone()).collect();
        for (i, field) in fields.iter().enumerate() {
            let Some(ours) = value_for(field, &self.image, self.format, digest_field)? else {
                continue;
            };
            if let Some(base) = &self.base {
                let base = base.get(i).cloned().unwrap_or_default();
                if field.value != base && field.value != ours {
                    return Err(EditError::Conflict {
                        line: field.line,
                        label: field.label.clone(),
                        base,
                        theirs: field.value.clone(),
                        ours,
                    });
                }
            }
            if field.value != ours {
                edits.push((field.clone(), ours));
            }
        }
        let mut out = yaml::replace(text, &edits)?;
        // A kustomization entry without `digest:` gets one, when the format pins.
        if let Locator::Kustomize(name) = &self.locator
            && self.format != Format::Tag
            && !fields.iter().any(|f| f.part == Part::Digest)
            && let Some(digest) = &self.image.digest
            && let Some((at, prefix)) = yaml::kustomize_insertion(&out, name)
        {
            out.insert_str(at, &format!("{prefix}{digest}"));
        }
        yaml::validate(&out)?;
        if self.base.is_none() {
            self.base = Some(values);
        }
        Ok(Applied { text: out, before })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn image(tag: Option<&str>) -> ImageParts {
        ImageParts {
            name: Some("ghcr.io/acme/api".into()),
            tag: tag.map(str::to_owned),
            digest: Some(DIGEST.into()),
        }
    }

    fn edit(locator: Locator, format: Format, tag: Option<&str>) -> FileEdit {
        FileEdit {
            locator,
            image: image(tag),
            format,
            base: None,
        }
    }

    #[test]
    fn references_come_apart_and_back() {
        let p = ImageParts::parse("localhost:5000/a/b:v1@sha256:00");
        assert_eq!(p.name.as_deref(), Some("localhost:5000/a/b"));
        assert_eq!(p.tag.as_deref(), Some("v1"));
        assert_eq!(p.digest.as_deref(), Some("sha256:00"));
        assert_eq!(p.render(""), "localhost:5000/a/b:v1@sha256:00");
        let p = ImageParts::parse("localhost:5000/a/b");
        assert_eq!((p.tag, p.digest), (None, None));
    }

    #[test]
    fn formats_decide_each_fields_value() {
        let text = "image: old:1 # {\"$imagepolicy\": \"ns:p\"}\n";
        let setter = Locator::Setter("ns:p".into());
        let out = |format, tag| {
            edit(setter.clone(), format, tag)
                .apply(text)
                .map(|a| a.text)
        };
        assert_eq!(
            out(Format::NameTagDigest, Some("v2")).expect("full"),
            format!("image: ghcr.io/acme/api:v2@{DIGEST} # {{\"$imagepolicy\": \"ns:p\"}}\n")
        );
        assert_eq!(
            out(Format::Digest, Some("v2")).expect("digest"),
            format!("image: ghcr.io/acme/api@{DIGEST} # {{\"$imagepolicy\": \"ns:p\"}}\n")
        );
        assert_eq!(
            out(Format::Tag, Some("v2")).expect("tag"),
            "image: ghcr.io/acme/api:v2 # {\"$imagepolicy\": \"ns:p\"}\n"
        );
        assert!(out(Format::Tag, None).is_err());
    }

    #[test]
    fn a_tag_field_alone_carries_the_digest_and_beside_one_does_not() {
        let alone = "tag: v1 # {\"$imagepolicy\": \"ns:p:tag\"}\n";
        let applied = edit(
            Locator::Setter("ns:p".into()),
            Format::NameTagDigest,
            Some("v2"),
        )
        .apply(alone)
        .expect("edits");
        assert!(applied.text.starts_with(&format!("tag: v2@{DIGEST} #")));
        assert_eq!(applied.before.tag.as_deref(), Some("v1"));

        let pair = "tag: v1 # {\"$imagepolicy\": \"ns:p:tag\"}\ndigest: \"\" # {\"$imagepolicy\": \"ns:p:digest\"}\n";
        let applied = edit(
            Locator::Setter("ns:p".into()),
            Format::NameTagDigest,
            Some("v2"),
        )
        .apply(pair)
        .expect("edits");
        assert_eq!(
            applied.text,
            format!(
                "tag: v2 # {{\"$imagepolicy\": \"ns:p:tag\"}}\ndigest: \"{DIGEST}\" # {{\"$imagepolicy\": \"ns:p:digest\"}}\n"
            )
        );
    }

    #[test]
    fn kustomize_gets_a_digest_key_when_it_lacks_one() {
        let text = "images:\n  - name: api\n    newName: old/api\n    newTag: v1\nresources:\n  - deploy.yaml\n";
        let applied = edit(
            Locator::Kustomize("api".into()),
            Format::NameTagDigest,
            Some("v2"),
        )
        .apply(text)
        .expect("edits");
        assert_eq!(
            applied.text,
            format!(
                "images:\n  - name: api\n    newName: ghcr.io/acme/api\n    newTag: v2\n    digest: {DIGEST}\nresources:\n  - deploy.yaml\n"
            )
        );
    }

    #[test]
    fn reapplying_detects_a_conflicting_change_and_accepts_an_equal_one() {
        let base = "image: a:1 # {\"$imagepolicy\": \"ns:p\"}\n";
        let mut e = edit(Locator::Setter("ns:p".into()), Format::Digest, None);
        let first = e.apply(base).expect("first");
        assert_ne!(first.text, base);
        // Someone else wrote the same value: nothing left to do.
        let again = e.apply(&first.text).expect("same value");
        assert_eq!(again.text, first.text);
        // Someone else wrote another value on the same line: refuse.
        let theirs = "image: b:2 # {\"$imagepolicy\": \"ns:p\"}\n";
        let err = e.apply(theirs).expect_err("fails");
        assert!(
            matches!(&err, EditError::Conflict { line: 1, theirs, .. } if theirs == "b:2"),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_the_field_says_so() {
        let err = edit(Locator::Setter("ns:p".into()), Format::Digest, None)
            .apply("a: 1\n")
            .expect_err("fails");
        assert_eq!(err, EditError::NotFound);
    }
}
