//! Who owns what an app's workload settings write, by server-side apply.
//!
//! Everything is applied with the app's own field manager, `shipflow-workload/<app>`
//! ([`field_manager`]). Only the Deployment is applied with `force`: the Service and
//! the pull Secret are not taken from another tool that manages them (a conflict is
//! [`KubeError::Taken`]).
//!
//! Earlier versions applied these objects with field manager `shipflow`, the one
//! of [`KubeDeployer::apply_dir`]. An object whose `shipflow` apply entry owns the
//! [`APP_LABEL`] label was written from the settings: after the first apply with
//! the new manager, `shipflow`'s entry is released (an apply of no fields), so the
//! fields the settings no longer set go as they would have; fields both set stay.

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use shipflow_core::Context;

use crate::compat::Field;
use crate::deployer::Target;
use crate::retry::Failure;
use crate::spec::KubernetesTarget;
use crate::workload::APP_LABEL;
use crate::{KubeDeployer, KubeError};

/// The field manager of what shipflow applies from app `app`'s settings:
/// `shipflow-workload/<app>`. Not [`KubeDeployer::apply_dir`]'s, so that manifests
/// naming the same objects do not take each other's fields away; one per app, so
/// that two apps naming the same Service or pull Secret with other contents
/// conflict instead of overwriting each other.
pub(crate) fn field_manager(app: &str) -> String {
    format!("shipflow-workload/{app}")
}
/// The field manager settings were applied with before they had their own.
const LEGACY_MANAGER: &str = "shipflow";
/// The field manager that keeps `spec.replicas` when `replicas` is dropped from the
/// settings, so that it stays as it is (see [`keep_replicas`]).
pub(crate) const REPLICAS_MANAGER: &str = "shipflow-replicas";

/// Whether `managed` (an object's `metadata.managedFields`) has an apply entry of
/// `manager` owning the field at `path` (`fieldsV1` keys, e.g. `["f:spec", "f:replicas"]`).
fn owns(managed: &Value, manager: &str, path: &[&str]) -> bool {
    managed.as_array().into_iter().flatten().any(|m| {
        m["manager"] == manager
            && m["operation"] == "Apply"
            && path
                .iter()
                .try_fold(&m["fieldsV1"], |at, key| at.get(*key))
                .is_some()
    })
}

/// Whether `object` was applied from an app's settings under [`LEGACY_MANAGER`]:
/// that manager's apply entry owns the [`APP_LABEL`] label.
fn legacy_applied(object: &Value) -> bool {
    let label = format!("f:{APP_LABEL}");
    owns(
        &object["metadata"]["managedFields"],
        LEGACY_MANAGER,
        &["f:metadata", "f:labels", &label],
    )
}

/// Whether the Deployment's `replicas` must be kept by [`REPLICAS_MANAGER`] before
/// an apply without it: the settings give none, and shipflow applied them before.
/// Without that, server-side apply would drop the field and Kubernetes would reset
/// it to 1; with it the count stays as it is, for an autoscaler or
/// `kubectl scale` to change.
pub(crate) fn keep_replicas(
    app: &str,
    s: &KubernetesTarget,
    existing: Option<&Deployment>,
) -> Option<i32> {
    let existing = existing?;
    if s.replicas.is_some() {
        return None;
    }
    let managed = serde_json::to_value(&existing.metadata.managed_fields).ok()?;
    let path = ["f:spec", "f:replicas"];
    (owns(&managed, &field_manager(app), &path) || owns(&managed, LEGACY_MANAGER, &path))
        .then(|| existing.spec.opt().and_then(|s| s.replicas).unwrap_or(1))
}

/// An apply of no fields: releases what `manager` owned of the object `object`.
fn release(object: &Value) -> Value {
    json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": {"name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"]},
    })
}

/// The managers and fields of a 409 apply conflict, from the API server's causes.
fn conflict_of(status: &kube::core::Status) -> (String, String) {
    let causes = status
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or_default();
    let mut managers: Vec<String> = causes
        .iter()
        .filter_map(|c| {
            let rest = c.message.strip_prefix("conflict with \"")?;
            Some(format!("\"{}\"", rest.split('"').next()?))
        })
        .collect();
    managers.sort();
    managers.dedup();
    let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
    if managers.is_empty() {
        managers.push("another field manager".into());
    }
    (managers.join(", "), fields.join(", "))
}

impl KubeDeployer {
    /// Applies `body` (a Service or Secret) with the app's field manager, without
    /// `force`: fields another manager owns are [`KubeError::Taken`]. When the object
    /// was applied under [`LEGACY_MANAGER`] before, that manager's fields are
    /// released afterwards.
    pub(crate) async fn apply_object(
        &self,
        t: &Target,
        (api_version, kind, plural): (&str, &str, &str),
        name: &str,
        body: &Value,
        step: &'static str,
        ctx: &Context,
    ) -> Result<(), KubeError> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let resource = kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk(group, version, kind),
            plural,
        );
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &t.namespace, &resource);
        let params = PatchParams::apply(&field_manager(&t.app));
        let patch = Patch::Apply(body);
        let object = format!("{} {}/{name}", kind.to_lowercase(), t.namespace);
        let applied = match self
            .retry
            .run(step, false, ctx.cancellation(), || {
                api.patch(name, &params, &patch)
            })
            .await
        {
            Ok(applied) => applied,
            Err(Failure::Api(kube::Error::Api(s))) if s.code == 409 => {
                let (managers, fields) = conflict_of(&s);
                return Err(KubeError::Taken {
                    app: t.app.clone(),
                    object,
                    managers,
                    fields,
                    step,
                });
            }
            Err(e) => return Err(e.about(&t.app, &object, step)),
        };
        let applied = serde_json::to_value(&applied).unwrap_or_default();
        if legacy_applied(&applied) {
            let params = PatchParams::apply(LEGACY_MANAGER);
            let body = release(body);
            let patch = Patch::Apply(&body);
            let step = "release old field manager";
            self.retry
                .run(step, false, ctx.cancellation(), || {
                    api.patch(name, &params, &patch)
                })
                .await
                .map_err(|e| e.about(&t.app, &object, step))?;
        }
        Ok(())
    }

    /// Applies `body` to the app's Deployment `t` with the app's field manager,
    /// forced; when it was applied under [`LEGACY_MANAGER`] before, releases that
    /// manager's fields. Returns the Deployment as it is then.
    pub(crate) async fn apply_deployment(
        &self,
        t: &Target,
        api: &Api<Deployment>,
        body: &Value,
        ctx: &Context,
    ) -> Result<Deployment, KubeError> {
        let step = "apply deployment";
        let params = PatchParams::apply(&field_manager(&t.app)).force();
        let patch = Patch::Apply(body);
        let applied = self
            .retry
            .run(step, false, ctx.cancellation(), || {
                api.patch(&t.deployment, &params, &patch)
            })
            .await
            .map_err(t.failed(step))?;
        if !legacy_applied(&serde_json::to_value(&applied).unwrap_or_default()) {
            return Ok(applied);
        }
        let step = "release old field manager";
        let params = PatchParams::apply(LEGACY_MANAGER);
        let body = release(body);
        let patch = Patch::Apply(&body);
        self.retry
            .run(step, false, ctx.cancellation(), || {
                api.patch(&t.deployment, &params, &patch)
            })
            .await
            .map_err(t.failed(step))
    }
}
