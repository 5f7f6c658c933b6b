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

/// Every Deployment event of `ns/name` from `rv` until `done` says stop (or 10 s).
async fn watch_until(
    sim: &SimCluster,
    ns: &str,
    rv: &str,
    mut done: impl FnMut(&Deployment) -> bool,
) -> Vec<Deployment> {
    let api: Api<Deployment> = Api::namespaced(sim.client(), ns);
    let wp = WatchParams::default()
        .fields("metadata.name=api")
        .timeout(10);
    let mut stream = api.watch(&wp, rv).await.expect("watch").boxed();
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        if let WatchEvent::Modified(d) = event.expect("event") {
            let stop = done(&d);
            seen.push(d);
            if stop {
                break;
            }
        }
    }
    seen
}

fn complete(d: &Deployment) -> bool {
    let s = d.status.clone().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    s.observed_generation == d.metadata.generation
        && s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want)
}

async fn set_image(sim: &SimCluster, ns: &str, image: &str) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(sim.client(), ns);
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": image}]}}}});
    api.patch("api", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patched")
}

#[tokio::test]
async fn recreate_observes_the_new_generation_before_any_new_replica_set() {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment_json(
        "prod",
        json!({"metadata": {"name": "api"}, "spec": {"replicas": 2, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "image": "r.local/api:v1"}]}}}}),
    );
    let patched = set_image(&sim, "prod", "r.local/api:v2").await;
    let rv = patched.metadata.resource_version.clone().expect("rv");
    let seen = watch_until(&sim, "prod", &rv, complete).await;
    // As recreate.go: the old ReplicaSet goes to zero first, the status says so with
    // the new generation observed, and the revision still names revision 1.
    let first_observed = seen
        .iter()
        .find(|d| d.status.as_ref().and_then(|s| s.observed_generation) == Some(2))
        .expect("observed");
    assert_eq!(
        first_observed
            .metadata
            .annotations
            .as_ref()
            .expect("annotated")["deployment.kubernetes.io/revision"],
        "1"
    );
    assert_eq!(
        first_observed
            .status
            .as_ref()
            .and_then(|s| s.updated_replicas),
        None
    );
    // Never an old and a new pod at once.
    for d in &seen {
        let s = d.status.clone().unwrap_or_default();
        let old = s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
        assert!(old == 0 || s.updated_replicas.unwrap_or(0) == 0, "{s:?}");
    }
    assert!(complete(seen.last().expect("done")));
}

#[tokio::test]
async fn a_rolling_update_stays_within_max_surge_and_max_unavailable() {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment("prod", "api", "api", "r.local/api:v1", 4);
    // 4 replicas: maxSurge 25% = 1 pod up, maxUnavailable 25% = 1 pod down.
    let patched = set_image(&sim, "prod", "r.local/api:v2").await;
    let rv = patched.metadata.resource_version.clone().expect("rv");
    let seen = watch_until(&sim, "prod", &rv, complete).await;
    for d in &seen {
        let s = d.status.clone().unwrap_or_default();
        assert!(s.replicas.unwrap_or(0) <= 5, "at most 4 + 1 pods: {s:?}");
        assert!(
            s.available_replicas.unwrap_or(0) >= 3,
            "at least 4 - 1 available: {s:?}"
        );
    }
    assert!(complete(seen.last().expect("done")));
}

#[tokio::test]
async fn availability_lags_readiness_by_min_ready_seconds() {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment_json(
        "prod",
        json!({"metadata": {"name": "api"}, "spec": {"replicas": 1, "minReadySeconds": 5,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "image": "r.local/api:v1"}]}}}}),
    );
    let patched = set_image(&sim, "prod", "r.local/api:v2").await;
    let rv = patched.metadata.resource_version.clone().expect("rv");
    let seen = watch_until(&sim, "prod", &rv, complete).await;
    assert!(
        seen.iter().any(|d| {
            let s = d.status.clone().unwrap_or_default();
            s.ready_replicas.unwrap_or(0) > s.available_replicas.unwrap_or(0)
        }),
        "a new pod was ready before it counted as available"
    );
}

#[tokio::test]
async fn a_paused_deployment_rolls_nothing_until_resumed() {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment("prod", "api", "api", "r.local/api:v1", 1);
    let api: Api<Deployment> = Api::namespaced(sim.client(), "prod");
    api.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"paused": true}})),
    )
    .await
    .expect("paused");
    set_image(&sim, "prod", "r.local/api:v2").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        sim.replica_set_names("prod").len(),
        1,
        "no new ReplicaSet while paused"
    );
    let dep = api.get("api").await.expect("get");
    let progressing = dep.status.expect("status").conditions.expect("conditions");
    assert!(
        progressing
            .iter()
            .any(|c| c.reason.as_deref() == Some("DeploymentPaused"))
    );
    let resumed = api
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"paused": false}})),
        )
        .await
        .expect("resumed");
    let rv = resumed.metadata.resource_version.clone().expect("rv");
    let seen = watch_until(&sim, "prod", &rv, complete).await;
    assert!(complete(seen.last().expect("done")));
    assert_eq!(sim.replica_set_names("prod").len(), 2);
}

#[tokio::test]
async fn watches_resume_within_the_history_and_get_410_beyond_it() {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment("prod", "api", "api", "r.local/api:v1", 1);
    sim.watch_history(2, 1);
    let api: Api<Deployment> = Api::namespaced(sim.client(), "prod");
    let old = api
        .get("api")
        .await
        .expect("get")
        .metadata
        .resource_version
        .expect("rv");
    set_image(&sim, "prod", "r.local/api:v2").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let wp = WatchParams::default()
        .fields("metadata.name=api")
        .timeout(5);
    let mut stream = api.watch(&wp, &old).await.expect("watch").boxed();
    match stream.next().await.expect("an event").expect("an event") {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    // From the list's resourceVersion, a watch asking for bookmarks gets one.
    let list = api.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.expect("rv");
    // kube asks for bookmarks by default.
    let wp = WatchParams::default()
        .fields("metadata.name=api")
        .timeout(5);
    let mut stream = api.watch(&wp, &rv).await.expect("watch").boxed();
    set_image(&sim, "prod", "r.local/api:v3").await;
    let mut bookmarked = false;
    while let Some(event) = stream.next().await {
        if let WatchEvent::Bookmark(b) = event.expect("event") {
            assert!(
                b.metadata
                    .resource_version
                    .parse::<u64>()
                    .expect("a number")
                    > rv.parse::<u64>().expect("a number")
            );
            bookmarked = true;
            break;
        }
    }
    assert!(bookmarked);
}
