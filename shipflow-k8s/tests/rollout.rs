//! KubeDeployer through the real `kube::Client` over HTTP against the simulated API
//! server: healthy rollouts, early failure detection, rollbacks, history.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shipflow_core::{
    CancellationToken, Context, DeployMeta, Deployer, EventKind, EventSink, Fingerprint,
    RollbackTarget,
};
use shipflow_k8s::testing::{Outcome, SimCluster};
use shipflow_k8s::{KubeError, RetryPolicy};

use common::{V1, app, deployer, kube_error, pinned, sim, workspace};

const NS: &str = "default";

fn meta(fingerprint: &str, sha: &str) -> DeployMeta {
    DeployMeta {
        fingerprint: Some(Fingerprint(fingerprint.into())),
        git_sha: Some(sha.into()),
        change_cause: format!("shipflow: api at {sha}"),
        ..DeployMeta::default()
    }
}

/// Progress events seen: `(done, total)`.
type Seen = Arc<Mutex<Vec<(u64, Option<u64>)>>>;
/// Messages seen.
type Said = Arc<Mutex<Vec<String>>>;

/// A context whose progress events and messages are recorded.
fn recording() -> (Context, Seen, Said) {
    let seen = Seen::default();
    let said = Said::default();
    let (progress, messages) = (seen.clone(), said.clone());
    let ctx = Context::new().with_events(EventSink::new(move |e| match &e.kind {
        EventKind::Progress { done, total, unit } => {
            assert_eq!(unit, "replicas");
            progress.lock().expect("not poisoned").push((*done, *total));
        }
        EventKind::Message { text } => messages.lock().expect("not poisoned").push(text.clone()),
        _ => {}
    }));
    (ctx, seen, said)
}

#[tokio::test]
async fn healthy_rollout_runs_the_pinned_image() {
    let sim = sim(3).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    let image = pinned("ab");
    let (ctx, progress, messages) = recording();

    let rollout = deployer
        .deploy(app(&ws), &image, &meta("fp-1", "c0ffee"), &ctx)
        .await
        .expect("healthy rollout succeeds");

    assert!(rollout.changed);
    assert_eq!(rollout.image, image.to_string());
    assert_eq!(rollout.revision, Some(2));
    assert_eq!(rollout.workload, "deployment default/api container api");
    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(now.image, image.to_string());
    assert_eq!(now.revision, Some(2));
    assert_eq!(now.fingerprint, Some(Fingerprint("fp-1".into())));
    assert_eq!(now.git_sha.as_deref(), Some("c0ffee"));

    // The server agrees: every replica is new and available, no old one is left.
    let dep = sim.deployment(NS, "api").expect("exists");
    let status = &dep["status"];
    assert_eq!(status["replicas"], 3);
    assert_eq!(status["updatedReplicas"], 3);
    assert_eq!(status["availableReplicas"], 3);
    assert_eq!(
        dep["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "shipflow: api at c0ffee"
    );
    assert_eq!(sim.request_count("PATCH"), 1);

    let progress = progress.lock().expect("not poisoned").clone();
    assert_eq!(progress.last(), Some(&(3, Some(3))));
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress never goes back: {progress:?}"
    );
    assert!(
        progress.len() >= 3,
        "progress reported per replica: {progress:?}"
    );
    let messages = messages.lock().expect("not poisoned").clone();
    assert_eq!(
        messages.first(),
        Some(&format!(
            "rolling deployment default/api container api from {V1} to {image}"
        ))
    );
    for expected in [
        "0 out of 3 new replicas have been updated",
        "2 out of 3 new replicas have been updated",
        "1 old replicas are pending termination",
    ] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected:?} in {messages:?}"
        );
    }
}

#[tokio::test]
async fn the_running_digest_is_not_rolled_again() {
    let image = pinned("cd");
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment(NS, "api", "api", &image.to_string(), 2);
    let ws = workspace();
    let deployer = deployer(&sim);

    let rollout = deployer
        .deploy(app(&ws), &image, &meta("fp", "sha"), &Context::new())
        .await
        .expect("nothing to do");

    assert!(!rollout.changed);
    assert_eq!(rollout.revision, Some(1));
    assert_eq!(sim.request_count("PATCH"), 0);
    assert_eq!(sim.request_count("WATCH"), 0);
}

#[tokio::test]
async fn only_the_apps_container_image_is_patched() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    let image = pinned("12");
    let before = sim.deployment(NS, "api").expect("exists");
    deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect("rolls");
    let dep = sim.deployment(NS, "api").expect("exists");
    let mut expected = before["spec"].clone();
    expected["template"]["spec"]["containers"][0]["image"] = image.to_string().into();
    assert_eq!(dep["spec"], expected, "only the image changed in the spec");
    assert_eq!(dep["metadata"]["generation"], 2);
}

#[tokio::test]
async fn dry_run_reports_and_changes_nothing() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    let messages = Arc::new(Mutex::new(Vec::new()));
    let sink = messages.clone();
    let ctx = Context::new()
        .with_dry_run(true)
        .with_events(EventSink::new(move |e| {
            if let EventKind::Message { text } = &e.kind {
                sink.lock().expect("not poisoned").push(text.clone());
            }
        }));
    let image = pinned("ef");

    let rollout = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &ctx)
        .await
        .expect("dry run");

    assert!(rollout.changed);
    assert_eq!(sim.request_count("PATCH"), 0);
    let dep = sim.deployment(NS, "api").expect("exists");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        V1
    );
    let messages = messages.lock().expect("not poisoned");
    assert_eq!(
        messages.as_slice(),
        [format!(
            "would roll deployment default/api container api from {V1} to {image}"
        )]
    );
}

#[tokio::test]
async fn image_pull_failure_fails_long_before_the_deadline() {
    let sim = sim(2).await;
    sim.set_outcome(NS, "api", Outcome::ImagePullFailure);
    let ws = workspace();
    let deployer = deployer(&sim).timeout(Duration::from_secs(30));
    let started = Instant::now();

    let err = deployer
        .deploy(
            app(&ws),
            &pinned("01"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("the image cannot be pulled");

    assert!(started.elapsed() < Duration::from_secs(5), "failed fast");
    let KubeError::PodFailed {
        app, workload, pod, ..
    } = kube_error(&err)
    else {
        panic!("expected PodFailed, got {err}");
    };
    assert_eq!(app, "api");
    assert_eq!(workload, "default/api");
    assert!(pod.pod.starts_with("api-"), "names the pod: {}", pod.pod);
    assert_eq!(pod.container, "api");
    assert!(
        ["ErrImagePull", "ImagePullBackOff"].contains(&pod.reason.as_str()),
        "{}",
        pod.reason
    );
    let text = err.to_string();
    assert!(text.contains(&pod.pod), "{text}");
    assert!(text.contains("check that the image was pushed"), "{text}");
}

#[tokio::test]
async fn crash_loop_fails_with_the_termination_message() {
    let sim = sim(2).await;
    sim.set_outcome(NS, "api", Outcome::CrashLoop);
    let ws = workspace();
    let deployer = deployer(&sim)
        .timeout(Duration::from_secs(30))
        .restart_budget(2);

    let err = deployer
        .deploy(
            app(&ws),
            &pinned("02"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("the app crashes");

    let KubeError::PodFailed { pod, .. } = kube_error(&err) else {
        panic!("expected PodFailed, got {err}");
    };
    assert_eq!(pod.reason, "CrashLoopBackOff");
    assert_eq!(pod.restarts, 3, "one restart over the budget of 2");
    assert_eq!(
        pod.last_termination.as_deref(),
        Some("exit code 2: panic: boom")
    );
    // The last lines of the crashed run's log come with it.
    assert!(pod.previous_logs);
    assert_eq!(
        pod.logs,
        [
            format!("starting {} (run 3)", pinned("02")),
            "loading configuration".to_owned(),
            "panic: boom".to_owned()
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("last lines of its previous run's log:\n    starting"),
        "{text}"
    );
}

/// A revision whose pods get ready and crash a little later (60 cluster seconds,
/// 1.2 s here) completes its rollout as kubectl judges it; the stabilization window
/// catches the crash and fails the deploy, naming the pod and its last words.
#[tokio::test]
async fn pods_that_crash_soon_after_the_rollout_completed_fail_the_deploy() {
    let sim = sim(2).await;
    let image = pinned("5c");
    sim.set_image(&image.to_string(), Outcome::CrashesAfter { seconds: 60 });
    let ws = workspace();
    let started = Instant::now();
    let err = deployer(&sim)
        .stable_for(Duration::from_secs(4))
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("the new pods crash inside the window");
    let KubeError::Unstable { reason, pod, .. } = kube_error(&err) else {
        panic!("expected Unstable, got {err}");
    };
    assert!(
        reason.contains("new replicas were available") || reason.contains("restarted"),
        "{reason}"
    );
    let pod = pod.as_ref().expect("a pod explains it");
    assert!(
        pod.logs.iter().any(|l| l == "panic: lost the database"),
        "{pod}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "failed at the crash, not at the window's end: {:?}",
        started.elapsed()
    );

    // The same rollout without a window is called complete: what the window adds.
    sim.set_image(
        &pinned("5d").to_string(),
        Outcome::CrashesAfter { seconds: 60 },
    );
    let rollout = deployer(&sim)
        .stable_for(Duration::ZERO)
        .deploy(
            app(&ws),
            &pinned("5d"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("complete as kubectl judges it");
    assert!(rollout.changed);
}

/// A healthy revision passes the window, and the deploy takes the window's time.
#[tokio::test]
async fn a_healthy_rollout_passes_the_stabilization_window() {
    let sim = sim(2).await;
    let ws = workspace();
    let started = Instant::now();
    let rollout = deployer(&sim)
        .stable_for(Duration::from_secs(1))
        .deploy(
            app(&ws),
            &pinned("5e"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("healthy");
    assert!(rollout.changed);
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_failure_carries_at_most_the_last_20_log_lines() {
    let sim = sim(1).await;
    let image = pinned("2a");
    let lines: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    sim.set_image(&image.to_string(), Outcome::CrashLoop);
    sim.set_logs(&image.to_string(), &refs);
    let ws = workspace();
    let err = deployer(&sim)
        .restart_budget(0)
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("crashes");
    let KubeError::PodFailed { pod, .. } = kube_error(&err) else {
        panic!("expected PodFailed, got {err}");
    };
    assert_eq!(pod.logs, lines[10..], "the last 20 of 30");
}

#[tokio::test]
async fn progress_deadline_exceeded_fails() {
    let sim = sim(1).await;
    // A deadline of 10 steps (10 cluster seconds, 200 ms).
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(sim.client(), NS);
    let deadline = serde_json::json!({"spec": {"progressDeadlineSeconds": 10}});
    api.patch(
        "api",
        &Default::default(),
        &kube::api::Patch::Merge(&deadline),
    )
    .await
    .expect("patched");
    sim.set_outcome(NS, "api", Outcome::NeverReady);
    let ws = workspace();
    let deployer = deployer(&sim).timeout(Duration::from_secs(30));

    let err = deployer
        .deploy(
            app(&ws),
            &pinned("03"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("the deadline passes");

    let KubeError::DeadlineExceeded {
        message, step, pod, ..
    } = kube_error(&err)
    else {
        panic!("expected DeadlineExceeded, got {err}");
    };
    assert_eq!(*step, "watch rollout");
    assert!(message.contains("has timed out progressing"), "{message}");
    let pod = pod.as_ref().expect("the unready new pod explains it");
    assert_eq!(pod.reason, "NotReady");
    assert_eq!(
        pod.logs,
        [
            format!("starting {} (run 1)", pinned("03")),
            "waiting for the database at db:5432".to_owned()
        ],
        "its log"
    );
    assert!(
        err.to_string()
            .contains("kubectl -n default describe deployment api"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stuck_rollout_times_out() {
    let sim = sim(2).await;
    sim.set_outcome(NS, "api", Outcome::Unschedulable);
    let ws = workspace();
    let deployer = deployer(&sim).timeout(Duration::from_millis(400));

    let err = deployer
        .deploy(
            app(&ws),
            &pinned("04"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("nothing moves");

    let KubeError::Timeout {
        ready,
        desired,
        pod,
        ..
    } = kube_error(&err)
    else {
        panic!("expected Timeout, got {err}");
    };
    assert_eq!((*ready, *desired), (0, 2));
    let pod = pod.as_ref().expect("the pending new pod explains it");
    assert_eq!(pod.reason, "Unschedulable");
    assert!(err.to_string().contains("Insufficient cpu"), "{err}");
}

#[tokio::test]
async fn cancellation_stops_the_wait() {
    let sim = sim(1).await;
    sim.set_outcome(NS, "api", Outcome::Unschedulable);
    let ws = workspace();
    let deployer = deployer(&sim).timeout(Duration::from_secs(30));
    let token = CancellationToken::new();
    let ctx = Context::new().with_cancellation(token.clone());
    let cancel = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel();
    });

    let err = deployer
        .deploy(app(&ws), &pinned("05"), &DeployMeta::default(), &ctx)
        .await
        .expect_err("cancelled");
    cancel.await.expect("cancel task");

    assert!(
        matches!(kube_error(&err), KubeError::Cancelled { .. }),
        "{err}"
    );
    let chain_has_cancelled = std::iter::successors(
        Some(err.as_ref() as &(dyn std::error::Error + 'static)),
        |e| e.source(),
    )
    .any(|e| e.is::<shipflow_core::Cancelled>());
    assert!(chain_has_cancelled, "the pipeline must see a cancellation");
}

#[tokio::test]
async fn rollback_to_previous_restores_the_old_image() {
    let sim = sim(2).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    deployer
        .deploy(app(&ws), &pinned("aa"), &meta("fp-a", "a"), &Context::new())
        .await
        .expect("rolls to a");

    let rollout = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("rolls back");

    assert!(rollout.changed);
    assert_eq!(rollout.image, V1);
    // Like Kubernetes: the old ReplicaSet is reused and gets the next revision number.
    assert_eq!(rollout.revision, Some(3));
    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(now.image, V1);
    assert_eq!(
        now.fingerprint, None,
        "the seeded revision had no fingerprint"
    );
    let dep = sim.deployment(NS, "api").expect("exists");
    assert_eq!(dep["status"]["updatedReplicas"], 2);
    assert_eq!(dep["status"]["replicas"], 2);
    assert_eq!(
        dep["spec"]["template"]["metadata"]["labels"],
        serde_json::json!({"app": "api"}),
        "the pod-template-hash label is not copied into the Deployment"
    );
}

#[tokio::test]
async fn rollback_to_a_given_revision() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    for (byte, fp) in [("aa", "fp-a"), ("bb", "fp-b")] {
        deployer
            .deploy(app(&ws), &pinned(byte), &meta(fp, byte), &Context::new())
            .await
            .expect("rolls");
    }

    let rollout = deployer
        .rollback(app(&ws), RollbackTarget::Revision(2), &Context::new())
        .await
        .expect("rolls back to 2");

    assert_eq!(rollout.image, pinned("aa").to_string());
    assert_eq!(rollout.revision, Some(4));
    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(now.image, pinned("aa").to_string());
    assert_eq!(now.fingerprint, Some(Fingerprint("fp-a".into())));
    assert_eq!(now.git_sha.as_deref(), Some("aa"));
}

#[tokio::test]
async fn rollback_to_a_missing_revision_names_the_existing_ones() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);

    let err = deployer
        .rollback(app(&ws), RollbackTarget::Revision(7), &Context::new())
        .await
        .expect_err("no revision 7");
    let KubeError::NoRevision { available, .. } = kube_error(&err) else {
        panic!("expected NoRevision, got {err}");
    };
    assert_eq!(available, &[1]);

    let err = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect_err("nothing before revision 1");
    assert!(
        matches!(kube_error(&err), KubeError::NoRevision { .. }),
        "{err}"
    );
    assert_eq!(sim.request_count("PATCH"), 0);
}

#[tokio::test]
async fn a_failed_rollout_can_be_rolled_back_to_the_revision_before_it() {
    let sim = sim(2).await;
    sim.set_outcome(NS, "api", Outcome::ImagePullFailure);
    let ws = workspace();
    let deployer = deployer(&sim).timeout(Duration::from_secs(30));
    let before = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("seeded");
    deployer
        .deploy(
            app(&ws),
            &pinned("0f"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("cannot pull");

    sim.set_outcome(NS, "api", Outcome::Healthy);
    let rollout = deployer
        .rollback(
            app(&ws),
            RollbackTarget::Revision(before.revision.expect("has a revision")),
            &Context::new(),
        )
        .await
        .expect("rolls back");

    assert_eq!(rollout.image, V1);
    let dep = sim.deployment(NS, "api").expect("exists");
    assert_eq!(dep["status"]["replicas"], 2, "the broken pod is gone");
    assert_eq!(dep["status"]["availableReplicas"], 2);
}

#[tokio::test]
async fn history_lists_revisions_oldest_first() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    for byte in ["aa", "bb"] {
        deployer
            .deploy(app(&ws), &pinned(byte), &meta("fp", byte), &Context::new())
            .await
            .expect("rolls");
    }

    let history = deployer
        .history(app(&ws), &Context::new())
        .await
        .expect("history");

    let summary: Vec<(u64, String, Option<String>, bool)> = history
        .iter()
        .map(|r| (r.number, r.image.clone(), r.change_cause.clone(), r.current))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, V1.to_owned(), Some(format!("seeded with {V1}")), false),
            (
                2,
                pinned("aa").to_string(),
                Some("shipflow: api at aa".into()),
                false
            ),
            (
                3,
                pinned("bb").to_string(),
                Some("shipflow: api at bb".into()),
                true
            ),
        ]
    );
    assert!(history.iter().all(|r| {
        r.created_at
            .as_deref()
            .is_some_and(|t| t.starts_with("2026-"))
    }));
}

#[tokio::test]
async fn a_missing_deployment_is_none_for_current_and_an_error_for_deploy() {
    let sim = SimCluster::start().await.expect("sim starts");
    let ws = workspace();
    let deployer = deployer(&sim);

    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("a 404 is not an error");
    assert_eq!(now, None);

    let err = deployer
        .deploy(
            app(&ws),
            &pinned("aa"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("nothing to roll");
    assert!(
        matches!(kube_error(&err), KubeError::NotFound { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("deployment default/api not found"));
}

#[tokio::test]
async fn a_watch_the_server_ends_is_resumed() {
    let sim = sim(3).await;
    // Every watch ends after 30 ms, while the rollout takes several 20 ms steps.
    sim.limit_watches(Duration::from_millis(30));
    let ws = workspace();
    let deployer = deployer(&sim);

    let rollout = deployer
        .deploy(
            app(&ws),
            &pinned("77"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("rolls despite short watches");

    assert_eq!(rollout.revision, Some(2));
    let dep = sim.deployment(NS, "api").expect("exists");
    assert_eq!(dep["status"]["updatedReplicas"], 3);
    assert_eq!(dep["status"]["replicas"], 3);
    assert!(
        sim.request_count("WATCH") > 2,
        "the watches were renewed: {:?}",
        sim.requests()
    );
}

#[tokio::test]
async fn a_failed_renewal_of_the_watch_is_retried() {
    let sim = sim(3).await;
    sim.limit_watches(Duration::from_millis(30));
    let ws = workspace();
    let deployer = deployer(&sim);
    let (image, meta, ctx) = (pinned("78"), DeployMeta::default(), Context::new());
    let deploy = deployer.deploy(app(&ws), &image, &meta, &ctx);
    // Once the first watch runs, its renewal (30 ms later) gets a 500.
    let inject = async {
        while sim.request_count("WATCH") == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sim.fail_next(
            "WATCH",
            &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
            500,
        );
    };
    let (rollout, ()) = tokio::join!(deploy, inject);
    let rollout = rollout.expect("a passing 500 on a renewed watch does not fail the rollout");
    assert_eq!(rollout.revision, Some(2));
}

#[tokio::test]
async fn a_failed_rollout_left_in_place_reports_no_fingerprint() {
    let sim = sim(2).await;
    sim.set_outcome(NS, "api", Outcome::ImagePullFailure);
    let ws = workspace();
    let deployer = deployer(&sim);
    let meta = DeployMeta {
        fingerprint: Some(Fingerprint("fp-v2".into())),
        ..DeployMeta::default()
    };
    deployer
        .deploy(app(&ws), &pinned("79"), &meta, &Context::new())
        .await
        .expect_err("the image cannot be pulled");
    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(now.image, pinned("79").to_string(), "left in place");
    assert_eq!(now.fingerprint, None, "not a completed deploy of fp-v2");

    // Once a rollout of it completes, the fingerprint counts.
    sim.set_outcome(NS, "api", Outcome::Healthy);
    let meta = DeployMeta {
        fingerprint: Some(Fingerprint("fp-v3".into())),
        ..DeployMeta::default()
    };
    deployer
        .deploy(app(&ws), &pinned("80"), &meta, &Context::new())
        .await
        .expect("healthy");
    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(now.fingerprint, Some(Fingerprint("fp-v3".into())));
}

#[tokio::test]
async fn a_rollout_costs_a_handful_of_requests() {
    let sim = sim(5).await;
    let ws = workspace();
    // The default failure window: the pods are looked at after 3 s of quiet, which
    // a healthy rollout (a step every 20 ms) never has, even on a loaded machine.
    let deployer = shipflow_k8s::KubeDeployer::new(sim.client());

    deployer
        .deploy(
            app(&ws),
            &pinned("99"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("rolls");

    // Read and patch the Deployment, then list and watch it. The pods are only
    // looked at when the Deployment stays quiet, which a healthy rollout never does:
    // the count does not grow with the rollout's length. The stabilization window
    // (5 s by default) adds the new ReplicaSet's lookup and two pod lists, to count
    // restarts at its start and its end.
    let requests = sim.requests();
    let expected = [
        ("GET /apis/apps/v1/namespaces/default/deployments/api", 1),
        ("PATCH /apis/apps/v1/namespaces/default/deployments/api", 1),
        ("GET /apis/apps/v1/namespaces/default/deployments", 1),
        ("WATCH /apis/apps/v1/namespaces/default/deployments", 1),
        ("GET /apis/apps/v1/namespaces/default/replicasets", 1),
        ("GET /api/v1/namespaces/default/pods", 2),
    ];
    assert_eq!(
        requests,
        expected
            .iter()
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect(),
    );
}

#[tokio::test]
async fn deploying_a_digest_whose_rollout_failed_fails_again() {
    let sim = sim(1).await;
    sim.set_outcome(NS, "api", Outcome::ImagePullFailure);
    let ws = workspace();
    let deployer = deployer(&sim).timeout(Duration::from_secs(30));
    let image = pinned("e1");
    deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("cannot pull");

    // The spec already names the digest, but its pods never came up: not "unchanged".
    let err = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("still cannot pull");
    assert!(
        matches!(kube_error(&err), KubeError::PodFailed { .. }),
        "{err}"
    );
    assert_eq!(sim.request_count("PATCH"), 1, "no second patch");
}

#[tokio::test]
async fn deploying_a_digest_whose_rollout_timed_out_fails_again_at_once() {
    let sim = sim(1).await;
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(sim.client(), NS);
    let deadline = serde_json::json!({"spec": {"progressDeadlineSeconds": 10}});
    api.patch(
        "api",
        &Default::default(),
        &kube::api::Patch::Merge(&deadline),
    )
    .await
    .expect("patched");
    let image = pinned("e2");
    sim.set_image(&image.to_string(), Outcome::NeverReady);
    let ws = workspace();
    let deployer = deployer(&sim).timeout(Duration::from_secs(30));
    let err = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("never ready");
    assert!(
        matches!(kube_error(&err), KubeError::DeadlineExceeded { .. }),
        "{err}"
    );
    // The spec names the digest and its own rollout's deadline passed: that
    // condition is this rollout's, not one left from before.
    let started = Instant::now();
    let err = deployer
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("still never ready");
    assert!(
        matches!(kube_error(&err), KubeError::DeadlineExceeded { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "at once");
    assert_eq!(sim.request_count("PATCH"), 2, "the deadline and one deploy");
}

#[tokio::test]
async fn a_cancelled_run_patches_nothing() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    deployer
        .deploy(
            app(&ws),
            &pinned("c0"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("rolls");
    let token = CancellationToken::new();
    token.cancel();
    let ctx = Context::new().with_cancellation(token);

    let err = deployer
        .deploy(app(&ws), &pinned("c1"), &DeployMeta::default(), &ctx)
        .await
        .expect_err("cancelled before the patch");
    assert!(
        matches!(kube_error(&err), KubeError::Cancelled { .. }),
        "{err}"
    );
    let err = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &ctx)
        .await
        .expect_err("cancelled before the patch");
    assert!(
        matches!(kube_error(&err), KubeError::Cancelled { .. }),
        "{err}"
    );
    assert_eq!(sim.request_count("PATCH"), 1, "only the first deploy's");
}

#[tokio::test]
async fn rolling_back_to_the_current_revision_changes_nothing() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);

    let rollout = deployer
        .rollback(app(&ws), RollbackTarget::Revision(1), &Context::new())
        .await
        .expect("nothing to do");

    assert!(!rollout.changed);
    assert_eq!(rollout.revision, Some(1));
    assert_eq!(rollout.image, V1);
    assert_eq!(sim.request_count("PATCH"), 0);
}

#[tokio::test]
async fn a_conflicting_change_during_rollback_is_reported_as_such() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    deployer
        .deploy(
            app(&ws),
            &pinned("d0"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("rolls");
    let path = "/apis/apps/v1/namespaces/default/deployments/api";
    sim.fail_next("PATCH", path, 409);

    let err = deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect_err("conflict");

    assert!(
        matches!(
            kube_error(&err),
            KubeError::Conflict {
                step: "rollback",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("run again"), "{err}");
    // The conflict was one request; the retry a person makes goes through.
    deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("rolls back");
}

#[tokio::test]
async fn a_server_error_names_the_step() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim).retry(RetryPolicy::none());
    sim.fail_next(
        "GET",
        "/apis/apps/v1/namespaces/default/deployments/api",
        500,
    );

    let err = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect_err("500");

    let KubeError::Api { step, workload, .. } = kube_error(&err) else {
        panic!("expected Api, got {err}");
    };
    assert_eq!(
        (*step, workload.as_str()),
        ("read deployment", "default/api")
    );
    assert!(err.to_string().contains("injected 500"), "{err}");
}
