//! Applying a directory of manifests with server-side apply (field manager
//! `shipflow`): every `*.yaml` / `*.yml` file, every document in it, of the kinds
//! shipflow knows (no discovery round trips). All files are parsed before anything is
//! applied, so a bad manifest changes nothing.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams};
use serde::Serialize;
use serde_json::Value;
use shipflow_core::Context;

use crate::KubeDeployer;
use crate::KubeError;
use crate::deployer::Target;
use crate::retry::Failure;
use crate::status::Expected;

/// The kinds [`KubeDeployer::apply_dir`] applies: `(apiVersion, kind, plural)`.
pub const APPLY_KINDS: &[(&str, &str, &str)] = &[
    ("apps/v1", "Deployment", "deployments"),
    ("v1", "Service", "services"),
    ("v1", "ConfigMap", "configmaps"),
];

const FIELD_MANAGER: &str = "shipflow";

/// How [`KubeDeployer::apply_dir`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The namespace of objects whose manifest names none.
    pub namespace: String,
    /// Take over fields another field manager owns (`kubectl apply --force-conflicts`).
    pub force: bool,
}

impl Default for ApplyOptions {
    /// Namespace `default`, no force.
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            force: false,
        }
    }
}

/// One object applied from a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// The file.
    pub path: PathBuf,
    /// The 0-based index of the YAML document in the file.
    pub document: usize,
    /// The object's kind, e.g. `Deployment`.
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Whether the apply changed it (created, or a new resourceVersion).
    pub changed: bool,
}

/// A parsed manifest document, ready to apply.
struct Manifest {
    path: PathBuf,
    document: usize,
    resource: ApiResource,
    namespace: String,
    name: String,
    body: Value,
}

/// The manifest files in `dir`, sorted by name.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, KubeError> {
    let unreadable = |e: std::io::Error| KubeError::Manifest {
        path: dir.to_owned(),
        document: 0,
        message: format!("cannot read the directory: {e}"),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses every document of every manifest in `dir`.
fn read_manifests(dir: &Path, options: &ApplyOptions) -> Result<Vec<Manifest>, KubeError> {
    let mut out = Vec::new();
    for path in manifest_files(dir)? {
        let bad = |document: usize, message: String| KubeError::Manifest {
            path: path.clone(),
            document,
            message,
        };
        let mut file = std::fs::File::open(&path).map_err(|e| bad(0, e.to_string()))?;
        // Empty documents (after a trailing `---`, say) yield nothing and are not
        // counted; the parser's limits bound what a hostile file can cost.
        for (document, body) in serde_saphyr::read::<_, Value>(&mut file).enumerate() {
            let body = body.map_err(|e| bad(document, format!("invalid YAML: {e}")))?;
            out.push(manifest(&path, document, body, options).map_err(|m| bad(document, m))?);
        }
    }
    Ok(out)
}

fn manifest(
    path: &Path,
    document: usize,
    mut body: Value,
    options: &ApplyOptions,
) -> Result<Manifest, String> {
    let api_version = body["apiVersion"]
        .as_str()
        .ok_or("no apiVersion")?
        .to_owned();
    let kind = body["kind"].as_str().ok_or("no kind")?.to_owned();
    let Some((_, _, plural)) = APPLY_KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
    else {
        return Err(format!(
            "{kind} ({api_version}) is not supported; shipflow applies {}",
            APPLY_KINDS
                .iter()
                .map(|(v, k, _)| format!("{k} ({v})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let name = body["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{kind} has no metadata.name"))?
        .to_owned();
    let namespace = body["metadata"]["namespace"]
        .as_str()
        .map_or_else(|| options.namespace.clone(), str::to_owned);
    body["metadata"]["namespace"] = Value::from(namespace.clone());
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, &kind), plural);
    Ok(Manifest {
        path: path.to_owned(),
        document,
        resource,
        namespace,
        name,
        body,
    })
}

/// What an apply can change in `object`: everything but its status and the server's
/// bookkeeping, so a controller's status write between the read and the apply does
/// not count as a change.
fn applied_content(object: &DynamicObject) -> (ObjectMeta, Value) {
    let mut meta = object.metadata.clone();
    meta.resource_version = None;
    meta.managed_fields = None;
    let mut data = object.data.clone();
    if let Some(fields) = data.as_object_mut() {
        fields.remove("status");
    }
    (meta, data)
}

impl KubeDeployer {
    /// Applies every manifest in `dir` (files `*.yaml` and `*.yml`, each possibly
    /// several documents) with server-side apply, field manager `shipflow`, in file
    /// order; then watches the rollouts of the Deployments whose spec changed. Only
    /// the kinds in [`APPLY_KINDS`] are accepted; every file is parsed first, so a bad
    /// manifest ([`KubeError::Manifest`], naming the file and the document's index)
    /// applies nothing. Applying what is already there changes nothing.
    pub async fn apply_dir(
        &self,
        dir: &Path,
        options: &ApplyOptions,
        ctx: &Context,
    ) -> Result<Vec<Applied>, KubeError> {
        let manifests = read_manifests(dir, options)?;
        let mut params = PatchParams::apply(FIELD_MANAGER);
        params.force = options.force;
        params.dry_run = ctx.dry_run();
        let mut applied = Vec::new();
        let mut rollouts = Vec::new();
        for m in manifests {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &m.namespace, &m.resource);
            let object = format!("{} {}/{}", m.resource.kind, m.namespace, m.name);
            let failed = |e| match e {
                Failure::Api(e) => KubeError::Apply {
                    path: m.path.clone(),
                    document: m.document,
                    object: object.clone(),
                    source: Box::new(e),
                },
                Failure::Cancelled => Failure::Cancelled.about(&object, &object, "apply"),
            };
            let cancel = ctx.cancellation();
            let before = self
                .retry
                .run("read before apply", false, cancel, || api.get_opt(&m.name))
                .await
                .map_err(failed)?;
            let patch = Patch::Apply(&m.body);
            let after = self
                .retry
                .run("apply", false, cancel, || {
                    api.patch(&m.name, &params, &patch)
                })
                .await
                .map_err(failed)?;
            let changed = before
                .as_ref()
                .is_none_or(|b| applied_content(b) != applied_content(&after));
            if changed {
                ctx.message(format!("applied {object}"));
            }
            let generation = |o: &DynamicObject| o.metadata.generation.unwrap_or(0);
            if m.resource.kind == "Deployment"
                && !ctx.dry_run()
                && before
                    .as_ref()
                    .is_none_or(|b| generation(b) < generation(&after))
            {
                rollouts.push((m.namespace.clone(), m.name.clone(), after));
            }
            applied.push(Applied {
                path: m.path,
                document: m.document,
                kind: m.resource.kind,
                namespace: m.namespace,
                name: m.name,
                changed,
            });
        }
        let waits = rollouts
            .into_iter()
            .map(|(namespace, name, obj)| async move {
                let t = Target {
                    app: name.clone(),
                    namespace,
                    deployment: name,
                    container: String::new(),
                };
                let dep: Deployment = serde_json::to_value(&obj)
                    .and_then(serde_json::from_value)
                    .map_err(|e| {
                        t.failed("read applied deployment")(Failure::Api(kube::Error::SerdeError(
                            e,
                        )))
                    })?;
                let expected = Expected::after_write(&dep);
                self.wait_for_rollout(&t, dep, expected, "watch applied rollout", ctx, None)
                    .await
                    .map(drop)
            });
        futures_util::future::try_join_all(waits).await?;
        Ok(applied)
    }
}
