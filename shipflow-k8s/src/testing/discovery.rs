//! What a client reads before it sends a request: `/version`, API discovery (the
//! aggregated `apidiscovery.k8s.io/v2` form `kubectl` asks for first, and the legacy
//! `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>` documents), and the OpenAPI
//! v3 documents `kubectl` reads to learn that PATCH takes `fieldValidation`.

use serde_json::{Value, json};

use super::resources::{RESOURCES, Resource, VERBS, groups};

/// The content type of an aggregated discovery document.
pub(crate) const AGGREGATED: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// `/version`.
pub(crate) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-shipflow-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Whether an `Accept` header asks for aggregated discovery.
pub(crate) fn wants_aggregated(accept: &str) -> bool {
    accept.contains("as=APIGroupDiscoveryList") && accept.contains("v=v2")
}

fn resources_in(group: &str, version: &str) -> impl Iterator<Item = &'static Resource> {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// The aggregated discovery document of the core group (`legacy`) or of the others.
pub(crate) fn aggregated(legacy: bool) -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| g.is_empty() == legacy)
        .map(|(group, version)| {
            let resources: Vec<Value> = resources_in(group, version)
                .map(|r| {
                    json!({
                        "resource": r.plural,
                        "responseKind": {"group": "", "version": "", "kind": r.name},
                        "scope": "Namespaced",
                        "singularResource": r.singular,
                        "verbs": VERBS,
                        "shortNames": r.short_names,
                        "categories": r.categories,
                        "subresources": r.subresources.iter().map(|s| json!({
                            "subresource": s.name,
                            "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                            "verbs": s.verbs,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "metadata": {"name": group, "creationTimestamp": null},
                "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/api`.
pub(crate) fn api_versions(server: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]})
}

/// `/apis`.
pub(crate) fn api_groups() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/<group>/<version>`, if served.
pub(crate) fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in resources_in(group, version) {
        resources.push(json!({"name": r.plural, "singularName": r.singular, "namespaced": true,
            "kind": r.name, "verbs": VERBS, "shortNames": r.short_names, "categories": r.categories}));
        for s in r.subresources {
            let mut sub = json!({"name": format!("{}/{}", r.plural, s.name), "singularName": "",
                "namespaced": true, "kind": s.kind, "verbs": s.verbs});
            if s.group != r.group || s.version != r.version {
                sub["group"] = s.group.into();
                sub["version"] = s.version.into();
            }
            resources.push(sub);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

/// The path of a group version in OpenAPI v3: `api/v1`, `apis/apps/v1`.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's document is.
pub(crate) fn openapi_index() -> Value {
    let paths: serde_json::Map<String, Value> = groups()
        .into_iter()
        .map(|(g, v)| {
            let path = openapi_path(g, v);
            let url = format!("/openapi/v3/{path}?hash={}", hash_of(&path));
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

fn hash_of(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3/<group version path>`: the operations of each resource, with the
/// query parameters they take. Schemas are left out: clients that read this document
/// (kubectl's field-validation check) look only at the operations.
pub(crate) fn openapi_document(path: &str) -> Option<Value> {
    let (group, version) = groups()
        .into_iter()
        .find(|(g, v)| openapi_path(g, v) == path)?;
    let mut paths = serde_json::Map::new();
    for r in resources_in(group, version) {
        let base = format!("/{path}/namespaces/{{namespace}}/{}", r.plural);
        let gvk = json!({"group": group, "version": version, "kind": r.name});
        let op = |id: &str, params: &[&str]| {
            json!({
                "operationId": format!("{id}{}", r.name),
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params.iter().map(|p| json!({"name": p, "in": "query", "schema": {"type": "string"}})).collect::<Vec<_>>(),
                "responses": {"200": {"description": "OK"}},
            })
        };
        let write = ["dryRun", "fieldManager", "fieldValidation"];
        let patch = ["dryRun", "fieldManager", "fieldValidation", "force"];
        let list = [
            "labelSelector",
            "fieldSelector",
            "resourceVersion",
            "timeoutSeconds",
            "watch",
            "allowWatchBookmarks",
            "limit",
            "continue",
        ];
        paths.insert(
            base.clone(),
            json!({"get": op("list", &list), "post": op("create", &write)}),
        );
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"get": op("read", &[]), "put": op("replace", &write), "patch": op("patch", &patch),
                "delete": op("delete", &["dryRun", "gracePeriodSeconds", "propagationPolicy"])}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (shipflow simulator)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
