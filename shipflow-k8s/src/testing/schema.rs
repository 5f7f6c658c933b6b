//! What the API server does to an object before it stores it: fills in defaults, and
//! refuses what the Kubernetes schema or validation refuses.
//!
//! Schema checking is strict: the object is read into its `k8s-openapi` type and
//! written back, and any field that did not survive is unknown to the schema and
//! refused, as `fieldValidation=Strict` refuses it; a value of the wrong type is
//! refused as the API server's decoder refuses it.

use base64::Engine as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::resources::Kind;
use super::selector::LabelSelector;
use super::store::{State, ensure_object, str_at};

/// Fills in the defaults the API server sets on `kind`.
pub(crate) fn default(st: &mut State, kind: Kind, object: &mut Value) {
    match kind {
        Kind::Deployment => {
            let spec = ensure_object(&mut object["spec"]);
            spec.entry("replicas").or_insert(json!(1));
            spec.entry("revisionHistoryLimit").or_insert(json!(10));
            spec.entry("progressDeadlineSeconds").or_insert(json!(600));
            let strategy = ensure_object(spec.entry("strategy").or_insert(json!({})));
            strategy.entry("type").or_insert(json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let rolling = ensure_object(strategy.entry("rollingUpdate").or_insert(json!({})));
                rolling.entry("maxSurge").or_insert(json!("25%"));
                rolling.entry("maxUnavailable").or_insert(json!("25%"));
            }
            default_pod_spec(&mut object["spec"]["template"]["spec"]);
        }
        Kind::ReplicaSet => {
            ensure_object(&mut object["spec"])
                .entry("replicas")
                .or_insert(json!(1));
            default_pod_spec(&mut object["spec"]["template"]["spec"]);
        }
        Kind::Pod => {
            let spec = &mut object["spec"];
            default_pod_spec(spec);
            let spec = ensure_object(spec);
            spec.entry("serviceAccountName").or_insert(json!("default"));
            spec.entry("enableServiceLinks").or_insert(json!(true));
            spec.entry("priority").or_insert(json!(0));
        }
        Kind::Service => {
            let spec = ensure_object(&mut object["spec"]);
            spec.entry("type").or_insert(json!("ClusterIP"));
            spec.entry("sessionAffinity").or_insert(json!("None"));
            for port in spec
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let port = ensure_object(port);
                port.entry("protocol").or_insert(json!("TCP"));
                let number = port.get("port").cloned().unwrap_or(Value::Null);
                port.entry("targetPort").or_insert(number);
            }
            if spec["type"] != "ExternalName" {
                if !spec.contains_key("clusterIP") {
                    spec.insert("clusterIP".into(), st.next_ip("10.96").into());
                }
                let ip = spec["clusterIP"].clone();
                spec.entry("clusterIPs").or_insert(json!([ip]));
                spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
                spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
                spec.entry("internalTrafficPolicy")
                    .or_insert(json!("Cluster"));
            }
        }
        Kind::Secret => {
            let secret = ensure_object(object);
            secret.entry("type").or_insert(json!("Opaque"));
            if let Some(Value::Object(plain)) = secret.remove("stringData") {
                let data = ensure_object(secret.entry("data").or_insert(json!({})));
                for (k, v) in plain {
                    let text = v.as_str().unwrap_or_default();
                    data.insert(
                        k,
                        base64::engine::general_purpose::STANDARD
                            .encode(text)
                            .into(),
                    );
                }
            }
        }
        Kind::Job => default_job(st, object),
        _ => {}
    }
}

/// The label the generated selector of a Job selects: the Job's uid.
pub(crate) const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// The label with the Job's name its pods carry.
pub(crate) const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

/// A Job's defaults (`SetDefaults_Job`), and on create (no uid yet) its uid and
/// generated selector, as the API server's Job strategy prepares a new Job: the
/// template gets `batch.kubernetes.io/job-name`, `job-name`,
/// `batch.kubernetes.io/controller-uid` and `controller-uid`, and the selector the
/// first uid label, unless `spec.manualSelector` is true. A Job without labels gets
/// its template's.
fn default_job(st: &mut State, object: &mut Value) {
    let spec = ensure_object(&mut object["spec"]);
    if !spec.contains_key("completions") && !spec.contains_key("parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    spec.entry("parallelism").or_insert(json!(1));
    let backoff = if spec.contains_key("backoffLimitPerIndex") {
        i64::from(i32::MAX)
    } else {
        6
    };
    spec.entry("backoffLimit").or_insert(json!(backoff));
    spec.entry("completionMode").or_insert(json!("NonIndexed"));
    spec.entry("suspend").or_insert(json!(false));
    let replacement = if spec.contains_key("podFailurePolicy") {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    spec.entry("podReplacementPolicy")
        .or_insert(json!(replacement));
    default_pod_spec(&mut object["spec"]["template"]["spec"]);
    let no_labels = |o: &Value| {
        o["metadata"]["labels"]
            .as_object()
            .is_none_or(|l| l.is_empty())
    };
    if no_labels(object) && !no_labels(&object["spec"]["template"]) {
        object["metadata"]["labels"] = object["spec"]["template"]["metadata"]["labels"].clone();
    }
    if object["metadata"].get("uid").is_some() {
        return;
    }
    let uid = st.next_uid();
    object["metadata"]["uid"] = uid.clone().into();
    if object["spec"]["manualSelector"] != true {
        let name = object["metadata"]["name"].clone();
        let labels = ensure_object(&mut object["spec"]["template"]["metadata"]["labels"]);
        for (key, value) in [
            ("job-name", &name),
            (JOB_NAME_LABEL, &name),
            ("controller-uid", &uid.clone().into()),
            (JOB_UID_LABEL, &uid.clone().into()),
        ] {
            labels.entry(key).or_insert(value.clone());
        }
        let selector = ensure_object(&mut object["spec"]["selector"]["matchLabels"]);
        selector.entry(JOB_UID_LABEL).or_insert(uid.into());
    }
    if no_labels(object) {
        object["metadata"]["labels"] = object["spec"]["template"]["metadata"]["labels"].clone();
    }
}

fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let map = ensure_object(spec);
    map.entry("restartPolicy").or_insert(json!("Always"));
    map.entry("terminationGracePeriodSeconds")
        .or_insert(json!(30));
    map.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
    map.entry("securityContext").or_insert(json!({}));
    map.entry("schedulerName")
        .or_insert(json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        for c in map
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let image = c["image"].as_str().unwrap_or_default().to_owned();
            let c = ensure_object(c);
            c.entry("terminationMessagePath")
                .or_insert(json!("/dev/termination-log"));
            c.entry("terminationMessagePolicy").or_insert(json!("File"));
            c.entry("resources").or_insert(json!({}));
            c.entry("imagePullPolicy")
                .or_insert(json!(pull_policy(&image)));
            for port in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                ensure_object(port)
                    .entry("protocol")
                    .or_insert(json!("TCP"));
            }
        }
    }
}

/// `Always` for an image with no tag or the `latest` tag (and no digest), else `IfNotPresent`.
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Checks `object` against the schema of `kind`: `Err` names the first unknown
/// field, or the decoding error.
pub(crate) fn check_schema(kind: Kind, object: &Value) -> Result<(), String> {
    match kind {
        Kind::Deployment => round_trip::<Deployment>(object),
        Kind::ReplicaSet => round_trip::<ReplicaSet>(object),
        Kind::Pod => round_trip::<Pod>(object),
        Kind::ConfigMap => round_trip::<ConfigMap>(object),
        Kind::Secret => round_trip::<Secret>(object),
        Kind::Service => round_trip::<Service>(object),
        Kind::Endpoints => round_trip::<Endpoints>(object),
        Kind::EndpointSlice => round_trip::<EndpointSlice>(object),
        Kind::Event => round_trip::<Event>(object),
        Kind::Lease => round_trip::<Lease>(object),
        Kind::Job => round_trip::<Job>(object),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match unknown_field(object, &back, "") {
        Some(path) => Err(format!(
            "unknown field \"{}\"",
            path.trim_start_matches('.')
        )),
        None => Ok(()),
    }
}

/// The first field of `original` that `typed` (its round trip) lost.
fn unknown_field(original: &Value, typed: &Value, path: &str) -> Option<String> {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => o.iter().find_map(|(k, v)| {
            let here = format!("{path}.{k}");
            match t.get(k) {
                _ if v.is_null() => None,
                None => Some(here),
                Some(tv) => unknown_field(v, tv, &here),
            }
        }),
        (Value::Array(o), Value::Array(t)) => o
            .iter()
            .zip(t)
            .enumerate()
            .find_map(|(i, (ov, tv))| unknown_field(ov, tv, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// An invalid field: its path and what is wrong.
pub(crate) type Invalid = (String, String);

/// The checks of the API server's validation that clients meet in practice:
/// names, labels, a Deployment's selector against its template, containers,
/// immutable fields. `old` is the stored object on an update.
pub(crate) fn validate(kind: Kind, object: &Value, old: Option<&Value>) -> Vec<Invalid> {
    let mut errors = Vec::new();
    let name = str_at(object, "/metadata/name");
    let name_ok = match kind {
        Kind::Service => dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
        _ => dns_subdomain(name),
    };
    if name.is_empty() {
        errors.push((
            "metadata.name".into(),
            "Required value: name is required".into(),
        ));
    } else if !name_ok {
        errors.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.'"),
        ));
    }
    for (k, v) in object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let value = v.as_str().unwrap_or_default();
        if !label_key(k) {
            errors.push((
                "metadata.labels".to_owned(),
                format!("Invalid value: {k:?}: not a valid label key"),
            ));
        }
        if !(value.is_empty() || (value.len() <= 63 && qualified_part(value))) {
            errors.push((
                "metadata.labels".to_owned(),
                format!("Invalid value: {value:?}: not a valid label value"),
            ));
        }
    }
    match kind {
        Kind::Deployment | Kind::ReplicaSet => workload(kind, object, old, &mut errors),
        Kind::Job => job(object, old, &mut errors),
        Kind::ConfigMap | Kind::Secret => {
            if let Some(old) = old
                && old["immutable"] == true
            {
                for field in ["data", "binaryData", "stringData"] {
                    if object[field] != old[field] {
                        errors.push((
                            field.into(),
                            "Forbidden: field is immutable when `immutable` is set".into(),
                        ));
                    }
                }
                if object["immutable"] != true {
                    errors.push((
                        "immutable".into(),
                        "Forbidden: field is immutable when `immutable` is set".into(),
                    ));
                }
            }
            for (k, _) in object["data"].as_object().into_iter().flatten() {
                if k.is_empty()
                    || !k
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    errors.push((format!("data[{k}]"), format!("Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'")));
                }
            }
        }
        _ => {}
    }
    errors
}

fn workload(kind: Kind, object: &Value, old: Option<&Value>, errors: &mut Vec<Invalid>) {
    let spec = &object["spec"];
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        errors.push((
            "spec.replicas".into(),
            "Invalid value: must be greater than or equal to 0".into(),
        ));
    }
    match LabelSelector::from_object(&spec["selector"]) {
        Ok(selector) if selector.is_empty() => {
            errors.push((
                "spec.selector".into(),
                "Invalid value: empty selector is invalid for deployment".into(),
            ));
        }
        Ok(selector) => {
            if !selector.matches(&spec["template"]["metadata"]["labels"]) {
                errors.push((
                    "spec.template.metadata.labels".into(),
                    format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        spec["template"]["metadata"]["labels"]
                    ),
                ));
            }
        }
        Err(e) => errors.push(("spec.selector".into(), format!("Invalid value: {e}"))),
    }
    if let Some(old) = old
        && old["spec"]["selector"] != spec["selector"]
    {
        errors.push((
            "spec.selector".into(),
            "Invalid value: field is immutable".into(),
        ));
    }
    pod_template(&spec["template"]["spec"], errors);
    if kind == Kind::Deployment {
        let strategy = &spec["strategy"];
        match strategy["type"].as_str() {
            Some("Recreate") if strategy.get("rollingUpdate").is_some_and(|r| !r.is_null()) => {
                errors.push(("spec.strategy.rollingUpdate".into(), "Forbidden: may not be specified when strategy `type` is 'Recreate'".into()));
            }
            Some("Recreate" | "RollingUpdate") | None => {}
            Some(other) => errors.push(("spec.strategy.type".into(), format!("Unsupported value: {other:?}: supported values: \"Recreate\", \"RollingUpdate\""))),
        }
        let rolling = &strategy["rollingUpdate"];
        if rolling.is_object()
            && is_zero(&rolling["maxSurge"])
            && is_zero(&rolling["maxUnavailable"])
        {
            errors.push((
                "spec.strategy.rollingUpdate.maxUnavailable".into(),
                "Invalid value: may not be 0 when `maxSurge` is 0".into(),
            ));
        }
    }
}

/// The checks of a template's pod spec: containers, their names and images.
fn pod_template(pod: &Value, errors: &mut Vec<Invalid>) {
    let containers = pod["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        errors.push((
            "spec.template.spec.containers".into(),
            "Required value".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in pod[list].as_array().into_iter().flatten().enumerate() {
            let at = format!("spec.template.spec.{list}[{i}]");
            let name = c["name"].as_str().unwrap_or_default();
            if !dns_label(name) {
                errors.push((
                    format!("{at}.name"),
                    format!("Invalid value: {name:?}: a lowercase RFC 1123 label"),
                ));
            } else if !seen.insert(name.to_owned()) {
                errors.push((format!("{at}.name"), format!("Duplicate value: {name:?}")));
            }
            if str_at(c, "/image").trim().is_empty() {
                errors.push((format!("{at}.image"), "Required value".into()));
            }
        }
    }
}

/// A Job's checks (`ValidateJob`, `ValidateJobUpdate`): counts not negative, a
/// restart policy of `OnFailure` or `Never`, a selector that matches the template
/// (the generated one unless `manualSelector`), and a template, selector,
/// completions and completion mode that never change.
fn job(object: &Value, old: Option<&Value>, errors: &mut Vec<Invalid>) {
    let spec = &object["spec"];
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        if spec[field].as_i64().is_some_and(|n| n < 0) {
            errors.push((
                format!("spec.{field}"),
                format!(
                    "Invalid value: {}: must be greater than or equal to 0",
                    spec[field]
                ),
            ));
        }
    }
    if spec["activeDeadlineSeconds"].as_i64() == Some(0) {
        errors.push((
            "spec.activeDeadlineSeconds".into(),
            "Invalid value: 0: must be greater than 0".into(),
        ));
    }
    match spec["completionMode"].as_str() {
        Some("NonIndexed" | "Indexed") | None => {}
        Some(other) => errors.push((
            "spec.completionMode".into(),
            format!("Unsupported value: {other:?}: supported values: \"NonIndexed\", \"Indexed\""),
        )),
    }
    let name = str_at(object, "/metadata/name");
    if spec["manualSelector"] != true && name.len() > 63 {
        errors.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be no more than 63 characters"),
        ));
    }
    let template = &spec["template"];
    match LabelSelector::from_object(&spec["selector"]) {
        Ok(selector) if selector.is_empty() => {
            errors.push(("spec.selector".into(), "Required value".into()))
        }
        Ok(selector) => {
            if !selector.matches(&template["metadata"]["labels"]) {
                errors.push((
                    "spec.template.metadata.labels".into(),
                    format!(
                        "Invalid value: {}: `selector` does not match template `labels`",
                        template["metadata"]["labels"]
                    ),
                ));
            }
        }
        Err(e) => errors.push(("spec.selector".into(), format!("Invalid value: {e}"))),
    }
    if spec["manualSelector"] != true {
        let uid = str_at(object, "/metadata/uid");
        if str_at(
            spec,
            &format!("/selector/matchLabels/{}", JOB_UID_LABEL.replace('/', "~1")),
        ) != uid
        {
            errors.push((
                "spec.selector".into(),
                format!(
                    "Invalid value: {}: `selector` not auto-generated",
                    spec["selector"]
                ),
            ));
        }
        for key in [JOB_UID_LABEL, "controller-uid"] {
            let at = format!("/metadata/labels/{}", key.replace('/', "~1"));
            if str_at(template, &at) != uid {
                errors.push((
                    format!("spec.template.metadata.labels[{key}]"),
                    format!(
                        "Invalid value: {:?}: must be '{uid}'",
                        str_at(template, &at)
                    ),
                ));
            }
        }
    }
    match str_at(template, "/spec/restartPolicy") {
        "OnFailure" | "Never" => {}
        other => errors.push((
            "spec.template.spec.restartPolicy".into(),
            format!("Unsupported value: {other:?}: supported values: \"OnFailure\", \"Never\""),
        )),
    }
    pod_template(&template["spec"], errors);
    if let Some(old) = old {
        for field in ["template", "selector", "completions", "completionMode"] {
            if old["spec"][field] != spec[field] {
                errors.push((
                    format!("spec.{field}"),
                    format!("Invalid value: {}: field is immutable", spec[field]),
                ));
            }
        }
    }
}

fn is_zero(v: &Value) -> bool {
    v.as_i64() == Some(0) || v.as_str() == Some("0%") || v.as_str() == Some("0")
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name part.
fn label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(dns_subdomain) && !name.is_empty() && name.len() <= 63 && qualified_part(name)
}

fn qualified_part(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let good = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {}},
            "data": {"A": "1"}, "immutable": true});
        check_schema(Kind::ConfigMap, &good).expect("valid");
        let mut typo = good.clone();
        typo["metadata"]["lables"] = json!({"a": "b"});
        assert_eq!(
            check_schema(Kind::ConfigMap, &typo),
            Err("unknown field \"metadata.lables\"".into())
        );
        let deep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "a", "imagee": "x"}]}}}});
        assert_eq!(
            check_schema(Kind::Deployment, &deep),
            Err("unknown field \"spec.template.spec.containers[0].imagee\"".into())
        );
        let wrong = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"},
            "spec": {"replicas": "2", "selector": {}, "template": {}}});
        assert!(check_schema(Kind::Deployment, &wrong).is_err());
    }

    #[test]
    fn a_selector_that_misses_the_template_is_invalid() {
        let dep = json!({"metadata": {"name": "api"}, "spec": {"selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "api", "image": "x"}]}}}});
        let errors = validate(Kind::Deployment, &dep, None);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].1.contains("does not match template"));
    }
}
