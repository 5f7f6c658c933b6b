//! The reference command-line program: shipflow on a real monorepo.
//!
//! Run it from the root of a repository that has a `shipflow.toml`:
//!
//! ```text
//! cargo run --example shipflow -- plan                       # what changed since the default base, and why
//! cargo run --example shipflow -- plan --base origin/main...HEAD -o json
//! cargo run --example shipflow -- build                      # changed apps into the local store
//! cargo run --example shipflow -- push --registry 127.0.0.1:5000/acme
//! cargo run --example shipflow -- deploy --target k8s -n prod
//! cargo run --example shipflow -- deploy -e production          # each cluster it lists, at once
//! cargo run --example shipflow -- deploy --target docker --docker-host unix:///run/podman/podman.sock
//! cargo run --example shipflow -- rollback web --to 3        # the target the app configures
//! cargo run --example shipflow -- history web
//! cargo run --example shipflow -- status --target docker
//! cargo run --example shipflow -- apply k8s/ -n prod
//! cargo run --example shipflow -- configmap api-config apps/api/prod.env --dry-run
//! cargo run --example shipflow -- completions bash
//! ```
//!
//! `--help` lists the exit codes, examples and every environment variable read.
//! `-o json` prints the plan, report, history, status or applied objects as JSON on
//! stdout for CI, with a `schema_version`. Progress bars show on a terminal, plain
//! lines otherwise, nothing with `-q`. The first SIGINT or SIGTERM cancels the run,
//! a second one exits at once.

mod cli;
mod exit;
mod names;
mod parts;
mod progress;
mod render;
mod signals;
#[cfg(test)]
mod tests;

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use serde::Serialize;
use shipflow_kit::{
    App, ChangeDetector, Context, Deployed, FailurePolicy, Pipeline, PipelineBuilder, Plan,
    RollbackTarget, Selection, Workspace, error_chain,
};

use cli::{
    ApplyArgs, BuildArgs, BuildContextArgs, Changes, Cli, ClusterArgs, Command, ConfigMapArgs,
    DeployArgs, Format, HistoryArgs, RollbackArgs, RollbackClusters, RunArgs, StatusArgs,
    TargetArgs,
};
use exit::{Exit, USAGE, UsageError};
use progress::{Mode, Progress};
use render::Destination;
use shipflow_kit::k8s::ClusterRollback;
use signals::Signals;

/// The version of the JSON documents `-o json` prints; it grows when a field
/// changes meaning or goes away (new fields keep it).
const SCHEMA_VERSION: u32 = 1;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "shipflow",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let detailed = cli.detailed_exitcode;
    let progress = Progress::new(mode(&cli));
    let signals = match Signals::listen(progress.clone()) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("error: cannot handle SIGINT and SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run_cli(cli, progress, signals.clone()).await;
    if let Err(e) = &result {
        let e: &(dyn std::error::Error + 'static) = e.as_ref();
        eprintln!("error: {}", error_chain(e));
    }
    if let Some(signal) = signals.received() {
        return ExitCode::from(signal.exit_code());
    }
    match result {
        Ok(exit) => exit.exit_code(detailed),
        Err(e) if e.downcast_ref::<UsageError>().is_some() => ExitCode::from(USAGE),
        Err(_) => Exit::Failed.exit_code(detailed),
    }
}

/// `RUST_LOG`, with shipflow's own logs at debug for `-v` and trace for `-vv`.
fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::from_default_env();
    let level = match verbose {
        0 => None,
        1 => Some("shipflow=debug"),
        _ => Some("shipflow=trace"),
    };
    if let Some(directive) = level.and_then(|l| l.parse().ok()) {
        filter = filter.add_directive(directive);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are for terminals, not CI logs.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn mode(cli: &Cli) -> Mode {
    if cli.quiet || cli.output == Format::Json {
        Mode::Quiet
    } else {
        Mode::Auto
    }
}

/// Runs one command line; `main` turns the result into the exit code. The run is
/// cancelled through `signals`' token.
async fn run_cli(cli: Cli, progress: Arc<Progress>, signals: Signals) -> anyhow::Result<Exit> {
    let out = Output {
        format: cli.output,
        config: cli.config,
        environment: cli.environment,
        progress,
        signals,
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
        Command::Configmap(args) => configmap(&out, args).await,
        Command::BuildContext(args) => build_context(&out, args).await,
        Command::Completions { .. } => Ok(Exit::Shipped),
    }
}

/// What every command shares: the global options, progress, and the cancellation.
struct Output {
    format: Format,
    config: PathBuf,
    /// `-e`: the environment the workspace is loaded for.
    environment: Option<String>,
    progress: Arc<Progress>,
    signals: Signals,
}

/// A JSON document of `-o json`: the version of its schema, the signal that
/// cancelled the run if one did, and the command's own fields.
#[derive(Serialize)]
struct Versioned<'a, T> {
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    cancelled_by: Option<String>,
    #[serde(flatten)]
    body: &'a T,
}

impl Output {
    /// Prints `value`: as JSON (a struct, whose fields join `schema_version`), or
    /// as `text` makes it.
    fn print<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        let text = match self.format {
            Format::Json => {
                let versioned = Versioned {
                    schema_version: SCHEMA_VERSION,
                    cancelled_by: self.signals.received().map(|s| s.to_string()),
                    body: value,
                };
                serde_json::to_string_pretty(&versioned)? + "\n"
            }
            Format::Text => text(value),
        };
        // A reader that went away (`| head`) is not an error of ours.
        match std::io::stdout().lock().write_all(text.as_bytes()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// A context for one-off commands: cancelled by a signal, messages as lines.
    fn context(&self) -> Context {
        Context::new()
            .with_cancellation(self.signals.token())
            .with_events(self.progress.messages())
    }

    fn workspace(&self, registry: Option<String>) -> anyhow::Result<Workspace> {
        parts::workspace(&self.config, self.environment.as_deref(), registry)
    }

    /// A pipeline builder with what every run shares: the detector, progress and
    /// the cancellation.
    fn pipeline(
        &self,
        workspace: &Workspace,
        detector: &Arc<dyn ChangeDetector>,
    ) -> PipelineBuilder {
        Pipeline::builder(workspace.clone())
            .detector(detector.clone())
            .events(self.progress.sink())
            .cancellation(self.signals.token())
    }
}

/// The base revision: as given, none for `--all`, else the detector's default
/// (said on stderr, so the user knows what was compared).
fn base(
    out: &Output,
    changes: &Changes,
    detector: &shipflow_kit::git::GitChangeDetector,
) -> anyhow::Result<Option<String>> {
    Ok(match &changes.base {
        Some(base) => Some(base.clone()),
        None if changes.all => None,
        None => {
            let base = detector.default_base()?;
            out.progress.note(&match &base {
                Some(b) => format!("base: {b} (default; choose another with --base)"),
                None => "base: none (no earlier commit): every app is in".to_owned(),
            });
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

/// The detector and base of `changes`, after checking its `--apps`.
fn changes(
    out: &Output,
    workspace: &Workspace,
    changes: &Changes,
) -> anyhow::Result<(Arc<dyn ChangeDetector>, Option<String>)> {
    names::check_apps(workspace, &changes.apps)?;
    let detector = parts::detector(workspace, changes.worktree)?;
    let base = base(out, changes, &detector)?;
    Ok((Arc::new(detector), base))
}

async fn plan(out: &Output, changes_args: Changes) -> anyhow::Result<Exit> {
    let workspace = out.workspace(None)?;
    let (detector, base) = changes(out, &workspace, &changes_args)?;
    let plan = out
        .pipeline(&workspace, &detector)
        .build()?
        .plan(
            base.as_deref(),
            &changes_args.head,
            &selection(&changes_args),
        )
        .await?;
    out.print(&plan, render::plan)?;
    Ok(if plan.apps.is_empty() {
        Exit::NothingToDo
    } else {
        Exit::Shipped
    })
}

/// The apps a plan ships.
fn planned<'w>(workspace: &'w Workspace, plan: &Plan) -> Vec<&'w App> {
    plan.apps
        .iter()
        .filter_map(|p| workspace.app(&p.app))
        .collect()
}

async fn build(out: &Output, args: BuildArgs) -> anyhow::Result<Exit> {
    let workspace = out.workspace(None)?;
    let (detector, base) = changes(out, &workspace, &args.changes)?;
    let store = match args.store {
        Some(store) => store,
        None => parts::state_dir(&workspace)?.join("images"),
    };
    let pipeline = || {
        out.pipeline(&workspace, &detector)
            .skip_deploy(true)
            .concurrency(args.concurrency)
    };
    // Planned first, so that only the apps that build need their builder.
    let plan = pipeline()
        .build()?
        .plan(
            base.as_deref(),
            &args.changes.head,
            &selection(&args.changes),
        )
        .await?;
    let engine = parts::dockerfile_engine(&planned(&workspace, &plan)).await?;
    let report = pipeline()
        .builder(parts::builder(&workspace, engine.as_ref(), None)?)
        .registry(parts::store(&store)?)
        .build()?
        .execute(plan)
        .await?;
    out.print(&report, |r| render::report(r, Destination::Store(&store)))?;
    Ok(report.status().into())
}

/// Builds one app from a build context in a registry and pushes it by digest (what
/// a Kubernetes build Job runs): the digest goes to stdout and to the termination
/// log, where the cluster keeps it for whoever asked for the build.
async fn build_context(out: &Output, args: BuildContextArgs) -> anyhow::Result<Exit> {
    let context: shipflow_kit::ImageRef = args
        .context
        .parse()
        .map_err(|e| UsageError(format!("--context {}: {e}", args.context)))?;
    let target: shipflow_kit::ImageRef = args
        .target
        .parse()
        .map_err(|e| UsageError(format!("--target {}: {e}", args.target)))?;
    let request: shipflow_kit::BuildRequest = serde_json::from_str(&args.request)
        .map_err(|e| UsageError(format!("--request (SHIPFLOW_BUILD_REQUEST): {e}")))?;
    let app: shipflow_kit::oci::RemoteApp = serde_json::from_str(&args.app_spec)
        .map_err(|e| UsageError(format!("--app-spec (SHIPFLOW_BUILD_APP): {e}")))?;
    if app.name != args.app {
        return Err(UsageError(format!(
            "--app {} but --app-spec describes app {}",
            args.app, app.name
        ))
        .into());
    }
    let client = shipflow_kit::oci::RegistryClient::builder()
        .insecure(args.insecure_registry)
        .build()?;
    let digest = shipflow_kit::oci::build_from_context(
        &client,
        &context,
        &app,
        &target,
        &request,
        &args.workdir,
        &out.context(),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(dir) = args.termination_log.parent()
        && dir.is_dir()
    {
        std::fs::write(&args.termination_log, digest.to_string()).with_context(|| {
            format!("app {}: write {}", args.app, args.termination_log.display())
        })?;
    }
    println!("{digest}");
    Ok(Exit::Shipped)
}

async fn push(out: &Output, args: RunArgs) -> anyhow::Result<Exit> {
    run(out, args, None, true, false, true).await
}

async fn deploy(out: &Output, args: DeployArgs) -> anyhow::Result<Exit> {
    let target = (
        args.target,
        FanOut {
            fail_fast: args.cluster_fail_fast,
            rollback: match args.rollback_clusters {
                RollbackClusters::Failed => ClusterRollback::Failed,
                RollbackClusters::All => ClusterRollback::All,
            },
        },
    );
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
    target: Option<(TargetArgs, FanOut)>,
    skip_deploy: bool,
    skip_build: bool,
    rollback: bool,
) -> anyhow::Result<Exit> {
    let workspace = out.workspace(args.registry.clone())?;
    let (detector, base) = changes(out, &workspace, &args.changes)?;
    // Checked before any work: an ambiguous or missing target is bad usage.
    let target = match (&target, skip_deploy) {
        (Some((target, fan_out)), false) => {
            let apps = selected(&workspace, &args.changes.apps);
            Some((target, *fan_out, parts::infer_target(target.target, &apps)?))
        }
        _ => None,
    };
    let pipeline = || {
        out.pipeline(&workspace, &detector)
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
    };
    // Planned first, so that only the apps that build need their builder.
    let plan = pipeline()
        .build()?
        .plan(
            base.as_deref(),
            &args.changes.head,
            &selection(&args.changes),
        )
        .await?;
    let engine = match skip_build {
        true => None,
        false => parts::dockerfile_engine(&planned(&workspace, &plan)).await?,
    };
    let mut pipeline = pipeline().registry(parts::registry(
        &workspace,
        args.insecure_registry,
        engine.as_ref(),
    )?);
    if !skip_build {
        let jobs = match args.build_in_cluster {
            true => Some(parts::job_builder(&workspace, args.insecure_registry).await?),
            false => None,
        };
        pipeline = pipeline.builder(parts::builder(&workspace, engine.as_ref(), jobs)?);
    }
    if let Some((args, fan_out, target)) = target {
        pipeline = pipeline.deployer(
            args.deployer(target, &workspace, fan_out, &out.progress)
                .await?,
        );
    }
    let report = pipeline.build()?.execute(plan).await?;
    out.print(&report, |r| render::report(r, Destination::Registry))?;
    Ok(report.status().into())
}

/// The apps named, or every app when none is.
fn selected<'w>(workspace: &'w Workspace, names: &[String]) -> Vec<&'w App> {
    workspace
        .apps()
        .filter(|a| names.is_empty() || names.contains(&a.name))
        .collect()
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

/// What a deploy to several clusters does when one fails (`deploy`'s flags).
#[derive(Clone, Copy, Default)]
struct FanOut {
    fail_fast: bool,
    rollback: ClusterRollback,
}

impl TargetArgs {
    /// The deployer for `target`; for Kubernetes, one per cluster when `workspace`
    /// lists `clusters` and no `--context` picks one.
    async fn deployer(
        &self,
        target: parts::Target,
        workspace: &Workspace,
        fan_out: FanOut,
        progress: &Progress,
    ) -> anyhow::Result<Arc<dyn shipflow_kit::Deployer>> {
        let clusters = match target {
            parts::Target::K8s => parts::clusters(workspace)?,
            parts::Target::Docker => None,
        };
        let kube = parts::KubeOptions {
            kubeconfig: self.cluster.kubeconfig.as_deref(),
            context: self.cluster.context.as_deref(),
            namespace: self.cluster.namespace(),
            clusters,
            fail_fast: fan_out.fail_fast,
            rollback: fan_out.rollback,
        };
        parts::deployer(target, kube, self.docker_host.as_deref(), progress).await
    }
}

/// The workspace, one of its apps, and the deployer for its target.
async fn app_and_deployer(
    out: &Output,
    app: &str,
    target: &TargetArgs,
) -> anyhow::Result<(App, Arc<dyn shipflow_kit::Deployer>)> {
    let workspace = out.workspace(None)?;
    let app = names::app(&workspace, app)?.clone();
    let chosen = parts::infer_target(target.target, &[&app])?;
    let deployer = target
        .deployer(chosen, &workspace, FanOut::default(), &out.progress)
        .await?;
    Ok((app, deployer))
}

async fn rollback(out: &Output, args: RollbackArgs) -> anyhow::Result<Exit> {
    let (app, deployer) = app_and_deployer(out, &args.app, &args.target).await?;
    let to = args
        .to
        .map_or(RollbackTarget::Previous, RollbackTarget::Revision);
    let rollout = deployer
        .rollback(&app, to, &out.context())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    out.print(&rollout, |r| {
        let revision = r
            .revision
            .map(|n| format!(" (revision {n})"))
            .unwrap_or_default();
        let mut text = format!("{}: {} runs {}{revision}\n", app.name, r.workload, r.image);
        text.push_str(&render::targets(&r.targets, 2));
        text
    })?;
    Ok(Exit::Shipped)
}

/// `history`'s document: the app's revisions, oldest first; per cluster when the
/// workspace lists several (revision numbers are each cluster's own).
#[derive(Serialize)]
struct History {
    app: String,
    revisions: Vec<shipflow_kit::Revision>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    clusters: Vec<ClusterHistory>,
}

/// One cluster's revisions of the app.
#[derive(Serialize)]
struct ClusterHistory {
    cluster: String,
    revisions: Vec<shipflow_kit::Revision>,
}

async fn history(out: &Output, args: HistoryArgs) -> anyhow::Result<Exit> {
    let workspace = out.workspace(None)?;
    let clusters = parts::clusters(&workspace)?;
    let k8s = matches!(
        parts::infer_target(args.target.target, &[names::app(&workspace, &args.app)?]),
        Ok(parts::Target::K8s)
    );
    if let (Some(clusters), None, true) = (clusters, &args.target.cluster.context, k8s) {
        return history_per_cluster(out, &workspace, &args, &clusters).await;
    }
    let (app, deployer) = app_and_deployer(out, &args.app, &args.target).await?;
    let revisions = deployer
        .history(&app, &out.context())
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let history = History {
        app: app.name.clone(),
        revisions,
        clusters: Vec::new(),
    };
    out.print(&history, |h| render::history(&h.app, &h.revisions))?;
    Ok(Exit::Shipped)
}

/// `history` of an app on each cluster the workspace lists.
async fn history_per_cluster(
    out: &Output,
    workspace: &Workspace,
    args: &HistoryArgs,
    clusters: &shipflow_kit::k8s::Clusters,
) -> anyhow::Result<Exit> {
    let app = names::app(workspace, &args.app)?;
    let cluster = &args.target.cluster;
    let deployers = parts::cluster_deployers(
        clusters,
        cluster.kubeconfig.as_deref(),
        cluster.namespace().as_deref(),
    )
    .await?;
    let ctx = out.context();
    let mut each = Vec::new();
    for (name, deployer) in deployers {
        let revisions = shipflow_kit::Deployer::history(&deployer, app, &ctx)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("{}: history on cluster {name}", app.name))?;
        each.push(ClusterHistory {
            cluster: name,
            revisions,
        });
    }
    let history = History {
        app: app.name.clone(),
        revisions: Vec::new(),
        clusters: each,
    };
    out.print(&history, |h| {
        h.clusters
            .iter()
            .map(|c| format!("{}:\n{}", c.cluster, render::history(&h.app, &c.revisions)))
            .collect::<Vec<_>>()
            .join("\n")
    })?;
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

/// `status`'s document.
#[derive(Serialize)]
struct Status {
    apps: Vec<AppStatus>,
}

async fn status(out: &Output, args: StatusArgs) -> anyhow::Result<Exit> {
    let workspace = out.workspace(None)?;
    names::check_apps(&workspace, &args.apps)?;
    let apps = selected(&workspace, &args.apps);
    let target = parts::infer_target(args.target.target, &apps)?;
    let detector = parts::detector(&workspace, false)?;
    let deployer = args
        .target
        .deployer(target, &workspace, FanOut::default(), &out.progress)
        .await?;
    let ctx = out.context();
    let mut rows = Vec::new();
    for app in apps {
        let fingerprint = detector
            .fingerprint(&args.head, &workspace.inputs(app), &ctx)
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("{}: fingerprint at {}", app.name, args.head))?
            .with_settings(&app.settings());
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
    out.print(&Status { apps: rows }, |status| {
        render::status(&status.apps, &args.head)
    })?;
    Ok(if behind == 0 {
        Exit::NothingToDo
    } else {
        Exit::Shipped
    })
}

/// `apply`'s document: the objects, in the order applied.
#[derive(Serialize)]
struct Applied {
    objects: Vec<shipflow_kit::k8s::Applied>,
}

async fn apply(out: &Output, args: ApplyArgs) -> anyhow::Result<Exit> {
    let (client, namespace) = args.cluster.client().await?;
    let deployer = shipflow_kit::k8s::KubeDeployer::new(client);
    let options = shipflow_kit::k8s::ApplyOptions {
        namespace,
        force: args.force_conflicts,
    };
    let ctx = out.context().with_dry_run(args.dry_run);
    let objects = deployer.apply_dir(&args.dir, &options, &ctx).await?;
    let changed = objects.iter().any(|a| a.changed);
    out.print(&Applied { objects }, |a| {
        render::applied(&a.objects, args.dry_run)
    })?;
    Ok(if changed {
        Exit::Shipped
    } else {
        Exit::NothingToDo
    })
}

async fn configmap(out: &Output, args: ConfigMapArgs) -> anyhow::Result<Exit> {
    // A bare KEY takes its value from the environment, as kubectl's --from-env-file.
    let config = shipflow_kit::k8s::EnvConfigMap::from_env_file_with_env(
        &args.name,
        &args.env_file,
        |key| std::env::var(key).ok(),
    )?;
    let (client, namespace) = args.cluster.client().await?;
    let deployer = shipflow_kit::k8s::KubeDeployer::new(client);
    let ctx = out.context().with_dry_run(args.dry_run);
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
