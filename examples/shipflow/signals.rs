//! Ctrl-C and CI timeouts: the first SIGINT or SIGTERM cancels the run (apps not
//! started are skipped, in-flight deploys restore what ran before), a second one
//! exits at once and says what may be left half done.

use std::fmt;
use std::sync::{Arc, OnceLock};

use shipflow_kit::{CancellationToken, Stage};
use tokio::signal::unix::{Signal as Receiver, SignalKind, signal};

use crate::progress::Progress;

/// A signal that stops a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: what CI runners send when a job times out.
    Terminate,
}

impl Signal {
    /// The shell's exit code for a process the signal ended: 128 + its number.
    pub(crate) fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        })
    }
}

/// The run's cancellation, driven by signals.
#[derive(Clone)]
pub(crate) struct Signals {
    token: CancellationToken,
    first: Arc<OnceLock<Signal>>,
}

impl Signals {
    /// Handles SIGINT and SIGTERM from now on; `progress` says what is in flight.
    pub(crate) fn listen(progress: Arc<Progress>) -> std::io::Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let signals = Signals {
            token: CancellationToken::new(),
            first: Arc::default(),
        };
        let this = signals.clone();
        tokio::spawn(async move {
            let first = next(&mut interrupt, &mut terminate).await;
            let _ = this.first.set(first);
            this.token.cancel();
            progress.say(&cancelling(first, &progress.in_flight()));
            let second = next(&mut interrupt, &mut terminate).await;
            progress.say(&abandoning(second, &progress.in_flight()));
            std::process::exit(i32::from(second.exit_code()));
        });
        Ok(signals)
    }

    /// Signals no signal handler drives: for running commands in-process.
    #[cfg(test)]
    pub(crate) fn inert() -> Self {
        Signals {
            token: CancellationToken::new(),
            first: Arc::default(),
        }
    }

    /// The token the run is cancelled through.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The first signal received, if any.
    pub(crate) fn received(&self) -> Option<Signal> {
        self.first.get().copied()
    }
}

async fn next(interrupt: &mut Receiver, terminate: &mut Receiver) -> Signal {
    tokio::select! {
        _ = interrupt.recv() => Signal::Interrupt,
        _ = terminate.recv() => Signal::Terminate,
    }
}

/// What the first signal starts: "cancelling… waiting for web's deploy to restore
/// what ran before".
fn cancelling(signal: Signal, in_flight: &[(String, Stage)]) -> String {
    let waits: Vec<String> = in_flight
        .iter()
        .map(|(app, stage)| match stage {
            Stage::Detect => "change detection".to_owned(),
            Stage::Build => format!("{app}'s build to stop"),
            Stage::Push => format!("{app}'s push to stop (its tag is not moved)"),
            Stage::Deploy => format!("{app}'s deploy to restore what ran before"),
            Stage::Rollback => format!("{app}'s rollback to finish"),
        })
        .collect();
    let waiting = match waits.as_slice() {
        [] => "no stage is running; apps not started are skipped".to_owned(),
        waits => format!("waiting for {}", waits.join(", ")),
    };
    format!("{signal}: cancelling… {waiting} (signal again to exit at once, leaving it half done)")
}

/// What a second signal leaves behind, said as the program exits at once.
fn abandoning(signal: Signal, in_flight: &[(String, Stage)]) -> String {
    let mut text = format!("{signal} again: exiting now, without waiting");
    for (app, stage) in in_flight {
        let state = match stage {
            Stage::Detect => continue,
            Stage::Build => "its build is half written under .shipflow/build; the next build starts it over".to_owned(),
            Stage::Push => "its push stopped midway: some layers may be in the registry, its tag was not moved; the next push uploads the rest".to_owned(),
            Stage::Deploy | Stage::Rollback => format!(
                "stopped mid-{stage}: the old and the new revision may both exist, or neither run; the next deploy's crash repair brings back a healthy one"
            ),
        };
        text.push_str(&format!("\n  {app}: {state}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_name_what_is_in_flight() {
        let in_flight = [
            ("api".to_owned(), Stage::Push),
            ("web".to_owned(), Stage::Deploy),
        ];
        let first = cancelling(Signal::Interrupt, &in_flight);
        assert!(
            first.starts_with("SIGINT: cancelling… waiting for api's push to stop"),
            "{first}"
        );
        assert!(first.contains("web's deploy to restore what ran before"));
        let second = abandoning(Signal::Terminate, &in_flight);
        assert!(second.contains("web: stopped mid-deploy"), "{second}");
        assert!(second.contains("crash repair"), "{second}");
        assert_eq!(Signal::Terminate.exit_code(), 143);
    }
}
