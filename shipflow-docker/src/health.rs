//! Deciding whether a started container is healthy: an HTTP probe on its published
//! port, a command run in it, or (with no check configured) still running after one
//! interval.

use std::time::Duration;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::ContainerInspectResponse;
use futures_util::StreamExt;
use shipflow_core::Context;

use crate::config::{DockerTarget, HealthCheck};
use tokio::time::Instant;

use crate::spec::PortSpec;
use crate::states;
use crate::timing::timed;

/// The longest one exec probe may run, however much of the health timeout is left:
/// a command that hangs once (a `curl` against an app that accepts but does not
/// answer yet) leaves time for the next probes. Longer than the HTTP probe's 2 s, as
/// an exec starts a process through the runtime first.
const EXEC_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an exec probe's output a failure report keeps.
const EXEC_OUTPUT_LIMIT: usize = 4 * 1024;

/// How a container's health is probed, resolved from the target.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    kind: ProbeKind,
    interval: Duration,
    timeout: Duration,
    /// How long the container must stay healthy after its first passing probe;
    /// `None` leaves it to the deployer's default.
    stable_for: Option<Duration>,
}

#[derive(Debug, Clone)]
enum ProbeKind {
    Http { path: String, port: u16 },
    Exec(Vec<String>),
    Running,
}

impl Probe {
    pub(crate) fn for_target(target: &DockerTarget) -> Result<Self, String> {
        let check = target.health.clone().unwrap_or_default();
        let HealthCheck {
            http,
            cmd,
            port,
            interval,
            timeout,
            stable_for,
        } = check;
        let kind = match (http, cmd.is_empty()) {
            (Some(path), _) => {
                let port = match port {
                    Some(port) => port,
                    None => first_container_port(target)?
                        .ok_or("health.http needs a published port or health.port".to_owned())?,
                };
                let path = if path.starts_with('/') {
                    path
                } else {
                    format!("/{path}")
                };
                ProbeKind::Http { path, port }
            }
            (None, false) => ProbeKind::Exec(cmd),
            (None, true) => ProbeKind::Running,
        };
        Ok(Self {
            kind,
            interval: Duration::from_millis(
                interval.map_or(1000, |s| s.saturating_mul(1000)).max(100),
            ),
            timeout: Duration::from_secs(timeout.unwrap_or(30)),
            stable_for: stable_for.map(Duration::from_secs),
        })
    }

    /// Overrides the probe interval (tests and impatient users).
    pub(crate) fn with_interval(mut self, interval: Option<Duration>) -> Self {
        if let Some(interval) = interval {
            self.interval = interval;
        }
        self
    }

    /// The same probe, waiting at most `limit`.
    pub(crate) fn bounded(mut self, limit: Duration) -> Self {
        self.timeout = self.timeout.min(limit);
        self
    }

    /// Whether one probe of a running container succeeds now (crash repair).
    pub(crate) async fn wait_healthy_once(
        &self,
        docker: &Docker,
        http: &reqwest::Client,
        container: &str,
        ctx: &Context,
    ) -> bool {
        let Ok(inspect) = states::inspect(docker, container).await else {
            return false;
        };
        if inspect.state.as_ref().and_then(|s| s.running) != Some(true) {
            return false;
        }
        self.check(docker, http, (container, &inspect), EXEC_PROBE_TIMEOUT, ctx)
            .await
            .is_ok()
    }

    /// One probe of a container that runs: its HTTP answer or its command's exit
    /// status (a `Running` probe has nothing more to check).
    async fn check(
        &self,
        docker: &Docker,
        http: &reqwest::Client,
        (container, inspect): (&str, &ContainerInspectResponse),
        exec_limit: Duration,
        ctx: &Context,
    ) -> Result<(), String> {
        match &self.kind {
            ProbeKind::Http { path, port } => {
                let probe = probe_http(http, inspect, *port, path);
                timed(container, "probe: http", probe).await
            }
            ProbeKind::Exec(cmd) => {
                let exec = probe_exec(docker, container, cmd, exec_limit, ctx);
                timed(container, "probe: exec", exec).await
            }
            ProbeKind::Running => Ok(()),
        }
    }

    /// Waits until the container is healthy; the error says why it never was.
    pub(crate) async fn wait_healthy(
        &self,
        docker: &Docker,
        http: &reqwest::Client,
        container: &str,
        ctx: &Context,
    ) -> Result<(), String> {
        // The timeout was range-checked at load; never overflow the clock anyway.
        let deadline = Instant::now()
            .checked_add(self.timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        let mut checks = 0u32;
        loop {
            if ctx.cancelled() {
                return Err("cancelled".into());
            }
            let inspect = states::inspect(docker, container);
            let inspect = timed(container, "probe: inspect", inspect)
                .await
                .map_err(|e| format!("inspect: {e}"))?;
            let state = inspect.state.clone().unwrap_or_default();
            if state.running != Some(true) {
                return Err(format!(
                    "the container exited (code {}) {}",
                    state.exit_code.unwrap_or_default(),
                    state.error.filter(|e| !e.is_empty()).unwrap_or_default()
                ));
            }
            let outcome = match &self.kind {
                // Running once says little: it must still run one interval later.
                ProbeKind::Running if checks == 0 => Err("just started".into()),
                _ => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let limit = left.min(EXEC_PROBE_TIMEOUT);
                    self.check(docker, http, (container, &inspect), limit, ctx)
                        .await
                }
            };
            checks += 1;
            let last = match outcome {
                Ok(()) => return Ok(()),
                Err(cause) => cause,
            };
            if Instant::now() + self.interval > deadline {
                return Err(format!("not healthy within {:?}: {last}", self.timeout));
            }
            // Cancelled while waiting: the loop's first check says so.
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = ctx.cancellation().cancelled() => {}
            }
        }
    }

    /// How long a container must stay healthy after its first passing probe: the
    /// app's `health.stable_for`, else `default`.
    pub(crate) fn stable_for(&self, default: Duration) -> Duration {
        self.stable_for.unwrap_or(default)
    }

    /// Watches a container that passed its health gate for `window`, the idea of
    /// Kubernetes' `minReadySeconds` and of Swarm's update monitor: it must keep
    /// running, not restart (a restart policy hides a crash otherwise), and pass
    /// every probe, one per interval, until the window ends. A revision that answers
    /// once and dies seconds later fails here instead of being called deployed.
    pub(crate) async fn watch_stable(
        &self,
        docker: &Docker,
        http: &reqwest::Client,
        container: &str,
        window: Duration,
        ctx: &Context,
    ) -> Result<(), String> {
        if window.is_zero() {
            return Ok(());
        }
        let started = Instant::now();
        let deadline = started
            .checked_add(window)
            .unwrap_or_else(|| started + Duration::from_secs(86_400));
        let first = states::inspect(docker, container)
            .await
            .map_err(|e| format!("inspect: {e}"))?;
        let baseline = (first.restart_count, first.state.and_then(|s| s.started_at));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval.min(left)) => {}
                () = ctx.cancellation().cancelled() => return Err("cancelled".into()),
            }
            let since = started.elapsed();
            let inspect = states::inspect(docker, container);
            let inspect = timed(container, "stable: inspect", inspect)
                .await
                .map_err(|e| format!("inspect: {e}"))?;
            let state = inspect.state.clone().unwrap_or_default();
            if state.running != Some(true) {
                return Err(format!(
                    "the container exited (code {}) {} ms after passing its health check",
                    state.exit_code.unwrap_or_default(),
                    since.as_millis()
                ));
            }
            if (inspect.restart_count, state.started_at) != baseline {
                return Err(format!(
                    "the container restarted {} ms after passing its health check",
                    since.as_millis()
                ));
            }
            let limit = left.clamp(Duration::from_secs(1), EXEC_PROBE_TIMEOUT);
            self.check(docker, http, (container, &inspect), limit, ctx)
                .await
                .map_err(|cause| {
                    format!(
                        "a probe failed {} ms after passing its health check: {cause}",
                        since.as_millis()
                    )
                })?;
        }
    }
}

fn first_container_port(target: &DockerTarget) -> Result<Option<u16>, String> {
    match target.ports.first() {
        Some(p) => Ok(Some(PortSpec::parse(p)?.container_port)),
        None => Ok(None),
    }
}

/// The loopback address where `container_port` of the container is published.
pub(crate) fn published_addr(
    inspect: &ContainerInspectResponse,
    container_port: u16,
) -> Option<String> {
    let ports = inspect.network_settings.as_ref()?.ports.as_ref()?;
    let binding = ports
        .get(&format!("{container_port}/tcp"))?
        .as_ref()?
        .first()?;
    let port = binding.host_port.as_deref().filter(|p| !p.is_empty())?;
    let ip = match binding.host_ip.as_deref() {
        None | Some("" | "0.0.0.0" | "::") => "127.0.0.1",
        Some(ip) => ip,
    };
    Some(format!("{ip}:{port}"))
}

/// The container port traffic goes to: `health.port`, else the first published one.
pub(crate) fn service_port(target: &DockerTarget) -> Result<Option<u16>, String> {
    match target.health.as_ref().and_then(|h| h.port) {
        Some(port) => Ok(Some(port)),
        None => first_container_port(target),
    }
}

async fn probe_http(
    http: &reqwest::Client,
    inspect: &ContainerInspectResponse,
    port: u16,
    path: &str,
) -> Result<(), String> {
    let addr = published_addr(inspect, port)
        .ok_or_else(|| format!("container port {port} is not published"))?;
    let url = format!("http://{addr}{path}");
    let response = http
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("GET {url}: HTTP {status}"))
    }
}

/// Runs `cmd` in the container for at most `limit`, or until `ctx` is cancelled.
/// The engine API cannot kill an exec: one that timed out runs on in the container
/// (an unhealthy container is stopped, which ends it).
async fn probe_exec(
    docker: &Docker,
    container: &str,
    cmd: &[String],
    limit: Duration,
    ctx: &Context,
) -> Result<(), String> {
    let run = tokio::time::timeout(limit, run_exec(docker, container, cmd));
    tokio::select! {
        outcome = run => outcome.unwrap_or_else(|_| {
            Err(format!("{cmd:?} did not finish within {} ms", limit.as_millis()))
        }),
        () = ctx.cancellation().cancelled() => Err("cancelled".into()),
    }
}

/// Appends what fits of `text` to `kept` below `limit` bytes (on a character
/// boundary) and returns how many bytes were left out.
fn keep_bounded(kept: &mut String, text: &str, limit: usize) -> usize {
    let room = limit.saturating_sub(kept.len());
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    kept.push_str(&text[..end]);
    text.len() - end
}

async fn run_exec(docker: &Docker, container: &str, cmd: &[String]) -> Result<(), String> {
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("exec {cmd:?}: {e}"))?;
    let mut output = String::new();
    if let StartExecResults::Attached {
        output: mut stream, ..
    } = docker
        .start_exec(&exec.id, None)
        .await
        .map_err(|e| format!("exec {cmd:?}: {e}"))?
    {
        // Read to the end (the exec finishes), keep only the start.
        let mut dropped = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            dropped += keep_bounded(&mut output, &chunk.to_string(), EXEC_OUTPUT_LIMIT);
        }
        if dropped > 0 {
            output.push_str(&format!("… ({dropped} more bytes)"));
        }
    }
    let inspect = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| format!("exec {cmd:?}: {e}"))?;
    match inspect.exit_code {
        Some(0) => Ok(()),
        code => Err(format!(
            "{cmd:?} exited with {}: {}",
            code.unwrap_or(-1),
            output.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::keep_bounded;

    #[test]
    fn exec_output_is_kept_up_to_the_limit_on_a_character_boundary() {
        let mut kept = String::new();
        assert_eq!(keep_bounded(&mut kept, "abc", 5), 0);
        assert_eq!(keep_bounded(&mut kept, "déf", 5), 3);
        assert_eq!(kept, "abcd");
        assert_eq!(keep_bounded(&mut kept, "more", 5), 3);
        assert_eq!(kept, "abcdm");
        assert_eq!(keep_bounded(&mut kept, "full", 5), 4);
        assert_eq!(kept, "abcdm");
    }
}
