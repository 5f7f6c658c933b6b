//! What Podman needs to run one container of a pod, read from the pod's spec and the
//! ConfigMaps and Secrets its environment refers to, as the kubelet reads them.

use base64::Engine as _;
use serde_json::Value;

use super::probe::Probe;
use crate::testing::resources::Kind;
use crate::testing::store::{State, str_at};

/// Where a container's termination message goes when its spec does not say.
const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";

/// When an image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullPolicy {
    /// Before every start.
    Always,
    /// When the runtime's storage does not have it.
    IfNotPresent,
    /// Never: a missing image is `ErrImageNeverPull`.
    Never,
}

/// One container of a pod, as Podman runs it.
#[derive(Debug, Clone)]
pub(crate) struct ContainerSpec {
    /// The image reference, as the pod spec writes it.
    pub(crate) image: String,
    /// The entrypoint (`command`), empty for the image's own.
    pub(crate) command: Vec<String>,
    /// The arguments (`args`), empty for the image's own `CMD` when `command` is
    /// empty too.
    pub(crate) args: Vec<String>,
    /// The environment, resolved: literal values, ConfigMap and Secret keys, fields.
    pub(crate) env: Vec<(String, String)>,
    /// `workingDir`.
    pub(crate) working_dir: Option<String>,
    /// The TCP `containerPort`s, published on the pod's address.
    pub(crate) ports: Vec<u16>,
    /// The readiness check.
    pub(crate) probe: Probe,
    /// `terminationMessagePath`.
    pub(crate) termination_path: String,
    /// `imagePullPolicy`.
    pub(crate) pull: PullPolicy,
    /// The pod's `emptyDir` volumes this container mounts: `(volume, mountPath,
    /// readOnly)`. Other kinds of volume are not modelled.
    pub(crate) empty_dirs: Vec<(String, String, bool)>,
    /// The security context, the container's over the pod's.
    pub(crate) security: Security,
}

/// What a security context asks of the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Security {
    /// `runAsUser[:runAsGroup]`.
    pub(crate) user: Option<String>,
    /// `readOnlyRootFilesystem`.
    pub(crate) read_only: bool,
    /// `allowPrivilegeEscalation: false`.
    pub(crate) no_new_privileges: bool,
    /// `capabilities.drop`.
    pub(crate) drop: Vec<String>,
}

impl Security {
    fn of(pod: &Value, container: &Value) -> Self {
        let (own, pods) = (
            &container["securityContext"],
            &pod["spec"]["securityContext"],
        );
        let pick = |field: &str| {
            own.get(field)
                .or_else(|| pods.get(field))
                .and_then(Value::as_i64)
        };
        let user = pick("runAsUser").map(|uid| match pick("runAsGroup") {
            Some(gid) => format!("{uid}:{gid}"),
            None => uid.to_string(),
        });
        Self {
            user,
            read_only: own["readOnlyRootFilesystem"] == true,
            no_new_privileges: own["allowPrivilegeEscalation"] == false,
            drop: own["capabilities"]["drop"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|c| c.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// The `emptyDir` volumes `container` mounts.
fn empty_dirs(pod: &Value, container: &Value) -> Vec<(String, String, bool)> {
    let volumes = pod["spec"]["volumes"].as_array();
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            volumes
                .into_iter()
                .flatten()
                .any(|v| v["name"] == m["name"] && v.get("emptyDir").is_some())
        })
        .map(|m| {
            (
                str_at(m, "/name").to_owned(),
                str_at(m, "/mountPath").to_owned(),
                m["readOnly"] == true,
            )
        })
        .collect()
}

impl ContainerSpec {
    /// The container `container` (a member of the pod spec's `containers` or
    /// `initContainers`) of `pod`, with its environment resolved against `st`. A
    /// reference that cannot be resolved (missing and optional) is left out, as the
    /// kubelet leaves it; missing and required is the kubelet's
    /// `CreateContainerConfigError`, checked before.
    pub(crate) fn new(st: &State, pod: &Value, container: &Value) -> Self {
        let env = environment(st, pod, container);
        let expand_all = |field: &str| -> Vec<String> {
            container[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|s| expand(s, &env))
                .collect()
        };
        let ports = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["protocol"].as_str().is_none_or(|proto| proto == "TCP"))
            .filter_map(|p| p["containerPort"].as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .collect::<Vec<_>>();
        let termination_path = match str_at(container, "/terminationMessagePath") {
            "" => DEFAULT_TERMINATION_PATH.to_owned(),
            path => path.to_owned(),
        };
        let pull = match str_at(container, "/imagePullPolicy") {
            "Always" => PullPolicy::Always,
            "Never" => PullPolicy::Never,
            _ => PullPolicy::IfNotPresent,
        };
        Self {
            image: str_at(container, "/image").to_owned(),
            command: expand_all("command"),
            args: expand_all("args"),
            working_dir: container["workingDir"]
                .as_str()
                .filter(|d| !d.is_empty())
                .map(str::to_owned),
            probe: Probe::of(container, &ports),
            ports,
            termination_path,
            pull,
            env,
            empty_dirs: empty_dirs(pod, container),
            security: Security::of(pod, container),
        }
    }
}

/// The container's environment as the kubelet builds it: `envFrom` sources in order,
/// then `env` (later names win), `$(NAME)` references expanded.
fn environment(st: &State, pod: &Value, container: &Value) -> Vec<(String, String)> {
    let ns = str_at(pod, "/metadata/namespace");
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, name: String, value: String| {
        // A NUL cannot be passed to a process; the API server refuses such names.
        if name.is_empty() || name.contains(['\0', '=']) || value.contains('\0') {
            return;
        }
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    };
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = str_at(from, "/prefix");
        for (field, kind) in [
            ("configMapRef", Kind::ConfigMap),
            ("secretRef", Kind::Secret),
        ] {
            let Some(r) = from.get(field) else { continue };
            let Some(object) = st.get(kind, ns, str_at(r, "/name")) else {
                continue;
            };
            for (key, value) in object["data"].as_object().into_iter().flatten() {
                if let Some(value) = data_value(kind, value) {
                    set(&mut env, format!("{prefix}{key}"), value);
                }
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = str_at(e, "/name").to_owned();
        let value = if let Some(value) = e["value"].as_str() {
            Some(expand(value, &env))
        } else if let Some(from) = e.get("valueFrom") {
            value_from(st, pod, ns, from)
        } else {
            Some(String::new())
        };
        if let Some(value) = value {
            set(&mut env, name, value);
        }
    }
    env
}

/// The value an `env[].valueFrom` names, if it exists.
fn value_from(st: &State, pod: &Value, ns: &str, from: &Value) -> Option<String> {
    for (field, kind) in [
        ("configMapKeyRef", Kind::ConfigMap),
        ("secretKeyRef", Kind::Secret),
    ] {
        if let Some(r) = from.get(field) {
            let object = st.get(kind, ns, str_at(r, "/name"))?;
            return data_value(kind, &object["data"][str_at(r, "/key")]);
        }
    }
    let path = str_at(from, "/fieldRef/fieldPath");
    if path.is_empty() {
        return None;
    }
    if let Some(label) = path
        .strip_prefix("metadata.labels['")
        .and_then(|rest| rest.strip_suffix("']"))
    {
        return pod["metadata"]["labels"][label].as_str().map(str::to_owned);
    }
    let pointer = match path {
        "metadata.name" => "/metadata/name",
        "metadata.namespace" => "/metadata/namespace",
        "metadata.uid" => "/metadata/uid",
        "spec.nodeName" => "/spec/nodeName",
        "spec.serviceAccountName" => "/spec/serviceAccountName",
        "status.podIP" => "/status/podIP",
        "status.hostIP" => "/status/hostIP",
        _ => return None,
    };
    Some(str_at(pod, pointer).to_owned())
}

/// A ConfigMap's value as is, a Secret's base64-decoded.
fn data_value(kind: Kind, value: &Value) -> Option<String> {
    let text = value.as_str()?;
    if kind != Kind::Secret {
        return Some(text.to_owned());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// `text` with each `$(NAME)` of a variable in `env` replaced by its value, `$$` by
/// `$`, and anything else left as written (the kubelet's expansion).
pub(crate) fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after
            .strip_prefix('(')
            .and_then(|inner| inner.split_once(')'))
            && let Some((_, value)) = env.iter().find(|(n, _)| n == name)
        {
            out.push_str(value);
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_known_variables_and_escapes() {
        let env = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$(B) $$(A) $", &env), "$(B) $(A) $");
        assert_eq!(expand("$(A", &env), "$(A");
    }
}
