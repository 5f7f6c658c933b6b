//! Image automation: keep a config repository at what image policies choose.
//!
//! Each pass lists every watched repository of the registry once, resolves each
//! policy to a digest, and commits the apps whose digest changed, all in one commit,
//! then pushes. Passes run every `--interval`, and at once when the registry posts a
//! push notification to `--listen` (point the registry's `notifications.endpoints`
//! at `http://<listen>/events`). Ctrl-C (or SIGTERM) stops it cleanly.
//!
//! ```text
//! cargo run --example image_automation -- \
//!     --repository git@github.com:acme/fleet.git --branch main \
//!     --registry 127.0.0.1:5000 \
//!     --bind 'api,team/api,>=1.0.0,apps/api/deployment.yaml' \
//!     --interval 5m --listen 127.0.0.1:8085
//! cargo run --example image_automation -- --repository ../fleet --policies automation.toml --once
//! ```
//!
//! `--bind APP,REPOSITORY,SEMVER_RANGE,FILE[,SETTER]` keeps APP's image in FILE (at
//! the Flux setter marker SETTER, default `flux-system:APP`) at the highest version
//! of REPOSITORY (prefixed with `--registry` when it names no registry) in the range.
//! `--policies FILE` reads `[[bindings]]` tables instead, with every policy kind:
//!
//! ```toml
//! [[bindings]]
//! app = "api"
//! policy = { name = "api-main", repository = "127.0.0.1:5000/team/api", policy = { numerical = { order = "asc" } }, filter_tags = { pattern = '^main-[a-f0-9]+-(?P<ts>[0-9]+)$', extract = '$ts' } }
//! files = [{ path = "apps/api/deployment.yaml", setter = "flux-system:api" }]
//! ```
//!
//! The notification token, if any, is read from the environment variable named by
//! `--token-env` (never from the command line, where `ps` shows it); the registry
//! sends it as `Authorization: Bearer <token>` from its endpoint's `headers`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use shipflow_kit::CancellationToken;
use shipflow_kit::automation::{
    Action, AutomationEvent, ImageAutomation, NotificationServer, PolicyBinding,
};
use shipflow_kit::git::gitops::{FileTarget, GitOpsDeployer, Identity};
use shipflow_kit::oci::{ImagePolicy, PolicyRule, RegistryClient};

/// The largest policies file read.
const MAX_POLICIES_FILE: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(about = "Keep a GitOps config repository at what image policies choose")]
struct Args {
    /// The config repository: a URL git can push to, or a local path.
    #[arg(long)]
    repository: String,
    /// The branch to commit to.
    #[arg(long, default_value = "main")]
    branch: String,
    /// Where the config repository is cloned (default: under the temp directory).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The registry, `host[:port]`, for --bind repositories that name none.
    #[arg(long)]
    registry: Option<String>,
    /// APP,REPOSITORY,SEMVER_RANGE,FILE[,SETTER]; repeat for more apps.
    #[arg(long = "bind", value_name = "BINDING")]
    bindings: Vec<String>,
    /// A TOML file of `[[bindings]]` tables (any policy kind).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// How often every repository is polled: `90s`, `5m`, `1h`, `500ms`.
    #[arg(long, default_value = "5m", value_parser = duration)]
    interval: Duration,
    /// How long a notification waits for more before the pass.
    #[arg(long, default_value = "250ms", value_parser = duration)]
    debounce: Duration,
    /// Where registry notifications are received (`POST /events`); none without it.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The environment variable holding the bearer token notifications must carry.
    #[arg(long)]
    token_env: Option<String>,
    /// The commit subject, with `{apps}` and `{count}`.
    #[arg(long, default_value = "automation: update {apps}")]
    message: String,
    /// One pass, then exit (non-zero if anything failed).
    #[arg(long)]
    once: bool,
    /// Allow plain HTTP to registries that are not on loopback.
    #[arg(long)]
    insecure: bool,
}

/// `90s`, `5m`, `1h`, `500ms`, or plain seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 5m or 500ms"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// One `--bind` value.
fn parse_binding(text: &str, registry: Option<&str>) -> anyhow::Result<PolicyBinding> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let (app, repository, range, file, setter) = match parts[..] {
        [app, repository, range, file] => (app, repository, range, file, None),
        [app, repository, range, file, setter] => (app, repository, range, file, Some(setter)),
        _ => bail!("--bind {text:?}: give APP,REPOSITORY,SEMVER_RANGE,FILE[,SETTER]"),
    };
    let first = repository.split('/').next().unwrap_or_default();
    let names_registry = first.contains(['.', ':']) || first == "localhost";
    let repository = match (names_registry, registry) {
        (false, Some(registry)) => format!("{}/{repository}", registry.trim_end_matches('/')),
        _ => repository.to_owned(),
    };
    let policy = ImagePolicy::new(
        app,
        &repository,
        PolicyRule::Semver {
            range: range.to_owned(),
        },
    )?;
    let setter = setter.map_or_else(|| format!("flux-system:{app}"), str::to_owned);
    Ok(PolicyBinding::new(
        app,
        policy,
        vec![FileTarget::setter(file, setter)],
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesFile {
    bindings: Vec<PolicyBinding>,
}

fn read_policies(path: &Path) -> anyhow::Result<Vec<PolicyBinding>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_POLICIES_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_POLICIES_FILE {
        bail!("{} is over {MAX_POLICIES_FILE} bytes", path.display());
    }
    let parsed: PoliciesFile =
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(parsed.bindings)
}

fn print_event(event: &AutomationEvent) {
    match event {
        AutomationEvent::Decision(d) => match &d.action {
            Action::Keep => println!("{}: keep {} ({})", d.app, d.image, d.reason),
            Action::Write { from } => println!(
                "{}: write {} over {} ({})",
                d.app,
                d.image,
                from.as_deref().unwrap_or("nothing"),
                d.reason
            ),
            _ => println!("{}: {:?} {}", d.app, d.action, d.image),
        },
        AutomationEvent::Committed { commit, apps } => {
            println!(
                "committed {} ({})",
                &commit[..commit.len().min(12)],
                apps.join(", ")
            );
        }
        AutomationEvent::Failed { error, transient } => {
            let what = if *transient {
                "will retry"
            } else {
                "check the settings"
            };
            eprintln!("error ({what}): {error}");
        }
        AutomationEvent::Pass {
            retry_in: Some(wait),
            ..
        } => eprintln!("retrying in {:.1} s", wait.as_secs_f64()),
        _ => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let mut bindings = Vec::new();
    for text in &args.bindings {
        bindings.push(parse_binding(text, args.registry.as_deref())?);
    }
    if let Some(path) = &args.policies {
        bindings.extend(read_policies(path)?);
    }
    if bindings.is_empty() {
        bail!("no policy: give --bind APP,REPOSITORY,SEMVER_RANGE,FILE or --policies FILE");
    }

    let url = if args.repository.contains("://") || Path::new(&args.repository).is_absolute() {
        args.repository.clone()
    } else if Path::new(&args.repository).exists() {
        std::fs::canonicalize(&args.repository)?
            .display()
            .to_string()
    } else {
        args.repository.clone()
    };
    let mut deployer = GitOpsDeployer::builder(url)
        .branch(&args.branch)
        .message(&args.message)
        .author(Identity::new("shipflow automation", "shipflow@localhost"));
    if let Some(dir) = &args.cache_dir {
        deployer = deployer.cache_dir(dir);
    }
    let client = RegistryClient::builder().insecure(args.insecure).build()?;
    let automation = ImageAutomation::builder(deployer.build(), client)
        .bind_all(bindings)
        .interval(args.interval)
        .debounce(args.debounce)
        .on_event(print_event)
        .build()?;

    if args.once {
        let pass = automation.reconcile(&shipflow_kit::Context::new()).await;
        if !pass.errors.is_empty() {
            bail!("{} of {} policies failed", pass.errors.len(), pass.policies);
        }
        return Ok(());
    }

    let cancel = CancellationToken::new();
    let mut server = None;
    if let Some(addr) = args.listen {
        let mut endpoint = NotificationServer::bind(addr).await?;
        if let Some(name) = &args.token_env {
            let token = std::env::var(name)
                .with_context(|| format!("--token-env {name}: the variable is not set"))?;
            endpoint = endpoint.bearer_token(token);
        }
        println!(
            "listening for registry notifications on http://{}/events",
            endpoint.local_addr()?
        );
        server = Some(tokio::spawn(
            endpoint.serve(automation.trigger(), cancel.clone()),
        ));
    }
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        eprintln!("stopping (again to exit at once)");
        stop.cancel();
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
    println!(
        "watching {} policies, polling every {:?}",
        automation.bindings().len(),
        args.interval
    );
    automation.run(cancel).await;
    if let Some(server) = server {
        let _ = server.await;
    }
    println!("stopped");
    Ok(())
}
