//! The quickstart: shipflow on a sample monorepo, with no cluster, daemon or cloud.
//!
//! It creates a git repository in a temporary directory (three apps and two shared
//! packages, with a `shipflow.toml`), ships every app once, edits one app, and ships
//! again: only that app is rebuilt, and only its changed layer moves.
//!
//! ```text
//! cargo run --example quickstart
//! cargo run --example quickstart -- --keep   # keep the repository and the store to look at
//! ```
//!
//! Everything is real and embedded: change detection is `GitChangeDetector` (gix),
//! images are built by the daemonless `NativeBuilder` into reproducible OCI layers,
//! and the registry is `LayoutRegistry`, a directory of OCI layouts that skopeo and
//! podman read. It deploys nothing (the sample apps are files, not servers): the
//! deploy stage is printed as a plan; `examples/shipflow deploy --target docker|k8s`
//! does it for real.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::oci::{LayoutRegistry, NativeBuilder};
use shipflow_kit::{BuilderByType, Outcome, Pipeline, Report, Selection, Workspace};

const SHIPFLOW_TOML: &str = r#"# The sample monorepo's workspace.
[workspace]
registry = "localhost/quickstart"
shared = ["packages/common/**"]       # a change here ships every app
tag = "${BRANCH}-${SHORT_SHA}"

# Each app is built natively: dependencies in one layer, the app's code in the last.
[apps.api]
depends_on = ["packages/db"]
build = { type = "native", cmd = ["python3", "/srv/app/main.py"], layers = [
  { from = "packages", to = "/srv/packages" },
  { from = "apps/api", to = "/srv/app" },
] }

[apps.web]
build = { type = "native", expose = ["8080/tcp"], layers = [
  { from = "packages/common", to = "/srv/packages/common" },
  { from = "apps/web", to = "/srv/www" },
] }

[apps.worker]
depends_on = ["packages/db", "api"]   # ships when api ships
build = { type = "native", cmd = ["python3", "/srv/app/main.py"], layers = [
  { from = "packages", to = "/srv/packages" },
  { from = "apps/worker", to = "/srv/app" },
] }
"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("monorepo");
    let repo = repo.as_path();
    std::fs::create_dir_all(repo)?;
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

    // The embedded defaults: images built into OCI layouts, pushed into a local store.
    let builds = dir.path().join("build");
    let store = LayoutRegistry::new(dir.path().join("store"));
    let builder = BuilderByType::new().route(
        shipflow_kit::oci::NATIVE_BUILD_TYPE,
        Arc::new(NativeBuilder::new(&builds)),
    );
    let pipeline = || -> anyhow::Result<Pipeline> {
        let workspace = Workspace::load(repo.join("shipflow.toml"))?;
        Ok(Pipeline::builder(workspace)
            .detector(Arc::new(GitChangeDetector::open(repo)?))
            .builder(Arc::new(builder.clone()))
            .registry(Arc::new(store.clone()))
            .skip_deploy(true)
            .build()?)
    };

    println!("2. First run, no base revision: every app is built and stored");
    let first = pipeline()?.run(None, "HEAD", &Selection::default()).await?;
    print_report(&first);

    println!("\n3. Edit apps/web/index.html and commit");
    write(repo, "apps/web/index.html", "<h1>web v2</h1>\n")?;
    git(repo, &["commit", "-q", "-am", "web: v2 headline"])?;

    println!("\n4. Run again with base HEAD~1: only web is rebuilt, only its code layer moves");
    let second = pipeline()?
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await?;
    print_report(&second);

    let shipped: Vec<&str> = second
        .apps
        .iter()
        .filter(|a| a.outcome == Outcome::Pushed)
        .map(|a| a.app.as_str())
        .collect();
    ensure!(
        shipped == ["web"],
        "expected only web to ship, got {shipped:?}"
    );
    let web = &second.apps[0];
    let push = web.push.as_ref().context("web was pushed")?;
    ensure!(
        push.blobs_uploaded == 2 && push.blobs_skipped == 1,
        "expected web's code layer and config to move and its package layer to stay, got {push:?}"
    );

    println!("\n5. The deploy plan (the sample apps are files, not servers: nothing is started):");
    for app in &second.apps {
        if let Some(image) = &app.image {
            println!("   {}: roll its workload to {image}", app.app);
        }
    }
    let web_ref = web.image.clone().context("web has an image")?;
    println!(
        "\nDone: 1 of 3 apps rebuilt; {} bytes stored this time, {} the first time.",
        second.bytes_pushed(),
        first.bytes_pushed()
    );
    let inspect = format!(
        "skopeo inspect oci:{}:{}",
        store.layout_dir(&web_ref).display(),
        web.tag
    );
    let cli = |repo: &Path| {
        format!(
            "cd {} && cargo run --manifest-path {}/Cargo.toml --features cli --example shipflow -- plan --base HEAD~1",
            repo.display(),
            env!("CARGO_MANIFEST_DIR")
        )
    };
    if keep {
        let kept = dir.keep();
        println!("Kept in {}; look inside: {inspect}", kept.display());
        println!("Try the CLI on it:\n  {}", cli(&kept.join("monorepo")));
    } else {
        println!(
            "Run with -- --keep to keep the repository and the store, then look inside ({inspect})\nand try the CLI on it ({})",
            cli(Path::new("<kept dir>/monorepo"))
        );
    }
    Ok(())
}

fn print_report(report: &Report) {
    for app in &report.apps {
        let why = app
            .reasons
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let moved = app.push.as_ref().map_or(String::new(), |p| {
            format!(
                "{} of {} blobs stored ({} bytes), {} already there",
                p.blobs_uploaded,
                p.blobs_uploaded + p.blobs_skipped,
                p.bytes_uploaded,
                p.blobs_skipped
            )
        });
        println!("   {:7} {moved}  ({why})", app.app);
        if let Some(image) = &app.image {
            println!("           {image}");
        }
        if let Some(error) = &app.error {
            println!("           error: {error}");
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
