//! The minimal deployer in shipflow's Pipeline, with its section checked at load
//! and hooks around it: the ones of shipflow.toml and one written in Rust.

use std::sync::{Arc, Mutex};

use minimal_deployer::{PinFileDeployer, schema};
use shipflow_core::testing::{FakeBuilder, MemoryRegistry, ScriptedDetector};
use shipflow_core::{
    BoxError, Context, Hook, HookEvent, Hooked, Outcome, Pipeline, Selection, Workspace,
    async_trait,
};

const TOML: &str = r#"
[workspace]
registry = "registry.example.com/acme"

[apps.api]
deploy.pinfile = { path = "deploy/api.image" }
hooks = { post_deploy = "cat deploy/api.image > deployed.txt" }
"#;

/// A hook written in Rust: records where it ran.
#[derive(Default)]
struct Record(Mutex<Vec<String>>);

#[async_trait]
impl Hook for Record {
    async fn run(&self, event: &HookEvent<'_>, _ctx: &Context) -> Result<(), BoxError> {
        let mut seen = self.0.lock().map_err(|_| "poisoned")?;
        seen.push(format!(
            "{} {} {:?}",
            event.point, event.app.name, event.target
        ));
        Ok(())
    }
}

#[tokio::test]
async fn runs_in_a_pipeline_with_hooks_around_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = Workspace::loader()
        .schema(schema())
        .from_toml(TOML, dir.path())
        .expect("valid");
    let record = Arc::new(Record::default());
    let deployer = Hooked::new(PinFileDeployer::new(dir.path()), record.clone());
    let pipeline = Pipeline::builder(workspace)
        .detector(Arc::new(
            ScriptedDetector::new().with_change("apps/api/main.rs"),
        ))
        .builder(Arc::new(FakeBuilder::new()))
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(Arc::new(deployer))
        .build()
        .expect("pipeline");
    let report = pipeline
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("run");
    let api = &report.apps[0];
    assert_eq!(api.outcome, Outcome::Deployed, "{api:?}");
    let pinned = api.image.as_ref().expect("pinned").to_string();
    let written = std::fs::read_to_string(dir.path().join("deploy/api.image")).expect("pin file");
    assert_eq!(written.trim(), pinned);
    let hooked = std::fs::read_to_string(dir.path().join("deployed.txt")).expect("post_deploy ran");
    assert_eq!(hooked.trim(), pinned, "the config hook saw the deploy");
    assert_eq!(
        *record.0.lock().expect("lock"),
        [
            "pre_deploy api Some(\"pinfile\")",
            "post_deploy api Some(\"pinfile\")"
        ]
    );

    // Again: nothing new runs.
    let again = pipeline
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("run");
    assert_eq!(again.apps[0].outcome, Outcome::Unchanged);
}

#[test]
fn its_section_is_checked_when_the_workspace_loads() {
    let bad = TOML.replace("deploy/api.image", "../../etc/passwd");
    let err = Workspace::loader()
        .schema(schema())
        .from_toml(&bad, ".")
        .expect_err("outside the repository");
    assert!(
        err.to_string().starts_with(
            "apps.api.deploy.pinfile.path: \"../../etc/passwd\" is outside the repository"
        ),
        "{err}"
    );
    let typo = TOML.replace("deploy.pinfile", "deploy.pinfiel");
    let err = Workspace::loader()
        .schema(schema())
        .from_toml(&typo, ".")
        .expect_err("unknown target");
    assert_eq!(
        err.to_string(),
        "apps.api.deploy.pinfiel: unknown deploy target \"pinfiel\" (known: pinfile)"
    );
}
