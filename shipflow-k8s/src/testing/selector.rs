//! Label and field selectors, as the API server parses them from a query string and
//! as controllers build them from a `LabelSelector`.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses the query-string form: `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==") {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once('=') {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, values)) = split_set(term, " notin ") {
                Requirement::NotIn(k, values?)
            } else if let Some((k, values)) = split_set(term, " in ") {
                Requirement::In(k, values?)
            } else {
                Requirement::Exists(term.to_owned())
            };
            requirements.push(requirement);
        }
        Ok(Self(requirements))
    }

    /// The selector of a `LabelSelector` object (`matchLabels` and `matchExpressions`).
    pub(crate) fn from_object(selector: &Value) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
            let v = v.as_str().ok_or("matchLabels values must be strings")?;
            requirements.push(Requirement::Equals(k.clone(), v.to_owned()));
        }
        for e in selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = e["key"]
                .as_str()
                .ok_or("matchExpressions need a key")?
                .to_owned();
            let values: Vec<String> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            requirements.push(match e["operator"].as_str() {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                Some("DoesNotExist") => Requirement::DoesNotExist(key),
                other => return Err(format!("unknown selector operator {other:?}")),
            });
        }
        Ok(Self(requirements))
    }

    /// Whether the selector selects nothing at all (an empty `LabelSelector` object
    /// selects everything in a query, but a controller with one owns nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` (a JSON map) satisfy every requirement.
    pub(crate) fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }

    /// The query-string form, as `kubectl` prints a selector.
    pub(crate) fn to_query(&self) -> String {
        self.0
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Splits on commas that are not inside a `( ... )` value set.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

/// `key <op> (a,b)` → `(key, [a, b])`.
fn split_set(term: &str, op: &str) -> Option<(String, Result<Vec<String>, String>)> {
    let (key, rest) = term.split_once(op)?;
    let values = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| {
            inner
                .split(',')
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        })
        .ok_or_else(|| format!("invalid value set in selector term {term:?}"));
    Some((key.trim().to_owned(), values))
}

/// A field selector: `path=value` and `path!=value` terms.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `metadata.name=api,involvedObject.kind=Deployment`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            if !FIELDS.contains(&path) {
                return Err(format!(
                    "field label not supported: {path} (the simulator knows {})",
                    FIELDS.join(", ")
                ));
            }
            terms.push((path.to_owned(), equal, value.to_owned()));
        }
        Ok(Self(terms))
    }

    /// Whether `object` satisfies every term.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let got = object
                .pointer(&pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (got == want) == *equal
        })
    }
}

/// The field paths field selectors may use.
const FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "involvedObject.kind",
    "involvedObject.name",
    "involvedObject.namespace",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "source",
    "type",
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_based_and_equality_requirements() {
        let labels = json!({"app": "api", "tier": "web", "pod-template-hash": "abc"});
        let yes = [
            "app=api,pod-template-hash=abc",
            "app==api",
            "app!=web,app",
            "tier in (web,db),app notin (x)",
            "!missing",
            "",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).expect(s).matches(&labels), "{s}");
        }
        for s in [
            "app=web",
            "tier in (db)",
            "app notin (api)",
            "missing",
            "!app",
        ] {
            assert!(!LabelSelector::parse(s).expect(s).matches(&labels), "{s}");
        }
        let from = LabelSelector::from_object(&json!({"matchLabels": {"app": "api"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}))
        .expect("valid");
        assert!(from.matches(&labels));
        assert_eq!(from.to_query(), "app=api,tier in (web)");
        assert_eq!(
            LabelSelector::parse(&from.to_query()).expect("reparses"),
            from
        );
    }

    #[test]
    fn field_selectors() {
        let event = json!({"involvedObject": {"kind": "Deployment", "name": "api"}, "metadata": {"name": "e1"}});
        let s = FieldSelector::parse("involvedObject.kind=Deployment,involvedObject.name=api")
            .expect("valid");
        assert!(s.matches(&event));
        assert!(
            !FieldSelector::parse("metadata.name!=e1")
                .expect("valid")
                .matches(&event)
        );
        assert!(FieldSelector::parse("spec.bogus=1").is_err());
    }
}
