//! How the program ends, as an exit code a CI script can branch on.

use std::process::ExitCode;

use shipflow_kit::RunStatus;

/// A command's result, before `--detailed-exitcode` turns it into a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Shipped; for `plan`, `status` and dry runs: there is work to ship.
    Shipped,
    /// Failed, and not (or not all) rolled back.
    Failed,
    /// Failed, and every failed rollout was rolled back.
    RolledBack,
    /// Nothing to do: everything was in place already.
    NothingToDo,
}

/// Bad usage: an unknown flag (clap's own), app or target.
pub(crate) const USAGE: u8 = 2;

impl Exit {
    /// The exit code: success or failure, or with `detailed` the codes of `--help`.
    pub(crate) fn code(self, detailed: bool) -> u8 {
        match (self, detailed) {
            (Exit::Shipped, _) => 0,
            (Exit::Failed, _) => 1,
            (Exit::NothingToDo, false) => 0,
            (Exit::RolledBack, false) => 1,
            (Exit::RolledBack, true) => 3,
            (Exit::NothingToDo, true) => 4,
        }
    }

    /// As an [`ExitCode`].
    pub(crate) fn exit_code(self, detailed: bool) -> ExitCode {
        ExitCode::from(self.code(detailed))
    }
}

impl From<RunStatus> for Exit {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Succeeded => Exit::Shipped,
            RunStatus::NothingToDo => Exit::NothingToDo,
            RunStatus::RolledBack => Exit::RolledBack,
            RunStatus::Failed | RunStatus::Cancelled => Exit::Failed,
        }
    }
}

/// An error of the command line itself (exit 2), not of the run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

#[cfg(test)]
mod tests {
    use super::Exit;

    #[test]
    fn nothing_to_do_and_a_rollback_are_told_apart_only_when_asked() {
        let codes = |detailed| {
            [
                Exit::Shipped,
                Exit::Failed,
                Exit::RolledBack,
                Exit::NothingToDo,
            ]
            .map(|e| e.code(detailed))
        };
        assert_eq!(codes(false), [0, 1, 1, 0]);
        assert_eq!(codes(true), [0, 1, 3, 4]);
    }
}
