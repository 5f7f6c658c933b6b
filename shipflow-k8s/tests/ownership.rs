//! Who owns what an app's workload settings write: their own field manager
//! (`shipflow-workload/<app>`), not `apply_dir`'s; a Service or pull Secret another
//! tool manages is refused, not taken over; objects applied under the old manager
//! move to the new one; and `replicas` dropped from the settings keeps its count.

mod common;

use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use shipflow_core::{Context, DeployMeta, Deployer, ImageRef, Workspace};
use shipflow_k8s::testing::SimCluster;
use shipflow_k8s::{ApplyOptions, KubeError, PullCredentials};

use common::{deployer, kube_error, pinned};

const NS: &str = "shop";
const PORTS: &str = "ports = [{ name = \"http\", port = 8080, service_port = 80 }]";

/// A workspace whose apps deploy to namespace `shop`, each with `settings` (the
/// inside of `[apps.<app>.deploy.kubernetes]`).
fn workspace(apps: &[(&str, &str)]) -> Workspace {
    let mut toml = String::from("[workspace]\nregistry = \"registry.local\"\n");
    for (app, settings) in apps {
        toml.push_str(&format!(
            "[apps.{app}.deploy.kubernetes]\nnamespace = \"{NS}\"\n{settings}\n"
        ));
    }
    Workspace::loader()
        .schema(shipflow_k8s::schema())
        .from_toml(&toml, Path::new("."))
        .expect("valid settings")
}

fn meta() -> DeployMeta {
    DeployMeta {
        change_cause: "shipflow: test".into(),
        ..DeployMeta::default()
    }
}

/// Deploys app `api` of a workspace with `settings`.
async fn deploy(sim: &SimCluster, settings: &str, image: &ImageRef) -> Result<(), String> {
    let ws = workspace(&[("api", settings)]);
    deployer(sim)
        .deploy(
            ws.app("api").expect("declared"),
            image,
            &meta(),
            &Context::new(),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            let e = kube_error(&e);
            assert!(matches!(e, KubeError::Taken { .. }), "{e}");
            e.to_string()
        })
}

/// The (manager, operation) pairs of `object`'s managed fields.
fn managers(object: &Value) -> Vec<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{}/{}",
                m["manager"].as_str().unwrap_or(""),
                m["operation"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Server-side applies `body` as field manager `manager`, forced.
async fn apply_as<K>(sim: &SimCluster, manager: &str, name: &str, body: Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(sim.client(), NS);
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_and_settings_naming_the_same_service_keep_each_others_fields() {
    let sim = SimCluster::start().await.expect("sim starts");
    deploy(&sim, PORTS, &pinned("a1")).await.expect("created");
    // The user's manifests add an annotation to the same Service.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: shop\n  annotations:\n    example.com/dashboard: \"yes\"\n",
    )
    .expect("manifest");
    let apply = || async {
        deployer(&sim)
            .apply_dir(dir.path(), &ApplyOptions::default(), &Context::new())
            .await
            .expect("applied")
    };
    apply().await;
    deploy(&sim, PORTS, &pinned("a2")).await.expect("updated");
    let svc = sim.service(NS, "api").expect("service");
    assert_eq!(
        svc["metadata"]["annotations"]["example.com/dashboard"], "yes",
        "the settings' apply keeps the manifest's field: {svc}"
    );
    apply().await;
    let svc = sim.service(NS, "api").expect("service");
    assert_eq!(
        svc["spec"]["ports"][0]["port"], 80,
        "the manifest's apply keeps the settings' fields: {svc}"
    );
    assert_eq!(svc["spec"]["selector"]["shipflow.dev/app"], "api", "{svc}");
    let mut owners = managers(&svc);
    owners.sort();
    assert_eq!(owners, ["shipflow-workload/api/Apply", "shipflow/Apply"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_another_tool_manages_is_refused_before_the_deployment_changes() {
    let sim = SimCluster::start().await.expect("sim starts");
    apply_as::<Service>(
        &sim,
        "helm",
        "api",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": NS},
            "spec": {"selector": {"app": "legacy"},
                "ports": [{"name": "http", "port": 80, "targetPort": 9000, "protocol": "TCP"}]}}),
    )
    .await;
    let err = deploy(&sim, PORTS, &pinned("b1"))
        .await
        .expect_err("refused");
    for says in [
        "app api: apply service: service shop/api is already managed by \"helm\"",
        ".spec.selector",
        "deploy.kubernetes.deployment",
    ] {
        assert!(err.contains(says), "{says:?} in {err}");
    }
    let svc = sim.service(NS, "api").expect("still there");
    assert_eq!(svc["spec"]["selector"], json!({"app": "legacy"}));
    assert!(
        sim.deployment(NS, "api").is_none(),
        "nothing else was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_secret_is_not_overwritten_for_another_registry_or_type() {
    let sim = SimCluster::start().await.expect("sim starts");
    let settings = "image_pull_secret = \"pull\"";
    let ws = workspace(&[("api", settings), ("web", settings)]);
    let deployer = deployer(&sim).pull_credentials(PullCredentials {
        username: "ci".into(),
        password: "pw".into(),
    });
    let secret_config = |sim: &SimCluster| -> Value {
        let secret: Secret = serde_json::from_value(sim.get("Secret", NS, "pull").expect("secret"))
            .expect("a Secret");
        serde_json::from_slice(&secret.data.expect("data")[".dockerconfigjson"].0).expect("JSON")
    };
    deployer
        .deploy(
            ws.app("api").expect("api"),
            &pinned("c1"),
            &meta(),
            &Context::new(),
        )
        .await
        .expect("api deployed");
    // Another app pulling from the same registry with the same login shares it.
    let web_here: ImageRef = format!("registry.local/web@sha256:{}", "c2".repeat(32))
        .parse()
        .expect("reference");
    deployer
        .deploy(
            ws.app("web").expect("web"),
            &web_here,
            &meta(),
            &Context::new(),
        )
        .await
        .expect("web shares the Secret");
    // From another registry it would overwrite api's login: refused.
    let web_elsewhere: ImageRef = format!("ghcr.io/shop/web@sha256:{}", "c3".repeat(32))
        .parse()
        .expect("reference");
    let err = deployer
        .deploy(
            ws.app("web").expect("web"),
            &web_elsewhere,
            &meta(),
            &Context::new(),
        )
        .await
        .expect_err("refused");
    let message = kube_error(&err).to_string();
    assert!(
        message.starts_with("app web: write image pull secret: secret shop/pull is already managed by \"shipflow-workload/api\"")
            && message.contains("deploy.kubernetes.image_pull_secret"),
        "{message}"
    );
    let auths = secret_config(&sim)["auths"].clone();
    assert!(
        auths.get("registry.local").is_some() && auths.get("ghcr.io").is_none(),
        "{auths}"
    );

    // A Secret of another type someone else made.
    apply_as::<Secret>(
        &sim,
        "kubectl-client-side-apply",
        "opaque",
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "opaque", "namespace": NS},
            "type": "Opaque", "stringData": {"token": "x"}}),
    )
    .await;
    let ws = workspace(&[("api", "image_pull_secret = \"opaque\"")]);
    let err = deployer
        .deploy(
            ws.app("api").expect("api"),
            &pinned("c4"),
            &meta(),
            &Context::new(),
        )
        .await
        .expect_err("refused");
    let message = kube_error(&err).to_string();
    assert!(
        message.contains("secret shop/opaque is already managed by \"kubectl-client-side-apply\"")
            && message.contains(".type"),
        "{message}"
    );
    assert_eq!(
        sim.get("Secret", NS, "opaque").expect("there")["type"],
        "Opaque"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_applied_under_the_old_field_manager_move_to_the_new_one() {
    let sim = SimCluster::start().await.expect("sim starts");
    let settings = format!("replicas = 2\nenv = {{ MODE = \"fast\" }}\n{PORTS}");
    deploy(&sim, &settings, &pinned("d1"))
        .await
        .expect("created");
    // What an earlier version applied under `shipflow`, with a setting since dropped.
    let image = sim.deployment(NS, "api").expect("there")["spec"]["template"]["spec"]["containers"]
        [0]["image"]
        .clone();
    apply_as::<Deployment>(
        &sim,
        "shipflow",
        "api",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": NS, "labels": {"shipflow.dev/app": "api"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "api", "image": image,
                "env": [{"name": "MODE", "value": "fast"}, {"name": "EXTRA", "value": "1"}]}]}}}}),
    )
    .await;
    apply_as::<Service>(
        &sim,
        "shipflow",
        "api",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": NS,
                "labels": {"shipflow.dev/app": "api", "old": "x"}}}),
    )
    .await;
    deploy(&sim, &settings, &pinned("d1"))
        .await
        .expect("updated");
    let dep = sim.deployment(NS, "api").expect("there");
    let env = &dep["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env, &json!([{"name": "MODE", "value": "fast"}]), "{dep}");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(dep["metadata"]["labels"]["shipflow.dev/app"], "api");
    assert!(
        !managers(&dep).contains(&"shipflow/Apply".to_owned()),
        "{:?}",
        managers(&dep)
    );
    let svc = sim.service(NS, "api").expect("there");
    assert_eq!(
        svc["metadata"]["labels"],
        json!({"shipflow.dev/app": "api"}),
        "{svc}"
    );
    assert_eq!(managers(&svc), ["shipflow-workload/api/Apply"]);
    // Once moved, a deploy makes no more requests than before.
    let patches = sim.request_count("PATCH");
    deploy(&sim, &settings, &pinned("d1"))
        .await
        .expect("unchanged");
    assert_eq!(
        sim.request_count("PATCH") - patches,
        2,
        "the Service and the Deployment"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_dropped_from_the_settings_keep_their_count_for_others_to_change() {
    let sim = SimCluster::start().await.expect("sim starts");
    deploy(&sim, &format!("replicas = 3\n{PORTS}"), &pinned("e1"))
        .await
        .expect("created");
    deploy(&sim, PORTS, &pinned("e1")).await.expect("updated");
    let dep = sim.deployment(NS, "api").expect("there");
    assert_eq!(dep["spec"]["replicas"], 3, "not reset to 1");
    let replicas_owners: Vec<&str> = dep["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields")
        .iter()
        .filter(|m| m["fieldsV1"]["f:spec"].get("f:replicas").is_some())
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(replicas_owners, ["shipflow-replicas"]);
    // An autoscaler (or kubectl scale) changes it; deploys leave it.
    let api: Api<Deployment> = Api::namespaced(sim.client(), NS);
    let params = PatchParams {
        field_manager: Some("horizontal-pod-autoscaler".into()),
        ..PatchParams::default()
    };
    api.patch(
        "api",
        &params,
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .expect("scaled");
    deploy(&sim, PORTS, &pinned("e2")).await.expect("updated");
    assert_eq!(
        sim.deployment(NS, "api").expect("there")["spec"]["replicas"],
        5
    );

    // Without replicas from the start, shipflow never owns the count.
    let sim = SimCluster::start().await.expect("sim starts");
    deploy(&sim, PORTS, &pinned("e3")).await.expect("created");
    let dep = sim.deployment(NS, "api").expect("there");
    assert!(
        !dep["metadata"]["managedFields"]
            .as_array()
            .expect("managed fields")
            .iter()
            .any(|m| m["fieldsV1"]["f:spec"].get("f:replicas").is_some()),
        "{dep}"
    );
}
