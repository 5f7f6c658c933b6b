//! Deploying an app whose `deploy.kubernetes` has workload settings: its generated
//! ConfigMaps, its image pull Secret, its Deployment and the Service for its exposed
//! ports are written by server-side apply (field manager `shipflow-workload/<app>`)
//! from the settings (see [`crate::ownership`] for who owns what), then the
//! Deployment's rollout is watched as an image patch's is.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Map, Value, json};
use shipflow_core::{BoxError, Context, DeployMeta, ImageRef, Rollout};

use crate::compat::Field;
use crate::configmap::rewrite_refs;
use crate::deployer::{
    CHANGE_CAUSE_ANNOTATION, FINGERPRINT_ANNOTATION, GIT_SHA_ANNOTATION, Target,
};
use crate::lock::LockGuard;
use crate::ownership::{REPLICAS_MANAGER, field_manager, keep_replicas};
use crate::retry::Failure;
use crate::spec::KubernetesTarget;
use crate::status::{Expected, Verdict, judge, revision};
use crate::workload::{APP_LABEL, IntOrPercent, Probe, Strategy};
use crate::{CONFIG_MAP_LABEL, EnvConfigMap, KubeDeployer, KubeError};

/// The registry login written into an app's image pull Secret
/// (`deploy.kubernetes.image_pull_secret`). The password never shows in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct PullCredentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for PullCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The `.dockerconfigjson` of a pull Secret for `registry`.
fn docker_config_json(registry: &str, c: &PullCredentials) -> String {
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password));
    json!({"auths": {registry: {"username": c.username, "password": c.password, "auth": auth}}})
        .to_string()
}

/// The selector of the Deployment: the one it has (a selector is immutable), or
/// shipflow's [`APP_LABEL`] for a new one.
fn selector(existing: Option<&Deployment>, app: &str) -> Value {
    existing
        .and_then(|d| d.spec.opt())
        .and_then(|s| serde_json::to_value(&s.selector).ok())
        .filter(|s| s.as_object().is_some_and(|o| !o.is_empty()))
        .unwrap_or_else(|| json!({"matchLabels": {APP_LABEL: app}}))
}

/// The labels the pods need to match `selector`: its `matchLabels`, and for keys
/// that only `matchExpressions` name, the value the running template has.
fn selector_labels(selector: &Value, existing: Option<&Deployment>) -> Map<String, Value> {
    let mut labels = selector["matchLabels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let running = existing
        .and_then(|d| d.spec.opt())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for expr in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(key) = expr["key"].as_str()
            && let Some(value) = running.get(key)
        {
            labels
                .entry(key.to_owned())
                .or_insert_with(|| Value::from(value.clone()));
        }
    }
    labels
}

fn strings(map: &BTreeMap<String, String>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| (k.clone(), Value::from(v.clone())))
        .collect()
}

fn int_or_percent(v: &IntOrPercent) -> Value {
    match v {
        IntOrPercent::Int(n) => json!(n),
        IntOrPercent::Percent(p) => json!(p),
    }
}

fn probe(p: &Probe, s: &KubernetesTarget) -> Value {
    let mut probe = json!({"httpGet": {"path": p.http, "port": p.port(&s.ports)}});
    for (key, value) in [
        ("periodSeconds", p.period),
        ("initialDelaySeconds", p.initial_delay),
        ("timeoutSeconds", p.timeout),
        ("failureThreshold", p.failure_threshold),
        ("successThreshold", p.success_threshold),
    ] {
        if let Some(v) = value {
            probe[key] = json!(v);
        }
    }
    probe
}

/// The app's container, from its settings, running `image`.
fn container(t: &Target, s: &KubernetesTarget, image: &str, maps: &[EnvConfigMap]) -> Value {
    let mut c = json!({"name": t.container, "image": image});
    let mut env: Vec<Value> = s
        .env
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    for (name, source) in &s.env_from {
        let from = match (&source.config_map, &source.secret) {
            (Some(map), _) => json!({"configMapKeyRef": {"name": map, "key": source.key}}),
            (None, secret) => json!({"secretKeyRef": {"name": secret, "key": source.key}}),
        };
        env.push(json!({"name": name, "valueFrom": from}));
    }
    if !env.is_empty() {
        c["env"] = Value::from(env);
    }
    if !maps.is_empty() {
        c["envFrom"] = maps
            .iter()
            .map(|m| json!({"configMapRef": {"name": m.base}}))
            .collect();
    }
    if !s.ports.is_empty() {
        c["ports"] = s
            .ports
            .iter()
            .map(|p| {
                let mut port = json!({"containerPort": p.port, "protocol": p.protocol()});
                if let Some(name) = &p.name {
                    port["name"] = json!(name);
                }
                port
            })
            .collect();
    }
    if let Some(r) = &s.resources {
        let mut resources = Map::new();
        for (key, q) in [("requests", &r.requests), ("limits", &r.limits)] {
            let mut m = Map::new();
            if let Some(cpu) = &q.cpu {
                m.insert("cpu".into(), json!(cpu));
            }
            if let Some(memory) = &q.memory {
                m.insert("memory".into(), json!(memory));
            }
            if !m.is_empty() {
                resources.insert(key.into(), Value::Object(m));
            }
        }
        if !resources.is_empty() {
            c["resources"] = Value::Object(resources);
        }
    }
    if let Some(p) = &s.readiness {
        c["readinessProbe"] = probe(p, s);
    }
    if let Some(p) = &s.liveness {
        c["livenessProbe"] = probe(p, s);
    }
    c
}

/// What an app's settings make of its Deployment.
pub(crate) fn deployment(
    t: &Target,
    s: &KubernetesTarget,
    image: &str,
    meta: &DeployMeta,
    existing: Option<&Deployment>,
    maps: &[EnvConfigMap],
) -> Value {
    let selector = selector(existing, &t.app);
    let mut pod_labels = strings(&s.labels);
    pod_labels.extend(selector_labels(&selector, existing));
    let mut labels = strings(&s.labels);
    labels.insert(APP_LABEL.into(), json!(t.app));
    let mut annotations = strings(&s.annotations);
    annotations.insert(CHANGE_CAUSE_ANNOTATION.into(), json!(meta.change_cause));
    if let Some(f) = &meta.fingerprint {
        annotations.insert(FINGERPRINT_ANNOTATION.into(), json!(f.0));
    }
    if let Some(sha) = &meta.git_sha {
        annotations.insert(GIT_SHA_ANNOTATION.into(), json!(sha));
    }
    let mut template = json!({
        "metadata": {"labels": pod_labels},
        "spec": {"containers": [container(t, s, image, maps)]},
    });
    if !s.annotations.is_empty() {
        template["metadata"]["annotations"] = Value::Object(strings(&s.annotations));
    }
    if let Some(secret) = &s.image_pull_secret {
        template["spec"]["imagePullSecrets"] = json!([{"name": secret}]);
    }
    for map in maps {
        rewrite_refs(&mut template, map, &map.name());
    }
    let mut spec = json!({"selector": selector, "template": template});
    if let Some(replicas) = s.replicas {
        spec["replicas"] = json!(replicas);
    }
    match s.strategy {
        Some(Strategy::Recreate) => spec["strategy"] = json!({"type": "Recreate"}),
        Some(Strategy::Rolling) | None
            if s.strategy.is_some() || s.max_surge.is_some() || s.max_unavailable.is_some() =>
        {
            let mut rolling = Map::new();
            if let Some(v) = &s.max_surge {
                rolling.insert("maxSurge".into(), int_or_percent(v));
            }
            if let Some(v) = &s.max_unavailable {
                rolling.insert("maxUnavailable".into(), int_or_percent(v));
            }
            spec["strategy"] = json!({"type": "RollingUpdate"});
            if !rolling.is_empty() {
                spec["strategy"]["rollingUpdate"] = Value::Object(rolling);
            }
        }
        _ => {}
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": t.deployment, "namespace": t.namespace,
            "labels": labels, "annotations": annotations},
        "spec": spec,
    })
}

/// The Service for the exposed ports, when there are any: named like the
/// Deployment, selecting its pods by the labels of the Deployment's selector.
pub(crate) fn service(
    t: &Target,
    s: &KubernetesTarget,
    name: &str,
    selector: Map<String, Value>,
) -> Option<Value> {
    let ports: Vec<Value> = s
        .ports
        .iter()
        .filter_map(|p| {
            let mut port =
                json!({"port": p.service_port?, "targetPort": p.port, "protocol": p.protocol()});
            if let Some(name) = &p.name {
                port["name"] = json!(name);
            }
            Some(port)
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let mut labels = strings(&s.labels);
    labels.insert(APP_LABEL.into(), json!(t.app));
    Some(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": t.namespace, "labels": labels},
        "spec": {
            "selector": selector,
            "ports": ports,
        },
    }))
}

impl KubeDeployer {
    /// The registry login written into the image pull Secret of apps that ask for
    /// one (`deploy.kubernetes.image_pull_secret`), for their image's registry.
    pub fn pull_credentials(mut self, credentials: PullCredentials) -> Self {
        self.pull_credentials = Some(credentials);
        self
    }

    /// The image pull Secret `name` for `registry`, from the deployer's credentials.
    pub(crate) fn pull_secret(
        &self,
        t: &Target,
        name: &str,
        registry: &str,
    ) -> Result<Value, KubeError> {
        let credentials =
            self.pull_credentials
                .as_ref()
                .ok_or_else(|| KubeError::NoPullCredentials {
                    app: t.app.clone(),
                    workload: t.workload(),
                    secret: name.to_owned(),
                    registry: registry.to_owned(),
                })?;
        let config = docker_config_json(registry, credentials);
        Ok(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": t.namespace},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)},
        }))
    }

    /// Creates the generated ConfigMaps that are not there yet (their name is their
    /// content's hash, so one that is there is right).
    pub(crate) async fn create_config_maps(
        &self,
        t: &Target,
        maps: &[EnvConfigMap],
        ctx: &Context,
    ) -> Result<(), KubeError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &t.namespace);
        let step = "create config map";
        for config in maps {
            let name = config.name();
            let map: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": t.namespace,
                    "labels": {CONFIG_MAP_LABEL: config.base}},
                "data": config.data,
                "immutable": true,
            }))
            .map_err(|e| Failure::Api(kube::Error::SerdeError(e)).about(&t.app, &name, step))?;
            let pp = PostParams::default();
            match self
                .retry
                .run(step, false, ctx.cancellation(), || api.create(&pp, &map))
                .await
            {
                Ok(_) => ctx.message(format!("created configmap {}/{name}", t.namespace)),
                Err(Failure::Api(kube::Error::Api(s))) if s.code == 409 => {}
                Err(e) => {
                    return Err(e.about(
                        &t.app,
                        &format!("configmap {}/{name}", t.namespace),
                        step,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Deploys `image` for an app with workload settings `s`: writes its ConfigMaps,
    /// pull Secret, Service and Deployment, and watches the rollout when the pod
    /// template changed (or one that had not finished).
    pub(crate) async fn deploy_from_config(
        &self,
        t: &Target,
        s: &KubernetesTarget,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
        lock: Option<LockGuard>,
    ) -> Result<Rollout, BoxError> {
        let step = "read deployment";
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &t.namespace);
        let existing = self
            .retry
            .run(step, false, ctx.cancellation(), || {
                api.get_opt(&t.deployment)
            })
            .await
            .map_err(t.failed(step))?;
        if existing
            .as_ref()
            .is_some_and(|d| d.spec.opt().and_then(|s| s.paused) == Some(true))
        {
            return Err(t.paused("deploy").into());
        }
        let maps = s
            .config_maps
            .iter()
            .map(|c| EnvConfigMap::from_env_file(&c.name, &c.path))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = image.to_string();
        let body = deployment(t, s, &wanted, meta, existing.as_ref(), &maps);
        let service = service(
            t,
            s,
            &t.deployment,
            selector_labels(&body["spec"]["selector"], existing.as_ref()),
        );
        let pull_secret = s
            .image_pull_secret
            .as_ref()
            .map(|name| {
                self.pull_secret(t, name, image.registry())
                    .map(|b| (name, b))
            })
            .transpose()?;
        let describe = t.describe();
        if ctx.dry_run() {
            ctx.message(format!(
                "would {} {describe} from its settings, running {wanted}{}",
                if existing.is_some() {
                    "update"
                } else {
                    "create"
                },
                if service.is_some() {
                    ", with its service"
                } else {
                    ""
                }
            ));
            return Ok(Rollout::new(wanted, describe, true));
        }
        t.check_cancelled(ctx, "apply deployment")?;
        if let Some(lock) = &lock {
            lock.check("apply deployment")?;
        }
        self.create_config_maps(t, &maps, ctx).await?;
        if let Some((name, secret)) = &pull_secret {
            self.apply_object(
                t,
                ("v1", "Secret", "secrets"),
                name,
                secret,
                "write image pull secret",
                ctx,
            )
            .await?;
        }
        // The Service first: one another tool manages stops the deploy before the
        // Deployment changes.
        if let Some(service) = &service {
            self.apply_object(
                t,
                ("v1", "Service", "services"),
                &t.deployment,
                service,
                "apply service",
                ctx,
            )
            .await?;
        }
        if let Some(existing) = &existing
            && body["spec"]["strategy"]["type"] == "Recreate"
            && existing
                .spec
                .opt()
                .and_then(|s| s.strategy.as_ref())
                .is_some_and(|s| s.rolling_update.is_some())
        {
            // The API server defaulted rollingUpdate, which no manager owns, so an
            // apply cannot drop it, and Recreate refuses it: as `kubectl patch`
            // does, switch the type and drop it in one merge patch first.
            let step = "switch strategy";
            let patch = json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": null}}});
            let patch = Patch::Merge(&patch);
            let params = PatchParams {
                field_manager: Some(field_manager(&t.app)),
                ..PatchParams::default()
            };
            self.retry
                .run(step, false, ctx.cancellation(), || {
                    api.patch(&t.deployment, &params, &patch)
                })
                .await
                .map_err(t.failed(step))?;
        }
        if let Some(replicas) = keep_replicas(&t.app, s, existing.as_ref()) {
            let step = "keep replicas";
            let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": t.deployment, "namespace": t.namespace},
                "spec": {"replicas": replicas}});
            let params = PatchParams::apply(REPLICAS_MANAGER);
            let patch = Patch::Apply(&body);
            self.retry
                .run(step, false, ctx.cancellation(), || {
                    api.patch(&t.deployment, &params, &patch)
                })
                .await
                .map_err(t.failed(step))?;
        }
        let applied = self.apply_deployment(t, &api, &body, ctx).await?;
        let generation = |d: &Deployment| d.metadata.generation.unwrap_or(0);
        let changed = existing
            .as_ref()
            .is_none_or(|e| generation(e) < generation(&applied));
        let done = if changed {
            ctx.message(format!(
                "{} {describe} from its settings, running {wanted}",
                if existing.is_some() {
                    "updated"
                } else {
                    "created"
                }
            ));
            let expected = Expected::after_write(&applied);
            self.wait_for_rollout(t, applied, expected, "watch rollout", ctx, lock.as_ref())
                .await?
        } else {
            let expected = Expected::current(&applied);
            if judge(&applied, &expected) == Verdict::Complete {
                applied
            } else {
                ctx.message(format!(
                    "{describe} is as configured; waiting for its rollout"
                ));
                self.wait_for_rollout(t, applied, expected, "watch rollout", ctx, lock.as_ref())
                    .await?
            }
        };
        for config in &maps {
            self.prune_config_maps(&t.namespace, config, &config.name(), ctx)
                .await;
        }
        Ok(Rollout::new(wanted, describe, changed).with_revision(revision(&done.metadata)))
    }
}
