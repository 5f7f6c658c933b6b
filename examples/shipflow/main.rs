//! The reference command-line program: shipflow on a real monorepo.
//!
//! Run it from the root of a repository that has a `shipflow.toml`:
//!
//! ```text
//! cargo run --example shipflow -- plan                       # what changed since the default base, and why
//! cargo run --example shipflow -- plan --base origin/main...HEAD --format json
//! cargo run --example shipflow -- build                      # changed apps into the local store
//! cargo run --example shipflow -- push --registry 127.0.0.1:5000/acme
//! cargo run --example shipflow -- deploy --target k8s --namespace prod
//! cargo run --example shipflow -- deploy --target docker --docker-host unix:///run/podman/podman.sock
//! cargo run --example shipflow -- rollback web --to 3 --target docker
//! cargo run --example shipflow -- history web --target k8s
//! cargo run --example shipflow -- status --target docker
//! cargo run --example shipflow -- apply k8s/ --namespace prod
//! cargo run --example shipflow -- config api-config apps/api/prod.env --dry-run
//! ```
//!
//! Exit codes: 0 shipped (for `plan`, `status` and dry runs: there is work to ship),
//! 1 failed (or an error before any app started), 2 bad usage, 3 failed and rolled
//! back, 4 nothing to do (for `apply` and `config`: all was already in place).
//! `--format json` prints the plan, report, history, status or applied objects as
//! JSON on stdout for CI. Progress bars show on a terminal, plain lines otherwise.
//! Set `RUST_LOG=shipflow=debug` for tracing.

mod parts;
mod progress;
mod render;
#[cfg(test)]
mod tests;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use shipflow_kit::{
    App, CONFIG_FILE, ChangeDetector, Context, Deployed, FailurePolicy, Pipeline, RollbackTarget,
    RunStatus, Selection, Workspace, error_chain,
};

use parts::Target;
use progress::{Mode, Progress};

#[derive(Parser)]
#[command(
    name = "shipflow",
    version,
    about = "Incremental build and deploy of monorepo apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The workspace file; its directory must be the repository root.
    #[arg(long, global = true, default_value = CONFIG_FILE)]
    config: PathBuf,
    /// Output: text for people, json for CI (progress is then not shown).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Show which apps changed, why, and what a run would do. Changes nothing.
    Plan(Changes),
    /// Build the changed apps into the local OCI layout store (no registry, no deploy).
    Build(BuildArgs),
    /// Build the changed apps and push them, uploading only the layers the registry lacks.
    Push(RunArgs),
    /// Build, push and roll the changed apps' workloads, watching each rollout and
    /// rolling back a failed one.
    Deploy(DeployArgs),
    /// Roll an app back to its previous revision, or to `--to N`.
    Rollback(RollbackArgs),
    /// An app's revisions, oldest first.
    History(HistoryArgs),
    /// What runs now for each app, and whether its inputs changed since.
    Status(StatusArgs),
    /// Kubernetes: server-side apply a directory of manifests, watching the rollouts
    /// of the Deployments that changed.
    Apply(ApplyArgs),
    /// Kubernetes: make a ConfigMap from an env file, named by its content's hash,
    /// and roll the Deployments that use it; versions no rollback needs are deleted.
    Config(ConfigArgs),
}

/// Which apps: what changed between two revisions, filtered.
#[derive(Args)]
struct Changes {
    /// The base revision; `A...B` means merge-base(A, B). Default: origin/HEAD,
    /// origin/main, main… (merge-base with HEAD), else HEAD~1.
    #[arg(long)]
    base: Option<String>,
    /// The head revision.
    #[arg(long, default_value = "HEAD")]
    head: String,
    /// Only these apps (comma separated).
    #[arg(long, value_delimiter = ',')]
    apps: Vec<String>,
    /// Every app, changed or not.
    #[arg(long)]
    all: bool,
    /// Also count uncommitted and untracked changes in the work tree (local runs).
    #[arg(long)]
    worktree: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    changes: Changes,
    /// The registry and path prefix images go under (overrides SHIPFLOW_REGISTRY
    /// and the workspace's `registry`).
    #[arg(long)]
    registry: Option<String>,
    /// Talk plain HTTP to a registry that is not on loopback.
    #[arg(long)]
    insecure: bool,
    /// How many apps are worked on at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Show what would happen; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Carry on with the other apps when one fails (default: start no new app).
    #[arg(long)]
    keep_going: bool,
    /// The `${BUILD_NUMBER}` of tag templates.
    #[arg(long, env = "BUILD_NUMBER")]
    build_number: Option<String>,
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    changes: Changes,
    /// The local OCI layout store (default `.shipflow/images`);
    /// `skopeo inspect oci:STORE/<repository>:<tag>` reads it.
    #[arg(long)]
    store: Option<PathBuf>,
    /// How many apps are built at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// Which Kubernetes cluster and namespace.
#[derive(Args)]
struct ClusterArgs {
    /// The Kubernetes namespace of apps whose deploy.kubernetes names none (overrides
    /// K8S_NAMESPACE and the workspace's namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// The kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    context: Option<String>,
}

impl ClusterArgs {
    /// `--namespace`, else K8S_NAMESPACE.
    fn namespace(&self) -> Option<String> {
        self.namespace.clone().or_else(|| {
            std::env::var("K8S_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
    }

    /// The client, and the namespace: `--namespace`, else K8S_NAMESPACE, else the
    /// kubeconfig context's.
    async fn client(&self) -> anyhow::Result<(kube::Client, String)> {
        let client =
            parts::kube_client(self.kubeconfig.as_deref(), self.context.as_deref()).await?;
        let namespace = self
            .namespace()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        Ok((client, namespace))
    }
}

/// Where workloads run.
#[derive(Args)]
struct TargetArgs {
    /// The deploy target.
    #[arg(long, value_enum)]
    target: Target,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The Docker or Podman API (`unix:///run/podman/podman.sock`, `tcp://host:2375`).
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
}

impl TargetArgs {
    async fn deployer(&self) -> anyhow::Result<Arc<dyn shipflow_kit::Deployer>> {
        parts::deployer(
            self.target,
            self.cluster.kubeconfig.as_deref(),
            self.cluster.context.as_deref(),
            self.cluster.namespace(),
            self.docker_host.as_deref(),
        )
        .await
    }
}

#[derive(Args)]
struct ApplyArgs {
    /// The directory of manifests (`*.yaml`, `*.yml`).
    dir: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Take over fields another field manager owns (`kubectl apply --force-conflicts`).
    #[arg(long)]
    force_conflicts: bool,
    /// Ask the API server to check everything; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct ConfigArgs {
    /// The ConfigMap's name as the Deployments refer to it (before the hash suffix).
    name: String,
    /// The env file: `KEY=VALUE` lines, `#` comments.
    env_file: PathBuf,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Say what would be created and rolled; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct DeployArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Deploy images already in the registry; build and push nothing.
    #[arg(long)]
    skip_build: bool,
    /// Build and push only.
    #[arg(long)]
    skip_deploy: bool,
    /// Leave a failed rollout as it is instead of rolling it back.
    #[arg(long)]
    no_rollback: bool,
}

#[derive(Args)]
struct RollbackArgs {
    /// The app.
    app: String,
    /// The revision to go back to (see `history`); default the previous one.
    #[arg(long)]
    to: Option<u64>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args)]
struct HistoryArgs {
    /// The app.
    app: String,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Args)]
struct StatusArgs {
    /// Only these apps (comma separated).
    #[arg(long, value_delimiter = ',')]
    apps: Vec<String>,
    /// The revision whose inputs are compared with what runs.
    #[arg(long, default_value = "HEAD")]
    head: String,
    #[command(flatten)]
    target: TargetArgs,
}

/// How the program ends, as an exit code a CI script can branch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    Shipped = 0,
    Failed = 1,
    RolledBack = 3,
    NothingToDo = 4,
}

impl From<RunStatus> for Exit {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Succeeded => Exit::Shipped,
            RunStatus::NothingToDo => Exit::NothingToDo,
            RunStatus::RolledBack => Exit::RolledBack,
            RunStatus::Failed | RunStatus::Cancelled => Exit::Failed,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let result = run_cli(Cli::parse()).await;
    match result {
        Ok(exit) => ExitCode::from(exit as u8),
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", error_chain(e));
            ExitCode::from(Exit::Failed as u8)
        }
    }
}

/// Runs one command line; `main` turns the result into the exit code.
async fn run_cli(cli: Cli) -> anyhow::Result<Exit> {
    let out = Output {
        format: cli.format,
        config: cli.config,
    };
    match cli.command {
        Command::Plan(args) => plan(&out, args).await,
        Command::Build(args) => build(&out, args).await,
        Command::Push(args) => push(&out, args).await,
        Command::Deploy(args) => deploy(&out, args).await,
        Command::Rollback(args) => rollback(&out, args).await,
        Command::History(args) => history(&out, args).await,
        Command::Status(args) => status(&out, args).await,
        Command::Apply(args) => apply(&out, args).await,
        Command::Config(args) => config(&out, args).await,
    }
}

/// The global options every command needs.
struct Output {
    format: Format,
    config: PathBuf,
}

impl Output {
    fn print<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        let text = match self.format {
            Format::Json => serde_json::to_string_pretty(value)? + "\n",
            Format::Text => text(value),
        };
        // A reader that went away (`| head`) is not an error of ours.
        match std::io::stdout().lock().write_all(text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn progress(&self) -> Mode {
        match self.format {
            Format::Json => Mode::Quiet,
            Format::Text => Mode::Auto,
        }
    }
}

/// The base revision: as given, none for `--all`, else the detector's default
/// (said on stderr, so the user knows what was compared).
fn base(
    changes: &Changes,
    detector: &shipflow_kit::git::GitChangeDetector,
) -> anyhow::Result<Option<String>> {
    Ok(match &changes.base {
        Some(base) => Some(base.clone()),
        None if changes.all => None,
        None => {
            let base = detector.default_base()?;
            match &base {
                Some(b) => eprintln!("base: {b} (default; choose another with --base)"),
                None => eprintln!("base: none (no earlier commit): every app is in"),
            }
            base
        }
    })
}

fn selection(changes: &Changes) -> Selection {
    Selection {
        all: changes.all,
        apps: changes.apps.clone(),
    }
}

async fn plan(out: &Output, changes: Changes) -> anyhow::Result<Exit> {
    let workspace = parts::workspace(&out.config, None)?;
    let detector = parts::detector(&workspace, changes.worktree)?;
    let base = base(&changes, &detector)?;
    let pipeline = Pipeline::builder(workspace)
        .detector(Arc::new(detector))
        .build()?;
    let plan = pipeline
        .plan(base.as_deref(), &changes.head, &selection(&changes))
        .await?;
    out.print(&plan, render::plan)?;
    Ok(if plan.apps.is_empty() {
        Exit::NothingToDo
    } else {
        Exit::Shipped
    })
}

async fn build(out: &Output, args: BuildArgs) -> anyhow::Result<Exit> {
    let workspace = parts::workspace(&out.config, None)?;
    let detector = parts::detector(&workspace, args.changes.worktree)?;
    let base = base(&args.changes, &detector)?;
    let store = match args.store {
        Some(store) => store,
        None => parts::state_dir(&workspace)?.join("images"),
    };
    let pipeline = Pipeline::builder(workspace.clone())
        .detector(Arc::new(detector))
        .builder(parts::builder(
            &workspace,
            parts::dockerfile_engine(&workspace).await?.as_ref(),
        )?)
        .registry(parts::store(&store)?)
        .skip_deploy(true)
        .concurrency(args.concurrency)
        .events(Progress::sink(out.progress()))
        .build()?;
    let report = pipeline
        .run(
            base.as_deref(),
            &args.changes.head,
            &selection(&args.changes),
        )
        .await?;
    out.print(&report, render::report)?;
    Ok(report.status().into())
}

async fn push(out: &Output, args: RunArgs) -> anyhow::Result<Exit> {
    run(out, args, None, true, false, true).await
}

async fn deploy(out: &Output, args: DeployArgs) -> anyhow::Result<Exit> {
    let target = args.target;
    run(
        out,
        args.run,
        Some(target),
        args.skip_deploy,
        args.skip_build,
        !args.no_rollback,
    )
    .await
}

async fn run(
    out: &Output,
    args: RunArgs,
    target: Option<TargetArgs>,
    skip_deploy: bool,
    skip_build: bool,
    rollback: bool,
) -> anyhow::Result<Exit> {
    let workspace = parts::workspace(&out.config, args.registry.clone())?;
    let detector = parts::detector(&workspace, args.changes.worktree)?;
    let base = base(&args.changes, &detector)?;
    let engine = match skip_build {
        true => None,
        false => parts::dockerfile_engine(&workspace).await?,
    };
    let mut pipeline = Pipeline::builder(workspace.clone())
        .detector(Arc::new(detector))
        .registry(parts::registry(&workspace, args.insecure, engine.as_ref())?)
        .concurrency(args.concurrency)
        .dry_run(args.dry_run)
        .build_number(args.build_number.clone())
        .failure_policy(if args.keep_going {
            FailurePolicy::Continue
        } else {
            FailurePolicy::FailFast
        })
        .rollback_on_failure(rollback)
        .skip_build(skip_build)
        .skip_deploy(skip_deploy)
        .events(Progress::sink(out.progress()));
    if !skip_build {
        pipeline = pipeline.builder(parts::builder(&workspace, engine.as_ref())?);
    }
    if let (Some(target), false) = (&target, skip_deploy) {
        pipeline = pipeline.deployer(target.deployer().await?);
    }
    let report = pipeline
        .build()?
        .run(
            base.as_deref(),
            &args.changes.head,
            &selection(&args.changes),
        )
        .await?;
    out.print(&report, render::report)?;
    Ok(report.status().into())
}

/// The workspace, one of its apps, and the deployer for a target.
async fn app_and_deployer(
    out: &Output,
    app: &str,
    target: &TargetArgs,
) -> anyhow::Result<(App, Arc<dyn shipflow_kit::Deployer>)> {
    let workspace = parts::workspace(&out.config, None)?;
    let app = known_app(&workspace, app)?.clone();
    let deployer = target.deployer().await?;
    Ok((app, deployer))
}

fn known_app<'w>(workspace: &'w Workspace, name: &str) -> anyhow::Result<&'w App> {
    match workspace.app(name) {
        Some(app) => Ok(app),
        None => {
            let names: Vec<&str> = workspace.apps().map(|a| a.name.as_str()).collect();
            bail!(
                "no app {name} in the workspace; its apps are: {}",
                names.join(", ")
            )
        }
    }
}

async fn rollback(out: &Output, args: RollbackArgs) -> anyhow::Result<Exit> {
    let (app, deployer) = app_and_deployer(out, &args.app, &args.target).await?;
    let to = args
        .to
        .map_or(RollbackTarget::Previous, RollbackTarget::Revision);
    let ctx = Context::new().with_events(Progress::sink(out.progress()));
    let rollout = deployer
        .rollback(&app, to, &ctx)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    out.print(&rollout, |r| {
        let revision = r
            .revision
            .map(|n| format!(" (revision {n})"))
            .unwrap_or_default();
        format!("{}: {} runs {}{revision}\n", app.name, r.workload, r.image)
    })?;
    Ok(Exit::Shipped)
}

async fn history(out: &Output, args: HistoryArgs) -> anyhow::Result<Exit> {
    let (app, deployer) = app_and_deployer(out, &args.app, &args.target).await?;
    let revisions = deployer
        .history(&app, &Context::new())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    out.print(&revisions, |r| render::history(&app.name, r))?;
    Ok(Exit::Shipped)
}

/// One app's line of `status`.
#[derive(Serialize)]
struct AppStatus {
    app: String,
    running: Option<Deployed>,
    /// The app's fingerprint at `--head`.
    fingerprint: String,
    /// Whether what runs was built from the same inputs as `--head` has.
    up_to_date: bool,
}

async fn status(out: &Output, args: StatusArgs) -> anyhow::Result<Exit> {
    let workspace = parts::workspace(&out.config, None)?;
    let detector = parts::detector(&workspace, false)?;
    let deployer = args.target.deployer().await?;
    let ctx = Context::new();
    let mut rows = Vec::new();
    for app in workspace.apps() {
        if !args.apps.is_empty() && !args.apps.contains(&app.name) {
            continue;
        }
        let fingerprint = detector
            .fingerprint(&args.head, &workspace.inputs(app), &ctx)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("{}: fingerprint at {}", app.name, args.head))?;
        let running = deployer
            .current(app, &ctx)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("{}: what runs", app.name))?;
        rows.push(AppStatus {
            app: app.name.clone(),
            up_to_date: running
                .as_ref()
                .is_some_and(|r| r.fingerprint.as_ref() == Some(&fingerprint)),
            running,
            fingerprint: fingerprint.0,
        });
    }
    let behind = rows.iter().filter(|r| !r.up_to_date).count();
    out.print(&rows, |rows| {
        let width = rows.iter().map(|r| r.app.len()).max().unwrap_or(0);
        let mut text = String::new();
        for row in rows {
            let state = match (&row.running, row.up_to_date) {
                (None, _) => "never deployed".to_owned(),
                (Some(_), true) => "up to date".to_owned(),
                (Some(_), false) => format!("behind {}: inputs changed", args.head),
            };
            text.push_str(&format!("{:width$}  {state}\n", row.app));
            if let Some(running) = &row.running {
                let revision = running
                    .revision
                    .map(|n| format!(" (revision {n})"))
                    .unwrap_or_default();
                text.push_str(&format!(
                    "{:width$}  runs {}{revision}\n",
                    "", running.image
                ));
            }
        }
        text
    })?;
    Ok(if behind == 0 {
        Exit::NothingToDo
    } else {
        Exit::Shipped
    })
}

async fn apply(out: &Output, args: ApplyArgs) -> anyhow::Result<Exit> {
    let (client, namespace) = args.cluster.client().await?;
    let deployer = shipflow_kit::k8s::KubeDeployer::new(client);
    let options = shipflow_kit::k8s::ApplyOptions {
        namespace,
        force: args.force_conflicts,
    };
    let ctx = Context::new()
        .with_dry_run(args.dry_run)
        .with_events(Progress::messages(out.progress()));
    let applied = deployer.apply_dir(&args.dir, &options, &ctx).await?;
    out.print(&applied, |applied| render::applied(applied, args.dry_run))?;
    Ok(if applied.iter().any(|a| a.changed) {
        Exit::Shipped
    } else {
        Exit::NothingToDo
    })
}

async fn config(out: &Output, args: ConfigArgs) -> anyhow::Result<Exit> {
    let config = shipflow_kit::k8s::EnvConfigMap::from_env_file(&args.name, &args.env_file)?;
    let (client, namespace) = args.cluster.client().await?;
    let deployer = shipflow_kit::k8s::KubeDeployer::new(client);
    let ctx = Context::new()
        .with_dry_run(args.dry_run)
        .with_events(Progress::messages(out.progress()));
    let rollout = deployer
        .deploy_config_map(&namespace, &config, &ctx)
        .await?;
    out.print(&rollout, |r| {
        render::config_rollout(&namespace, r, args.dry_run)
    })?;
    // As for `plan`, a dry run exits 0 when there is work to do.
    Ok(if rollout.created || !rollout.rolled.is_empty() {
        Exit::Shipped
    } else {
        Exit::NothingToDo
    })
}
