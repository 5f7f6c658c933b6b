//! ConfigMaps generated from env files, named by a hash of their content (like
//! kustomize's `configMapGenerator`), and rolled into the Deployments that use them:
//! a config change becomes a new ConfigMap name in the pod template, so the pods roll.

use crate::compat::Field;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use futures_util::future::try_join_all;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use shipflow_core::Context;

use crate::KubeDeployer;
use crate::KubeError;
use crate::deployer::Target;
use crate::retry::Failure;
use crate::status::Expected;

/// The label shipflow puts on the ConfigMaps it generates, with the base name.
pub const CONFIG_MAP_LABEL: &str = "shipflow.dev/config-map";

/// A ConfigMap's content read from an env file; its name is `<base>-<hash>`, where the
/// hash covers the content, so a changed file gives a new name.
///
/// ```
/// use shipflow_k8s::EnvConfigMap;
///
/// let config = EnvConfigMap::parse("api-config", "api.env".as_ref(), "# db\nDB_HOST=db\nMODE=\"fast\"\n")?;
/// assert_eq!(config.data["MODE"], "\"fast\"", "values are literal, as kubectl reads them");
/// assert!(config.name().starts_with("api-config-"));
/// let err = EnvConfigMap::parse("api-config", "api.env".as_ref(), "OK=1\noops\n").expect_err("no =");
/// assert!(err.to_string().contains("api.env line 2"));
/// # Ok::<(), shipflow_k8s::KubeError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvConfigMap {
    /// The name the Deployments refer to, before the hash suffix.
    pub base: String,
    /// The keys and values.
    pub data: BTreeMap<String, String>,
}

/// Where a bare `KEY` line of an env file takes its value from: the variable's
/// value, or `None` when it is not set.
pub type EnvLookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

impl EnvConfigMap {
    /// Reads `path`, an env file in `kubectl create configmap --from-env-file`'s
    /// dialect (see [`parse`](Self::parse)). A line with a bare key (no `=`) is an
    /// error here; [`from_env_file_with_env`](Self::from_env_file_with_env) gives
    /// it its value from an environment, as kubectl does.
    pub fn from_env_file(base: &str, path: &Path) -> Result<Self, KubeError> {
        Self::parse_with_env(base, path, &read_env_file(base, path)?, None)
    }

    /// Reads `path` like [`from_env_file`](Self::from_env_file); a bare `KEY` line
    /// takes its value from `env(KEY)` (empty when `env` has none, as kubectl's
    /// `os.Getenv`). The library never reads the process environment itself: a
    /// program passes `|k| std::env::var(k).ok()` when it wants kubectl's behaviour.
    pub fn from_env_file_with_env(
        base: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, KubeError> {
        Self::parse_with_env(base, path, &read_env_file(base, path)?, Some(&env))
    }

    /// Parses the text of an env file, by kubectl's `--from-env-file` rules:
    /// leading whitespace is dropped; blank lines and lines starting with `#` are
    /// skipped; `KEY=VALUE` splits at the first `=`, and the value is taken
    /// literally (quotes, spaces and further `=` are kept, there is no `export`);
    /// a key has letters, digits, `-`, `_` and `.` and does not start with a digit;
    /// a key set twice is an error; a UTF-8 byte-order mark and CRLF line ends are
    /// accepted. A bare `KEY` line is an error here (see
    /// [`parse_with_env`](Self::parse_with_env)).
    ///
    /// `path` is for error messages, which give a bad line's number and never its
    /// value (a value may be a secret).
    pub fn parse(base: &str, path: &Path, text: &str) -> Result<Self, KubeError> {
        Self::parse_with_env(base, path, text, None)
    }

    /// Parses like [`parse`](Self::parse); with `env`, a bare `KEY` line takes its
    /// value from `env(KEY)`, or is empty when that has none (kubectl's rule).
    pub fn parse_with_env(
        base: &str,
        path: &Path,
        text: &str,
        env: Option<&EnvLookup<'_>>,
    ) -> Result<Self, KubeError> {
        let bad = |line: usize, message: String| KubeError::EnvFile {
            name: base.to_owned(),
            path: PathBuf::from(path),
            line: Some(line),
            message,
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut data = BTreeMap::new();
        let mut first_seen = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let number = i + 1;
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once('=') {
                Some((key, value)) => (key, value.to_owned()),
                None => match env {
                    Some(env) => (line, env(line).unwrap_or_default()),
                    None => {
                        return Err(bad(
                            number,
                            "expected KEY=VALUE (a bare key takes its value from the environment only where the caller gives one)".into(),
                        ));
                    }
                },
            };
            if !is_env_var_name(key) {
                return Err(bad(
                    number,
                    "invalid key: a key has letters, digits, '-', '_' and '.', and does not start with a digit".into(),
                ));
            }
            if let Some(first) = first_seen.insert(key.to_owned(), number) {
                return Err(bad(
                    number,
                    format!("its key is set again (first on line {first})"),
                ));
            }
            data.insert(key.to_owned(), value);
        }
        Ok(Self {
            base: base.to_owned(),
            data,
        })
    }

    /// The content hash: 10 hex digits of the SHA-256 of the base name and data.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.base.as_bytes());
        for (k, v) in &self.data {
            hasher.update([0]);
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update(v.as_bytes());
        }
        hasher.finalize()[..5]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `<base>-<hash>`.
    pub fn name(&self) -> String {
        format!("{}-{}", self.base, self.hash())
    }

    /// Whether a Deployment's reference `name` means this ConfigMap: the base name
    /// itself, or any earlier hashed name of it.
    pub fn refers_to(&self, name: &str) -> bool {
        name == self.base
            || name
                .strip_prefix(&self.base)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|h| h.len() == 10 && h.chars().all(|c| c.is_ascii_hexdigit()))
    }
}

/// What [`KubeDeployer::deploy_config_map`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigRollout {
    /// The ConfigMap's hashed name.
    pub name: String,
    /// Whether it was created now (false: that content was there already).
    pub created: bool,
    /// The Deployments switched to it and rolled, by name.
    pub rolled: Vec<String>,
    /// Earlier versions deleted because nothing uses them any more, by name.
    pub pruned: Vec<String>,
}

/// Calls `visit` with every ConfigMap name a pod template refers to: `envFrom`,
/// `env[].valueFrom.configMapKeyRef` (containers and init containers), and
/// `configMap` and projected volumes.
fn for_each_ref(template: &mut Value, mut visit: impl FnMut(&mut Value)) {
    let spec = &mut template["spec"];
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            for from in c["envFrom"].as_array_mut().into_iter().flatten() {
                if from.get("configMapRef").is_some() {
                    visit(&mut from["configMapRef"]["name"]);
                }
            }
            for env in c["env"].as_array_mut().into_iter().flatten() {
                if env.pointer("/valueFrom/configMapKeyRef").is_some() {
                    visit(&mut env["valueFrom"]["configMapKeyRef"]["name"]);
                }
            }
        }
    }
    for volume in spec["volumes"].as_array_mut().into_iter().flatten() {
        if volume.get("configMap").is_some() {
            visit(&mut volume["configMap"]["name"]);
        }
        for source in volume
            .pointer_mut("/projected/sources")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if source.get("configMap").is_some() {
                visit(&mut source["configMap"]["name"]);
            }
        }
    }
}

/// Rewrites the ConfigMap names in a pod template that mean `config`; returns how many.
pub(crate) fn rewrite_refs(template: &mut Value, config: &EnvConfigMap, to: &str) -> usize {
    let mut changed = 0;
    for_each_ref(template, |v| {
        if let Some(name) = v.as_str()
            && config.refers_to(name)
            && name != to
        {
            *v = Value::from(to);
            changed += 1;
        }
    });
    changed
}

/// Adds the ConfigMap names a pod template refers to to `names`.
fn collect_refs(template: Option<&impl serde::Serialize>, names: &mut BTreeSet<String>) {
    let Some(mut template) = template.and_then(|t| serde_json::to_value(t).ok()) else {
        return;
    };
    for_each_ref(&mut template, |v| {
        if let Some(name) = v.as_str() {
            names.insert(name.to_owned());
        }
    });
}

impl KubeDeployer {
    /// Creates `config` as an immutable ConfigMap `<base>-<hash>` in `namespace` (if
    /// that content is not there yet), points every Deployment in the namespace that
    /// refers to it (by base name or an earlier hashed name, through `envFrom`,
    /// `env[].valueFrom.configMapKeyRef` or a `configMap` / projected volume) at the
    /// new name, and watches their rollouts like an image deploy. An unchanged file
    /// changes nothing. Then deletes the earlier versions that no Deployment or
    /// ReplicaSet (and so no rollback) uses, beyond the newest
    /// [`keep_config_maps`](Self::keep_config_maps); a failure there is reported
    /// through `ctx` as a message, not as the rollout's error.
    pub async fn deploy_config_map(
        &self,
        namespace: &str,
        config: &EnvConfigMap,
        ctx: &Context,
    ) -> Result<ConfigRollout, KubeError> {
        let name = config.name();
        let object = format!("configmap {namespace}/{name}");
        let err = |step: &'static str| {
            let object = object.clone();
            move |e: Failure| e.about(&config.base, &object, step)
        };
        let cancel = ctx.cancellation();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let lp = ListParams::default();
        let listed = self
            .retry
            .run("list deployments", false, cancel, || deployments.list(&lp))
            .await
            .map_err(err("list deployments"))?;
        let mut users = Vec::new();
        for dep in listed.items {
            let mut value = serde_json::to_value(&dep).map_err(|e| KubeError::Request {
                app: config.base.clone(),
                object: object.clone(),
                step: "read deployments",
                source: Box::new(kube::Error::SerdeError(e)),
            })?;
            if rewrite_refs(&mut value["spec"]["template"], config, &name) > 0 {
                users.push(dep);
            }
        }
        if ctx.dry_run() {
            let rolled: Vec<String> = users
                .iter()
                .filter_map(|d| d.metadata.name.clone())
                .collect();
            ctx.message(format!(
                "would create {object} and roll {}",
                if rolled.is_empty() {
                    "nothing".into()
                } else {
                    rolled.join(", ")
                }
            ));
            return Ok(ConfigRollout {
                name,
                created: false,
                rolled,
                pruned: Vec::new(),
            });
        }

        let map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.to_owned()),
                labels: Some(BTreeMap::from([(
                    CONFIG_MAP_LABEL.to_owned(),
                    config.base.clone(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(config.data.clone()),
            immutable: Some(true),
            ..ConfigMap::default()
        };
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let pp = PostParams::default();
        let created = match self
            .retry
            .run("create config map", false, cancel, || {
                maps.create(&pp, &map)
            })
            .await
        {
            Ok(_) => true,
            // The name is the content's hash: what is there is what we want.
            Err(Failure::Api(kube::Error::Api(s))) if s.code == 409 => false,
            Err(e) => return Err(err("create config map")(e)),
        };
        if created {
            ctx.message(format!("created {object}"));
        }

        let mut rolled = Vec::new();
        let mut waits = Vec::new();
        for dep in users {
            let dep_name = dep.metadata.name.clone().unwrap_or_default();
            let t = Target {
                app: dep_name.clone(),
                namespace: namespace.to_owned(),
                deployment: dep_name.clone(),
                container: String::new(),
            };
            let updated = self.point_at(&t, dep, config, &name, ctx).await?;
            ctx.message(format!(
                "rolling deployment {namespace}/{dep_name} to config map {name}"
            ));
            rolled.push(dep_name);
            waits.push(async move {
                let expected = Expected::after_write(&updated);
                self.wait_for_rollout(&t, updated, expected, "watch config rollout", ctx, None)
                    .await
            });
        }
        try_join_all(waits).await?;
        let pruned = self.prune_config_maps(namespace, config, &name, ctx).await;
        Ok(ConfigRollout {
            name,
            created,
            rolled,
            pruned,
        })
    }

    /// Deletes the versions of `config` in `namespace` (ConfigMaps with its
    /// [`CONFIG_MAP_LABEL`]) that no Deployment or ReplicaSet refers to, except
    /// `current` and the newest [`keep_config_maps`](Self::keep_config_maps). Returns
    /// the names deleted; a version whose delete is refused stays (said through
    /// `ctx`), the others still go.
    pub(crate) async fn prune_config_maps(
        &self,
        namespace: &str,
        config: &EnvConfigMap,
        current: &str,
        ctx: &Context,
    ) -> Vec<String> {
        let mut pruned = Vec::new();
        if let Err(Failure::Api(e)) = self
            .prune_unused(namespace, config, current, &mut pruned, ctx)
            .await
        {
            tracing::warn!(config = %config.base, error = %e, "config map clean-up stopped");
            ctx.message(format!(
                "left unused versions of {} in place: {e}",
                config.base
            ));
        }
        for name in &pruned {
            ctx.message(format!("deleted unused configmap {namespace}/{name}"));
        }
        pruned
    }

    async fn prune_unused(
        &self,
        namespace: &str,
        config: &EnvConfigMap,
        current: &str,
        pruned: &mut Vec<String>,
        ctx: &Context,
    ) -> Result<(), Failure> {
        let cancel = ctx.cancellation();
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(self.client.clone(), namespace);
        let labelled = ListParams::default().labels(&format!("{CONFIG_MAP_LABEL}={}", config.base));
        let all = ListParams::default();
        let dp = DeleteParams::default();
        let mut versions = self
            .retry
            .run("list config maps", false, cancel, || maps.list(&labelled))
            .await?
            .items;
        if versions.len() <= self.keep_config_maps {
            return Ok(());
        }
        let mut used = BTreeSet::from([current.to_owned()]);
        for dep in self
            .retry
            .run("list deployments", false, cancel, || deployments.list(&all))
            .await?
        {
            collect_refs(dep.spec.opt().map(|s| &s.template), &mut used);
        }
        for rs in self
            .retry
            .run("list replica sets", false, cancel, || {
                replica_sets.list(&all)
            })
            .await?
        {
            collect_refs(rs.spec.opt().and_then(|s| s.template.as_ref()), &mut used);
        }
        // Newest first: by creation time, then name for a stable order.
        versions.sort_by(|a, b| {
            let key = |m: &ConfigMap| {
                (
                    m.metadata.creation_timestamp.clone(),
                    m.metadata.name.clone(),
                )
            };
            key(b).cmp(&key(a))
        });
        // A refused delete leaves that version, not the others.
        let mut refused = None;
        for map in versions.into_iter().skip(self.keep_config_maps) {
            let Some(name) = map.metadata.name else {
                continue;
            };
            if used.contains(&name) || !config.refers_to(&name) {
                continue;
            }
            match self
                .retry
                .run("delete config map", false, cancel, || {
                    maps.delete(&name, &dp)
                })
                .await
            {
                Ok(_) => pruned.push(name),
                Err(Failure::Api(kube::Error::Api(s))) if s.code == 404 => {}
                Err(Failure::Cancelled) => return Err(Failure::Cancelled),
                Err(e) => {
                    refused.get_or_insert(e);
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Replaces the Deployment with its references rewritten to `to`, guarded by its
    /// resourceVersion; on a conflict, reads it again and retries.
    async fn point_at(
        &self,
        t: &Target,
        mut dep: Deployment,
        config: &EnvConfigMap,
        to: &str,
        ctx: &Context,
    ) -> Result<Deployment, KubeError> {
        let step = "point deployment at config map";
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &t.namespace);
        let serde = |e| t.failed(step)(Failure::Api(kube::Error::SerdeError(e)));
        let mut attempts = self.retry.attempts.max(1);
        loop {
            let mut value = serde_json::to_value(&dep).map_err(serde)?;
            rewrite_refs(&mut value["spec"]["template"], config, to);
            let next: Deployment = serde_json::from_value(value).map_err(serde)?;
            let pp = PostParams::default();
            match self
                .retry
                .run(step, false, ctx.cancellation(), || {
                    api.replace(&t.deployment, &pp, &next)
                })
                .await
            {
                Ok(d) => return Ok(d),
                Err(Failure::Api(kube::Error::Api(s))) if s.code == 409 && attempts > 1 => {
                    attempts -= 1;
                    dep = self.get(t, step, ctx).await?;
                }
                Err(e) => return Err(t.failed(step)(e)),
            }
        }
    }
}

/// The text of the env file at `path`; a line that is not UTF-8 is named by number.
fn read_env_file(base: &str, path: &Path) -> Result<String, KubeError> {
    let bytes = std::fs::read(path).map_err(|e| KubeError::EnvFile {
        name: base.to_owned(),
        path: path.to_owned(),
        line: None,
        message: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        KubeError::EnvFile {
            name: base.to_owned(),
            path: path.to_owned(),
            line: Some(valid.iter().filter(|&&b| b == b'\n').count() + 1),
            message: "invalid UTF-8".into(),
        }
    })
}

/// Kubernetes' rule for an environment variable's name (and so a key of kubectl's
/// env files): `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '_' | '.'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(text: &str) -> Result<EnvConfigMap, KubeError> {
        EnvConfigMap::parse("app-config", Path::new("conf/app.env"), text)
    }

    #[test]
    fn env_files_parse_by_kubectl_rules() {
        let c = config(
            "\u{feff}# comment\n\nA=1\r\n  B = \"two words\" \nC='x=y'\nD=\nexport_E=\"q\"\n",
        );
        assert!(c.is_err(), "'B ' is not a valid key, as in kubectl");
        let c = config("\u{feff}# comment\n\nA=1\r\n  B= \"two words\" \nC='x=y'\nD=\n.e-f_9=#\n")
            .expect("valid");
        assert_eq!(
            c.data,
            BTreeMap::from([
                ("A".into(), "1".into()),
                ("B".into(), " \"two words\" ".into()),
                ("C".into(), "'x=y'".into()),
                ("D".into(), String::new()),
                (".e-f_9".into(), "#".into()),
            ])
        );
    }

    #[test]
    fn a_bare_key_takes_its_value_from_the_given_environment() {
        let env = |k: &str| (k == "FROM_ENV").then(|| "v".to_owned());
        let c = EnvConfigMap::parse_with_env(
            "app-config",
            Path::new("conf/app.env"),
            "FROM_ENV\nUNSET\nA=1\n",
            Some(&env),
        )
        .expect("valid");
        assert_eq!(
            c.data,
            BTreeMap::from([
                ("A".into(), "1".into()),
                ("FROM_ENV".into(), "v".into()),
                ("UNSET".into(), String::new()),
            ])
        );
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, line, says, secret) in [
            ("A=1\nhunter2\n", 2, "expected KEY=VALUE", "hunter2"),
            ("A=1\n\n# c\ns3cr3t tok=2\n", 4, "invalid key", "s3cr3t"),
            (
                "A=1\n9lives=xyzzy\n",
                2,
                "does not start with a digit",
                "xyzzy",
            ),
            (
                "TOKEN=1\nTOKEN=p4ssw0rd\n",
                2,
                "its key is set again (first on line 1)",
                "p4ssw0rd",
            ),
            ("=xyzzy\n", 1, "invalid key", "xyzzy"),
        ] {
            let err = config(text).expect_err("bad line");
            let shown = format!("{err} {err:?}");
            assert!(
                shown.contains(&format!("conf/app.env line {line}: ")) && shown.contains(says),
                "{shown}"
            );
            assert!(
                !shown.contains(secret),
                "the line is never repeated: {shown}"
            );
        }
    }

    #[test]
    fn the_name_changes_with_the_content_only() {
        let a = config("A=1\nB=2\n").expect("valid");
        let b = config("B=2\n# reordered\nA=1\n").expect("valid");
        let c = config("A=1\nB=3\n").expect("valid");
        assert_eq!(a.name(), b.name());
        assert_ne!(a.name(), c.name());
        assert_eq!(a.hash().len(), 10);
        assert!(a.refers_to("app-config"));
        assert!(a.refers_to(&c.name()));
        assert!(!a.refers_to("app-config-other"));
        assert!(!a.refers_to("app-configs"));
    }

    #[test]
    fn references_are_rewritten_everywhere_they_can_be() {
        let c = config("A=1\n").expect("valid");
        let mut template = json!({"spec": {
            "containers": [{"name": "a",
                "envFrom": [{"configMapRef": {"name": "app-config"}}, {"secretRef": {"name": "app-config"}}],
                "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "app-config-0123456789", "key": "A"}}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "other"}}]}],
            "volumes": [{"name": "v", "configMap": {"name": "app-config"}},
                {"name": "p", "projected": {"sources": [{"configMap": {"name": "app-config"}}]}}],
        }});
        assert_eq!(rewrite_refs(&mut template, &c, "app-config-new"), 4);
        assert_eq!(
            template["spec"]["containers"][0]["envFrom"][1]["secretRef"]["name"],
            "app-config"
        );
        assert_eq!(
            template["spec"]["initContainers"][0]["envFrom"][0]["configMapRef"]["name"],
            "other"
        );
        assert_eq!(rewrite_refs(&mut template, &c, "app-config-new"), 0);
    }
}
