//! The PATCH flavours of the API server: JSON merge patch (RFC 7386), strategic merge
//! patch (lists of known types merge by their key, with the `$patch`, `$retainKeys`,
//! `$setElementOrder` and `$deleteFromPrimitiveList` directives), and JSON patch
//! (RFC 6902).

use serde_json::{Map, Value, json};

use super::store::ensure_object;

/// The key that identifies an item of a list field in a strategic merge patch, when
/// the list merges by key; `None` for lists that a patch replaces whole.
pub(crate) fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "tolerations" => Some("key"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        // Container ports merge by containerPort, Service ports by port.
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                Some("containerPort")
            } else {
                Some("port")
            }
        }
        _ => None,
    }
}

/// Lists of scalars that a strategic merge patch merges as sets.
fn merges_as_set(field: &str) -> bool {
    field == "finalizers"
}

/// Applies an RFC 7386 JSON merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    let target = ensure_object(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Applies a strategic merge patch.
pub(crate) fn strategic_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch.clone();
            replacement.remove("$patch");
            *target = Value::Object(strip_directives(replacement));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch directive {other:?}")),
    }
    let retain: Option<Vec<String>> =
        patch
            .get("$retainKeys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            });
    let target_map = ensure_object(target);
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<&Value> = value.as_array().into_iter().flatten().collect();
            if let Some(list) = target_map.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|v| !drop.contains(&v));
            }
            continue;
        }
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        match value {
            Value::Array(items) => {
                let existing = target_map.entry(key.clone()).or_insert_with(|| json!([]));
                if let Some(k) = merge_key(key, items) {
                    merge_list(existing, items, k)?;
                } else if merges_as_set(key) {
                    let list = ensure_array(existing);
                    for item in items {
                        if !list.contains(item) {
                            list.push(item.clone());
                        }
                    }
                } else {
                    *existing = Value::Array(items.iter().map(|v| strip(v.clone())).collect());
                }
            }
            Value::Object(_) => {
                let slot = target_map.entry(key.clone()).or_insert(Value::Null);
                strategic_patch(slot, value)?;
                if slot.is_null() {
                    target_map.remove(key);
                }
            }
            other => {
                target_map.insert(key.clone(), other.clone());
            }
        }
    }
    if let Some(keep) = retain {
        target_map.retain(|k, _| keep.contains(k));
    }
    Ok(())
}

fn ensure_array(value: &mut Value) -> &mut Vec<Value> {
    if !value.is_array() {
        *value = json!([]);
    }
    match value {
        Value::Array(list) => list,
        _ => unreachable!("just made an array"),
    }
}

/// Merges `patch` items into the list `target` by `key`; an item with
/// `$patch: delete` removes the item with its key.
fn merge_list(target: &mut Value, patch: &[Value], key: &str) -> Result<(), String> {
    let list = ensure_array(target);
    for item in patch {
        let Some(id) = item.get(key) else {
            return Err(format!("a list item has no merge key {key:?}"));
        };
        let at = list.iter().position(|t| t.get(key) == Some(id));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = at {
                list.remove(i);
            }
            continue;
        }
        match at {
            Some(i) => strategic_patch(&mut list[i], item)?,
            None => list.push(strip(item.clone())),
        }
    }
    Ok(())
}

/// `value` without patch directives anywhere.
fn strip(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_directives(map)),
        Value::Array(items) => Value::Array(items.into_iter().map(strip).collect()),
        other => other,
    }
}

fn strip_directives(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, strip(v)))
        .collect()
}

/// Applies an RFC 6902 JSON patch.
pub(crate) fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    json_patch::patch(target, &ops).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_honours_directives() {
        let mut target = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            {"name": "b", "image": "b:1"}
        ]}, "metadata": {"annotations": {"keep": "1", "drop": "1"}, "finalizers": ["f1"]}});
        // What `kubectl set image` sends.
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "b:2"},
                {"name": "a", "env": [{"name": "Y", "$patch": "delete"}]}]},
            "metadata": {"annotations": {"drop": null, "new": "x"}, "finalizers": ["f2", "f1"]}});
        strategic_patch(&mut target, &patch).expect("valid");
        assert_eq!(
            target,
            json!({"spec": {"containers": [
                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "b:2"}
            ]}, "metadata": {"annotations": {"keep": "1", "new": "x"}, "finalizers": ["f1", "f2"]}})
        );
        strategic_patch(&mut target, &json!({"spec": {"$patch": "replace", "x": 1}}))
            .expect("valid");
        assert_eq!(target["spec"], json!({"x": 1}));
    }

    #[test]
    fn merge_patch_replaces_lists_and_deletes_nulls() {
        let mut target = json!({"a": {"x": 1, "y": 2}, "b": [1, 2]});
        merge_patch(&mut target, &json!({"a": {"y": null, "z": 3}, "b": [3]}));
        assert_eq!(target, json!({"a": {"x": 1, "z": 3}, "b": [3]}));
    }

    #[test]
    fn json_patch_applies_operations_in_order() {
        let mut target =
            json!({"metadata": {"annotations": {"a": "1"}}, "spec": {"template": {"x": 1}}});
        json_patch(
            &mut target,
            &json!([{"op": "replace", "path": "/spec/template", "value": {"y": 2}},
                {"op": "replace", "path": "/metadata/annotations", "value": {"b": "2"}}]),
        )
        .expect("valid");
        assert_eq!(
            target,
            json!({"metadata": {"annotations": {"b": "2"}}, "spec": {"template": {"y": 2}}})
        );
        assert!(
            json_patch(
                &mut target,
                &json!([{"op": "test", "path": "/spec/template/y", "value": 3}])
            )
            .is_err()
        );
    }
}
