//! The container runtime under the simulated kubelet: what a started container
//! prints, and when and how it exits. The kubelet keeps everything else (pulls,
//! back-offs, restart policies, termination-message policies, statuses) and asks a
//! [`Runtime`] only about the container runs it started, so a runtime that runs real
//! containers can take the scripts' place.
//!
//! The kubelet picks its runtime in one place (`kubelet::runtime`). A runtime that
//! runs real containers would start one in [`Runtime::start`] (it will want the
//! pod's and the container's spec in [`Started`] then), answer
//! [`Runtime::poll`] from the container's state without blocking (the kubelet
//! holds the store's lock), read the termination-message file into
//! [`Exit::message`], and say `tick + 1` from [`Runtime::next_change`] while a
//! container runs, so it is polled every step.

use crate::testing::Outcome;
use crate::testing::store::Scripts;

/// The most of a termination-message file the kubelet reads, in bytes.
pub(crate) const MAX_MESSAGE: usize = 4096;

/// One run of one container, as the kubelet started it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started<'a> {
    /// The image it runs.
    pub(crate) image: &'a str,
    /// Whether it is an init container.
    pub(crate) init: bool,
    /// How the scripts say it behaves.
    pub(crate) behaviour: Outcome,
    /// How many runs of it came before this one.
    pub(crate) restarts: u32,
    /// The step this run started in.
    pub(crate) since: u64,
}

/// How a container run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exit {
    /// The exit code.
    pub(crate) code: i32,
    /// What it wrote to its termination-message file (`/dev/termination-log`), or
    /// `""` for nothing.
    pub(crate) message: String,
    /// The log lines it printed as it exited.
    pub(crate) last_words: Vec<String>,
}

/// What the kubelet asks about the containers it runs.
pub(crate) trait Runtime {
    /// Starts a run; returns the log lines it prints as it starts.
    fn start(&mut self, run: &Started<'_>) -> Vec<String>;

    /// Whether the run has exited by step `tick`, and how.
    fn poll(&mut self, run: &Started<'_>, tick: u64) -> Option<Exit>;

    /// The step after `tick` at which [`poll`](Self::poll) may answer differently,
    /// `None` if never on its own (a runtime that cannot tell answers `tick + 1`).
    fn next_change(&self, run: &Started<'_>, tick: u64) -> Option<u64>;
}

/// The runtime the tests script: logs from [`set_logs`](crate::testing::SimCluster::set_logs),
/// termination messages from
/// [`set_termination_message`](crate::testing::SimCluster::set_termination_message),
/// exits from each image's [`Outcome`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scripted<'a>(pub(crate) &'a Scripts);

impl Scripted<'_> {
    /// The step at which the run exits, if it ever does on its own.
    fn exits_at(run: &Started<'_>) -> Option<u64> {
        match run.behaviour {
            Outcome::CrashLoop => Some(run.since + 1),
            Outcome::CrashesAfter { seconds } => Some(run.since + seconds.max(1)),
            Outcome::Exits { after, .. } => Some(run.since + after.max(1)),
            // Any other init container does its work in one step.
            _ if run.init => Some(run.since + 1),
            _ => None,
        }
    }
}

impl Runtime for Scripted<'_> {
    fn start(&mut self, run: &Started<'_>) -> Vec<String> {
        if let Some(lines) = self.0.logs.get(run.image) {
            return lines.clone();
        }
        let mut lines = vec![format!("starting {} (run {})", run.image, run.restarts + 1)];
        match run.behaviour {
            Outcome::CrashLoop => {
                lines.extend(["loading configuration".to_owned(), "panic: boom".to_owned()]);
            }
            Outcome::NeverReady => lines.push("waiting for the database at db:5432".to_owned()),
            Outcome::Exits { .. } => {}
            _ => lines.push("listening on :8080".to_owned()),
        }
        lines
    }

    fn poll(&mut self, run: &Started<'_>, tick: u64) -> Option<Exit> {
        if Self::exits_at(run).is_none_or(|at| tick < at) {
            return None;
        }
        Some(match run.behaviour {
            Outcome::CrashLoop => Exit {
                code: 2,
                message: "panic: boom".into(),
                last_words: Vec::new(),
            },
            Outcome::CrashesAfter { .. } => Exit {
                code: 2,
                message: "panic: lost the database".into(),
                last_words: vec!["panic: lost the database".into()],
            },
            Outcome::Exits { code, .. } => Exit {
                code,
                message: self.0.messages.get(run.image).cloned().unwrap_or_default(),
                last_words: Vec::new(),
            },
            _ => Exit {
                code: 0,
                message: self.0.messages.get(run.image).cloned().unwrap_or_default(),
                last_words: Vec::new(),
            },
        })
    }

    fn next_change(&self, run: &Started<'_>, tick: u64) -> Option<u64> {
        Self::exits_at(run).map(|at| at.max(tick + 1))
    }
}

/// The termination message the kubelet reports for a run that ended with `exit`
/// after printing `logs`: the message file's (at most [`MAX_MESSAGE`] bytes), or,
/// under `FallbackToLogsOnError`, for a failed run that wrote none, the end of its
/// log (the last 80 lines, at most 2048 bytes), as the kubelet does.
pub(crate) fn termination_message(exit: &Exit, policy: &str, logs: &[String]) -> String {
    if exit.message.is_empty() && exit.code != 0 && policy == "FallbackToLogsOnError" {
        let from = logs.len().saturating_sub(80);
        let mut text: String = logs[from..].iter().map(|l| format!("{l}\n")).collect();
        if text.len() > 2048 {
            let mut cut = text.len() - 2048;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            text.drain(..cut);
        }
        return text;
    }
    let mut text = exit.message.clone();
    if text.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: i32, message: &str) -> Exit {
        Exit {
            code,
            message: message.into(),
            last_words: Vec::new(),
        }
    }

    #[test]
    fn a_failed_run_without_a_message_falls_back_to_its_log_tail() {
        let logs: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let tail = termination_message(&exit(1, ""), "FallbackToLogsOnError", &logs);
        assert!(tail.starts_with("line 20\n"), "{tail}");
        assert!(tail.ends_with("line 99\n"));
        // Only on failure, only under that policy, only without a message.
        assert_eq!(
            termination_message(&exit(0, ""), "FallbackToLogsOnError", &logs),
            ""
        );
        assert_eq!(termination_message(&exit(1, ""), "File", &logs), "");
        assert_eq!(
            termination_message(&exit(1, "out of disk"), "FallbackToLogsOnError", &logs),
            "out of disk"
        );
        let long = vec!["é".repeat(3000)];
        let tail = termination_message(&exit(1, ""), "FallbackToLogsOnError", &long);
        assert!(tail.len() <= 2048 && tail.ends_with("é\n"));
    }

    #[test]
    fn a_message_is_cut_to_what_the_kubelet_reads() {
        let message = termination_message(&exit(0, &"x".repeat(10_000)), "File", &[]);
        assert_eq!(message.len(), MAX_MESSAGE);
    }
}
