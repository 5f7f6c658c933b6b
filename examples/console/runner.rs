//! The service's state, and the workers: one per environment with queued runs,
//! each running its environment's runs one at a time through the `Pipeline`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::{
    CancellationToken, Event, EventKind, EventSink, Outcome, Pipeline, Report, RunStatus,
    Selection, Workspace, error_chain,
};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::db::{Db, Run};
use crate::parts;
use crate::repo::Repo;

/// What the live views (server-sent events) follow.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Live {
    /// A log line of a run.
    Line { run: i64, seq: i64, text: String },
    /// An app of a run moved to a stage, or finished one.
    App {
        run: i64,
        app: String,
        stage: String,
        state: String,
    },
    /// A run ended.
    End { run: i64, status: String },
}

impl Live {
    pub(crate) fn run(&self) -> i64 {
        match self {
            Live::Line { run, .. } | Live::App { run, .. } | Live::End { run, .. } => *run,
        }
    }
}

/// Everything the server, the triggers and the workers share.
pub(crate) struct Service {
    pub(crate) config: Config,
    pub(crate) db: Db,
    pub(crate) repo: Repo,
    pub(crate) live: broadcast::Sender<Live>,
    /// Cancelled at shutdown: triggers stop and running pipelines are cancelled.
    pub(crate) shutdown: CancellationToken,
    /// `shipflow.toml` of the default branch, as last fetched: the environment rules.
    rules: RwLock<Arc<Workspace>>,
    active: Mutex<HashSet<String>>,
    env_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    workers: Mutex<JoinSet<()>>,
}

/// Where a trigger went.
#[derive(Debug, Serialize)]
pub(crate) struct Queued {
    /// The run, queued or skipped.
    pub(crate) run: i64,
    /// The environment it runs in, when a rule took the ref.
    pub(crate) environment: Option<String>,
    /// Queued runs the new one replaced.
    pub(crate) superseded: Vec<i64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Service {
    /// Opens the database and the cache clone.
    pub(crate) async fn start(config: Config) -> anyhow::Result<Arc<Self>> {
        let db = Db::open(&config.database)?;
        let repo = Repo::open(&config.repository.url, &config.state_dir).await?;
        let text = repo
            .show("HEAD", shipflow_kit::CONFIG_FILE)
            .await
            .context("the default branch has no shipflow.toml")?;
        let rules = Arc::new(parts::rules(&text, repo.mirror())?);
        let service = Arc::new(Self {
            config,
            db,
            repo,
            live: broadcast::channel(1024).0,
            shutdown: CancellationToken::new(),
            rules: RwLock::new(rules),
            active: Mutex::new(HashSet::new()),
            env_locks: Mutex::new(HashMap::new()),
            workers: Mutex::new(JoinSet::new()),
        });
        // Runs queued before a restart run now.
        service.kick();
        Ok(service)
    }

    /// Fetches, and rereads the environment rules of the default branch.
    pub(crate) async fn fetch(&self) -> anyhow::Result<()> {
        self.repo.fetch().await?;
        // A broken shipflow.toml on the default branch keeps the last good rules.
        let text = self.repo.show("HEAD", shipflow_kit::CONFIG_FILE).await?;
        match parts::rules(&text, self.repo.mirror()) {
            Ok(rules) => *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules),
            Err(e) => tracing::warn!("keeping the environment rules: {e:#}"),
        }
        Ok(())
    }

    /// `shipflow.toml` of the default branch, as last fetched.
    pub(crate) fn rules(&self) -> Arc<Workspace> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Queues a run of `sha` for the environment `reference` ships to, or records
    /// that no environment takes it.
    pub(crate) async fn trigger(
        self: &Arc<Self>,
        reference: &str,
        sha: &str,
        source: &str,
    ) -> anyhow::Result<Queued> {
        let environment = parts::environment_for(&self.rules(), reference)?;
        let Some(environment) = environment else {
            let reason = format!("no environment of shipflow.toml takes {reference}");
            tracing::info!(reference, source, "{reason}");
            let run = self.db.skipped("", reference, sha, source, &reason)?;
            return Ok(Queued {
                run,
                environment: None,
                superseded: Vec::new(),
            });
        };
        if let Some(queued) = self.db.queued(&environment)?
            && self.older(sha, &queued.sha).await
        {
            let reason = format!(
                "{} is older than {} of the queued run {}",
                short(sha),
                short(&queued.sha),
                queued.id
            );
            tracing::info!(reference, source, environment, "{reason}");
            let run = self
                .db
                .skipped(&environment, reference, sha, source, &reason)?;
            return Ok(Queued {
                run,
                environment: Some(environment),
                superseded: Vec::new(),
            });
        }
        let (run, superseded) = self.db.enqueue(&environment, reference, sha, source)?;
        tracing::info!(
            run,
            environment,
            reference,
            sha,
            source,
            ?superseded,
            "run queued"
        );
        for old in &superseded {
            let _ = self.live.send(Live::End {
                run: *old,
                status: "superseded".into(),
            });
        }
        self.kick();
        Ok(Queued {
            run,
            environment: Some(environment),
            superseded,
        })
    }

    /// Whether `sha` is a strict ancestor of `queued`, so running it would ship
    /// older code than the run it would replace. Commits not fetched yet are
    /// fetched once; when they stay unknown the newer trigger wins.
    async fn older(&self, sha: &str, queued: &str) -> bool {
        if sha == queued {
            return false;
        }
        if let Ok(answer) = self.repo.is_ancestor(sha, queued).await {
            return answer;
        }
        if let Err(e) = self.fetch().await {
            tracing::warn!(
                "cannot fetch to compare {} and {}: {e:#}",
                short(sha),
                short(queued)
            );
            return false;
        }
        self.repo.is_ancestor(sha, queued).await.unwrap_or(false)
    }

    /// Starts a worker for each environment with queued runs and none yet.
    pub(crate) fn kick(self: &Arc<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let mut active = lock(&self.active);
        let queued = match self.db.queued_environments() {
            Ok(queued) => queued,
            Err(e) => {
                tracing::error!("cannot read the queue: {e:#}");
                return;
            }
        };
        let mut workers = lock(&self.workers);
        // Reap the workers that ended, so the set does not grow with the service's age.
        while workers.try_join_next().is_some() {}
        for environment in queued {
            if active.insert(environment.clone()) {
                let service = self.clone();
                workers.spawn(async move {
                    let guard = Leave {
                        service: service.clone(),
                        environment: environment.clone(),
                        armed: true,
                    };
                    service.work(environment, guard).await
                });
            }
        }
    }

    /// The lock a run or a rollback of `environment` holds.
    pub(crate) fn env_lock(&self, environment: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.env_locks)
            .entry(environment.to_owned())
            .or_default()
            .clone()
    }

    async fn work(self: Arc<Self>, environment: String, mut leave: Leave) {
        loop {
            let run = {
                // Claiming and leaving under the same lock as `kick`: no run is left behind.
                let mut active = lock(&self.active);
                let claimed = if self.shutdown.is_cancelled() {
                    Ok(None)
                } else {
                    self.db.claim(&environment)
                };
                match claimed {
                    Ok(Some(run)) => run,
                    Ok(None) => {
                        active.remove(&environment);
                        leave.armed = false;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(environment, "cannot claim a run: {e:#}");
                        active.remove(&environment);
                        leave.armed = false;
                        return;
                    }
                }
            };
            let env_lock = self.env_lock(&environment);
            let _guard = env_lock.lock().await;
            // In a task of its own: a panic in the pipeline ends this run as an
            // error instead of the worker, which would leave the environment
            // claimed (`active`) and its run `running` for good.
            let (service, claimed) = (self.clone(), run.clone());
            let ended = isolated(async move { service.execute(&claimed).await }).await;
            let (status, reason, report) = match ended {
                // A stage stopped by the shutdown reports a failure; the run was cancelled.
                Ok(report)
                    if self.shutdown.is_cancelled()
                        && !matches!(
                            report.status(),
                            RunStatus::Succeeded | RunStatus::NothingToDo
                        ) =>
                {
                    (
                        "cancelled",
                        Some("the service stopped during the run".into()),
                        Some(report),
                    )
                }
                Ok(report) => (status_of(&report), None, Some(report)),
                Err(e) if e.is::<Stale>() => ("skipped", Some(e.to_string()), None),
                Err(e) if self.shutdown.is_cancelled() => {
                    ("cancelled", Some(format!("{e:#}")), None)
                }
                Err(e) => ("error", Some(format!("{e:#}")), None),
            };
            if let Some(reason) = &reason {
                self.log(run.id, &format!("error: {reason}"));
            }
            let deployed: Vec<(String, String)> = report
                .iter()
                .flat_map(|r| &r.apps)
                .filter(|a| a.outcome == Outcome::Deployed)
                .filter_map(|a| Some((a.app.clone(), a.image.as_ref()?.to_string())))
                .collect();
            let json = report.as_ref().and_then(|r| serde_json::to_string(r).ok());
            self.log(run.id, &format!("run {} {status}", run.id));
            if let Err(e) =
                self.db
                    .finish(&run, status, reason.as_deref(), json.as_deref(), &deployed)
            {
                tracing::error!(run = run.id, "cannot record the run's end: {e:#}");
            }
            tracing::info!(run = run.id, environment, status, "run finished");
            let _ = self.live.send(Live::End {
                run: run.id,
                status: status.into(),
            });
        }
    }

    async fn execute(&self, run: &Run) -> anyhow::Result<Report> {
        self.log(
            run.id,
            &format!(
                "run {} of {} at {} for {} ({})",
                run.id,
                run.reference,
                short(&run.sha),
                run.environment,
                run.trigger
            ),
        );
        self.fetch().await?;
        let sha = self
            .repo
            .resolve(&run.sha)
            .await?
            .with_context(|| format!("commit {} is not in the repository", run.sha))?;
        let good = self.db.last_good_sha(&run.environment)?;
        if let Some(good) = &good
            && *good != sha
            && self.repo.is_ancestor(&sha, good).await?
        {
            return Err(Stale(format!(
                "{} is an ancestor of {}, the environment's last good commit: an old or replayed trigger",
                short(&sha),
                short(good)
            ))
            .into());
        }
        let base = match good {
            Some(good) => Some(good),
            None => self.repo.resolve(&format!("{sha}~1")).await?,
        };
        self.db.set_base(run.id, base.as_deref())?;
        self.log(
            run.id,
            &match &base {
                Some(base) => format!("changes since {}", short(base)),
                None => "no base: every app ships".into(),
            },
        );
        let dir = self.repo.checkout(&run.environment, &sha).await?;
        let workspace = parts::workspace(&dir, &run.environment)?;
        let branch = run.reference.strip_prefix("refs/heads/").map(str::to_owned);
        let detector = GitChangeDetector::open(&dir)?.detached_head_branch(branch);
        let builder = parts::builder(&workspace, &self.config.state_dir.join("build")).await?;
        let registry = parts::registry(&self.config.registry)?;
        let deployer = parts::deployer(&workspace).await?;
        let pipeline = Pipeline::builder(workspace)
            .detector(Arc::new(detector))
            .builder(builder)
            .registry(registry)
            .deployer(deployer)
            .events(self.sink(run.id))
            .cancellation(self.shutdown.child_token())
            .build()?;
        let report = pipeline
            // HEAD, the checkout of `sha`: its branch is the ref's, its tag exact.
            .run(base.as_deref(), "HEAD", &Selection::default())
            .await
            .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
        for app in &report.apps {
            let image = app
                .image
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let mut line = format!("{}: {:?} {image}", app.app, app.outcome);
            if let Some(error) = &app.error {
                line.push_str(&format!(" ({error})"));
            }
            self.log(run.id, &line);
        }
        Ok(report)
    }

    /// The pipeline's events, stored and sent live (progress counts only live).
    fn sink(&self, run: i64) -> EventSink {
        let (db, live) = (self.db.clone(), self.live.clone());
        EventSink::new(move |event: &Event| {
            let app = event.app.clone().unwrap_or_else(|| "workspace".into());
            let stage = event.stage.to_string();
            let state = match &event.kind {
                EventKind::Started => "started".to_owned(),
                EventKind::Finished { ok: true } => "done".to_owned(),
                EventKind::Finished { ok: false } => "failed".to_owned(),
                EventKind::Progress { done, total, unit } => match total {
                    Some(total) => format!("{done}/{total} {unit}"),
                    None => format!("{done} {unit}"),
                },
                EventKind::Message { text } => text.clone(),
                _ => String::new(),
            };
            let _ = live.send(Live::App {
                run,
                app: app.clone(),
                stage: stage.clone(),
                state: state.clone(),
            });
            if matches!(event.kind, EventKind::Progress { .. }) {
                return;
            }
            if let Ok(json) = serde_json::to_string(event)
                && let Err(e) = db.event(run, &json)
            {
                tracing::error!(run, "cannot store an event: {e:#}");
            }
            let text = format!("{app} {stage}: {state}");
            match db.log(run, &text) {
                Ok(seq) => {
                    let _ = live.send(Live::Line { run, seq, text });
                }
                Err(e) => tracing::error!(run, "cannot store a log line: {e:#}"),
            }
        })
    }

    /// Stores a log line of a run and sends it live.
    pub(crate) fn log(&self, run: i64, text: &str) {
        tracing::info!(run, "{text}");
        match self.db.log(run, text) {
            Ok(seq) => {
                let _ = self.live.send(Live::Line {
                    run,
                    seq,
                    text: text.to_owned(),
                });
            }
            Err(e) => tracing::error!(run, "cannot store a log line: {e:#}"),
        }
    }

    /// Cancels the running pipelines and waits up to `grace` for them to record
    /// their end; runs still going then are marked interrupted.
    pub(crate) async fn stop(&self, grace: Duration) {
        self.shutdown.cancel();
        let mut workers = std::mem::take(&mut *lock(&self.workers));
        let all = async { while workers.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("runs did not stop within {grace:?}: marking them interrupted");
            if let Err(e) = self.db.interrupt_running() {
                tracing::error!("cannot mark runs interrupted: {e:#}");
            }
        }
    }
}

/// Runs `work` in a task of its own; its panic becomes an error.
async fn isolated<T: Send + 'static>(
    work: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    match tokio::spawn(work).await {
        Ok(ended) => ended,
        Err(e) if e.is_panic() => {
            let panic = e.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(anyhow::anyhow!("the run panicked: {message}"))
        }
        Err(e) => Err(anyhow::anyhow!("the run's task failed: {e}")),
    }
}

/// A worker's claim on its environment: if the worker ends in a panic, the
/// environment leaves `active` (so the next trigger starts a worker) and runs
/// it left `running` are marked `error`.
struct Leave {
    service: Arc<Service>,
    environment: String,
    /// Cleared when the worker leaves normally, under the `active` lock.
    armed: bool,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // A panic: the claimed run ends as an error. An abort (the runtime
        // stopping) leaves it to `stop`, which marks it interrupted.
        if std::thread::panicking() {
            tracing::error!(environment = self.environment, "the worker panicked");
            if let Err(e) = self
                .service
                .db
                .fail_running(&self.environment, "the worker panicked")
            {
                tracing::error!("cannot mark the run failed: {e:#}");
            }
        }
        lock(&self.service.active).remove(&self.environment);
        // Queued runs are taken by the next trigger (`kick` from a drop could
        // re-enter the workers' lock).
    }
}

/// A run of a commit older than the one its environment already runs: skipped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Stale(String);

fn status_of(report: &Report) -> &'static str {
    match report.status() {
        RunStatus::NothingToDo => "nothing_to_do",
        RunStatus::Succeeded => "succeeded",
        RunStatus::RolledBack => "rolled_back",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// The first 12 characters of a commit id.
pub(crate) fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_a_run_becomes_its_error() {
        let error = isolated::<()>(async { panic!("a bug in a stage") })
            .await
            .expect_err("the panic");
        assert_eq!(error.to_string(), "the run panicked: a bug in a stage");
        assert_eq!(isolated(async { Ok(7) }).await.expect("no panic"), 7);
    }
}
