//! A delivery service on the library: webhooks, polling and cron schedules
//! trigger a `Pipeline` run per environment; runs are kept in SQLite and shown on
//! a web page with live logs, deploy history and rollback.
//!
//! ```text
//! cargo run --features console --example console -- --config examples/console/console.toml
//! ```
//!
//! Which branch or tag ships where is `shipflow.toml`'s `[environments]`; the
//! service's own settings (listen address, database, tokens, webhook secrets,
//! polling, schedules) are in its config file, documented in `console.toml`.
//! SIGINT or SIGTERM stops it: triggers stop, the running pipeline is cancelled
//! and given `shutdown_grace_seconds` to record its end.
//!
//! ```text
//! GET  /                                   apps × environments, last runs, a manual run
//! GET  /runs/{id}                          a run: its apps and its log, live
//! GET  /apps/{app}                         an app's revisions per environment, with rollback
//! POST /hooks/github|gitea|gitlab          push and tag webhooks (signed)
//! GET  /api/status                         apps × environments: image (digest) and commit
//! GET  /api/runs[?limit=]                  runs, newest first
//! POST /api/runs {"ref": "main"}           a manual run (bearer token)
//! GET  /api/runs/{id}[/log|/events]        a run with its Report, its log, its events
//! GET  /api/runs/{id}/stream               the log and app progress (server-sent events)
//! GET  /api/apps/{app}[/revisions?environment=]   console deploys; the deployer's history
//! POST /api/apps/{app}/rollback {"environment": "staging", "revision": 3}   (bearer token)
//! ```
//!
//! One run per environment at a time: a run waits in the queue, and a newer
//! trigger for the same environment supersedes a waiting one unless its commit is
//! an ancestor of the waiting one's (then it is recorded skipped). A run of an
//! ancestor of the environment's last good commit is skipped: an old or replayed
//! trigger deploys nothing. A webhook delivery id seen before is acknowledged and
//! runs nothing. A run ships what changed since the environment's last good run,
//! else since the previous commit.

mod api;
mod config;
mod db;
mod pages;
mod parts;
mod repo;
mod runner;
mod triggers;
mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// The console's command line.
#[derive(Parser)]
#[command(
    about = "Runs shipflow pipelines on pushes, tags, polls and schedules; serves their history"
)]
struct Args {
    /// The service's config file.
    #[arg(long, default_value = "console.toml")]
    config: PathBuf,
    /// The SQLite run history, instead of the config's `database`.
    #[arg(long)]
    database: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = config::Config::load(&args.config)?;
    if let Some(database) = args.database {
        config.database = database;
    }
    let schedules = config
        .schedules
        .iter()
        .map(|s| Ok((triggers::parse(&s.cron)?, s.reference.clone())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let listen = config.listen;
    let poll = config.repository.poll_seconds.map(Duration::from_secs);
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let service = runner::Service::start(config).await?;

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(every) = poll {
        tasks.spawn(triggers::poll(service.clone(), every));
    }
    for (cron, reference) in schedules {
        tasks.spawn(triggers::schedule(service.clone(), cron, reference));
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!("listening on http://{}", listener.local_addr()?);

    let stopping = service.shutdown.clone();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let server =
        axum::serve(listener, api::router(service.clone())).with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("stopping: no new triggers, cancelling the running pipelines");
            stopping.cancel();
        });
    // Live streams end at shutdown; the server waits for the other open
    // requests, up to the grace period.
    let stopped = service.shutdown.clone();
    let served = tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served,
        () = async {
            stopped.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("open requests did not end within {grace:?}: closing them");
            Ok(())
        }
    };
    service.stop(grace).await;
    while tasks.join_next().await.is_some() {}
    served.context("the HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}
