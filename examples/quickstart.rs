//! The quickstart: shipflow on a sample monorepo, with no cluster, daemon or cloud.
//!
//! It creates a git repository in a temporary directory (three apps and two shared
//! packages, with a `shipflow.toml`) and, beside it, a GitOps config repository (the
//! manifests a Flux or Argo CD controller would apply). It ships every app once, edits
//! one app, and ships again: only that app is rebuilt, only its changed layer moves,
//! and only its image line changes in the config repository. Then it shows that app's
//! deploy history and rolls it back, with a commit.
//!
//! ```text
//! cargo run --example quickstart
//! cargo run --example quickstart -- --keep   # keep the repository and the store to look at
//! ```
//!
//! Everything is real and embedded: change detection is `GitChangeDetector` (gix),
//! images are built by the daemonless `NativeBuilder` into reproducible OCI layers,
//! the registry is `LayoutRegistry`, a directory of OCI layouts that skopeo and
//! podman read, and the deployer is `GitOpsDeployer`: a deploy writes the image's
//! digest into the config repository's manifests (only the value's bytes change),
//! commits with gix and pushes with `git`. Nothing else is needed but `git`;
//! `examples/shipflow deploy --target docker|k8s` rolls containers for real.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context as _, ensure};
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::git::gitops::{self, GitOpsDeployer};
use shipflow_kit::oci::{LayoutRegistry, NativeBuilder};
use shipflow_kit::{
    BuilderByType, Context, Deployer, Outcome, Pipeline, Report, RollbackTarget, Selection,
    Workspace,
};

const SHIPFLOW_TOML: &str = r#"# The sample monorepo's workspace.
[workspace]
registry = "localhost/quickstart"
shared = ["packages/common/**"]       # a change here ships every app
tag = "${BRANCH}-${SHORT_SHA}"

# Deploys are commits to the config repository beside this one.
[workspace.gitops]
repository = "../fleet.git"
cache_dir = "../gitops-cache"
message = "deploy {apps}"
author = { name = "quickstart", email = "quickstart@example.com" }

# Each app is built natively: dependencies in one layer, the app's code in the last.
[apps.api]
depends_on = ["packages/db"]
build = { type = "native", cmd = ["python3", "/srv/app/main.py"], layers = [
  { from = "packages", to = "/srv/packages" },
  { from = "apps/api", to = "/srv/app" },
] }
deploy.gitops = { files = [{ path = "apps/api.yaml", setter = "quickstart:api" }] }

[apps.web]
build = { type = "native", expose = ["8080/tcp"], layers = [
  { from = "packages/common", to = "/srv/packages/common" },
  { from = "apps/web", to = "/srv/www" },
] }
deploy.gitops = { files = [{ path = "apps/web.yaml", setter = "quickstart:web" }] }

[apps.worker]
depends_on = ["packages/db", "api"]   # ships when api ships
build = { type = "native", cmd = ["python3", "/srv/app/main.py"], layers = [
  { from = "packages", to = "/srv/packages" },
  { from = "apps/worker", to = "/srv/app" },
] }
deploy.gitops = { files = [{ path = "apps/worker.yaml", setter = "quickstart:worker" }] }
"#;

/// A workload of the config repository, with a Flux image-policy marker on its image.
fn manifest(app: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\nspec:\n  template:\n    spec:\n      containers:\n        - name: {app}\n          image: localhost/quickstart/{app}:none # {{\"$imagepolicy\": \"quickstart:{app}\"}}\n"
    )
}

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
    println!("   apps: api, web, worker; packages: db, common");

    // The config repository a GitOps controller would apply, as a bare repository.
    let work = dir.path().join("fleet");
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "-q", "-b", "main"])?;
    for app in ["api", "web", "worker"] {
        write(&work, &format!("apps/{app}.yaml"), &manifest(app))?;
    }
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "fleet: three workloads"])?;
    git(dir.path(), &["clone", "-q", "--bare", "fleet", "fleet.git"])?;
    let fleet = dir.path().join("fleet.git");
    println!(
        "   and a config repository beside it: {}\n",
        fleet.display()
    );

    // The embedded defaults: images built into OCI layouts, pushed into a local store.
    let builds = dir.path().join("build");
    let store = LayoutRegistry::new(dir.path().join("store"));
    let builder = BuilderByType::new().route(
        shipflow_kit::oci::NATIVE_BUILD_TYPE,
        Arc::new(NativeBuilder::new(&builds)),
    );
    let workspace = || {
        Workspace::loader()
            .schema(gitops::schema())
            .load(repo.join("shipflow.toml"))
    };
    // A pipeline run's deploys become one commit.
    let deployer = Arc::new(GitOpsDeployer::from_workspace(&workspace()?)?.build());
    let pipeline = || -> anyhow::Result<Pipeline> {
        Ok(Pipeline::builder(workspace()?)
            .detector(Arc::new(GitChangeDetector::open(repo)?))
            .builder(Arc::new(builder.clone()))
            .registry(Arc::new(store.clone()))
            .deployer(deployer.clone())
            .build()?)
    };

    println!("2. First run, no base revision: every app is built, stored and deployed");
    let first = pipeline()?.run(None, "HEAD", &Selection::default()).await?;
    print_report(&first);

    println!("   the config repository's log (one commit per pipeline run):");
    print!(
        "{}",
        indent(&git_out(&fleet, &["log", "--format=%h %s", "main"])?)
    );

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
        .filter(|a| a.outcome == Outcome::Deployed)
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

    println!("\n5. The commit it made (git show): only web's image line changed");
    let show = git_out(&fleet, &["show", "--format=%h %an: %s%n%n%b", "main"])?;
    print!("{}", indent(&show));
    ensure!(
        git_out(&fleet, &["show", "--name-only", "--format=", "main"])?.trim() == "apps/web.yaml",
        "expected the deploy commit to touch apps/web.yaml only"
    );

    let workspace = workspace()?;
    let web_app = workspace.app("web").context("web is an app")?;
    let ctx = Context::new();
    println!("\n6. web's history, from the config repository's commits:");
    for revision in deployer
        .history(web_app, &ctx)
        .await
        .map_err(anyhow::Error::from_boxed)?
    {
        println!(
            "   {} {}{}\n       {}",
            revision.number,
            revision.image,
            if revision.current { "  (current)" } else { "" },
            revision.change_cause.unwrap_or_default()
        );
    }

    println!("\n7. Roll web back to the previous revision: a new commit, web's line only");
    let rolled = deployer
        .rollback(web_app, RollbackTarget::Previous, &ctx)
        .await
        .map_err(anyhow::Error::from_boxed)?;
    println!("   web runs {} again", rolled.image);
    print!(
        "{}",
        indent(&git_out(
            &fleet,
            &["log", "-1", "--stat", "--format=%h %s%n%n%b", "main"]
        )?)
    );
    let now = deployer
        .current(web_app, &ctx)
        .await
        .map_err(anyhow::Error::from_boxed)?
        .context("web is named")?;
    ensure!(
        now.image == rolled.image,
        "web should run {} after the rollback",
        rolled.image
    );

    let web_ref = web.image.clone().context("web has an image")?;
    println!(
        "\nDone: 1 of 3 apps rebuilt and redeployed; {} bytes stored this time, {} the first time.",
        second.bytes_pushed(),
        first.bytes_pushed()
    );
    let inspect = format!(
        "git --git-dir {} log -p; skopeo inspect oci:{}:{}",
        fleet.display(),
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
            "Run with -- --keep to keep the repositories and the store, then look inside ({inspect})\nand try the CLI on it ({})",
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

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

fn git_out(git_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(args)
        .output()
        .context("cannot run git: install it (apt-get install git)")?;
    ensure!(out.status.success(), "git {} failed", args.join(" "));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
