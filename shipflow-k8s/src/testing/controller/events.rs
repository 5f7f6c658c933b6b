//! `v1` Events, as the controllers and the kubelet record them (what `kubectl
//! describe` lists): a repeated event is counted, not stored again.

use serde_json::{Value, json};

use crate::testing::resources::Kind;
use crate::testing::store::{Shared, State, now, str_at};

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Type {
    Normal,
    Warning,
}

/// Records an event about `object` from `component`.
pub(crate) fn record(
    shared: &Shared,
    st: &mut State,
    object: &Value,
    ty: Type,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ns = str_at(object, "/metadata/namespace").to_owned();
    let uid = str_at(object, "/metadata/uid");
    let same = st
        .iter(Kind::Event, &ns)
        .find(|e| {
            str_at(e, "/involvedObject/uid") == uid
                && str_at(e, "/reason") == reason
                && str_at(e, "/message") == message
        })
        .cloned();
    let event = match same {
        Some(mut e) => {
            e["count"] = (e["count"].as_i64().unwrap_or(1) + 1).into();
            e["lastTimestamp"] = now().into();
            e
        }
        None => {
            let name = format!("{}.{:016x}", str_at(object, "/metadata/name"), st.rv + 1);
            json!({
                "metadata": {"name": name},
                "involvedObject": {
                    "apiVersion": object["apiVersion"],
                    "kind": object["kind"],
                    "name": object["metadata"]["name"],
                    "namespace": ns,
                    "uid": uid,
                    "resourceVersion": object["metadata"]["resourceVersion"],
                },
                "reason": reason,
                "message": message,
                "type": match ty { Type::Normal => "Normal", Type::Warning => "Warning" },
                "source": {"component": component},
                "reportingComponent": component,
                "reportingInstance": "",
                "firstTimestamp": now(),
                "lastTimestamp": now(),
                "count": 1,
            })
        }
    };
    shared.put(st, Kind::Event, &ns, event);
}
