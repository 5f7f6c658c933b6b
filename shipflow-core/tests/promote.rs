//! Promotion: production gets the exact digest that runs in staging, no rebuild.

use std::sync::Arc;

use shipflow_core::testing::{FakeBuilder, FakeDeployer, MemoryRegistry, ScriptedDetector};
use shipflow_core::{
    Context, Deployer, Outcome, Pipeline, PromoteError, Selection, Stop, Workspace, promote,
};

const TOML: &str = r#"
[workspace]
registry = "r.io/staging"
[apps.web]
[environments.staging]
branches = ["main"]
[environments.production]
tags = ["v*"]
registry = "r.io/prod"
"#;

#[tokio::test]
async fn production_gets_what_runs_in_staging_copied_by_digest() {
    let ws = Workspace::from_toml(TOML, ".").expect("valid");
    let staging = ws.for_environment("staging").expect("staging");
    let production = ws.for_environment("production").expect("production");
    let registry = Arc::new(MemoryRegistry::new());
    let (in_staging, in_production) = (Arc::new(FakeDeployer::new()), FakeDeployer::new());
    let in_staging_ref: &FakeDeployer = &in_staging;
    let builder = Arc::new(FakeBuilder::new());
    let ctx = Context::new();
    let (staging, production) = (&staging, &production);

    let err = promote(
        stop("staging", staging, in_staging_ref),
        stop("production", production, &in_production),
        Some(registry.as_ref()),
        &ctx,
    )
    .await
    .expect_err("nothing in staging yet");
    assert!(matches!(err, PromoteError::NothingRuns { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "web: promote: nothing runs in staging; deploy it there first"
    );

    let deployed = Pipeline::builder(staging.clone())
        .detector(Arc::new(ScriptedDetector::new()))
        .builder(builder.clone())
        .registry(registry.clone())
        .deployer(in_staging.clone())
        .build()
        .expect("pipeline")
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("run");
    assert_eq!(deployed.apps[0].outcome, Outcome::Deployed);
    let staged = deployed.apps[0].image.clone().expect("pinned");
    assert_eq!(staged.name(), "r.io/staging/web");

    let promotion = promote(
        stop("staging", staging, in_staging_ref),
        stop("production", production, &in_production),
        Some(registry.as_ref()),
        &ctx,
    )
    .await
    .expect("promoted");
    assert!(promotion.copied, "different registries: copied");
    assert_eq!(promotion.image.name(), "r.io/prod/web");
    assert_eq!(
        promotion.image.digest(),
        staged.digest(),
        "the same digest, no rebuild"
    );
    assert!(promotion.rollout.changed);
    assert_eq!(builder.builds().len(), 1, "built once, for staging");
    let now = in_production
        .current(production.app("web").expect("web"), &ctx)
        .await
        .expect("current")
        .expect("runs");
    assert_eq!(now.image, promotion.image.to_string());
    assert_eq!(
        now.fingerprint,
        deployed.apps[0].fingerprint.clone().into(),
        "the fingerprint travels"
    );
    let history = in_production
        .history(production.app("web").expect("web"), &ctx)
        .await
        .expect("history");
    assert_eq!(
        history[0].change_cause.as_deref(),
        Some("shipflow: web promoted from staging (revision 1)")
    );

    let again = promote(
        stop("staging", staging, in_staging_ref),
        stop("production", production, &in_production),
        Some(registry.as_ref()),
        &ctx,
    )
    .await
    .expect("promoted");
    assert!(!again.rollout.changed, "already there");

    let err = promote(
        stop("staging", staging, in_staging_ref),
        stop("production", production, &FakeDeployer::new()),
        None,
        &ctx,
    )
    .await
    .expect_err("no registry to copy with");
    assert!(
        err.to_string().contains(
            "copy the image: r.io/staging/web and r.io/prod/web are different repositories"
        ),
        "{err}"
    );
}

fn stop<'a>(environment: &'a str, ws: &'a Workspace, deployer: &'a dyn Deployer) -> Stop<'a> {
    Stop {
        environment,
        app: ws.app("web").expect("web"),
        deployer,
    }
}
