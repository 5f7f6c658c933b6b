//! Retries through the real `kube::Client` against the simulated API server: 409s on
//! the image patch, 5xx answers and broken connections are tried again, boundedly.

mod common;

use std::time::Duration;

use shipflow_core::{Context, DeployMeta, Deployer};
use shipflow_k8s::{KubeError, RetryPolicy};

use common::{app, deployer, pinned, sim, workspace};

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/api";

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        first_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn a_conflict_on_the_image_patch_is_retried() {
    let sim = sim(1).await;
    let ws = workspace();
    sim.fail_next("PATCH", DEPLOYMENT, 409);
    sim.fail_next("PATCH", DEPLOYMENT, 409);
    let rollout = deployer(&sim)
        .retry(quick())
        .deploy(
            app(&ws),
            &pinned("ab"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("the third try goes through");
    assert_eq!(rollout.revision, Some(2));
    assert_eq!(sim.requests()[&format!("PATCH {DEPLOYMENT}")], 3);
}

#[tokio::test]
async fn server_errors_and_broken_connections_are_retried() {
    let sim = sim(1).await;
    let ws = workspace();
    sim.fail_next("GET", DEPLOYMENT, 500);
    sim.drop_next("GET", DEPLOYMENT);
    sim.fail_next("PATCH", DEPLOYMENT, 503);
    sim.drop_next("WATCH", "/apis/apps/v1/namespaces/default/deployments");
    sim.fail_next("GET", "/api/v1/namespaces/default/pods", 500);

    let rollout = deployer(&sim)
        .retry(quick())
        .deploy(
            app(&ws),
            &pinned("cd"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("every request goes through on a later try");
    assert!(rollout.changed);
    let requests = sim.requests();
    assert_eq!(requests[&format!("GET {DEPLOYMENT}")], 3);
    assert_eq!(requests[&format!("PATCH {DEPLOYMENT}")], 2);
    assert_eq!(
        requests["WATCH /apis/apps/v1/namespaces/default/deployments"],
        2
    );
}

#[tokio::test]
async fn retries_are_bounded() {
    let sim = sim(1).await;
    let ws = workspace();
    for _ in 0..5 {
        sim.fail_next("GET", DEPLOYMENT, 500);
    }
    let err = deployer(&sim)
        .retry(quick())
        .current(app(&ws), &Context::new())
        .await
        .expect_err("three 500s in a row");
    assert!(
        matches!(
            err.downcast_ref::<KubeError>(),
            Some(KubeError::Api {
                step: "read deployment",
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(sim.requests()[&format!("GET {DEPLOYMENT}")], 3);
}

#[tokio::test]
async fn a_guarded_write_that_conflicts_is_not_retried() {
    let sim = sim(1).await;
    let ws = workspace();
    let deployer = deployer(&sim).retry(quick());
    deployer
        .deploy(
            app(&ws),
            &pinned("d0"),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("rolls");
    sim.fail_next("PATCH", DEPLOYMENT, 409);
    let err = deployer
        .rollback(
            app(&ws),
            shipflow_core::RollbackTarget::Previous,
            &Context::new(),
        )
        .await
        .expect_err("conflict");
    assert!(
        matches!(
            err.downcast_ref::<KubeError>(),
            Some(KubeError::Conflict { .. })
        ),
        "{err}"
    );
    assert_eq!(sim.requests()[&format!("PATCH {DEPLOYMENT}")], 2);
}
