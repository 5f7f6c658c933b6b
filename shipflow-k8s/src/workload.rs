//! The workload settings of `deploy.kubernetes`: what a Deployment (and the Service
//! for its exposed ports) is made of when shipflow creates it from the app's config.
//! Each type checks itself at load, naming the field that is wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shipflow_core::{SectionContext, SectionError};

use crate::spec::{check_name, check_subdomain};

/// The label every Pod of a Deployment shipflow creates carries, with the app's
/// name: its selector, which never changes between deploys.
pub const APP_LABEL: &str = "shipflow.dev/app";

/// The label of a blue-green app's pods with their colour, `blue` or `green`:
/// part of each colour's selector and of the active and preview Services'.
pub const COLOUR_LABEL: &str = "shipflow.dev/colour";

/// The label of a blue-green app's pods with a hash of their pod template, telling
/// a deploy's new pods from older ones of the same colour.
pub const RELEASE_LABEL: &str = "shipflow.dev/release";

/// CPU and memory requests and limits, as Kubernetes quantities (`"250m"`,
/// `"0.5"`, `"128Mi"`, `"1Gi"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Resources {
    /// What the scheduler reserves.
    #[serde(default)]
    pub requests: Quantities,
    /// What the container may use at most.
    #[serde(default)]
    pub limits: Quantities,
}

/// A CPU and a memory quantity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Quantities {
    /// CPU, e.g. `"250m"` or `"1"`.
    pub cpu: Option<String>,
    /// Memory, e.g. `"128Mi"`.
    pub memory: Option<String>,
}

/// Where an environment variable's value comes from: a key of a ConfigMap or of a
/// Secret.
///
/// ```toml
/// env_from = { DB_HOST = { config_map = "api-config", key = "DB_HOST" }, DB_PASSWORD = { secret = "db", key = "password" } }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EnvSource {
    /// The ConfigMap (a generated one by its base name, see `config_maps`).
    pub config_map: Option<String>,
    /// The Secret.
    pub secret: Option<String>,
    /// The key in it.
    pub key: String,
}

/// A container port, and the Service port it is exposed at, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Port {
    /// The port's name (at most 15 lowercase letters, digits and '-').
    pub name: Option<String>,
    /// The container port.
    pub port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    pub protocol: Option<String>,
    /// The port of the app's Service that forwards to this one; a port without it
    /// is not exposed.
    pub service_port: Option<u16>,
}

/// An HTTP probe: readiness (may the pod take traffic) or liveness (must the
/// container be restarted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Probe {
    /// The HTTP path probed, e.g. `/healthz`.
    pub http: String,
    /// The container port probed; default the first of `ports`.
    pub port: Option<u16>,
    /// Seconds between probes (`periodSeconds`); Kubernetes' default 10.
    pub period: Option<u32>,
    /// Seconds before the first probe (`initialDelaySeconds`).
    pub initial_delay: Option<u32>,
    /// Seconds a probe may take (`timeoutSeconds`); Kubernetes' default 1.
    pub timeout: Option<u32>,
    /// Failures in a row that count (`failureThreshold`); Kubernetes' default 3.
    pub failure_threshold: Option<u32>,
    /// Successes in a row that count (`successThreshold`); 1 for liveness.
    pub success_threshold: Option<u32>,
}

/// How a Deployment replaces its pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Strategy {
    /// `RollingUpdate`: new pods come up while old ones go (`max_surge`,
    /// `max_unavailable`).
    #[default]
    Rolling,
    /// `Recreate`: every old pod goes before new ones come.
    Recreate,
    /// Two Deployments, `<deployment>-blue` and `<deployment>-green`, behind an
    /// active and a preview Service: a deploy rolls the colour the active Service
    /// does not select, then switches the active Service to it once its pods, and
    /// only they, are ready behind the preview Service (see [`BlueGreen`]).
    BlueGreen,
}

/// The settings of strategy `"blue-green"`: `blue_green = { ... }`, every key
/// optional.
///
/// ```toml
/// strategy = "blue-green"
/// ports = [{ name = "http", port = 8080, service_port = 80 }]
/// blue_green = { scale_down_delay = 30, pre_promotion = "http://api-preview.shop/ready", post_promotion = "http://api.shop/ready" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BlueGreen {
    /// The Service that takes the traffic; default the Deployment's base name.
    pub active_service: Option<String>,
    /// The Service that selects the colour being rolled; default
    /// `<deployment>-preview`.
    pub preview_service: Option<String>,
    /// Seconds between the switch (once the active Service's endpoints hold only
    /// new pods) and the old colour's scale-down to zero; default 30. With 0 the
    /// deploy scales it down before it returns; otherwise a task of the deploying
    /// process does, if that process still runs then (the next deploy reuses that
    /// colour anyway).
    pub scale_down_delay: Option<u32>,
    /// Never scale the old colour down: a rollback stays a switch of the selector.
    #[serde(default)]
    pub keep_previous: bool,
    /// An `http://` URL fetched (GET) after the new colour is ready behind the
    /// preview Service and before the switch; anything but a 2xx answer within
    /// `check_timeout` fails the deploy and leaves the active Service as it was.
    pub pre_promotion: Option<String>,
    /// An `http://` URL fetched (GET) after the switch, once the active Service's
    /// endpoints hold only new pods; anything but a 2xx answer within
    /// `check_timeout` switches the active Service back and fails the deploy.
    pub post_promotion: Option<String>,
    /// Seconds a promotion check may take; default 10.
    pub check_timeout: Option<u32>,
}

impl BlueGreen {
    fn check(&self) -> Result<(), SectionError> {
        for (field, name) in [
            ("blue_green.active_service", &self.active_service),
            ("blue_green.preview_service", &self.preview_service),
        ] {
            if let Some(name) = name {
                check_name(field, name, 63)?;
            }
        }
        if self.active_service.is_some() && self.active_service == self.preview_service {
            return Err(SectionError::new(
                "blue_green.preview_service",
                "is the active Service's name too",
            ));
        }
        for (field, url) in [
            ("blue_green.pre_promotion", &self.pre_promotion),
            ("blue_green.post_promotion", &self.post_promotion),
        ] {
            if let Some(url) = url {
                crate::check::CheckUrl::parse(url).map_err(|why| SectionError::new(field, why))?;
            }
        }
        if let Some(d) = self.scale_down_delay
            && d > 86_400
        {
            return Err(SectionError::new(
                "blue_green.scale_down_delay",
                format!("{d} is out of range: give 0 to 86400 seconds, or keep_previous = true"),
            ));
        }
        if let Some(t) = self.check_timeout
            && !(1..=600).contains(&t)
        {
            return Err(SectionError::new(
                "blue_green.check_timeout",
                format!("{t} is out of range: give 1 to 600 seconds"),
            ));
        }
        Ok(())
    }
}

/// A count of pods or a percentage of the replicas (`1`, `"25%"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum IntOrPercent {
    /// A number of pods.
    Int(u32),
    /// A percentage, `"25%"`.
    Percent(String),
}

/// A ConfigMap generated from an env file at each deploy, named by a hash of its
/// content, and given to the container as environment (`envFrom`); `env_from`
/// entries naming its `name` get the hashed name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConfigMapFile {
    /// The base name; the ConfigMap is `<name>-<hash>`.
    pub name: String,
    /// The env file, relative to the repository root.
    pub env_file: String,
    /// The env file's absolute path, filled in at load.
    #[serde(skip)]
    pub(crate) path: std::path::PathBuf,
}

impl IntOrPercent {
    fn check(&self, field: &str) -> Result<(), SectionError> {
        match self {
            Self::Int(n) if i32::try_from(*n).is_err() => Err(SectionError::new(
                field,
                format!(
                    "{n} is more than Kubernetes takes (2147483647); give a smaller count or a percentage"
                ),
            )),
            Self::Int(_) => Ok(()),
            Self::Percent(p) => {
                let valid = p.strip_suffix('%').is_some_and(|n| {
                    !n.is_empty()
                        && n.len() <= 3
                        && n.bytes().all(|b| b.is_ascii_digit())
                        && n.parse::<u32>().is_ok_and(|n| n <= 100)
                });
                if valid {
                    Ok(())
                } else {
                    Err(SectionError::new(
                        field,
                        format!("{p:?} is neither a number of pods nor a percentage like \"25%\""),
                    ))
                }
            }
        }
    }

    fn is_zero(&self) -> bool {
        match self {
            Self::Int(n) => *n == 0,
            Self::Percent(p) => p.trim_start_matches('0') == "%",
        }
    }
}

/// Checks a Kubernetes quantity: a non-negative decimal number and a suffix
/// (`m`, `k`, `M` … `E`, `Ki` … `Ei`, or an exponent `e3`).
fn check_quantity(field: &str, value: &str) -> Result<(), SectionError> {
    let bad = || {
        SectionError::new(
            field,
            format!(
                "{value:?} is not a quantity: a number and an optional suffix, e.g. \"250m\", \"0.5\", \"128Mi\", \"1Gi\""
            ),
        )
    };
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    let digits = number.replace('.', "");
    if digits.is_empty() || number.matches('.').count() > 1 || value.len() > 64 {
        return Err(bad());
    }
    let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let decimal = ["", "m", "k", "M", "G", "T", "P", "E"];
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.len() <= 3 && e.bytes().all(|b| b.is_ascii_digit()));
    if binary.contains(&suffix) || decimal.contains(&suffix) || exponent {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The value of a quantity [`check_quantity`] accepted, as a float (precise enough
/// to compare a request with a limit).
fn quantity_value(value: &str) -> Option<f64> {
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => 10f64.powi(e[1..].parse().ok()?),
    };
    Some(number * scale)
}

impl Resources {
    pub(crate) fn check(&self) -> Result<(), SectionError> {
        for (which, q) in [("requests", &self.requests), ("limits", &self.limits)] {
            if let Some(cpu) = &q.cpu {
                check_quantity(&format!("resources.{which}.cpu"), cpu)?;
            }
            if let Some(memory) = &q.memory {
                let field = format!("resources.{which}.memory");
                check_quantity(&field, memory)?;
                if let Some(n) = memory.strip_suffix('m') {
                    return Err(SectionError::new(
                        field,
                        format!(
                            "{memory:?} is {n} thousandths of a byte ('m' is milli); write \"{n}Mi\" (mebibytes) or \"{n}M\" (megabytes)"
                        ),
                    ));
                }
            }
        }
        for (what, request, limit) in [
            ("cpu", &self.requests.cpu, &self.limits.cpu),
            ("memory", &self.requests.memory, &self.limits.memory),
        ] {
            if let (Some(request), Some(limit)) = (request, limit)
                && quantity_value(request) > quantity_value(limit)
            {
                return Err(SectionError::new(
                    format!("resources.requests.{what}"),
                    format!(
                        "{request:?} is more than the limit {limit:?} (Kubernetes refuses that); lower the request or raise the limit"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Port {
    fn check(&self, i: usize) -> Result<(), SectionError> {
        let field = |f: &str| format!("ports[{i}].{f}");
        if self.port == 0 {
            return Err(SectionError::new(
                field("port"),
                "give a port from 1 to 65535",
            ));
        }
        if self.service_port == Some(0) {
            return Err(SectionError::new(
                field("service_port"),
                "give a port from 1 to 65535",
            ));
        }
        if let Some(name) = &self.name {
            check_name(&field("name"), name, 15)?;
            if !name.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(SectionError::new(
                    field("name"),
                    format!("{name:?} needs at least one letter"),
                ));
            }
        }
        if let Some(p) = &self.protocol
            && !["TCP", "UDP", "SCTP"].contains(&p.as_str())
        {
            return Err(SectionError::new(
                field("protocol"),
                format!("{p:?} is not TCP, UDP or SCTP"),
            ));
        }
        Ok(())
    }

    /// The protocol, `TCP` by default.
    pub(crate) fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

impl Probe {
    fn check(&self, field: &str, ports: &[Port]) -> Result<(), SectionError> {
        if !self.http.starts_with('/') || self.http.chars().any(char::is_whitespace) {
            return Err(SectionError::new(
                format!("{field}.http"),
                format!("{:?} is not an HTTP path like \"/healthz\"", self.http),
            ));
        }
        match self.port {
            Some(0) => {
                return Err(SectionError::new(
                    format!("{field}.port"),
                    "give a port from 1 to 65535",
                ));
            }
            None if ports.is_empty() => {
                return Err(SectionError::new(
                    format!("{field}.port"),
                    "give the port to probe, or declare the container's ports",
                ));
            }
            _ => {}
        }
        for (name, value, min) in [
            ("period", self.period, 1),
            ("timeout", self.timeout, 1),
            ("failure_threshold", self.failure_threshold, 1),
            ("success_threshold", self.success_threshold, 1),
            ("initial_delay", self.initial_delay, 0),
        ] {
            if let Some(v) = value
                && !(min..=86_400).contains(&v)
            {
                return Err(SectionError::new(
                    format!("{field}.{name}"),
                    format!("{v} is out of range: give {min} to 86400"),
                ));
            }
        }
        if field == "liveness" && self.success_threshold.is_some_and(|s| s != 1) {
            return Err(SectionError::new(
                "liveness.success_threshold",
                "must be 1 for a liveness probe (Kubernetes refuses another value)",
            ));
        }
        Ok(())
    }

    /// The port probed: its own, else the first declared.
    pub(crate) fn port(&self, ports: &[Port]) -> u16 {
        self.port
            .or_else(|| ports.first().map(|p| p.port))
            .unwrap_or_default()
    }
}

impl EnvSource {
    fn check(&self, field: &str) -> Result<(), SectionError> {
        match (&self.config_map, &self.secret) {
            (Some(name), None) | (None, Some(name)) => {
                let which = if self.config_map.is_some() {
                    "config_map"
                } else {
                    "secret"
                };
                check_subdomain(&format!("{field}.{which}"), name)?;
            }
            _ => {
                return Err(SectionError::new(
                    field,
                    "give config_map or secret (one of them) and key",
                ));
            }
        }
        if !is_config_key(&self.key) {
            return Err(SectionError::new(
                format!("{field}.key"),
                format!(
                    "{:?} is not a valid key: letters, digits, '-', '_' and '.'",
                    self.key
                ),
            ));
        }
        Ok(())
    }
}

/// A ConfigMap or Secret key: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn is_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An environment variable's name: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub(crate) fn check_env_name(field: &str, name: &str) -> Result<(), SectionError> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '_' | '.'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(SectionError::new(
            field,
            format!(
                "{name:?} is not a valid variable name: letters, digits, '-', '_' and '.', not starting with a digit"
            ),
        ))
    }
}

/// A label or annotation key: an optional DNS-subdomain prefix and `/`, then a name
/// of at most 63 letters, digits, '-', '_' and '.', starting and ending with a
/// letter or digit.
fn check_key(field: &str, key: &str) -> Result<(), SectionError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_subdomain(field, prefix).map_err(|_| {
            SectionError::new(
                field,
                format!("{key:?}: the prefix before '/' is not a valid DNS subdomain"),
            )
        })?;
    }
    if name.is_empty() || !is_label_value(name) {
        return Err(SectionError::new(
            field,
            format!(
                "{key:?} is not a valid key: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional \"prefix/\""
            ),
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 letters, digits, '-', '_' and '.', starting
/// and ending with a letter or digit.
fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && value
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && value
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric()))
}

/// An RFC 1035 label: what Kubernetes accepts for a Service name.
fn is_service_name(name: &str) -> bool {
    name.len() <= 63
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks what the settings name after app `app` and the Deployment: the
/// [`APP_LABEL`] value, the Deployment's default name, the Services' names (the
/// Deployment's, and for blue-green `<deployment>-preview`), and the config maps'
/// [`CONFIG_MAP_LABEL`](crate::CONFIG_MAP_LABEL) values.
pub(crate) fn check_names(target: &crate::KubernetesTarget, app: &str) -> Result<(), SectionError> {
    if !is_label_value(app) {
        return Err(SectionError::new(
            "",
            format!(
                "the app's name {app:?} is the value of label {APP_LABEL} on what shipflow creates, which must be at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit; rename the app"
            ),
        ));
    }
    let (name, whose) = match &target.deployment {
        Some(d) => (d.as_str(), String::new()),
        None => (app, format!(" (not given: the app's name {app:?})")),
    };
    if target.deployment.is_none() && check_subdomain("deployment", app).is_err() {
        return Err(SectionError::new(
            "deployment",
            format!(
                "not given, so the Deployment is named like the app, and {app:?} is not a valid Deployment name; set deployment to lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            ),
        ));
    }
    let blue_green = target.strategy == Some(Strategy::BlueGreen);
    let exposed = blue_green || target.ports.iter().any(|p| p.service_port.is_some());
    if exposed && !is_service_name(name) {
        return Err(SectionError::new(
            "deployment",
            format!(
                "{name:?}{whose} also names the Service of the exposed ports, and a Service name is at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit (no '.'); set deployment to such a name"
            ),
        ));
    }
    if blue_green && name.len() > 63 - "-preview".len() {
        return Err(SectionError::new(
            "deployment",
            format!(
                "{name:?}{whose} is too long for strategy \"blue-green\": its preview Service <deployment>-preview needs at most 63 characters, so set deployment to at most 55"
            ),
        ));
    }
    for (i, map) in target.config_maps.iter().enumerate() {
        if !is_label_value(&map.name) {
            return Err(SectionError::new(
                format!("config_maps[{i}].name"),
                format!(
                    "{:?} is also the value of label {} on its ConfigMaps, which is at most 63 characters; give a shorter name",
                    map.name,
                    crate::CONFIG_MAP_LABEL
                ),
            ));
        }
    }
    Ok(())
}

/// Checks labels (keys and values) and that none is the selector's.
pub(crate) fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), SectionError> {
    for (key, value) in labels {
        let field = format!("labels.{key}");
        check_key(&field, key)?;
        if key == APP_LABEL || key == COLOUR_LABEL {
            return Err(SectionError::new(
                field,
                format!("{key} is one of shipflow's selector labels"),
            ));
        }
        if !is_label_value(value) {
            return Err(SectionError::new(
                field,
                format!(
                    "{value:?} is not a valid label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks annotation keys, and that the values stay within Kubernetes' 256 KiB.
pub(crate) fn check_annotations(
    annotations: &BTreeMap<String, String>,
) -> Result<(), SectionError> {
    let mut total = 0;
    for (key, value) in annotations {
        check_key(&format!("annotations.{key}"), key)?;
        total += key.len() + value.len();
    }
    if total > 256 * 1024 {
        return Err(SectionError::new(
            "annotations",
            "the annotations are longer than Kubernetes' 256 KiB",
        ));
    }
    Ok(())
}

/// Checks env, env_from, ports, probes, strategy and config maps together.
pub(crate) fn check_workload(
    target: &mut crate::KubernetesTarget,
    ctx: &SectionContext<'_>,
) -> Result<(), SectionError> {
    if let Some(replicas) = target.replicas
        && replicas > i32::MAX as u32
    {
        return Err(SectionError::new("replicas", "is too large"));
    }
    if let Some(resources) = &target.resources {
        resources.check()?;
    }
    for name in target.env.keys() {
        check_env_name(&format!("env.{name}"), name)?;
    }
    for (name, source) in &target.env_from {
        let field = format!("env_from.{name}");
        check_env_name(&field, name)?;
        if target.env.contains_key(name) {
            return Err(SectionError::new(field, "is also set in env"));
        }
        source.check(&field)?;
    }
    for (i, port) in target.ports.iter().enumerate() {
        port.check(i)?;
        if target.ports[..i]
            .iter()
            .any(|p| p.port == port.port && p.protocol() == port.protocol())
        {
            return Err(SectionError::new(
                format!("ports[{i}].port"),
                format!("{} is declared twice", port.port),
            ));
        }
        if let Some(name) = &port.name
            && target.ports[..i]
                .iter()
                .any(|p| p.name.as_ref() == Some(name))
        {
            return Err(SectionError::new(
                format!("ports[{i}].name"),
                format!("{name:?} names another port too; give each port its own name"),
            ));
        }
        if port.service_port.is_some()
            && target.ports[..i]
                .iter()
                .any(|p| p.service_port == port.service_port && p.protocol() == port.protocol())
        {
            return Err(SectionError::new(
                format!("ports[{i}].service_port"),
                "is exposed twice",
            ));
        }
    }
    let exposed = target
        .ports
        .iter()
        .filter(|p| p.service_port.is_some())
        .count();
    if exposed > 1
        && target
            .ports
            .iter()
            .any(|p| p.service_port.is_some() && p.name.is_none())
    {
        return Err(SectionError::new(
            "ports",
            "a Service with several ports needs every exposed port named",
        ));
    }
    if let Some(p) = &target.readiness {
        p.check("readiness", &target.ports)?;
    }
    if let Some(p) = &target.liveness {
        p.check("liveness", &target.ports)?;
    }
    let rolling_settings = target.max_surge.is_some() || target.max_unavailable.is_some();
    match target.strategy {
        Some(Strategy::Recreate | Strategy::BlueGreen) if rolling_settings => {
            return Err(SectionError::new(
                "strategy",
                "max_surge and max_unavailable are for strategy \"rolling\"",
            ));
        }
        Some(Strategy::BlueGreen) => {
            if target.replicas == Some(0) {
                return Err(SectionError::new(
                    "replicas",
                    "strategy \"blue-green\" needs at least one replica to switch to",
                ));
            }
            if !target.ports.iter().any(|p| p.service_port.is_some()) {
                return Err(SectionError::new(
                    "ports",
                    "strategy \"blue-green\" needs a port with a service_port: its active and preview Services expose it",
                ));
            }
            target.blue_green.get_or_insert_default().check()?;
        }
        _ if target.blue_green.is_some() => {
            return Err(SectionError::new(
                "blue_green",
                "is for strategy \"blue-green\"",
            ));
        }
        _ => {}
    }
    if let Some(v) = &target.max_surge {
        v.check("max_surge")?;
    }
    if let Some(v) = &target.max_unavailable {
        v.check("max_unavailable")?;
    }
    if target.max_surge.as_ref().is_some_and(IntOrPercent::is_zero)
        && target
            .max_unavailable
            .as_ref()
            .is_some_and(IntOrPercent::is_zero)
    {
        return Err(SectionError::new(
            "max_unavailable",
            "max_surge and max_unavailable cannot both be 0: the rollout could never move",
        ));
    }
    check_labels(&target.labels)?;
    check_annotations(&target.annotations)?;
    if let Some(secret) = &target.image_pull_secret {
        check_subdomain("image_pull_secret", secret)?;
    }
    for i in 0..target.config_maps.len() {
        let field = format!("config_maps[{i}]");
        let name = target.config_maps[i].name.clone();
        // `<name>-<10 hex digits>` must stay a valid name.
        check_subdomain(&format!("{field}.name"), &name)?;
        if name.len() > 253 - 11 {
            return Err(SectionError::new(format!("{field}.name"), "is too long"));
        }
        if target.config_maps[..i].iter().any(|c| c.name == name) {
            return Err(SectionError::new(
                format!("{field}.name"),
                format!("{name:?} is declared twice"),
            ));
        }
        let file = ctx.repo_path(
            &format!("{field}.env_file"),
            &target.config_maps[i].env_file,
        )?;
        target.config_maps[i].path = ctx.root().join(file);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_what_kubernetes_parses() {
        for ok in [
            "1", "0.5", "250m", "128Mi", "1Gi", "2Ei", "1k", "1M", "1e3", "1E-2", "1.5G", ".5",
        ] {
            assert!(check_quantity("q", ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "lots", "-1", "1mi", "1KB", "1.2.3", "Mi", "1e", "1 Gi", "1Gi ",
        ] {
            assert!(check_quantity("q", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentages_and_counts() {
        assert!(IntOrPercent::Percent("25%".into()).check("f").is_ok());
        assert!(IntOrPercent::Percent("0%".into()).is_zero());
        assert!(IntOrPercent::Percent("00%".into()).is_zero());
        assert!(!IntOrPercent::Percent("10%".into()).is_zero());
        assert!(IntOrPercent::Percent("101%".into()).check("f").is_err());
        assert!(IntOrPercent::Percent("25".into()).check("f").is_err());
        assert!(IntOrPercent::Int(0).is_zero());
    }

    #[test]
    fn label_keys_take_a_prefix() {
        assert!(check_key("k", "app.kubernetes.io/name").is_ok());
        assert!(check_key("k", "team").is_ok());
        assert!(check_key("k", "Bad_Prefix/x").is_err());
        assert!(check_key("k", "x/").is_err());
        assert!(check_key("k", "-x").is_err());
        assert!(is_label_value(""));
        assert!(!is_label_value(&"a".repeat(64)));
    }
}
