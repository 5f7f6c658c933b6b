//! The reference command-line program: `shipflow plan` shows which apps of a monorepo
//! changed between two revisions, why, and what would be built and deployed.
//!
//! Run it from the root of a repository that has a `shipflow.toml`:
//!
//! ```text
//! cargo run --example shipflow -- plan                      # default base, HEAD
//! cargo run --example shipflow -- plan --base origin/main...HEAD --format json
//! cargo run --example shipflow -- plan --all --apps api,web
//! cargo run --example shipflow -- plan --worktree           # uncommitted work counts too
//! ```
//!
//! Build, push, deploy, rollback, history and status come with the adapters.
//! Set `RUST_LOG=shipflow=debug` for tracing output.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use shipflow::core::{CONFIG_FILE, Pipeline, Plan, Selection, Stage, Workspace, error_chain};
use shipflow::git::GitChangeDetector;

#[derive(Parser)]
#[command(
    name = "shipflow",
    version,
    about = "Incremental build and deploy of monorepo apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show which apps changed, why, and what a run would do. Changes nothing.
    Plan(PlanArgs),
}

#[derive(Args)]
struct PlanArgs {
    /// The base revision; `A...B` means merge-base(A, B). Default: origin/HEAD, origin/main,
    /// main… (merge-base with HEAD), else HEAD~1.
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
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// The workspace file; its directory must be the repository root.
    #[arg(long, default_value = CONFIG_FILE)]
    config: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plan(args) => plan(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn plan(args: PlanArgs) -> anyhow::Result<()> {
    if !args.config.exists() {
        bail!(
            "no {} here: run shipflow from the repository root, or pass --config PATH",
            args.config.display()
        );
    }
    let workspace = Workspace::load(&args.config)?;
    let detector = open_repository(&workspace)?.include_worktree(args.worktree);
    let base = match args.base {
        Some(base) => Some(base),
        None if args.all => None,
        None => {
            let base = detector.default_base()?;
            match &base {
                Some(b) => eprintln!("base: {b} (default; choose another with --base)"),
                None => eprintln!("base: none (no earlier commit): every app is in"),
            }
            base
        }
    };
    let pipeline = Pipeline::builder(workspace)
        .detector(Arc::new(detector))
        .build()?;
    let selection = Selection {
        all: args.all,
        apps: args.apps,
    };
    let plan = pipeline
        .plan(base.as_deref(), &args.head, &selection)
        .await?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        Format::Text => print!("{}", render_plan(&plan)),
    }
    Ok(())
}

/// Opens the git repository the workspace lives in, which must have the workspace
/// file at its root (app paths are relative to it).
fn open_repository(workspace: &Workspace) -> anyhow::Result<GitChangeDetector> {
    let detector = GitChangeDetector::open(workspace.root())?;
    let root = canonical(workspace.root())?;
    match detector.workdir().map(canonical).transpose()? {
        Some(workdir) if workdir == root => Ok(detector),
        Some(workdir) => bail!(
            "{CONFIG_FILE} is in {} but the repository root is {}: put {CONFIG_FILE} at the root",
            root.display(),
            workdir.display()
        ),
        None => bail!(
            "{} is a bare repository: run shipflow in a work tree",
            root.display()
        ),
    }
}

fn canonical(path: &Path) -> anyhow::Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}

/// The plan for people: one block per app with its image, stages and reasons.
fn render_plan(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let head = format!("{} ({})", plan.head, plan.revision.short_sha);
    let _ = match &plan.base {
        Some(base) => {
            let paths = match plan.changed_paths {
                1 => "1 path".to_owned(),
                n => format!("{n} paths"),
            };
            writeln!(out, "{base} → {head}: {paths} changed")
        }
        None => writeln!(out, "{head}: every app"),
    };
    if plan.apps.is_empty() {
        out.push_str("nothing to ship: no app's inputs changed\n");
    }
    let width = plan.apps.iter().map(|a| a.app.len()).max().unwrap_or(0);
    for app in &plan.apps {
        let stages: Vec<String> = app.stages.iter().map(Stage::to_string).collect();
        let _ = writeln!(out, "\n  {:width$}  {}", app.app, app.image);
        if !stages.is_empty() {
            let _ = writeln!(out, "  {:width$}  {}", "", stages.join(" → "));
        }
        for reason in &app.reasons {
            let _ = writeln!(out, "  {:width$}  • {reason}", "");
        }
    }
    if !plan.unchanged.is_empty() {
        let _ = writeln!(out, "\nunchanged: {}", plan.unchanged.join(", "));
    }
    out
}
