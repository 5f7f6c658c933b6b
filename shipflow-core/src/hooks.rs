//! `hooks` in `shipflow.toml`: commands run around an app's stages.
//!
//! ```toml
//! [workspace.hooks]
//! post_deploy = "scripts/notify.sh"            # run with sh -c, from the repository root
//! [apps.api.hooks]
//! pre_build = ["cargo", "test", "-p", "api"]   # or an argument vector
//! on_failure = "scripts/page-oncall.sh"
//! timeout = 600                                 # seconds; default 300
//! ```
//!
//! The pipeline runs them for changed apps only (see [`CommandHooks`](crate::CommandHooks)).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How long a hook may run, by default.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 300;
/// The longest timeout a hook may be given: a day.
const MAX_HOOK_TIMEOUT_SECS: u64 = 86_400;

/// Where in an app's run a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before the build; a failure stops the app.
    PreBuild,
    /// After a build that succeeded.
    PostBuild,
    /// Before the deploy; a failure stops the app.
    PreDeploy,
    /// After a deploy that succeeded.
    PostDeploy,
    /// After any stage failed.
    OnFailure,
    /// After a rollback ran.
    OnRollback,
}

impl HookPoint {
    /// Every point, in the order a run meets them.
    pub const ALL: [HookPoint; 6] = [
        HookPoint::PreBuild,
        HookPoint::PostBuild,
        HookPoint::PreDeploy,
        HookPoint::PostDeploy,
        HookPoint::OnFailure,
        HookPoint::OnRollback,
    ];

    /// Whether a failure of the hook stops the app (the `pre_` hooks).
    pub fn gates(self) -> bool {
        matches!(self, HookPoint::PreBuild | HookPoint::PreDeploy)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookPoint::PreBuild => "pre_build",
            HookPoint::PostBuild => "post_build",
            HookPoint::PreDeploy => "pre_deploy",
            HookPoint::PostDeploy => "post_deploy",
            HookPoint::OnFailure => "on_failure",
            HookPoint::OnRollback => "on_rollback",
        })
    }
}

/// A hook's command: a line for `sh -c`, or an argument vector run directly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HookCommand {
    /// Run with `sh -c`.
    Shell(String),
    /// Run directly: the program and its arguments.
    Argv(Vec<String>),
}

impl fmt::Display for HookCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookCommand::Shell(line) => f.write_str(line),
            HookCommand::Argv(argv) => f.write_str(&argv.join(" ")),
        }
    }
}

/// The `hooks` table of an app or of `[workspace]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Hooks {
    /// Before the build.
    pub pre_build: Option<HookCommand>,
    /// After the build.
    pub post_build: Option<HookCommand>,
    /// Before the deploy.
    pub pre_deploy: Option<HookCommand>,
    /// After the deploy.
    pub post_deploy: Option<HookCommand>,
    /// After a failure.
    pub on_failure: Option<HookCommand>,
    /// After a rollback.
    pub on_rollback: Option<HookCommand>,
    /// Seconds each command may run before its process group is killed; default 300.
    pub timeout: Option<u64>,
}

impl Hooks {
    /// The command for `point`, if any.
    pub fn command(&self, point: HookPoint) -> Option<&HookCommand> {
        match point {
            HookPoint::PreBuild => self.pre_build.as_ref(),
            HookPoint::PostBuild => self.post_build.as_ref(),
            HookPoint::PreDeploy => self.pre_deploy.as_ref(),
            HookPoint::PostDeploy => self.post_deploy.as_ref(),
            HookPoint::OnFailure => self.on_failure.as_ref(),
            HookPoint::OnRollback => self.on_rollback.as_ref(),
        }
    }

    /// Sets the command for `point`.
    pub fn with(mut self, point: HookPoint, command: HookCommand) -> Self {
        let slot = match point {
            HookPoint::PreBuild => &mut self.pre_build,
            HookPoint::PostBuild => &mut self.post_build,
            HookPoint::PreDeploy => &mut self.pre_deploy,
            HookPoint::PostDeploy => &mut self.post_deploy,
            HookPoint::OnFailure => &mut self.on_failure,
            HookPoint::OnRollback => &mut self.on_rollback,
        };
        *slot = Some(command);
        self
    }

    /// Whether no command is set.
    pub fn is_empty(&self) -> bool {
        HookPoint::ALL.iter().all(|p| self.command(*p).is_none())
    }

    /// The timeout of each command, in seconds.
    pub fn timeout_secs(&self) -> u64 {
        self.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT_SECS)
    }

    /// What is wrong with the table, as `(field, message)`.
    pub(crate) fn check(&self) -> Result<(), (String, String)> {
        if let Some(t) = self.timeout
            && !(1..=MAX_HOOK_TIMEOUT_SECS).contains(&t)
        {
            return Err((
                "timeout".into(),
                format!("{t} is out of range: give 1 to {MAX_HOOK_TIMEOUT_SECS} seconds"),
            ));
        }
        for point in HookPoint::ALL {
            let empty = match self.command(point) {
                Some(HookCommand::Shell(line)) => line.trim().is_empty(),
                Some(HookCommand::Argv(argv)) => argv.first().is_none_or(|p| p.is_empty()),
                None => false,
            };
            if empty {
                return Err((point.to_string(), "the command is empty".into()));
            }
        }
        Ok(())
    }
}
