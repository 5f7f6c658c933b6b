//! The build Job: its name (from what decides the image) and its spec, restricted
//! as the Pod Security Standard's "restricted" profile asks.

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::BuildJobs;

/// The label every build Job and its pods carry: the app they build.
pub const BUILD_APP_LABEL: &str = "shipflow.dev/build-app";
/// The annotation that keeps a finished Job's result, the image digest.
pub const BUILD_DIGEST_ANNOTATION: &str = "shipflow.dev/digest";
/// The builder container's name.
pub(crate) const CONTAINER: &str = "build";
/// Where the builder works: an `emptyDir`, the only writable path.
const WORKDIR: &str = "/workspace";
/// The user and group the builder runs as (not root).
const BUILDER_UID: i64 = 65532;

/// What one build is: everything that decides its image.
#[derive(Debug, Clone)]
pub(crate) struct BuildSpec<'a> {
    pub(crate) app: &'a str,
    /// The context, pinned, as the cluster reaches it.
    pub(crate) context: String,
    /// The image repository, as the cluster reaches it.
    pub(crate) target: String,
    /// The build request as JSON (without the local root).
    pub(crate) request: String,
    /// The app as resolved (`shipflow_oci::RemoteApp`) as JSON.
    pub(crate) app_spec: String,
}

impl BuildSpec<'_> {
    /// The Job's name: `shipflow-build-<app>-<hash>`, where the hash covers the app,
    /// the context's digest, the builder, the target and the request, so the same
    /// inputs always name the same Job and anything else another.
    pub(crate) fn job_name(&self, settings: &BuildJobs) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.app,
            &self.context,
            &settings.builder,
            &self.target,
            &self.request,
            &self.app_spec,
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let hash: String = hash
            .finalize()
            .iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut app: String = self
            .app
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        // 63 characters in all: "shipflow-build-" (15) + app + "-" + 10.
        app.truncate(63 - 15 - 1 - hash.len());
        let app = app.trim_matches('-');
        format!("shipflow-build-{app}-{hash}")
    }

    /// The Job.
    pub(crate) fn job(&self, name: &str, settings: &BuildJobs) -> Value {
        let labels = json!({
            "app.kubernetes.io/managed-by": "shipflow",
            "app.kubernetes.io/component": "build",
            BUILD_APP_LABEL: label_value(self.app),
        });
        let mut args = vec![
            "build-context".to_owned(),
            "--context".into(),
            self.context.clone(),
            "--app".into(),
            self.app.to_owned(),
            "--target".into(),
            self.target.clone(),
            "--workdir".into(),
            format!("{WORKDIR}/build"),
        ];
        if settings.insecure_registry {
            args.push("--insecure-registry".into());
        }
        let mut env = vec![
            json!({"name": "SHIPFLOW_BUILD_REQUEST", "value": self.request}),
            json!({"name": "SHIPFLOW_BUILD_APP", "value": self.app_spec}),
            json!({"name": "HOME", "value": WORKDIR}),
            json!({"name": "RUST_LOG", "value": "info"}),
        ];
        let mut mounts = vec![json!({"name": "workspace", "mountPath": WORKDIR})];
        let mut volumes = vec![json!({"name": "workspace", "emptyDir": {}})];
        let mut pod = json!({
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": BUILDER_UID,
                "runAsGroup": BUILDER_UID,
                "fsGroup": BUILDER_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        });
        if let Some(secret) = &settings.registry_secret {
            env.push(json!({"name": "DOCKER_CONFIG", "value": "/etc/shipflow/registry"}));
            mounts.push(
                json!({"name": "registry", "mountPath": "/etc/shipflow/registry", "readOnly": true}),
            );
            volumes.push(json!({"name": "registry", "secret": {"secretName": secret,
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}));
            pod["imagePullSecrets"] = json!([{"name": secret}]);
        }
        if !settings.node_selector.is_empty() {
            pod["nodeSelector"] = json!(settings.node_selector);
        }
        if let Some(account) = &settings.service_account {
            pod["serviceAccountName"] = account.as_str().into();
        }
        let mut container = json!({
            "name": CONTAINER,
            "image": settings.builder,
            "args": args,
            "env": env,
            "volumeMounts": mounts,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"]},
            },
        });
        if let Some(resources) = resources(settings) {
            container["resources"] = resources;
        }
        pod["containers"] = json!([container]);
        pod["volumes"] = json!(volumes);
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": settings.namespace,
                "labels": labels,
                "annotations": {
                    "shipflow.dev/context": self.context,
                    "shipflow.dev/target": self.target,
                },
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": settings.deadline_seconds,
                "ttlSecondsAfterFinished": settings.ttl_seconds,
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        })
    }
}

fn resources(settings: &BuildJobs) -> Option<Value> {
    let mut out = serde_json::Map::new();
    for (key, q) in [
        ("requests", &settings.resources.requests),
        ("limits", &settings.resources.limits),
    ] {
        let mut m = serde_json::Map::new();
        if let Some(cpu) = &q.cpu {
            m.insert("cpu".into(), cpu.as_str().into());
        }
        if let Some(memory) = &q.memory {
            m.insert("memory".into(), memory.as_str().into());
        }
        if !m.is_empty() {
            out.insert(key.into(), Value::Object(m));
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// `app` as a label value: 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(app: &str) -> String {
    let mut v: String = app
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while v.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.pop();
    }
    v.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(app: &str) -> BuildSpec<'_> {
        BuildSpec {
            app,
            context: "r.local/ctx@sha256:aa".into(),
            target: "r.local/app".into(),
            request: "{}".into(),
            app_spec: "{}".into(),
        }
    }

    #[test]
    fn a_job_name_follows_the_inputs_and_stays_a_dns_label() {
        let settings = BuildJobs::new("r.local/shipflow@sha256:bb");
        let a = spec("api").job_name(&settings);
        assert_eq!(a, spec("api").job_name(&settings));
        let mut other = spec("api");
        other.context = "r.local/ctx@sha256:cc".into();
        assert_ne!(a, other.job_name(&settings));
        let long = spec("A_very_long_app_name_that_goes_on_and_on_and_on_and_on_and_on");
        let name = long.job_name(&settings);
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{name}"
        );
    }

    #[test]
    fn the_pod_meets_the_restricted_profile() {
        let settings = BuildJobs::new("r.local/shipflow@sha256:bb");
        let job = spec("api").job("j", &settings);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(c["allowPrivilegeEscalation"], false);
        assert_eq!(c["capabilities"]["drop"], json!(["ALL"]));
        assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
        assert!(
            pod["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|v| v.get("hostPath").is_none())
        );
    }
}
