//! The small context every adapter call takes: cancellation, progress events, dry-run.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// A step of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Finding what changed.
    Detect,
    /// Building the image.
    Build,
    /// Pushing the image to the registry.
    Push,
    /// Rolling the workload to the new image.
    Deploy,
    /// Rolling the workload back after a failed rollout.
    Rollback,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Detect => "detect",
            Stage::Build => "build",
            Stage::Push => "push",
            Stage::Deploy => "deploy",
            Stage::Rollback => "rollback",
        })
    }
}

/// What a stage reports about itself while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The stage started.
    Started,
    /// The stage made progress: `done` of `total` `unit`s (bytes, layers, replicas).
    Progress {
        /// How much is done.
        done: u64,
        /// How much there is, when known.
        total: Option<u64>,
        /// What is counted, e.g. `bytes` or `replicas`.
        unit: String,
    },
    /// A line worth showing a person, e.g. "waiting for 2 old replicas to terminate".
    Message {
        /// The text.
        text: String,
    },
    /// The stage finished; `ok` is false when it failed.
    Finished {
        /// Whether the stage succeeded.
        ok: bool,
    },
}

/// A progress event: which app, which stage, what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// The app the event is about; `None` for workspace-wide work such as change detection.
    pub app: Option<String>,
    /// The stage.
    pub stage: Stage,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Where events go: a callback shared by every task of a run. The default drops them.
#[derive(Clone, Default)]
pub struct EventSink(Option<Arc<EventCallback>>);

type EventCallback = dyn Fn(&Event) + Send + Sync;

impl EventSink {
    /// A sink that calls `f` for every event. `f` runs on the emitting task: keep it short.
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Delivers `event`, if anyone listens.
    pub fn emit(&self, event: Event) {
        if let Some(f) = &self.0 {
            f(&event);
        }
    }
}

impl fmt::Debug for EventSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "EventSink(..)"
        } else {
            "EventSink(none)"
        })
    }
}

/// The context an adapter call runs in.
///
/// Adapters check [`Context::cancelled`] at safe points, report progress with
/// [`Context::progress`], and make no changes when [`Context::dry_run`] is set.
#[derive(Debug, Clone, Default)]
pub struct Context {
    cancel: CancellationToken,
    events: EventSink,
    dry_run: bool,
    app: Option<String>,
    stage: Option<Stage>,
}

impl Context {
    /// A context with its own cancellation token, no event sink, and dry-run off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `token` for cancellation.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Sends events to `sink`.
    pub fn with_events(mut self, sink: EventSink) -> Self {
        self.events = sink;
        self
    }

    /// Turns dry-run on or off.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// The same context, scoped to `app` and `stage`: events it emits carry both.
    pub fn scoped(&self, app: Option<&str>, stage: Stage) -> Self {
        Self {
            app: app.map(str::to_owned),
            stage: Some(stage),
            ..self.clone()
        }
    }

    /// The cancellation token; await `cancelled()` on it in `select!` to stop early.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Whether the run was cancelled.
    pub fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(Cancelled)` when the run was cancelled, for `?` at safe points.
    pub fn check_cancelled(&self) -> Result<(), Cancelled> {
        if self.cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Whether side effects are switched off.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The app this context is scoped to.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// The event sink.
    pub fn events(&self) -> &EventSink {
        &self.events
    }

    /// Emits an event for this context's app and stage.
    pub fn emit(&self, kind: EventKind) {
        self.events.emit(Event {
            app: self.app.clone(),
            stage: self.stage.unwrap_or(Stage::Detect),
            kind,
        });
    }

    /// Emits a progress event: `done` of `total` `unit`s.
    pub fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        self.emit(EventKind::Progress {
            done,
            total,
            unit: unit.to_owned(),
        });
    }

    /// Emits a message for people, and logs it at debug level (target
    /// `shipflow_core::context`), so an adapter's step-by-step decisions show with
    /// `RUST_LOG=shipflow=debug` even where no event sink listens.
    pub fn message(&self, text: impl Into<String>) {
        let text = text.into();
        tracing::debug!(app = self.app.as_deref().unwrap_or(""), stage = ?self.stage, "{text}");
        self.emit(EventKind::Message { text });
    }
}

/// The error an adapter returns when it stopped because the run was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;
