//! Progress for people: one bar per app and stage on a terminal (bytes for pushes,
//! replicas for rollouts), plain lines when stderr is a log, nothing for `--quiet`.
//! It also keeps what is in flight, for what a cancelled run waits for.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shipflow_kit::{Event, EventKind, EventSink, Stage};

/// How progress is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Bars on a terminal, lines otherwise.
    Auto,
    /// Nothing but what must be said (`--quiet`, and `-o json` keeps stderr for errors).
    Quiet,
}

/// Turns pipeline events into bars or lines on stderr, and tracks which app is in
/// which stage.
pub(crate) struct Progress {
    mode: Mode,
    bars: MultiProgress,
    open: Mutex<HashMap<(String, Stage), ProgressBar>>,
    in_flight: Mutex<HashSet<(String, Stage)>>,
    terminal: bool,
}

impl Progress {
    /// Progress shown in `mode`.
    pub(crate) fn new(mode: Mode) -> Arc<Self> {
        let terminal = mode == Mode::Auto && std::io::stderr().is_terminal();
        Arc::new(Progress {
            mode,
            bars: MultiProgress::with_draw_target(if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            open: Mutex::default(),
            in_flight: Mutex::default(),
            terminal,
        })
    }

    /// An event sink for pipeline runs: bars or lines, and the in-flight stages.
    pub(crate) fn sink(self: &Arc<Self>) -> EventSink {
        let progress = self.clone();
        EventSink::new(move |event| {
            progress.track(event);
            // Change detection takes milliseconds: no line of its own.
            if progress.mode == Mode::Auto && event.stage != Stage::Detect {
                progress.show(event);
            }
        })
    }

    /// An event sink for one-off commands (`apply`, `configmap`, `rollback`): their
    /// messages as lines on stderr, unless quiet.
    pub(crate) fn messages(self: &Arc<Self>) -> EventSink {
        let progress = self.clone();
        EventSink::new(move |event| {
            progress.track(event);
            if let EventKind::Message { text } = &event.kind {
                progress.note(text);
            }
        })
    }

    /// A line for people on stderr, unless quiet (above the bars on a terminal).
    pub(crate) fn note(&self, text: &str) {
        if self.mode == Mode::Auto {
            self.say(text);
        }
    }

    /// A line on stderr even when quiet: what a signal did.
    pub(crate) fn say(&self, text: &str) {
        if self.terminal {
            let _ = self.bars.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    /// The stages running now, per app, in name order.
    pub(crate) fn in_flight(&self) -> Vec<(String, Stage)> {
        let set = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut stages: Vec<(String, Stage)> = set.iter().cloned().collect();
        stages.sort_by_key(|(app, stage)| (app.clone(), *stage as u8));
        stages
    }

    fn track(&self, event: &Event) {
        let key = (
            event.app.clone().unwrap_or_else(|| "workspace".into()),
            event.stage,
        );
        let mut set = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &event.kind {
            EventKind::Started => {
                set.insert(key);
            }
            EventKind::Finished { .. } => {
                set.remove(&key);
            }
            _ => {}
        }
    }

    fn show(&self, event: &Event) {
        let app = event.app.clone().unwrap_or_else(|| "workspace".into());
        if !self.terminal {
            match &event.kind {
                EventKind::Started => eprintln!("{app}: {} started", event.stage),
                EventKind::Finished { ok } => {
                    eprintln!(
                        "{app}: {} {}",
                        event.stage,
                        if *ok { "done" } else { "failed" }
                    )
                }
                EventKind::Message { text } => eprintln!("{app}: {}: {text}", event.stage),
                _ => {}
            }
            return;
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (app.clone(), event.stage);
        match &event.kind {
            EventKind::Started => {
                let bar = self.bars.add(ProgressBar::new_spinner());
                bar.set_style(spinner_style());
                bar.set_prefix(format!("{app} {}", event.stage));
                bar.enable_steady_tick(Duration::from_millis(120));
                open.insert(key, bar);
            }
            EventKind::Progress { done, total, unit } => {
                if let Some(bar) = open.get(&key) {
                    if let Some(total) = total
                        && bar.length() != Some(*total)
                    {
                        bar.set_style(bar_style(unit));
                        bar.set_length(*total);
                    }
                    bar.set_position(*done);
                }
            }
            EventKind::Message { text } => {
                if let Some(bar) = open.get(&key) {
                    bar.set_message(text.clone());
                }
            }
            EventKind::Finished { ok } => {
                if let Some(bar) = open.remove(&key) {
                    bar.set_style(spinner_style());
                    bar.finish_with_message(if *ok { "✓" } else { "✗ failed" });
                }
            }
            _ => {}
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style(unit: &str) -> ProgressStyle {
    let template = if unit == "bytes" {
        "{spinner} {prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}"
            .to_owned()
    } else {
        format!("{{spinner}} {{prefix:.bold}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}")
    };
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
