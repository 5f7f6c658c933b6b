//! The quickstart: shipflow on a sample monorepo, with no cluster, daemon or cloud.
//!
//! It creates a git repository in a temporary directory (three apps and a shared
//! package, with a `shipflow.toml`), ships every app once, edits one app, and ships
//! again: only that app is rebuilt, pushed and rolled.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Change detection is the real `GitChangeDetector`. Building, the registry and the
//! deployer are the in-memory parts of `shipflow::core::testing` for now; the native
//! OCI builder, the registry client and the Docker/Podman deployer replace them as
//! they land.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use shipflow::core::testing::{FakeBuilder, FakeDeployer, MemoryRegistry};
use shipflow::core::{Outcome, Pipeline, Report, Selection, Workspace};
use shipflow::git::GitChangeDetector;

const SHIPFLOW_TOML: &str = r#"# The sample monorepo's workspace.
[workspace]
registry = "localhost:5000/quickstart"
shared = ["packages/common/**"]       # a change here ships every app
tag = "${BRANCH}-${SHORT_SHA}"

[apps.api]
depends_on = ["packages/db"]

[apps.web]

[apps.worker]
depends_on = ["packages/db", "api"]   # ships when api ships
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let repo = dir.path();
    println!("1. A sample monorepo in {}", repo.display());
    git(repo, &["init", "-q", "-b", "main"])?;
    for (path, content) in [
        ("shipflow.toml", SHIPFLOW_TOML),
        ("apps/api/main.py", "print('api v1')\n"),
        ("apps/web/index.html", "<h1>web v1</h1>\n"),
        ("apps/worker/main.py", "print('worker v1')\n"),
        ("packages/db/db.py", "URL = 'postgres://db'\n"),
        ("packages/common/log.py", "LEVEL = 'info'\n"),
    ] {
        write(repo, path, content)?;
    }
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "initial"])?;
    println!("   apps: api, web, worker; packages: db, common\n");

    let registry = Arc::new(MemoryRegistry::new());
    let deployer = Arc::new(FakeDeployer::new());
    let builder = Arc::new(FakeBuilder::new());
    let pipeline = || -> anyhow::Result<Pipeline> {
        let workspace = Workspace::load(repo.join("shipflow.toml"))?;
        Ok(Pipeline::builder(workspace)
            .detector(Arc::new(GitChangeDetector::open(repo)?))
            .builder(builder.clone())
            .registry(registry.clone())
            .deployer(deployer.clone())
            .build()?)
    };

    println!("2. First run, no base revision: every app ships");
    let first = pipeline()?.run(None, "HEAD", &Selection::default()).await?;
    print_report(&first);

    println!("\n3. Edit apps/web/index.html and commit");
    write(repo, "apps/web/index.html", "<h1>web v2</h1>\n")?;
    git(repo, &["commit", "-q", "-am", "web: v2 headline"])?;

    println!("\n4. Run again with base HEAD~1: only web ships");
    let second = pipeline()?
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await?;
    print_report(&second);

    let shipped: Vec<&str> = second
        .apps
        .iter()
        .filter(|a| a.outcome == Outcome::Deployed)
        .map(|a| a.app.as_str())
        .collect();
    ensure!(
        shipped == ["web"],
        "expected only web to ship, got {shipped:?}"
    );
    println!(
        "\nDone: 1 of 3 apps rebuilt, {} bytes pushed (the first run pushed {}).",
        second.bytes_pushed(),
        first.bytes_pushed()
    );
    println!(
        "The in-memory builder, registry and deployer stand in for the real adapters until they land."
    );
    Ok(())
}

fn print_report(report: &Report) {
    for app in &report.apps {
        let why = app
            .reasons
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let pushed = app.push.as_ref().map_or(0, |p| p.bytes_uploaded);
        println!(
            "   {:7} {:?}  {pushed:>5} bytes pushed  ({why})",
            app.app, app.outcome
        );
        if let Some(image) = &app.image {
            println!("           runs {image}");
        }
    }
    if !report.plan.unchanged.is_empty() {
        println!("   unchanged: {}", report.plan.unchanged.join(", "));
    }
}

fn write(repo: &Path, path: &str, content: &str) -> anyhow::Result<()> {
    let path = repo.join(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, content).with_context(|| format!("cannot write {}", path.display()))
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("git")
        .current_dir(repo)
        .args([
            "-c",
            "user.name=quickstart",
            "-c",
            "user.email=quickstart@example.com",
        ])
        .args(args)
        .status()
        .context("cannot run git: install it (apt-get install git)")?;
    ensure!(status.success(), "git {} failed", args.join(" "));
    Ok(())
}
