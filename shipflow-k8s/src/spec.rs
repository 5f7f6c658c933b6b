//! `deploy.kubernetes`: this crate's section of `shipflow.toml` (see
//! [`KubernetesTarget`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shipflow_core::{ConfigSection, Schema, SectionContext, SectionError};

use crate::workload::{
    BlueGreen, ConfigMapFile, EnvSource, IntOrPercent, Port, Probe, Resources, Strategy,
    check_names, check_workload,
};

/// The deploy target [`KubernetesTarget`] is read for.
pub const KUBERNETES_TARGET: &str = "kubernetes";
/// The `[workspace]` key of the default namespace.
pub const NAMESPACE_KEY: &str = "namespace";
/// The `[workspace]` key (also `[environments.<name>]`) of the clusters every app is
/// deployed to at once (see [`Clusters`]).
pub const CLUSTERS_KEY: &str = "clusters";

/// The sections this crate reads: `deploy.kubernetes`, `[workspace]`'s `namespace`
/// and `clusters` (which an environment may override), and with the `job-builder`
/// feature `[workspace.build-jobs]`.
pub fn schema() -> Schema {
    let schema = Schema::new()
        .deploy_target::<KubernetesTarget>(KUBERNETES_TARGET)
        .workspace_key::<Namespace>(NAMESPACE_KEY)
        .workspace_key::<Clusters>(CLUSTERS_KEY);
    #[cfg(feature = "job-builder")]
    let schema = schema.workspace_key::<crate::BuildJobs>(crate::BUILD_JOBS_KEY);
    schema
}

/// A Kubernetes Deployment's container, and optionally what the Deployment is made
/// of: `[apps.<app>.deploy.kubernetes]`.
///
/// Where the app runs; with only these keys a deploy patches the image of a
/// Deployment that exists:
///
/// ```toml
/// [workspace]
/// namespace = "prod"                  # the default for apps that name none
/// [apps.api]
/// deploy.kubernetes = { namespace = "prod", deployment = "api", container = "api" }
/// ```
///
/// With any workload setting ([`KubernetesTarget::has_workload`]), the Deployment is
/// created when missing and the settings are applied at every deploy (server-side
/// apply, field manager `shipflow-workload/<app>`), with a Service for the exposed ports:
///
/// ```toml
/// [apps.api.deploy.kubernetes]
/// replicas = 3
/// resources = { requests = { cpu = "250m", memory = "128Mi" }, limits = { memory = "256Mi" } }
/// env = { MODE = "fast" }
/// env_from = { DB_PASSWORD = { secret = "db", key = "password" } }
/// ports = [{ name = "http", port = 8080, service_port = 80 }]
/// readiness = { http = "/ready", period = 5 }
/// liveness = { http = "/healthz", initial_delay = 10 }
/// strategy = "rolling"                # or "recreate", or "blue-green" (below)
/// max_surge = 1
/// max_unavailable = "0%"
/// labels = { team = "shop" }
/// annotations = { "shop.example.com/owner" = "team-shop" }
/// image_pull_secret = "api-pull"
/// config_maps = [{ name = "api-config", env_file = "apps/api/api.env" }]
/// ```
///
/// With `strategy = "blue-green"`, the app runs as two Deployments,
/// `<deployment>-blue` and `<deployment>-green`, behind an active Service (named
/// like the Deployment) and a preview Service (`<deployment>-preview`), which need
/// an exposed port; see [`BlueGreen`] for what a deploy and a rollback do:
///
/// ```toml
/// [apps.api.deploy.kubernetes]
/// replicas = 3
/// ports = [{ name = "http", port = 8080, service_port = 80 }]
/// readiness = { http = "/ready" }
/// strategy = "blue-green"
/// blue_green = { scale_down_delay = 30, post_promotion = "http://api.prod/ready" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct KubernetesTarget {
    /// The namespace; default the deployer's, then `[workspace] namespace`, then
    /// `default`.
    pub namespace: Option<String>,
    /// The Deployment; default the app's name.
    pub deployment: Option<String>,
    /// The container in it; default the app's name.
    pub container: Option<String>,
    /// The number of pods. With this or any setting below, shipflow creates the
    /// Deployment when it is missing, and applies these settings at every deploy
    /// (server-side apply, field manager `shipflow-workload/<app>`); without any, it only
    /// patches the image of a Deployment that exists. Not given, a new Deployment
    /// gets Kubernetes' default (1) and the count is left to others (an autoscaler,
    /// `kubectl scale`); removing it from the settings keeps the count there is.
    pub replicas: Option<u32>,
    /// CPU and memory requests and limits.
    pub resources: Option<Resources>,
    /// Environment variables with literal values.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variables taken from a key of a ConfigMap or Secret.
    #[serde(default)]
    pub env_from: BTreeMap<String, EnvSource>,
    /// The container's ports; those with a `service_port` are exposed by a
    /// Service named like the Deployment.
    #[serde(default)]
    pub ports: Vec<Port>,
    /// The readiness probe.
    pub readiness: Option<Probe>,
    /// The liveness probe.
    pub liveness: Option<Probe>,
    /// `rolling` (Kubernetes' default), `recreate` or `blue-green`.
    pub strategy: Option<Strategy>,
    /// The settings of strategy `blue-green`.
    pub blue_green: Option<BlueGreen>,
    /// How many pods above the replicas a rolling update may add.
    pub max_surge: Option<IntOrPercent>,
    /// How many pods below the replicas a rolling update may go.
    pub max_unavailable: Option<IntOrPercent>,
    /// Labels of the Deployment, its pods and the Service (never in the selector).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the Deployment and its pods.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// A Secret of this name, of type `kubernetes.io/dockerconfigjson`, written
    /// from the deployer's registry credentials at each deploy and named in the
    /// pods' `imagePullSecrets`.
    pub image_pull_secret: Option<String>,
    /// ConfigMaps generated from env files, hash-named, given to the container as
    /// environment and rolled with the app.
    #[serde(default)]
    pub config_maps: Vec<ConfigMapFile>,
    /// `[workspace] namespace`, filled in at load.
    #[serde(skip)]
    pub(crate) workspace_namespace: Option<String>,
}

impl ConfigSection for KubernetesTarget {
    fn validate(&mut self, ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        if let Some(namespace) = &self.namespace {
            check_name("namespace", namespace, 63)?;
        }
        if let Some(deployment) = &self.deployment {
            check_subdomain("deployment", deployment)?;
        }
        if let Some(container) = &self.container {
            check_name("container", container, 63)?;
        }
        check_workload(self, ctx)?;
        if let Some(app) = ctx.app()
            && self.has_workload()
        {
            check_names(self, app)?;
        }
        self.workspace_namespace = ctx
            .workspace_section::<Namespace>(NAMESPACE_KEY)?
            .map(|n| n.0.clone());
        Ok(())
    }
}

impl KubernetesTarget {
    /// Whether any workload setting is given: then the Deployment is created or
    /// updated from them, not only patched.
    pub fn has_workload(&self) -> bool {
        self.replicas.is_some()
            || self.resources.is_some()
            || !self.env.is_empty()
            || !self.env_from.is_empty()
            || !self.ports.is_empty()
            || self.readiness.is_some()
            || self.liveness.is_some()
            || self.strategy.is_some()
            || self.blue_green.is_some()
            || self.max_surge.is_some()
            || self.max_unavailable.is_some()
            || !self.labels.is_empty()
            || !self.annotations.is_empty()
            || self.image_pull_secret.is_some()
            || !self.config_maps.is_empty()
    }
}

/// A namespace name (`[workspace] namespace`), checked to be one Kubernetes accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Namespace(pub String);

impl ConfigSection for Namespace {
    fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        check_name("", &self.0, 63)
    }
}

/// `clusters`: the Kubernetes clusters one run deploys every app to, at once (a
/// [`MultiClusterDeployer`](crate::MultiClusterDeployer)), in `[workspace]` or, more
/// often, per environment. An entry is a kubeconfig context's name, or a table
/// naming the cluster (`name`, how reports call it), its kubeconfig `context`
/// (default: the name) and the `namespace` of apps whose `deploy.kubernetes` names
/// none (default: the workspace's, as for one cluster). An environment's list
/// replaces the workspace's.
///
/// ```toml
/// [environments.production]
/// tags = ["v*"]
/// namespace = "prod"
/// clusters = [
///   "eu-west",                                                 # the context eu-west
///   { name = "us-east", context = "gke_acme_us-east1_prod", namespace = "prod-us" },
/// ]
/// ```
///
/// Loading refuses an empty list, a name given twice, unknown keys and names
/// Kubernetes or kubeconfig would not take, naming the environment and the entry
/// (`environments.production.clusters[1].context: ...`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Clusters(pub Vec<ClusterSpec>);

impl Clusters {
    /// The clusters, in the order listed.
    pub fn iter(&self) -> std::slice::Iter<'_, ClusterSpec> {
        self.0.iter()
    }
}

/// One cluster of [`Clusters`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClusterSpec {
    /// How reports and messages call the cluster.
    pub name: String,
    /// The kubeconfig context to reach it with; default the name.
    pub context: Option<String>,
    /// The namespace of apps whose `deploy.kubernetes` names none, in this cluster.
    pub namespace: Option<String>,
}

impl ClusterSpec {
    /// The cluster `name`, reached through the kubeconfig context of that name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            context: None,
            namespace: None,
        }
    }

    /// Reached through kubeconfig context `context`.
    pub fn with_context(mut self, context: Option<String>) -> Self {
        self.context = context;
        self
    }

    /// Apps that name no namespace go to `namespace` in this cluster.
    pub fn with_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// The kubeconfig context: the one given, else the name.
    pub fn context(&self) -> &str {
        self.context.as_deref().unwrap_or(&self.name)
    }
}

/// The table form of a [`ClusterSpec`], as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterTable {
    name: String,
    context: Option<String>,
    namespace: Option<String>,
}

impl<'de> Deserialize<'de> for ClusterSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = ClusterSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a kubeconfig context's name, or a table { name, context, namespace }")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<ClusterSpec, E> {
                Ok(ClusterSpec::new(name))
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<ClusterSpec, M::Error> {
                let t =
                    ClusterTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ClusterSpec {
                    name: t.name,
                    context: t.context,
                    namespace: t.namespace,
                })
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

impl ConfigSection for Clusters {
    fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        if self.0.is_empty() {
            return Err(SectionError::new(
                "",
                "lists no cluster: name at least one kubeconfig context, or remove the key to deploy to one cluster",
            ));
        }
        for (i, cluster) in self.0.iter().enumerate() {
            check_context_name(&format!("[{i}].name"), &cluster.name)?;
            if let Some(context) = &cluster.context {
                check_context_name(&format!("[{i}].context"), context)?;
            }
            if let Some(namespace) = &cluster.namespace {
                check_name(&format!("[{i}].namespace"), namespace, 63)?;
            }
            if let Some(first) = self.0[..i].iter().position(|c| c.name == cluster.name) {
                return Err(SectionError::new(
                    format!("[{i}].name"),
                    format!(
                        "cluster {:?} is listed twice (also at [{first}]): give each entry its own name",
                        cluster.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A cluster's or kubeconfig context's name: printable, no spaces, at most 253
/// characters (contexts are often `gke_<project>_<zone>_<name>` or an EKS ARN).
fn check_context_name(field: &str, name: &str) -> Result<(), SectionError> {
    let valid = !name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_graphic());
    if valid {
        Ok(())
    } else {
        Err(SectionError::new(
            field,
            format!("{name:?} is not a usable name: 1 to 253 visible ASCII characters, no spaces"),
        ))
    }
}

/// An RFC 1123 label: what Kubernetes accepts for namespace and container names.
pub(crate) fn check_name(field: &str, name: &str, max: usize) -> Result<(), SectionError> {
    let valid = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(SectionError::new(
            field,
            format!(
                "{name:?} is not a valid name: at most {max} lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// An RFC 1123 subdomain: what Kubernetes accepts for Deployment names.
pub(crate) fn check_subdomain(field: &str, name: &str) -> Result<(), SectionError> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| check_name(field, label, 63).is_ok());
    if valid {
        Ok(())
    } else {
        Err(SectionError::new(
            field,
            format!(
                "{name:?} is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shipflow_core::Workspace;

    fn load(extra: &str, target: &str) -> Result<Workspace, String> {
        let toml = format!(
            "[workspace]\nregistry = \"r.io\"\n{extra}\n[apps.api]\ndeploy.kubernetes = {{ {target} }}\n"
        );
        Workspace::loader()
            .schema(schema())
            .from_toml(&toml, ".")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn bad_names_are_refused_at_load() {
        let err = load("", "namespace = \"Bad_NS!!\"").expect_err("refused");
        assert!(
            err.starts_with(
                "apps.api.deploy.kubernetes.namespace: \"Bad_NS!!\" is not a valid name"
            ),
            "{err}"
        );
        let err = load("namespace = \"-x\"", "").expect_err("refused");
        assert!(
            err.starts_with("workspace.namespace: \"-x\" is not a valid name"),
            "{err}"
        );
        let err = load("", "deployment = \"api..v2\"").expect_err("refused");
        assert!(
            err.starts_with("apps.api.deploy.kubernetes.deployment:"),
            "{err}"
        );
    }

    #[test]
    fn the_workspace_namespace_is_the_apps_default() {
        let ws = load("namespace = \"prod\"", "container = \"web\"").expect("valid");
        let target = ws
            .app("api")
            .expect("api")
            .deploy_target::<KubernetesTarget>(KUBERNETES_TARGET)
            .expect("valid")
            .expect("present");
        assert_eq!(target.workspace_namespace.as_deref(), Some("prod"));
        assert_eq!(target.namespace, None);
        assert_eq!(target.container.as_deref(), Some("web"));
    }
}
