//! `[workspace.build-jobs]`: how build Jobs run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shipflow_core::{ConfigSection, SectionContext, SectionError};

use crate::Resources;
use crate::spec::check_name;

/// The `[workspace]` key of the build Jobs' settings.
pub const BUILD_JOBS_KEY: &str = "build-jobs";

/// How [`KubeJobBuilder`](crate::KubeJobBuilder) runs builds:
/// `[workspace.build-jobs]`.
///
/// ```toml
/// [workspace.build-jobs]
/// builder = "registry.example.com/tools/shipflow@sha256:…"   # runs `shipflow build-context`
/// namespace = "builds"
/// max_jobs = 8                        # at most 8 build Jobs of one pipeline at once
/// deadline_seconds = 1800             # the Job's activeDeadlineSeconds
/// ttl_seconds = 86400                 # finished Jobs (and their results) kept a day
/// resources = { requests = { cpu = "1", memory = "1Gi" }, limits = { memory = "2Gi" } }
/// node_selector = { "kubernetes.io/arch" = "amd64" }
/// registry_secret = "registry-push"   # a kubernetes.io/dockerconfigjson Secret to push with
/// registry_aliases = { "127.0.0.1:5000" = "registry.internal:5000" }  # as pods reach it
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BuildJobs {
    /// The builder image: shipflow's CLI, whose `build-context` command builds one
    /// native app from a context. Best pinned by digest.
    pub builder: String,
    /// The namespace the Jobs run in; default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The most build Jobs of one pipeline that run at once; default 4.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: usize,
    /// How long a build may run before Kubernetes stops it; default 1800.
    #[serde(default = "default_deadline")]
    pub deadline_seconds: u32,
    /// How long a finished Job (and so its result, for reruns of the same inputs)
    /// is kept; default 86400.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u32,
    /// The builder container's resources.
    #[serde(default)]
    pub resources: Resources,
    /// Which nodes builds may run on.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// The service account of the build pods (none is mounted either way).
    pub service_account: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret the builder pushes (and pulls the
    /// context) with, and pulls the builder image with.
    pub registry_secret: Option<String>,
    /// Registries as the cluster's pods reach them, by the name the pipeline uses:
    /// the context and image references a Job gets are rewritten with these.
    #[serde(default)]
    pub registry_aliases: BTreeMap<String, String>,
    /// Whether the builder may talk plain HTTP to registries not on loopback.
    #[serde(default)]
    pub insecure_registry: bool,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_max_jobs() -> usize {
    4
}

fn default_deadline() -> u32 {
    1800
}

fn default_ttl() -> u32 {
    86_400
}

impl BuildJobs {
    /// Settings that run `builder` with every default.
    pub fn new(builder: impl Into<String>) -> Self {
        Self {
            builder: builder.into(),
            namespace: default_namespace(),
            max_jobs: default_max_jobs(),
            deadline_seconds: default_deadline(),
            ttl_seconds: default_ttl(),
            resources: Resources::default(),
            node_selector: BTreeMap::new(),
            service_account: None,
            registry_secret: None,
            registry_aliases: BTreeMap::new(),
            insecure_registry: false,
        }
    }

    /// The namespace the Jobs run in.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// At most `n` build Jobs at once.
    pub fn max_jobs(mut self, n: usize) -> Self {
        self.max_jobs = n;
        self
    }

    /// The Jobs' deadline and how long finished Jobs are kept, in seconds.
    pub fn timing(mut self, deadline_seconds: u32, ttl_seconds: u32) -> Self {
        self.deadline_seconds = deadline_seconds;
        self.ttl_seconds = ttl_seconds;
        self
    }

    /// `registry` (as the pipeline names it) is `alias` for the cluster's pods.
    pub fn registry_alias(mut self, registry: impl Into<String>, alias: impl Into<String>) -> Self {
        self.registry_aliases.insert(registry.into(), alias.into());
        self
    }

    /// Lets the builder talk plain HTTP to registries not on loopback.
    pub fn insecure_registry(mut self, insecure: bool) -> Self {
        self.insecure_registry = insecure;
        self
    }

    /// The builder container's resources.
    pub fn resources(mut self, resources: Resources) -> Self {
        self.resources = resources;
        self
    }

    /// Checks what the types cannot say.
    pub(crate) fn check(&self) -> Result<(), SectionError> {
        if self.builder.trim().is_empty() || self.builder.contains(char::is_whitespace) {
            return Err(SectionError::new("builder", "must be an image reference"));
        }
        check_name("namespace", &self.namespace, 63)?;
        if self.max_jobs == 0 {
            return Err(SectionError::new("max_jobs", "must be at least 1"));
        }
        if self.deadline_seconds == 0 {
            return Err(SectionError::new("deadline_seconds", "must be at least 1"));
        }
        self.resources.check()?;
        for (name, field) in [
            (&self.service_account, "service_account"),
            (&self.registry_secret, "registry_secret"),
        ] {
            if let Some(name) = name {
                check_name(field, name, 253)?;
            }
        }
        for (from, to) in &self.registry_aliases {
            if from.is_empty() || to.is_empty() || to.contains('/') || from.contains('/') {
                return Err(SectionError::new(
                    "registry_aliases",
                    format!("{from:?} = {to:?}: both sides must be registry hosts (host[:port])"),
                ));
            }
        }
        Ok(())
    }
}

impl ConfigSection for BuildJobs {
    fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        self.check()
    }
}
