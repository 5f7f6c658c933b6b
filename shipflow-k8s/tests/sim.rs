//! The simulated API server through the real `kube::Client`: the HTTP semantics the
//! deployer relies on (404 status, selectors, watch from a resource version,
//! conflicts, generations) and the scripted controller.

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use serde_json::json;
use shipflow_k8s::testing::SimCluster;

async fn sim() -> SimCluster {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment("prod", "api", "api", "r.local/api:v1", 2);
    sim.seed_deployment("prod", "web", "web", "r.local/web:v1", 1);
    sim
}

#[tokio::test]
async fn a_missing_object_is_a_404_status() {
    let sim = sim().await;
    let api: Api<Deployment> = Api::namespaced(sim.client(), "prod");
    assert!(api.get_opt("nope").await.expect("404 is None").is_none());
    let err = api.get("nope").await.expect_err("404");
    let kube::Error::Api(status) = err else {
        panic!("expected an API status, got {err}");
    };
    assert_eq!(status.code, 404);
    assert_eq!(status.reason, "NotFound");
    // Other namespaces are separate.
    let other: Api<Deployment> = Api::namespaced(sim.client(), "staging");
    assert!(other.get_opt("api").await.expect("404 is None").is_none());
}

#[tokio::test]
async fn seeding_makes_a_rolled_out_deployment_with_revision_1() {
    let sim = sim().await;
    let deployments: Api<Deployment> = Api::namespaced(sim.client(), "prod");
    let dep = deployments.get("api").await.expect("seeded");
    let status = dep.status.expect("has status");
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.updated_replicas, Some(2));
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(
        dep.metadata.annotations.expect("annotated")["deployment.kubernetes.io/revision"],
        "1"
    );

    let sets: Api<ReplicaSet> = Api::namespaced(sim.client(), "prod");
    let list = sets
        .list(&ListParams::default().labels("app=api"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1, "only api's ReplicaSet matches");
    let hash = list.items[0].metadata.labels.as_ref().expect("labels")["pod-template-hash"].clone();
    let pods: Api<Pod> = Api::namespaced(sim.client(), "prod");
    let pods = pods
        .list(&ListParams::default().labels(&format!("app=api,pod-template-hash={hash}")))
        .await
        .expect("list pods");
    assert_eq!(pods.items.len(), 2);
}

#[tokio::test]
async fn a_spec_patch_bumps_the_generation_and_makes_a_new_revision() {
    let sim = sim().await;
    let api: Api<Deployment> = Api::namespaced(sim.client(), "prod");
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": "r.local/api:v2"}]}}}});
    let patched = api
        .patch("api", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patched");
    assert_eq!(patched.metadata.generation, Some(2));
    let rv = patched.metadata.resource_version.clone().expect("rv");

    // Watch from the patch's resource version until the controller is done.
    let wp = WatchParams::default()
        .fields("metadata.name=api")
        .timeout(10);
    let mut stream = api.watch(&wp, &rv).await.expect("watch").boxed();
    let mut revisions = Vec::new();
    while let Some(event) = stream.next().await {
        let WatchEvent::Modified(d) = event.expect("event") else {
            continue;
        };
        assert_eq!(d.metadata.name.as_deref(), Some("api"), "field selector");
        let s = d.status.clone().expect("status");
        revisions.push(
            d.metadata.annotations.clone().expect("a")["deployment.kubernetes.io/revision"].clone(),
        );
        if s.observed_generation == Some(2)
            && s.updated_replicas == Some(2)
            && s.replicas == Some(2)
            && s.available_replicas == Some(2)
        {
            break;
        }
    }
    assert_eq!(revisions.last().map(String::as_str), Some("2"));

    // An annotation-only patch leaves the generation alone.
    let patched = api
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"x": "y"}}})),
        )
        .await
        .expect("patched");
    assert_eq!(patched.metadata.generation, Some(2));
}

#[tokio::test]
async fn a_stale_resource_version_in_a_merge_patch_conflicts() {
    let sim = sim().await;
    let api: Api<Deployment> = Api::namespaced(sim.client(), "prod");
    let patch = json!({"metadata": {"resourceVersion": "1", "annotations": {"x": "y"}}});
    let err = api
        .patch("api", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("stale");
    let kube::Error::Api(status) = err else {
        panic!("expected an API status, got {err}");
    };
    assert_eq!(status.code, 409);
}

#[tokio::test]
async fn requests_are_counted_per_verb_and_path() {
    let sim = sim().await;
    let api: Api<Deployment> = Api::namespaced(sim.client(), "prod");
    api.get("api").await.expect("get");
    api.get("web").await.expect("get");
    api.list(&ListParams::default()).await.expect("list");
    let requests = sim.requests();
    assert_eq!(
        requests["GET /apis/apps/v1/namespaces/prod/deployments/api"],
        1
    );
    assert_eq!(requests["GET /apis/apps/v1/namespaces/prod/deployments"], 1);
    assert_eq!(sim.request_count("GET"), 3);
    assert_eq!(sim.request_count("PATCH"), 0);
}

#[tokio::test]
async fn leases_are_created_replaced_and_deleted_under_resource_versions() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{DeleteParams, PostParams, Preconditions};

    let sim = sim().await;
    let api: Api<Lease> = Api::namespaced(sim.client(), "prod");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "lock"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10},
    }))
    .expect("valid lease");
    let created = api
        .create(&PostParams::default(), &lease)
        .await
        .expect("created");
    let err = api
        .create(&PostParams::default(), &lease)
        .await
        .expect_err("exists");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));

    // A replace with the current resourceVersion wins; the same one again conflicts.
    let mut mine = created.clone();
    mine.spec.as_mut().expect("spec").holder_identity = Some("b".into());
    let replaced = api
        .replace("lock", &PostParams::default(), &mine)
        .await
        .expect("replaced");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    let err = api
        .replace("lock", &PostParams::default(), &mine)
        .await
        .expect_err("stale");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"));

    // Delete honours its precondition.
    let stale = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: created.metadata.resource_version.clone(),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    let err = api.delete("lock", &stale).await.expect_err("stale");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409));
    let current = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: replaced.metadata.resource_version.clone(),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    api.delete("lock", &current).await.expect("deleted");
    assert!(api.get_opt("lock").await.expect("get").is_none());
    assert!(sim.lease("prod", "lock").is_none());
}

#[tokio::test]
async fn apply_creates_then_changes_nothing_for_the_same_manifest() {
    use k8s_openapi::api::core::v1::ConfigMap;

    let sim = sim().await;
    let api: Api<ConfigMap> = Api::namespaced(sim.client(), "prod");
    let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"A": "1"}});
    let params = PatchParams::apply("shipflow");
    let first = api
        .patch("settings", &params, &Patch::Apply(&manifest))
        .await
        .expect("created by apply");
    let again = api
        .patch("settings", &params, &Patch::Apply(&manifest))
        .await
        .expect("applied again");
    assert_eq!(
        first.metadata.resource_version,
        again.metadata.resource_version
    );
    let changed = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings"}, "data": {"A": "2"}});
    let third = api
        .patch("settings", &params, &Patch::Apply(&changed))
        .await
        .expect("changed");
    assert_ne!(
        third.metadata.resource_version,
        again.metadata.resource_version
    );
    assert_eq!(third.data.expect("data")["A"], "2");
}
