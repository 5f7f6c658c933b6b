//! Where real Kubernetes controllers and shipflow's rollout watcher used to disagree
//! (issue 20), each as a scenario the simulated control plane plays the way the
//! real one does.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use shipflow_core::{Context, DeployMeta, Deployer, Fingerprint, ImageRef, RollbackTarget};
use shipflow_k8s::testing::{Outcome, SimCluster};
use shipflow_k8s::{KubeDeployer, KubeError};

use common::{V1, app, deployer, kube_error, pinned, workspace};

const NS: &str = "default";

fn meta(sha: &str) -> DeployMeta {
    DeployMeta {
        fingerprint: Some(Fingerprint(format!("fp-{sha}"))),
        git_sha: Some(sha.into()),
        change_cause: format!("shipflow: api at {sha}"),
        ..DeployMeta::default()
    }
}

/// `default/api` as JSON, with `replicas` and changes to its spec.
fn api(replicas: u32, spec: Value) -> Value {
    let mut dep = json!({
        "metadata": {"name": "api", "labels": {"app": "api"},
            "annotations": {"kubernetes.io/change-cause": format!("seeded with {V1}")}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "image": V1}]}}},
    });
    merge(&mut dep["spec"], &spec);
    dep
}

/// A JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn seeded(dep: Value) -> SimCluster {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment_json(NS, dep);
    sim
}

async fn deploy(
    deployer: &KubeDeployer,
    image: &ImageRef,
) -> Result<shipflow_core::Rollout, shipflow_core::BoxError> {
    let ws = workspace();
    deployer
        .deploy(app(&ws), image, &meta("sha"), &Context::new())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_from_an_image_pull_failure_succeeds() {
    // Slow steps: the controller writes observedGeneration a step before the
    // Deployment's revision names the revived ReplicaSet.
    let sim = SimCluster::with_step(Duration::from_millis(100))
        .await
        .expect("sim starts");
    sim.seed_deployment_json(NS, api(2, json!({})));
    sim.set_outcome(NS, "api", Outcome::ImagePullFailure);
    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    let err = deploy(&deployer, &pinned("0f"))
        .await
        .expect_err("cannot pull");
    assert!(
        matches!(kube_error(&err), KubeError::PodFailed { .. }),
        "{err}"
    );

    let ws = workspace();
    let rollout = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("the rollback succeeds: the failing pods are the old revision's");
    assert_eq!(rollout.image, V1);
    assert_eq!(rollout.revision, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeploying_an_older_digest_whose_new_pods_fail_is_detected() {
    let sim = seeded(api(2, json!({}))).await;
    let deployer = deployer(&sim).timeout(Duration::from_secs(8));
    let (a, b) = (pinned("aa"), pinned("bb"));
    deploy(&deployer, &a).await.expect("a rolls");
    deploy(&deployer, &b).await.expect("b rolls");
    // a's ReplicaSet comes back, but its image no longer starts.
    sim.set_image(&a.to_string(), Outcome::CrashLoop);
    let started = Instant::now();
    let err = deploy(&deployer, &a).await.expect_err("a's new pods crash");
    let KubeError::PodFailed { pod, .. } = kube_error(&err) else {
        panic!("expected PodFailed, got {err}");
    };
    assert_eq!(pod.reason, "CrashLoopBackOff");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "detected before the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreate_rollout_fails_early_on_a_pull_failure() {
    let sim = seeded(api(2, json!({"strategy": {"type": "Recreate"}}))).await;
    sim.set_outcome(NS, "api", Outcome::ImagePullFailure);
    let deployer = deployer(&sim).timeout(Duration::from_secs(8));
    let started = Instant::now();
    let err = deploy(&deployer, &pinned("0a"))
        .await
        .expect_err("cannot pull");
    let KubeError::PodFailed { pod, .. } = kube_error(&err) else {
        panic!("expected PodFailed, got {err}");
    };
    assert!(pod.reason.contains("ImagePull"), "{}", pod.reason);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "detected before the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_deadline_condition_after_a_rollback_is_not_a_failure() {
    // A progress deadline of 10 steps (10 cluster seconds).
    let sim = seeded(api(2, json!({"progressDeadlineSeconds": 10}))).await;
    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    deploy(&deployer, &pinned("aa")).await.expect("a rolls");
    sim.set_outcome(NS, "api", Outcome::NeverReady);
    let err = deploy(&deployer, &pinned("bb"))
        .await
        .expect_err("b never gets ready");
    assert!(
        matches!(kube_error(&err), KubeError::DeadlineExceeded { .. }),
        "{err}"
    );

    // Back to revision 1, whose ReplicaSet has no pods: for a while the controller
    // has observed the new generation and still says "deadline exceeded".
    let ws = workspace();
    let rollout = deployer
        .rollback(app(&ws), RollbackTarget::Revision(1), &Context::new())
        .await
        .expect("the condition left from the failed rollout is not this rollout's");
    assert_eq!(rollout.image, V1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pull_that_fails_once_then_works_succeeds() {
    let sim = seeded(api(2, json!({}))).await;
    let image = pinned("e1");
    sim.set_image(&image.to_string(), Outcome::PullRetried);
    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    let rollout = deploy(&deployer, &image)
        .await
        .expect("a registry 429 that the kubelet retries is not a failed rollout");
    assert_eq!(rollout.image, image.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_that_appears_is_waited_for() {
    let env = json!({"template": {"spec": {"containers": [{"name": "api", "image": V1,
        "envFrom": [{"secretRef": {"name": "api-secret"}}]}]}}});
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_object(
        "Secret",
        NS,
        json!({"metadata": {"name": "api-secret"}, "stringData": {"TOKEN": "t"}}),
    );
    sim.seed_deployment_json(NS, api(1, env));
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(sim.client(), NS);
    secrets
        .delete("api-secret", &Default::default())
        .await
        .expect("deleted");

    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    let image = pinned("5e");
    let restore = async {
        // The new pod waits in CreateContainerConfigError; then the Secret comes.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let secret = serde_json::from_value(json!({"metadata": {"name": "api-secret"},
            "stringData": {"TOKEN": "t"}}))
        .expect("valid");
        secrets
            .create(&Default::default(), &secret)
            .await
            .expect("created");
    };
    let (rollout, ()) = tokio::join!(deploy(&deployer, &image), restore);
    rollout.expect("CreateContainerConfigError heals when the Secret appears");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_container_crash_loop_is_detected() {
    let init = "registry.local/migrate:v1";
    let spec = json!({"template": {"spec": {"initContainers": [{"name": "migrate", "image": init}],
        "containers": [{"name": "api", "image": V1}]}}});
    let sim = seeded(api(1, spec)).await;
    sim.set_image(init, Outcome::CrashLoop);
    let deployer = deployer(&sim)
        .timeout(Duration::from_secs(20))
        .restart_budget(1);
    let err = deploy(&deployer, &pinned("1c"))
        .await
        .expect_err("migrations crash");
    let KubeError::PodFailed { pod, .. } = kube_error(&err) else {
        panic!("expected PodFailed, got {err}");
    };
    assert_eq!(
        (pod.container.as_str(), pod.reason.as_str()),
        ("migrate", "CrashLoopBackOff")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failure_that_clears_is_not_a_failed_rollout() {
    let sim = seeded(api(2, json!({}))).await;
    // A full quota refuses two pod creations, then there is room again.
    sim.refuse_pods(NS, 2);
    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    let rollout = deploy(&deployer, &pinned("9f"))
        .await
        .expect("ReplicaFailure that clears is passing trouble");
    assert_eq!(rollout.revision, Some(2));
}

async fn pause(sim: &SimCluster) {
    let api: Api<Deployment> = Api::namespaced(sim.client(), NS);
    api.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .expect("paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_fails_fast() {
    let sim = seeded(api(1, json!({}))).await;
    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    deploy(&deployer, &pinned("aa")).await.expect("rolls");
    pause(&sim).await;
    let started = Instant::now();
    let err = deploy(&deployer, &pinned("bb")).await.expect_err("paused");
    assert!(
        matches!(kube_error(&err), KubeError::Paused { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("rollout resume"), "{err}");
    let ws = workspace();
    let err = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect_err("kubectl refuses to roll back a paused Deployment");
    assert!(
        matches!(
            kube_error(&err),
            KubeError::Paused {
                step: "rollback",
                ..
            }
        ),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3), "fast");
    assert_eq!(
        sim.request_count("PATCH"),
        2,
        "the pause, the first deploy: nothing queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stuck_rollout_survives_410s_with_few_requests() {
    let sim = seeded(api(1, json!({"progressDeadlineSeconds": 100_000}))).await;
    // Watches end every 100 ms, the server keeps 2 steps of history and sends no
    // bookmark: every watch resumed after a quiet spell gets 410 Gone.
    sim.limit_watches(Duration::from_millis(100));
    sim.watch_history(2, 1_000_000);
    let image = pinned("57");
    sim.set_image(&image.to_string(), Outcome::NeverReady);
    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    let unstick = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The cause is fixed: the stuck pod is replaced by one that gets ready.
        sim.set_image(&image.to_string(), Outcome::Healthy);
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(sim.client(), NS);
        for p in sim.list("Pod", NS) {
            if p["spec"]["containers"][0]["image"] == image.to_string() {
                let name = p["metadata"]["name"].as_str().expect("name");
                pods.delete(name, &Default::default())
                    .await
                    .expect("deleted");
            }
        }
    };
    let started = Instant::now();
    let (rollout, ()) = tokio::join!(deploy(&deployer, &image), unstick);
    rollout.expect("recovers once the rollout moves again");
    let secs = started.elapsed().as_secs_f64();
    let requests: u64 = sim
        .requests()
        .iter()
        .filter(|(k, _)| k.contains("/deployments"))
        .map(|(_, n)| n)
        .sum();
    // A watch per ended watch (10 a second), now and then a re-list after a 410,
    // and the first read, write and list: never a tight loop of reads and watches.
    assert!(
        (requests as f64) < 12.0 * secs + 10.0,
        "{requests} deployment requests in {secs:.1} s: {:?}",
        sim.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_template_pushed_mid_rollout_is_not_reported_as_ours() {
    let sim = seeded(api(2, json!({}))).await;
    let ours = pinned("01");
    sim.set_image(&ours.to_string(), Outcome::NeverReady);
    let deployer = deployer(&sim).timeout(Duration::from_secs(20));
    let theirs = pinned("02");
    let push = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let api: Api<Deployment> = Api::namespaced(sim.client(), NS);
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "api", "image": theirs.to_string()}]}}}});
        api.patch("api", &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .expect("patched");
    };
    let (rollout, ()) = tokio::join!(deploy(&deployer, &ours), push);
    let err = rollout.expect_err("someone else's template rolled out, not ours");
    assert!(
        err.to_string().contains(&theirs.to_string()),
        "names what runs instead: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_replaces_the_annotations_as_kubectl_undo_does() {
    let sim = seeded(api(1, json!({}))).await;
    let deployer = deployer(&sim);
    deploy(&deployer, &pinned("aa")).await.expect("rolls");
    // Someone annotates revision 2's Deployment; the annotation is not revision 1's.
    let api: Api<Deployment> = Api::namespaced(sim.client(), NS);
    api.patch(
        "api",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"team": "payments"}}})),
    )
    .await
    .expect("annotated");
    let ws = workspace();
    deployer
        .rollback(app(&ws), RollbackTarget::Revision(1), &Context::new())
        .await
        .expect("rolls back");
    let annotations = sim.deployment(NS, "api").expect("exists")["metadata"]["annotations"].clone();
    assert_eq!(
        annotations,
        json!({"deployment.kubernetes.io/revision": "3", "kubernetes.io/change-cause": format!("seeded with {V1}")}),
        "revision 1's annotations, as `kubectl rollout undo` leaves them"
    );
}
