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

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::{App, BoxError, Context, ImageRef, Reason, Workspace};

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

/// What a [`Hook`](crate::Hook) is told: where in which app's run it is, and what is
/// known there.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct HookEvent<'a> {
    /// Where in the run.
    pub point: HookPoint,
    /// The app.
    pub app: &'a App,
    /// The digest-pinned image, once built (`post_build` on).
    pub image: Option<&'a ImageRef>,
    /// The commit being shipped.
    pub revision: Option<&'a str>,
    /// Why the app is in the run.
    pub reasons: &'a [Reason],
    /// The deploy target (`kubernetes`, `docker`), for deploy hooks.
    pub target: Option<&'a str>,
    /// What failed, for `on_failure`.
    pub error: Option<&'a (dyn std::error::Error + Send + Sync + 'static)>,
}

impl<'a> HookEvent<'a> {
    /// `point` of `app`'s run, nothing else known.
    pub fn new(point: HookPoint, app: &'a App) -> Self {
        Self {
            point,
            app,
            image: None,
            revision: None,
            reasons: &[],
            target: None,
            error: None,
        }
    }
}

/// Why a hook failed: the app, the point, the command, how it ended, and the last
/// lines it printed.
#[derive(Debug, thiserror::Error)]
#[error("{app}: {point} hook `{command}` {ending}{}", tail_text(.tail))]
pub struct HookError {
    /// The app.
    pub app: String,
    /// Where in the run.
    pub point: HookPoint,
    /// The command, as configured.
    pub command: String,
    /// How it ended: `exited with 2`, `timed out after 300 s`, `could not start: …`.
    pub ending: String,
    /// Its last lines of output (at most 50).
    pub tail: Vec<String>,
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output:\n  {}", tail.join("\n  "))
    }
}

/// How many lines of a hook's output its error keeps.
const TAIL_LINES: usize = 50;
/// The longest output line kept whole; longer ones are cut.
const MAX_LINE: usize = 4096;

/// The [`Hook`](crate::Hook) of `hooks` tables: runs the workspace's command, then
/// the app's, for each point, from the repository root, with `SHIPFLOW_APP`,
/// `SHIPFLOW_IMAGE`, `SHIPFLOW_REVISION`, `SHIPFLOW_STAGE` and `SHIPFLOW_TARGET`
/// set and the app's reasons as JSON on stdin. Output streams to the run's events
/// and to tracing; a command that outlives its timeout (or the run's cancellation)
/// is killed with its whole process group.
#[derive(Debug, Clone)]
pub struct CommandHooks {
    root: PathBuf,
    workspace: Hooks,
}

impl CommandHooks {
    /// The hooks of `workspace` and of its apps.
    pub fn new(workspace: &Workspace) -> Self {
        Self {
            root: workspace.root().to_owned(),
            workspace: workspace.hooks().clone(),
        }
    }

    /// Whether any hook is configured, for the workspace or any of `apps`.
    pub fn any<'a>(&self, mut apps: impl Iterator<Item = &'a App>) -> bool {
        !self.workspace.is_empty() || apps.any(|a| !a.hooks.is_empty())
    }

    async fn run_one(
        &self,
        command: &HookCommand,
        timeout: Duration,
        event: &HookEvent<'_>,
        ctx: &Context,
    ) -> Result<(), HookError> {
        let fail = |ending: String, tail: Vec<String>| HookError {
            app: event.app.name.clone(),
            point: event.point,
            command: command.to_string(),
            ending,
            tail,
        };
        let mut cmd = match command {
            HookCommand::Shell(line) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(line);
                c
            }
            HookCommand::Argv(argv) => {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        let image = event.image.map(ToString::to_string).unwrap_or_default();
        cmd.current_dir(&self.root)
            .env("SHIPFLOW_APP", &event.app.name)
            .env("SHIPFLOW_IMAGE", image)
            .env("SHIPFLOW_REVISION", event.revision.unwrap_or_default())
            .env("SHIPFLOW_STAGE", event.point.to_string())
            .env("SHIPFLOW_TARGET", event.target.unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("could not start: {e}"), Vec::new()))?;
        let stdin = serde_json::json!({
            "app": event.app.name,
            "stage": event.point,
            "image": event.image.map(ToString::to_string),
            "revision": event.revision,
            "target": event.target,
            "reasons": event.reasons,
            "error": event.error.map(|e| crate::error_chain(e)),
        });
        if let Some(mut pipe) = child.stdin.take() {
            // A command that does not read its stdin may close it: not an error.
            let _ = pipe.write_all(stdin.to_string().as_bytes()).await;
        }
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let readers = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn AsyncRead + Send + Unpin>),
        ];
        let mut output = tokio::task::JoinSet::new();
        for reader in readers.into_iter().flatten() {
            let (tail, ctx, app, point) = (
                tail.clone(),
                ctx.clone(),
                event.app.name.clone(),
                event.point,
            );
            output.spawn(async move {
                stream_lines(reader, |line| {
                    tracing::info!(target: "shipflow::hook", %app, %point, "{line}");
                    ctx.message(format!("{point}: {line}"));
                    let mut tail = tail
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                })
                .await;
            });
        }
        let ended = tokio::select! {
            status = child.wait() => Ok(status),
            () = tokio::time::sleep(timeout) => Err(format!("timed out after {} s and was killed", timeout.as_secs())),
            () = ctx.cancellation().cancelled() => Err("was cancelled and killed".to_owned()),
        };
        let status = match ended {
            Ok(status) => status,
            Err(why) => {
                kill_group(&child);
                let _ = child.wait().await;
                while output.join_next().await.is_some() {}
                return Err(fail(why, take(&tail)));
            }
        };
        while output.join_next().await.is_some() {}
        let status =
            status.map_err(|e| fail(format!("could not be waited for: {e}"), take(&tail)))?;
        tracing::debug!(app = %event.app.name, point = %event.point, ?status, elapsed = ?started.elapsed(), "hook done");
        if status.success() {
            Ok(())
        } else {
            let ending = match status.code() {
                Some(code) => format!("exited with {code}"),
                None => "was killed by a signal".to_owned(),
            };
            Err(fail(ending, take(&tail)))
        }
    }
}

fn take(tail: &Mutex<VecDeque<String>>) -> Vec<String> {
    tail.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .drain(..)
        .collect()
}

/// Kills the hook's whole process group (it was started as a group leader).
fn kill_group(child: &tokio::process::Child) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Calls `each` with every line `reader` yields, lines longer than [`MAX_LINE`] cut
/// (what follows up to the next newline is dropped), invalid UTF-8 replaced.
async fn stream_lines(mut reader: impl AsyncRead + Unpin, mut each: impl FnMut(String)) {
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut chunk = [0u8; 8192];
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &chunk[..n] {
            if byte == b'\n' {
                let mut text = String::from_utf8_lossy(&line).into_owned();
                if cut {
                    text.push_str(" …");
                }
                each(text);
                line.clear();
                cut = false;
            } else if line.len() < MAX_LINE {
                line.push(byte);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        each(String::from_utf8_lossy(&line).into_owned());
    }
}

#[async_trait]
impl crate::Hook for CommandHooks {
    async fn run(&self, event: &HookEvent<'_>, ctx: &Context) -> Result<(), BoxError> {
        for hooks in [&self.workspace, &event.app.hooks] {
            if let Some(command) = hooks.command(event.point) {
                let timeout = Duration::from_secs(hooks.timeout_secs());
                self.run_one(command, timeout, event, ctx).await?;
            }
        }
        Ok(())
    }
}
