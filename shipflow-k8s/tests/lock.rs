//! The deploy lock through the real `kube::Client` against the simulated API server:
//! two pipelines contending for one app, takeover of an expired lease, renewal,
//! release on failure.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use serde_json::json;
use shipflow_core::{Context, DeployMeta, Deployer, EventKind, EventSink};
use shipflow_k8s::testing::Outcome;
use shipflow_k8s::{KubeError, LockOptions};

use common::{app, deployer, kube_error, pinned, sim, workspace};

const NS: &str = "default";
const LEASE: &str = "shipflow-lock-api";

fn options(identity: &str, wait: Duration) -> LockOptions {
    LockOptions {
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        wait,
    }
}

#[tokio::test]
async fn a_second_pipeline_fails_naming_the_holder_after_its_wait() {
    let sim = sim(2).await;
    let ws = workspace();
    let first =
        deployer(&sim).deploy_lock(options("pipeline-1 (ci job 17)", Duration::from_secs(1)));
    let second = deployer(&sim).deploy_lock(options("pipeline-2", Duration::from_millis(300)));

    let held = first
        .lock(app(&ws), &Context::new())
        .await
        .expect("free lock");
    assert_eq!(held.lease(), format!("{NS}/{LEASE}"));
    let lease = sim.lease(NS, LEASE).expect("the lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], "pipeline-1 (ci job 17)");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);

    let started = std::time::Instant::now();
    let err = second
        .deploy(
            app(&ws),
            &pinned("ab"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("locked");
    assert!(started.elapsed() >= Duration::from_millis(300), "waited");
    let KubeError::Locked { holder, lease, .. } = kube_error(&err) else {
        panic!("expected Locked, got {err}");
    };
    assert_eq!(holder, "pipeline-1 (ci job 17)");
    assert_eq!(lease, &format!("{NS}/{LEASE}"));
    let text = err.to_string();
    assert!(
        text.contains("is held by pipeline-1 (ci job 17) (seen unchanged for"),
        "{text}"
    );
    assert!(
        text.contains("kubectl -n default delete lease shipflow-lock-api"),
        "{text}"
    );
    // Nothing was rolled.
    assert_eq!(sim.request_count("PATCH"), 0);

    held.release().await.expect("released");
    assert!(sim.lease(NS, LEASE).is_none(), "release deletes the lease");
}

#[tokio::test]
async fn two_deploys_of_one_app_run_one_after_the_other() {
    let sim = sim(2).await;
    let ws = workspace();
    let first = deployer(&sim).deploy_lock(options("pipeline-1", Duration::from_secs(20)));
    let second = deployer(&sim).deploy_lock(options("pipeline-2", Duration::from_secs(20)));
    let held = first
        .lock(app(&ws), &Context::new())
        .await
        .expect("free lock");

    // The second pipeline starts while the first holds the lock, and waits.
    let waiting = std::sync::Arc::new(tokio::sync::Notify::new());
    let told = waiting.clone();
    let ctx = Context::new().with_events(EventSink::new(move |e| {
        if let EventKind::Message { text } = &e.kind
            && text.starts_with(
                "waiting for deploy lock default/shipflow-lock-api: held by pipeline-1",
            )
        {
            told.notify_one();
        }
    }));
    let ws2 = ws.clone();
    let contender = tokio::spawn(async move {
        second
            .deploy(app(&ws2), &pinned("02"), &DeployMeta::default(), &ctx)
            .await
            .map(|r| r.image)
            .map_err(|e| e.to_string())
    });
    waiting.notified().await;
    assert_eq!(
        sim.request_count("PATCH"),
        0,
        "the second waits before patching"
    );

    // The first deploys inside its lock (same identity: not taken again), then releases.
    first
        .deploy(
            app(&ws),
            &pinned("01"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("first rolls");
    assert!(
        sim.lease(NS, LEASE).is_some(),
        "the outer lock is still held"
    );
    held.release().await.expect("released");

    let image = contender.await.expect("joins").expect("second rolls after");
    assert_eq!(image, pinned("02").to_string());
    assert!(sim.lease(NS, LEASE).is_none(), "the second released too");
}

#[tokio::test]
async fn a_failed_rollout_releases_the_lock() {
    let sim = sim(2).await;
    sim.set_outcome(NS, "api", Outcome::ImagePullFailure);
    let ws = workspace();
    let deployer = deployer(&sim).deploy_lock(options("pipeline-1", Duration::from_secs(1)));
    deployer
        .deploy(
            app(&ws),
            &pinned("ee"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("cannot pull");
    assert!(sim.lease(NS, LEASE).is_none(), "released on failure");
    assert_eq!(sim.request_count("POST"), 1);
    assert_eq!(sim.request_count("DELETE"), 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let sim = sim(2).await;
    sim.seed_object(
        "Lease",
        NS,
        json!({
            "metadata": {"name": LEASE},
            "spec": {
                "holderIdentity": "crashed-pipeline",
                "leaseDurationSeconds": 1,
                "acquireTime": "2020-01-01T00:00:00.000000Z",
                "renewTime": "2020-01-01T00:00:00.000000Z",
                "leaseTransitions": 3,
            },
        }),
    );
    let ws = workspace();
    let deployer = deployer(&sim).deploy_lock(options("pipeline-2", Duration::from_secs(5)));
    let started = std::time::Instant::now();
    let held = deployer
        .lock(app(&ws), &Context::new())
        .await
        .expect("expired: taken over");
    // Judged by this client's clock, as client-go does: the lease is expired once
    // this client saw it unrenewed for its whole duration, whatever its renewTime.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited a lease duration"
    );
    let lease = sim.lease(NS, LEASE).expect("exists");
    assert_eq!(lease["spec"]["holderIdentity"], "pipeline-2");
    assert_eq!(lease["spec"]["leaseTransitions"], 4);
    held.release().await.expect("released");
    assert!(sim.lease(NS, LEASE).is_none());
}

#[tokio::test]
async fn a_held_lock_is_renewed() {
    let sim = sim(2).await;
    let ws = workspace();
    let deployer = deployer(&sim).deploy_lock(LockOptions {
        identity: "pipeline-1".into(),
        lease_duration: Duration::from_secs(1),
        wait: Duration::from_secs(1),
    });
    let held = deployer
        .lock(app(&ws), &Context::new())
        .await
        .expect("free lock");
    let lease = sim.lease(NS, LEASE).expect("exists");
    let rv = lease["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();

    // The holder writes a newer renewTime every third of the lease duration (the
    // generous bound allows for a loaded CI machine).
    let api: Api<Lease> = Api::namespaced(sim.client(), NS);
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={LEASE}"))
        .timeout(5);
    let mut events = api.watch(&wp, &rv).await.expect("watch").boxed();
    let event = tokio::time::timeout(Duration::from_secs(3), events.next())
        .await
        .expect("renewed")
        .expect("an event")
        .expect("not an error");
    let WatchEvent::Modified(renewed) = event else {
        panic!("expected a renewal, got {event:?}");
    };
    let spec = renewed.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("pipeline-1"));
    assert!(spec.renew_time > spec.acquire_time);
    held.release().await.expect("released");
    assert!(sim.lease(NS, LEASE).is_none());
}

#[tokio::test]
async fn a_lease_showing_our_identity_that_we_do_not_hold_is_taken_fresh() {
    // As when our create reached the server but its answer was lost: the Lease
    // names us, yet no lock of ours holds it. Taking it must renew and release it,
    // not treat it as an outer lock that would.
    let sim = sim(2).await;
    sim.seed_object(
        "Lease",
        NS,
        json!({
            "metadata": {"name": LEASE},
            "spec": {
                "holderIdentity": "pipeline-1",
                "leaseDurationSeconds": 15,
                "renewTime": k8s_openapi::jiff::Timestamp::now().to_string(),
            },
        }),
    );
    let ws = workspace();
    let deployer = deployer(&sim).deploy_lock(options("pipeline-1", Duration::from_secs(1)));
    let held = deployer
        .lock(app(&ws), &Context::new())
        .await
        .expect("ours");
    // A lock taken inside it is nested: releasing that one keeps the Lease.
    let inner = deployer
        .lock(app(&ws), &Context::new())
        .await
        .expect("nested");
    inner.release().await.expect("released");
    assert!(
        sim.lease(NS, LEASE).is_some(),
        "the outer lock still holds it"
    );
    held.release().await.expect("released");
    assert!(sim.lease(NS, LEASE).is_none(), "the Lease is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_whose_holder_clock_is_a_minute_behind_is_not_taken() {
    let sim = sim(1).await;
    // The holder renews every 200 ms, but its clock is 60 s behind: its renewTime
    // looks long expired to ours.
    let behind = || {
        (k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60))
            .to_string()
    };
    sim.seed_object(
        "Lease",
        NS,
        json!({"metadata": {"name": LEASE}, "spec": {"holderIdentity": "skewed-pipeline",
            "leaseDurationSeconds": 15, "acquireTime": behind(), "renewTime": behind()}}),
    );
    let api: Api<Lease> = Api::namespaced(sim.client(), NS);
    let holder = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(mut lease) = api.get(LEASE).await else {
                return;
            };
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    behind().parse().expect("a timestamp"),
                ));
            }
            if api
                .replace(LEASE, &Default::default(), &lease)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let ws = workspace();
    let err = deployer(&sim)
        .deploy_lock(options("pipeline-2", Duration::from_millis(1500)))
        .lock(app(&ws), &Context::new())
        .await
        .expect_err("the holder renews: the lease is live");
    holder.abort();
    let KubeError::Locked { holder, .. } = &err else {
        panic!("expected Locked, got {err}");
    };
    assert_eq!(holder, "skewed-pipeline");
    assert_eq!(
        sim.lease(NS, LEASE).expect("exists")["spec"]["holderIdentity"],
        "skewed-pipeline",
        "not taken over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_stops_the_deploy_before_its_next_change() {
    let sim = sim(2).await;
    sim.set_outcome(NS, "api", Outcome::Unschedulable);
    let ws = workspace();
    let deployer = deployer(&sim)
        .timeout(Duration::from_secs(20))
        .deploy_lock(LockOptions {
            identity: "pipeline-1".into(),
            lease_duration: Duration::from_secs(1),
            wait: Duration::from_secs(1),
        });
    // While the rollout hangs, another pipeline takes the lease over.
    let take_over = async {
        while sim.request_count("PATCH") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let api: Api<Lease> = Api::namespaced(sim.client(), NS);
        let mut lease = api.get(LEASE).await.expect("held");
        lease.spec.as_mut().expect("spec").holder_identity = Some("pipeline-2".into());
        api.replace(LEASE, &Default::default(), &lease)
            .await
            .expect("taken over");
    };
    let started = std::time::Instant::now();
    let (image, meta, ctx) = (pinned("70"), DeployMeta::default(), Context::new());
    let (result, ()) = tokio::join!(deployer.deploy(app(&ws), &image, &meta, &ctx), take_over);
    let err = result.expect_err("the lock is gone");
    let KubeError::LockLost { why, .. } = kube_error(&err) else {
        panic!("expected LockLost, got {err}");
    };
    assert!(why.contains("another holder"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "noticed at the next renewal"
    );
    assert_eq!(sim.request_count("PATCH"), 1, "nothing changed after");

    assert_eq!(
        sim.lease(NS, LEASE).expect("pipeline-2's")["spec"]["holderIdentity"],
        "pipeline-2",
        "releasing the lost lock leaves the new holder's lease alone"
    );
}
