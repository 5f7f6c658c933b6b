//! Progress for people: one bar per app and stage on a terminal (bytes for pushes,
//! replicas for rollouts), plain lines when stderr is a log, nothing for `--quiet`.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shipflow_kit::{Event, EventKind, EventSink, Stage};

/// How progress is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Bars on a terminal, lines otherwise.
    Auto,
    /// Nothing (`--format json` keeps stderr for errors only).
    Quiet,
}

/// Turns pipeline events into bars or lines on stderr.
pub(crate) struct Progress {
    bars: MultiProgress,
    open: Mutex<HashMap<(String, Stage), ProgressBar>>,
    terminal: bool,
}

impl Progress {
    /// An event sink that shows progress in `mode`.
    pub(crate) fn sink(mode: Mode) -> EventSink {
        if mode == Mode::Quiet {
            return EventSink::default();
        }
        let terminal = std::io::stderr().is_terminal();
        let progress = Arc::new(Progress {
            bars: MultiProgress::with_draw_target(if terminal {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            }),
            open: Mutex::default(),
            terminal,
        });
        EventSink::new(move |event| progress.show(event))
    }

    /// An event sink for one-off cluster commands (`apply`, `config`): their
    /// messages as lines on stderr, unless `mode` is quiet.
    pub(crate) fn messages(mode: Mode) -> EventSink {
        if mode == Mode::Quiet {
            return EventSink::default();
        }
        EventSink::new(|event| {
            if let EventKind::Message { text } = &event.kind {
                eprintln!("{text}");
            }
        })
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
        let Ok(mut open) = self.open.lock() else {
            return;
        };
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
