//! Composing a pipeline in Rust with a `Deployer` of your own.
//!
//! shipflow's four parts are traits; this program brings its own deployer, one that
//! "deploys" an app by writing a release file into a directory and keeps the last
//! releases for rollback (a stand-in for whatever your platform is: systemd units, a
//! PaaS API, an edge config). It is configured like the built-in ones, from its own
//! section of `shipflow.toml`, `[apps.<app>.deploy.releases]`, checked when the
//! workspace loads. The pipeline around it is shipflow's: change impact,
//! concurrency, events, hooks, the report, and automatic rollback when your
//! deployer says a rollout failed.
//!
//! ```text
//! cargo run --example custom_pipeline
//! ```
//!
//! Change detection, build and registry use `shipflow_kit::testing` here so the
//! program needs nothing installed; swap in `GitChangeDetector`, `NativeBuilder` and
//! `RegistryClient` for real work.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::ensure;
use async_trait::async_trait;
use shipflow_kit::testing::{FakeBuilder, MemoryRegistry, ScriptedDetector};
use shipflow_kit::{
    App, BoxError, ConfigSection, Context, DeployMeta, Deployed, Deployer, EventKind, EventSink,
    ImageRef, Outcome, Pipeline, Revision, RollbackTarget, Rollout, Schema, SectionContext,
    SectionError, Selection, Workspace,
};

/// The deployer's own section: `[apps.<app>.deploy.releases]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Releases {
    /// The release channel written into each release.
    #[serde(default = "stable")]
    channel: String,
    /// How many releases to keep for rollback.
    #[serde(default = "five")]
    keep: usize,
}

fn stable() -> String {
    "stable".into()
}

fn five() -> usize {
    5
}

impl ConfigSection for Releases {
    fn validate(&mut self, _ctx: &SectionContext<'_>) -> Result<(), SectionError> {
        if !(1..=100).contains(&self.keep) {
            return Err(SectionError::new("keep", "keep 1 to 100 releases"));
        }
        if self.channel.is_empty() || !self.channel.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(SectionError::new(
                "channel",
                "a channel is lowercase letters",
            ));
        }
        Ok(())
    }
}

/// The user's deployer: one JSON file per release in `<dir>/<app>/`, and a `current`
/// file naming the live one.
struct ReleaseDirDeployer {
    dir: PathBuf,
    /// Apps whose next release fails its health check: the example's way to show a
    /// bad release, as a real platform would report one.
    unhealthy: Mutex<BTreeSet<String>>,
}

/// What one release file records.
#[derive(serde::Serialize, serde::Deserialize)]
struct Release {
    number: u64,
    image: String,
    fingerprint: Option<shipflow_kit::Fingerprint>,
    git_sha: Option<String>,
    change_cause: String,
    channel: String,
}

/// The deployer's errors name the app and the step, like shipflow's own.
#[derive(Debug, thiserror::Error)]
enum ReleaseError {
    #[error("{app}: {step}: {source}")]
    Io {
        app: String,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{app}: deploy: release {number} failed its health check")]
    Unhealthy { app: String, number: u64 },
    #[error("{app}: rollback: no release {number} (see history)")]
    NoSuchRelease { app: String, number: u64 },
    #[error("{app}: deploy: no [apps.{app}.deploy.releases] section")]
    NoSection { app: String },
}

impl ReleaseDirDeployer {
    fn releases(&self, app: &str) -> Result<Vec<Release>, ReleaseError> {
        let io = |source| ReleaseError::Io {
            app: app.to_owned(),
            step: "read releases",
            source,
        };
        let dir = self.dir.join(app);
        let mut releases = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(releases);
        };
        for entry in entries {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).map_err(io)?;
                let release = serde_json::from_str(&text)
                    .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
                releases.push(release);
            }
        }
        releases.sort_by_key(|r: &Release| r.number);
        Ok(releases)
    }

    fn live(&self, app: &str) -> Option<u64> {
        std::fs::read_to_string(self.dir.join(app).join("current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn activate(&self, app: &str, number: u64) -> Result<(), ReleaseError> {
        write(&self.dir.join(app).join("current"), &number.to_string()).map_err(|source| {
            ReleaseError::Io {
                app: app.to_owned(),
                step: "activate",
                source,
            }
        })
    }
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}

#[async_trait]
impl Deployer for ReleaseDirDeployer {
    async fn current(&self, app: &App, _ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        let live = self.live(&app.name);
        let release = self
            .releases(&app.name)?
            .into_iter()
            .find(|r| Some(r.number) == live);
        Ok(release.map(|r| {
            Deployed::new(r.image)
                .with_revision(Some(r.number))
                .with_fingerprint(r.fingerprint)
                .with_git_sha(r.git_sha)
        }))
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let image = image.to_string();
        let releases = self.releases(&app.name)?;
        let workload = format!("release dir {}", self.dir.join(&app.name).display());
        if let Some(live) = releases
            .iter()
            .find(|r| Some(r.number) == self.live(&app.name))
            && live.image == image
        {
            return Ok(Rollout::new(image, workload, false).with_revision(Some(live.number)));
        }
        let settings =
            app.deploy_target::<Releases>("releases")?
                .ok_or_else(|| ReleaseError::NoSection {
                    app: app.name.clone(),
                })?;
        let number = releases.last().map_or(1, |r| r.number + 1);
        ctx.message(format!("writing release {number} to {}", settings.channel));
        let release = Release {
            number,
            image: image.clone(),
            fingerprint: meta.fingerprint.clone(),
            git_sha: meta.git_sha.clone(),
            change_cause: meta.change_cause.clone(),
            channel: settings.channel.clone(),
        };
        // Keep the newest `keep` releases, this one included.
        for old in releases.iter().rev().skip(settings.keep.saturating_sub(1)) {
            let path = self
                .dir
                .join(&app.name)
                .join(format!("{}.json", old.number));
            std::fs::remove_file(&path).map_err(|source| ReleaseError::Io {
                app: app.name.clone(),
                step: "prune releases",
                source,
            })?;
        }
        let path = self.dir.join(&app.name).join(format!("{number}.json"));
        let json = serde_json::to_string_pretty(&release)?;
        write(&path, &json).map_err(|source| ReleaseError::Io {
            app: app.name.clone(),
            step: "write release",
            source,
        })?;
        self.activate(&app.name, number)?;
        let unhealthy = self
            .unhealthy
            .lock()
            .map_or(false, |mut apps| apps.remove(&app.name));
        if unhealthy {
            return Err(ReleaseError::Unhealthy {
                app: app.name.clone(),
                number,
            }
            .into());
        }
        Ok(Rollout::new(image, workload, true).with_revision(Some(number)))
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        _ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let releases = self.releases(&app.name)?;
        let live = self.live(&app.name).unwrap_or(0);
        let target = match to {
            RollbackTarget::Previous => releases.iter().rev().find(|r| r.number < live),
            RollbackTarget::Revision(n) => releases.iter().find(|r| r.number == n),
        };
        let Some(target) = target else {
            let number = match to {
                RollbackTarget::Previous => live.saturating_sub(1),
                RollbackTarget::Revision(n) => n,
            };
            return Err(ReleaseError::NoSuchRelease {
                app: app.name.clone(),
                number,
            }
            .into());
        };
        self.activate(&app.name, target.number)?;
        Ok(Rollout::new(
            target.image.clone(),
            format!("release dir {}", self.dir.join(&app.name).display()),
            true,
        )
        .with_revision(Some(target.number)))
    }

    async fn history(&self, app: &App, _ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        let live = self.live(&app.name);
        Ok(self
            .releases(&app.name)?
            .into_iter()
            .map(|r| {
                Revision::new(r.number, r.image)
                    .with_change_cause(Some(r.change_cause))
                    .with_current(Some(r.number) == live)
            })
            .collect())
    }
}

const SHIPFLOW_TOML: &str = r#"
[workspace]
registry = "registry.example.com/shop"
shared = ["packages/**"]
hooks = { post_deploy = "echo released $SHIPFLOW_APP as $SHIPFLOW_IMAGE" }

[apps.cart]
deploy.releases = { channel = "beta", keep = 2 }
[apps.checkout]
deploy.releases = {}
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let releases = tempfile::tempdir()?;
    let deployer = Arc::new(ReleaseDirDeployer {
        dir: releases.path().to_owned(),
        unhealthy: Mutex::default(),
    });
    let registry = Arc::new(MemoryRegistry::new());
    let builder = Arc::new(FakeBuilder::new());
    // The deployer's section is read like the built-in ones: a bad value is refused
    // when the workspace loads, naming the key and its line.
    let schema = Schema::new().deploy_target::<Releases>("releases");
    let bad = SHIPFLOW_TOML.replace("keep = 2", "keep = 0");
    let refused = Workspace::loader()
        .schema(schema.clone())
        .from_toml(&bad, ".")
        .err()
        .ok_or_else(|| anyhow::anyhow!("keep = 0 must be refused"))?;
    println!("0. A bad setting is refused before anything runs:\n  {refused}\n");
    let workspace = Workspace::loader()
        .schema(schema)
        .from_toml(SHIPFLOW_TOML, ".")?;
    // Progress for people: every event the pipeline and the adapters emit.
    let events = EventSink::new(|event| {
        if let (Some(app), EventKind::Message { text }) = (&event.app, &event.kind) {
            println!("  [{app} {}] {text}", event.stage);
        }
    });

    let run = |detector: ScriptedDetector| {
        Pipeline::builder(workspace.clone())
            .detector(Arc::new(detector))
            .builder(builder.clone())
            .registry(registry.clone())
            .deployer(deployer.clone())
            .events(events.clone())
            .build()
    };

    println!("1. First run, no base: both apps ship");
    let first = run(ScriptedDetector::new())?
        .run(None, "HEAD", &Selection::default())
        .await?;
    print_outcomes(&first);
    ensure!(
        first.apps.iter().all(|a| a.outcome == Outcome::Deployed),
        "both apps deploy"
    );

    println!("\n2. A shared package changes: both ship, and checkout's new release is bad");
    deployer
        .unhealthy
        .lock()
        .map_err(|_| anyhow::anyhow!("lock poisoned"))?
        .insert("checkout".into());
    let second = run(ScriptedDetector::new()
        .with_change("packages/money/lib.rs")
        .with_file("packages/money/lib.rs", "v2"))?
    .run(Some("HEAD~1"), "HEAD", &Selection::default())
    .await?;
    print_outcomes(&second);
    let outcome = |app: &str| {
        second
            .apps
            .iter()
            .find(|a| a.app == app)
            .map(|a| &a.outcome)
    };
    ensure!(outcome("cart") == Some(&Outcome::Deployed), "cart deploys");
    ensure!(
        matches!(outcome("checkout"), Some(Outcome::RolledBack { .. })),
        "checkout is rolled back"
    );

    println!("\n3. checkout's history, from the user's deployer:");
    let checkout = workspace
        .app("checkout")
        .ok_or_else(|| anyhow::anyhow!("checkout is in the workspace"))?;
    let history = deployer
        .history(checkout, &Context::new())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    for r in &history {
        let live = if r.current { "  <- live" } else { "" };
        println!("  release {} {}{live}", r.number, r.image);
    }
    ensure!(
        history.len() == 2 && history[0].current,
        "two releases, the first live again"
    );
    Ok(())
}

fn print_outcomes(report: &shipflow_kit::Report) {
    for app in &report.apps {
        let release = app
            .rollout
            .as_ref()
            .or(app.rollback.as_ref())
            .and_then(|r| r.revision);
        let error = app
            .error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        println!(
            "  {}: {:?}, release {release:?}{error}",
            app.app, app.outcome
        );
    }
}
