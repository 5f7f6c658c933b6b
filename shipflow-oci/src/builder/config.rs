//! The image config of one platform: the base's, with the app's settings applied.

use serde_json::{Map, Value, json};
use shipflow_core::BuildRequest;

use super::BuildError;
use super::base::Base;
use crate::Platform;
use crate::layer::WrittenLayer;
use crate::spec::{NativeBuild, exposed_port};

/// The image config: the base's, with the app's settings, labels and layers
/// applied, for `platform`.
pub(super) fn image_config(
    app: &str,
    spec: &NativeBuild,
    request: &BuildRequest,
    base: Option<&Base>,
    layers: &[&WrittenLayer],
    created: &str,
    platform: &Platform,
) -> Result<Value, BuildError> {
    let mut root = base
        .and_then(|b| b.config.as_object().cloned())
        .unwrap_or_default();
    root.insert("created".into(), created.into());
    root.insert("architecture".into(), platform.architecture.as_str().into());
    root.insert("os".into(), platform.os.as_str().into());
    match &platform.variant {
        Some(variant) => root.insert("variant".into(), variant.as_str().into()),
        None => root.remove("variant"),
    };

    let mut config = root
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut env: Vec<String> = config
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for (key, value) in &spec.env {
        let prefix = format!("{key}=");
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{key}={value}"));
    }
    if !env.is_empty() {
        config.insert("Env".into(), json!(env));
    }
    if !spec.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(spec.entrypoint));
        // As in a Dockerfile, a new entrypoint drops the base's command.
        config.remove("Cmd");
    }
    if !spec.cmd.is_empty() {
        config.insert("Cmd".into(), json!(spec.cmd));
    }
    if let Some(workdir) = &spec.workdir {
        config.insert("WorkingDir".into(), workdir.as_str().into());
    }
    if let Some(user) = &spec.user {
        config.insert("User".into(), user.as_str().into());
    }
    if !spec.expose.is_empty() {
        let mut ports = config
            .get("ExposedPorts")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for port in &spec.expose {
            let port = exposed_port(port).map_err(|reason| BuildError::InvalidConfig {
                app: app.into(),
                key: "expose",
                reason,
            })?;
            ports.insert(port, json!({}));
        }
        config.insert("ExposedPorts".into(), Value::Object(ports));
    }
    let mut labels = config
        .get("Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (key, value) in spec.labels.iter().chain(&request.labels) {
        labels.insert(key.clone(), value.as_str().into());
    }
    if !labels.is_empty() {
        config.insert("Labels".into(), Value::Object(labels));
    }
    root.insert("config".into(), Value::Object(config));

    let mut diff_ids: Vec<Value> = root
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    diff_ids.extend(layers.iter().map(|l| Value::from(l.diff_id.to_string())));
    root.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let mut history: Vec<Value> = root
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for layer_spec in spec.layers.iter().take(layers.len()) {
        history.push(json!({
            "created": created,
            "created_by": format!("shipflow native: {} -> {}", layer_spec.from, layer_spec.to),
        }));
    }
    root.insert("history".into(), Value::Array(history));
    Ok(Value::Object(Map::from_iter(root)))
}
