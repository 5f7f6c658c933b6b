//! `meta.k8s.io/v1` Tables: the columns `kubectl get` prints, computed on the server
//! as the API server's printers do.

use serde_json::{Value, json};

use super::resources::Kind;
use super::store::{int_at, str_at};

/// Whether an `Accept` header asks for a Table.
pub(crate) fn wanted(accept: &str) -> bool {
    accept.contains("as=Table")
}

type Column = (&'static str, &'static str, u8);

fn columns(kind: Kind) -> Vec<Column> {
    let mut cols: Vec<Column> = vec![("Name", "string", 0)];
    cols.extend(match kind {
        Kind::Deployment => vec![
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Kind::ReplicaSet => vec![
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Kind::Pod => vec![
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ],
        Kind::Service => vec![
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
            ("Selector", "string", 1),
        ],
        Kind::ConfigMap => vec![("Data", "integer", 0), ("Age", "string", 0)],
        Kind::Secret => vec![
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        Kind::Endpoints => vec![("Endpoints", "string", 0), ("Age", "string", 0)],
        Kind::EndpointSlice => vec![
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            ("Age", "string", 0),
        ],
        Kind::Lease => vec![("Holder", "string", 0), ("Age", "string", 0)],
        Kind::Job => vec![
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        Kind::Event => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
    });
    cols
}

/// `5s`, `3m2s`, `4h`, `2d`: how long ago `timestamp` was.
fn age(timestamp: &str) -> String {
    let Some(then) = seconds_of(timestamp) else {
        return "<unknown>".into();
    };
    human(k8s_openapi::jiff::Timestamp::now().as_second() - then)
}

/// The seconds since the epoch of an RFC 3339 `timestamp`.
fn seconds_of(timestamp: &str) -> Option<i64> {
    timestamp
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

/// A duration of `secs` as the printers write it (`duration.HumanDuration`).
fn human(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// What `kubectl get jobs` shows as a Job's status: its first finished or pending
/// condition that holds, as the printer ranks them.
fn job_status(job: &Value) -> &'static str {
    let holds = |ty: &str| {
        job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == ty && c["status"] == "True")
    };
    if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if job["metadata"].get("deletionTimestamp").is_some() {
        "Terminating"
    } else if holds("Suspended") {
        "Suspended"
    } else if holds("FailureTarget") {
        "FailureTarget"
    } else if holds("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

/// `succeeded/completions` (`succeeded/1 of <parallelism>` for a work queue).
fn job_completions(job: &Value) -> String {
    let succeeded = int_at(job, "/status/succeeded").unwrap_or(0);
    match int_at(job, "/spec/completions") {
        Some(n) => format!("{succeeded}/{n}"),
        None => match int_at(job, "/spec/parallelism").unwrap_or(0) {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    }
}

/// From the start to completion, or to now while the Job runs; empty before it starts.
fn job_duration(job: &Value) -> String {
    let Some(start) = seconds_of(str_at(job, "/status/startTime")) else {
        return String::new();
    };
    let end = seconds_of(str_at(job, "/status/completionTime"))
        .unwrap_or_else(|| k8s_openapi::jiff::Timestamp::now().as_second());
    human(end - start)
}

fn join(values: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = values.collect();
    if v.is_empty() {
        "<none>".into()
    } else {
        v.join(",")
    }
}

fn containers(template_spec: &Value, field: &str) -> String {
    join(
        template_spec["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| str_at(c, &format!("/{field}")).to_owned()),
    )
}

fn selector(selector: &Value) -> String {
    join(
        selector
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())),
    )
}

/// A label selector as `metav1.FormatLabelSelector` writes it: `k=v,k2 in (a,b)`.
fn job_selector(selector: &Value) -> String {
    match super::selector::LabelSelector::from_object(selector) {
        Ok(s) if !s.is_empty() => s.to_query(),
        _ => "<none>".into(),
    }
}

/// What `kubectl get pods` shows as a pod's status.
pub(crate) fn pod_status(pod: &Value) -> String {
    if pod["metadata"].get("deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let status = &pod["status"];
    let mut reason = status["reason"]
        .as_str()
        .unwrap_or_else(|| status["phase"].as_str().unwrap_or("Pending"))
        .to_owned();
    let inits = status["initContainerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, c) in inits.iter().enumerate() {
        if c["state"]["terminated"]["exitCode"] == 0 {
            continue;
        }
        if let Some(r) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| *r != "PodInitializing")
        {
            return format!("Init:{r}");
        }
        if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
            return format!("Init:{r}");
        }
        return format!("Init:{i}/{}", inits.len());
    }
    for c in status["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
    {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            reason = r.to_owned();
        } else if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
            reason = r.to_owned();
        }
    }
    reason
}

fn cells(kind: Kind, o: &Value) -> Vec<Value> {
    let name = str_at(o, "/metadata/name");
    let age = age(str_at(o, "/metadata/creationTimestamp"));
    let int = |p: &str| int_at(o, p).unwrap_or(0);
    let mut row = vec![json!(name)];
    row.extend(match kind {
        Kind::Deployment => vec![
            json!(format!(
                "{}/{}",
                int("/status/readyReplicas"),
                int_at(o, "/spec/replicas").unwrap_or(1)
            )),
            json!(int("/status/updatedReplicas")),
            json!(int("/status/availableReplicas")),
            json!(age),
            json!(containers(&o["spec"]["template"]["spec"], "name")),
            json!(containers(&o["spec"]["template"]["spec"], "image")),
            json!(selector(&o["spec"]["selector"]["matchLabels"])),
        ],
        Kind::ReplicaSet => vec![
            json!(int_at(o, "/spec/replicas").unwrap_or(1)),
            json!(int("/status/replicas")),
            json!(int("/status/readyReplicas")),
            json!(age),
            json!(containers(&o["spec"]["template"]["spec"], "name")),
            json!(containers(&o["spec"]["template"]["spec"], "image")),
            json!(selector(&o["spec"]["selector"]["matchLabels"])),
        ],
        Kind::Pod => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum();
            vec![
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                json!(age),
                json!(o["status"]["podIP"].as_str().unwrap_or("<none>")),
                json!(o["spec"]["nodeName"].as_str().unwrap_or("<none>")),
            ]
        }
        Kind::Service => vec![
            json!(str_at(o, "/spec/type")),
            json!(o["spec"]["clusterIP"].as_str().unwrap_or("<none>")),
            json!("<none>"),
            json!(join(
                o["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP")))
            )),
            json!(age),
            json!(selector(&o["spec"]["selector"])),
        ],
        Kind::ConfigMap => vec![
            json!(
                o["data"].as_object().map_or(0, |d| d.len())
                    + o["binaryData"].as_object().map_or(0, |d| d.len())
            ),
            json!(age),
        ],
        Kind::Secret => vec![
            json!(str_at(o, "/type")),
            json!(o["data"].as_object().map_or(0, |d| d.len())),
            json!(age),
        ],
        Kind::Endpoints => vec![
            json!(join(
                o["subsets"].as_array().into_iter().flatten().flat_map(|s| {
                    let ports: Vec<i64> = s["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_i64())
                        .collect();
                    s["addresses"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .flat_map(move |a| {
                            let ip = str_at(&a, "/ip").to_owned();
                            ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                        })
                })
            )),
            json!(age),
        ],
        Kind::EndpointSlice => vec![
            json!(str_at(o, "/addressType")),
            json!(join(
                o["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| p["port"].to_string())
            )),
            json!(join(
                o["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|e| {
                        e["addresses"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|a| a.as_str().unwrap_or_default().to_owned())
                    })
            )),
            json!(age),
        ],
        Kind::Lease => vec![json!(str_at(o, "/spec/holderIdentity")), json!(age)],
        Kind::Job => vec![
            json!(job_status(o)),
            json!(job_completions(o)),
            json!(job_duration(o)),
            json!(age),
            json!(containers(&o["spec"]["template"]["spec"], "name")),
            json!(containers(&o["spec"]["template"]["spec"], "image")),
            json!(job_selector(&o["spec"]["selector"])),
        ],
        Kind::Event => vec![
            json!(self::age(str_at(o, "/lastTimestamp"))),
            json!(str_at(o, "/type")),
            json!(str_at(o, "/reason")),
            json!(format!(
                "{}/{}",
                str_at(o, "/involvedObject/kind").to_lowercase(),
                str_at(o, "/involvedObject/name")
            )),
            json!(str_at(o, "/message")),
        ],
    });
    row
}

/// A Table of `objects` of `kind`, with each row's object metadata.
pub(crate) fn table(kind: Kind, objects: &[Value], resource_version: &str) -> Value {
    let definitions: Vec<Value> = columns(kind)
        .into_iter()
        .map(|(name, ty, priority)| {
            json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" },
                "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            json!({"cells": cells(kind, o), "object": {"kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": definitions, "rows": rows})
}
