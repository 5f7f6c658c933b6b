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

/// How a container's health is probed, resolved from the target.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    kind: ProbeKind,
    interval: Duration,
    timeout: Duration,
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
        match &self.kind {
            ProbeKind::Http { path, port } => probe_http(http, &inspect, *port, path).await.is_ok(),
            ProbeKind::Exec(cmd) => probe_exec(docker, container, cmd, EXEC_PROBE_TIMEOUT, ctx)
                .await
                .is_ok(),
            ProbeKind::Running => inspect.state.and_then(|s| s.running) == Some(true),
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
                ProbeKind::Http { path, port } => {
                    timed(
                        container,
                        "probe: http",
                        probe_http(http, &inspect, *port, path),
                    )
                    .await
                }
                ProbeKind::Exec(cmd) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let exec =
                        probe_exec(docker, container, cmd, left.min(EXEC_PROBE_TIMEOUT), ctx);
                    timed(container, "probe: exec", exec).await
                }
                ProbeKind::Running if checks > 0 => Ok(()),
                ProbeKind::Running => Err("just started".into()),
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
        while let Some(Ok(chunk)) = stream.next().await {
            output.push_str(&chunk.to_string());
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
