//! [`EngineDeployer`]: rolls an app's container on one Docker or Podman host.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions, RenameContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use shipflow_core::{
    App, BoxError, Context, DeployMeta, Deployed, Deployer, DockerTarget, ImageRef, Revision,
    RollbackTarget, Rollout, Strategy,
};

use crate::health::{Probe, published_addr, service_port};
use crate::lock::HostLock;
use crate::spec::{Publish, container_body};
use crate::state::{self, AppContainer, AppState, Phase};
use crate::switch::{CaddySwitch, TrafficSwitch};
use crate::{DockerError, Engine};

/// How many stopped containers are kept for rollback when the target says nothing.
const DEFAULT_KEEP: u32 = 3;
/// How many log lines a failure report carries.
const LOG_LINES: &str = "20";

/// Registry credentials for pulls. `Debug` never shows the password.
#[derive(Clone)]
pub struct RegistryCredentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Rolls an app's container on one Docker or Podman host: pulls the digest-pinned
/// image, creates a labelled container per revision (`<name>--r<N>`), switches to
/// it health-gated with the target's strategy, keeps the last stopped ones for
/// rollback without a pull. All state lives in container labels and names.
pub struct EngineDeployer {
    engine: Engine,
    http: reqwest::Client,
    credentials: Option<RegistryCredentials>,
    state_dir: PathBuf,
    lock_wait: Duration,
    lock_ttl: Duration,
    probe_interval: Option<Duration>,
    drain: Duration,
    stop_timeout: i32,
    switch: Option<Arc<dyn TrafficSwitch>>,
}

impl fmt::Debug for EngineDeployer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineDeployer")
            .field("engine", &self.engine)
            .field("credentials", &self.credentials)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// Configures an [`EngineDeployer`].
pub struct EngineDeployerBuilder {
    deployer: EngineDeployer,
}

impl EngineDeployerBuilder {
    /// Credentials for pulling from the app's registry.
    pub fn credentials(mut self, credentials: RegistryCredentials) -> Self {
        self.deployer.credentials = Some(credentials);
        self
    }

    /// Where host locks live; default `$XDG_STATE_HOME/shipflow/docker`, else
    /// `/tmp/shipflow-docker`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.deployer.state_dir = dir.into();
        self
    }

    /// How long a deploy waits for another one of the same app; default 5 minutes.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.deployer.lock_wait = wait;
        self
    }

    /// How long a lock lives at most if its holder never releases it; default 30 minutes.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.deployer.lock_ttl = ttl;
        self
    }

    /// Overrides every target's health probe interval.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.deployer.probe_interval = Some(interval);
        self
    }

    /// How long the old container of a `start-first` deploy keeps running after the
    /// switch, to finish requests in flight; default 2 s.
    pub fn drain(mut self, drain: Duration) -> Self {
        self.deployer.drain = drain;
        self
    }

    /// Seconds a container gets between SIGTERM and SIGKILL when stopped; default 10.
    pub fn stop_timeout(mut self, seconds: i32) -> Self {
        self.deployer.stop_timeout = seconds;
        self
    }

    /// The traffic switch for `start-first`, instead of the target's Caddy.
    pub fn traffic_switch(mut self, switch: Arc<dyn TrafficSwitch>) -> Self {
        self.deployer.switch = Some(switch);
        self
    }

    /// The deployer.
    pub fn build(self) -> EngineDeployer {
        self.deployer
    }
}

/// A container to switch to: a new revision's, or a kept one's for a rollback.
struct Candidate {
    name: String,
    revision: u64,
    image: String,
    /// Renamed `--failed` when unhealthy (new ones); kept as is (rollbacks).
    fresh: bool,
}

impl EngineDeployer {
    /// A deployer on `engine` with default settings.
    pub fn new(engine: Engine) -> Self {
        Self::builder(engine).build()
    }

    /// A builder for a deployer on `engine`.
    pub fn builder(engine: Engine) -> EngineDeployerBuilder {
        let state_dir = std::env::var_os("XDG_STATE_HOME")
            .map(|d| PathBuf::from(d).join("shipflow/docker"))
            .unwrap_or_else(|| PathBuf::from("/tmp/shipflow-docker"));
        EngineDeployerBuilder {
            deployer: EngineDeployer {
                engine,
                http: reqwest::Client::new(),
                credentials: None,
                state_dir,
                lock_wait: Duration::from_secs(300),
                lock_ttl: Duration::from_secs(1800),
                probe_interval: None,
                drain: Duration::from_secs(2),
                stop_timeout: 10,
                switch: None,
            },
        }
    }

    /// The engine deployed to (Docker or Podman, see [`Engine::kind`]).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn target<'a>(&self, app: &'a App) -> Result<&'a DockerTarget, DockerError> {
        app.deploy
            .docker
            .as_ref()
            .ok_or_else(|| DockerError::NoTarget {
                app: app.name.clone(),
            })
    }

    fn probe(&self, app: &App, target: &DockerTarget) -> Result<Probe, DockerError> {
        Probe::for_target(target)
            .map(|p| p.with_interval(self.probe_interval))
            .map_err(|reason| config_err(app, reason))
    }

    /// The proxy to switch: `start-first` targets only.
    fn switch(&self, target: &DockerTarget) -> Option<Arc<dyn TrafficSwitch>> {
        if target.strategy != Strategy::StartFirst {
            return None;
        }
        self.switch.clone().or_else(|| {
            target
                .proxy
                .as_ref()
                .map(|p| Arc::new(CaddySwitch::for_target(p)) as Arc<dyn TrafficSwitch>)
        })
    }

    async fn lock(&self, app: &App) -> Result<HostLock, DockerError> {
        HostLock::acquire(&self.state_dir, &app.name, self.lock_wait, self.lock_ttl).await
    }

    fn engine_err(app: &App, step: impl Into<String>) -> impl FnOnce(EngineError) -> DockerError {
        let app = app.name.clone();
        let step = step.into();
        move |source| DockerError::Engine { app, step, source }
    }

    /// The app's containers, as the engine lists them now.
    async fn state(&self, app: &App) -> Result<AppState, DockerError> {
        let filters = [(
            "label".to_owned(),
            vec![format!("{}={}", state::APP, app.name)],
        )]
        .into();
        let list = self
            .engine
            .client()
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(Self::engine_err(app, "list containers"))?;
        Ok(AppState::new(
            list.iter().filter_map(AppContainer::from_summary).collect(),
        ))
    }

    async fn start(&self, app: &App, name: &str) -> Result<(), DockerError> {
        match self
            .engine
            .client()
            .start_container(
                name,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            Ok(())
            | Err(EngineError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(Self::engine_err(app, format!("start {name}"))(e)),
        }
    }

    async fn stop(&self, app: &App, name: &str) -> Result<(), DockerError> {
        let options = StopContainerOptions {
            t: Some(self.stop_timeout),
            signal: None,
        };
        match self
            .engine
            .client()
            .stop_container(name, Some(options))
            .await
        {
            Ok(())
            | Err(EngineError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(Self::engine_err(app, format!("stop {name}"))(e)),
        }
    }

    async fn remove(&self, app: &App, name: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self
            .engine
            .client()
            .remove_container(name, Some(options))
            .await
        {
            Ok(())
            | Err(EngineError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(Self::engine_err(app, format!("remove {name}"))(e)),
        }
    }

    /// The container's last log lines, for failure reports.
    async fn last_logs(&self, name: &str) -> String {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: LOG_LINES.into(),
            ..Default::default()
        };
        let mut stream = self.engine.client().logs(name, Some(options));
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&chunk.to_string());
        }
        if text.trim().is_empty() {
            "(no output)".into()
        } else {
            text.trim_end().to_owned()
        }
    }

    /// Pulls `image` unless the engine has it.
    async fn ensure_image(&self, app: &App, image: &str, ctx: &Context) -> Result<(), DockerError> {
        if self.engine.client().inspect_image(image).await.is_ok() {
            return Ok(());
        }
        ctx.message(format!("pulling {image}"));
        let credentials = self.credentials.as_ref().map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            ..Default::default()
        });
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..Default::default()
        };
        let mut stream = self
            .engine
            .client()
            .create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(Self::engine_err(app, format!("pull {image}")))?;
            if let Some(error) = info.error.or(info.error_detail.and_then(|d| d.message)) {
                return Err(Self::engine_err(app, format!("pull {image}"))(
                    EngineError::DockerStreamError { error },
                ));
            }
        }
        Ok(())
    }

    /// Repairs what a deployer that died mid-way left: containers created but never
    /// started are removed; of several running containers the newest healthy one
    /// stays (and gets the proxy); when none runs although a healthy revision is
    /// kept, the newest kept one is started again.
    async fn repair(
        &self,
        app: &App,
        target: &DockerTarget,
        probe: &Probe,
        ctx: &Context,
    ) -> Result<AppState, DockerError> {
        let state = self.state(app).await?;
        let mut repaired = false;
        for c in state
            .containers
            .iter()
            .filter(|c| c.phase == Phase::Created)
        {
            ctx.message(format!(
                "repair: removing {} (created, never started)",
                c.name
            ));
            self.remove(app, &c.id).await?;
            repaired = true;
        }
        let running: Vec<&AppContainer> = state
            .containers
            .iter()
            .rev()
            .filter(|c| c.running())
            .collect();
        if running.len() > 1 {
            let mut keep = running[0];
            for c in &running {
                if probe
                    .wait_healthy_once(self.engine.client(), &self.http, &c.id)
                    .await
                {
                    keep = c;
                    break;
                }
            }
            if let Some(switch) = self.switch(target) {
                self.switch_to(app, switch.as_ref(), &keep.name).await?;
            }
            for c in running.iter().filter(|c| c.id != keep.id) {
                ctx.message(format!(
                    "repair: stopping {} ({} serves)",
                    c.name, keep.name
                ));
                self.stop(app, &c.id).await?;
            }
            repaired = true;
        } else if running.is_empty()
            && let Some(kept) = state.previous(None)
        {
            ctx.message(format!(
                "repair: nothing runs; starting {} again",
                kept.name
            ));
            self.start(app, &kept.id).await?;
            if let Some(switch) = self.switch(target) {
                self.switch_to(app, switch.as_ref(), &kept.name).await?;
            }
            repaired = true;
        }
        if repaired {
            self.state(app).await
        } else {
            Ok(state)
        }
    }

    /// Points the proxy at container `name`'s service port.
    async fn switch_to(
        &self,
        app: &App,
        switch: &dyn TrafficSwitch,
        name: &str,
    ) -> Result<(), DockerError> {
        let target = self.target(app)?;
        let port = service_port(target)
            .map_err(|reason| config_err(app, reason))?
            .ok_or_else(|| {
                config_err(
                    app,
                    "start-first needs a port (ports or health.port)".into(),
                )
            })?;
        let inspect = self
            .engine
            .client()
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(Self::engine_err(app, format!("inspect {name}")))?;
        let upstream = published_addr(&inspect, port).ok_or_else(|| {
            config_err(
                app,
                format!("container port {port} of {name} is not published"),
            )
        })?;
        switch
            .switch_to(&upstream)
            .await
            .map_err(|cause| DockerError::Switch {
                app: app.name.clone(),
                route: switch.route().to_owned(),
                upstream,
                cause,
            })
    }

    /// Switches from `old` to `new` with the target's strategy; on an unhealthy new
    /// container, the old one serves again and the new one is kept stopped.
    async fn roll(
        &self,
        app: &App,
        target: &DockerTarget,
        probe: &Probe,
        old: Option<&AppContainer>,
        new: &Candidate,
        ctx: &Context,
    ) -> Result<(), DockerError> {
        let switch = self.switch(target);
        if switch.is_none()
            && let Some(old) = old
        {
            ctx.message(format!("stopping {}", old.name));
            self.stop(app, &old.id).await?;
        }
        ctx.message(format!("starting {}", new.name));
        let healthy = match self.start(app, &new.name).await {
            Ok(()) => {
                probe
                    .wait_healthy(self.engine.client(), &self.http, &new.name, ctx)
                    .await
            }
            Err(e) => Err(e.to_string()),
        };
        let healthy = match (healthy, &switch) {
            (Ok(()), Some(switch)) => self
                .switch_to(app, switch.as_ref(), &new.name)
                .await
                .map_err(|e| e.to_string()),
            (result, _) => result,
        };
        match healthy {
            Ok(()) => {
                if let (Some(old), Some(_)) = (old, &switch) {
                    ctx.message(format!("draining {} for {:?}", old.name, self.drain));
                    tokio::time::sleep(self.drain).await;
                    self.stop(app, &old.id).await?;
                }
                Ok(())
            }
            Err(cause) => {
                let logs = self.last_logs(&new.name).await;
                self.stop(app, &new.name).await?;
                let mut container = new.name.clone();
                if new.fresh {
                    let failed = state::failed_name(&new.name);
                    let renamed = self
                        .engine
                        .client()
                        .rename_container(
                            &new.name,
                            RenameContainerOptions {
                                name: failed.clone(),
                            },
                        )
                        .await;
                    if renamed.is_ok() {
                        container = failed;
                    }
                }
                let restored = match old {
                    None => "nothing ran before".to_owned(),
                    Some(old) if switch.is_some() => {
                        format!("revision {} kept serving", old.revision)
                    }
                    Some(old) => {
                        self.start(app, &old.id).await?;
                        match probe
                            .wait_healthy(self.engine.client(), &self.http, &old.id, ctx)
                            .await
                        {
                            Ok(()) => {
                                format!("revision {} ({}) serves again", old.revision, old.image)
                            }
                            Err(e) => format!(
                                "revision {} was started again but is not healthy either: {e}",
                                old.revision
                            ),
                        }
                    }
                };
                Err(DockerError::Unhealthy {
                    app: app.name.clone(),
                    container,
                    cause,
                    restored,
                    logs,
                })
            }
        }
    }

    /// Removes stopped containers beyond the newest `keep`.
    async fn prune(
        &self,
        app: &App,
        target: &DockerTarget,
        ctx: &Context,
    ) -> Result<(), DockerError> {
        let keep = target.keep.unwrap_or(DEFAULT_KEEP) as usize;
        let state = self.state(app).await?;
        let stopped: Vec<&AppContainer> = state
            .containers
            .iter()
            .rev()
            .filter(|c| c.phase == Phase::Stopped)
            .collect();
        for c in stopped.iter().skip(keep) {
            ctx.message(format!("removing {} (beyond keep = {keep})", c.name));
            self.remove(app, &c.id).await?;
            // The engine refuses while another container uses the image: then it stays.
            let _ = self
                .engine
                .client()
                .remove_image(&c.image, None::<RemoveImageOptions>, None)
                .await;
        }
        Ok(())
    }

    fn check(
        &self,
        app: &App,
        target: &DockerTarget,
        step: &str,
        ctx: &Context,
    ) -> Result<(), DockerError> {
        if target.strategy == Strategy::StartFirst && self.switch(target).is_none() {
            return Err(DockerError::NoProxy {
                app: app.name.clone(),
            });
        }
        if ctx.cancelled() {
            return Err(DockerError::Cancelled {
                app: app.name.clone(),
                step: step.to_owned(),
            });
        }
        Ok(())
    }

    async fn deploy_inner(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, DockerError> {
        let target = self.target(app)?;
        if image.digest().is_none() {
            return Err(DockerError::NotPinned {
                app: app.name.clone(),
                image: image.to_string(),
            });
        }
        self.check(app, target, "deploy", ctx)?;
        let probe = self.probe(app, target)?;
        let _lock = self.lock(app).await?;
        let state = self.repair(app, target, &probe, ctx).await?;
        let reference = image.to_string();
        let current = state.current();
        if let Some(current) = current.filter(|c| c.image == reference) {
            return Ok(Rollout {
                image: reference,
                revision: Some(current.revision),
                changed: false,
                workload: format!("container {}", current.name),
            });
        }
        self.ensure_image(app, &reference, ctx).await?;
        self.check(app, target, "deploy", ctx)?;
        let number = state.next_revision();
        let base = state::base_name(app, target);
        let name = state::container_name(&base, number);
        let labels = state::labels(app, number, image, meta, &rfc3339_now());
        let publish = match target.strategy {
            Strategy::Recreate => Publish::AsConfigured,
            Strategy::StartFirst => Publish::EphemeralLoopback,
        };
        let body = container_body(target, &reference, labels, publish)
            .map_err(|reason| config_err(app, reason))?;
        self.engine
            .client()
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(Self::engine_err(app, format!("create {name}")))?;
        let new = Candidate {
            name: name.clone(),
            revision: number,
            image: reference.clone(),
            fresh: true,
        };
        self.roll(app, target, &probe, current, &new, ctx).await?;
        self.prune(app, target, ctx).await?;
        Ok(Rollout {
            image: new.image,
            revision: Some(new.revision),
            changed: true,
            workload: format!("container {name}"),
        })
    }

    async fn rollback_inner(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, DockerError> {
        let target = self.target(app)?;
        self.check(app, target, "rollback", ctx)?;
        let probe = self.probe(app, target)?;
        let _lock = self.lock(app).await?;
        let state = self.repair(app, target, &probe, ctx).await?;
        let current = state.current();
        let wanted = match to {
            RollbackTarget::Previous => state.previous(current.map(|c| c.revision)),
            RollbackTarget::Revision(n) => state.revision(n),
        };
        let Some(wanted) = wanted else {
            let kept: Vec<String> = state
                .containers
                .iter()
                .filter(|c| !c.failed)
                .map(|c| c.revision.to_string())
                .collect();
            return Err(DockerError::Rollback {
                app: app.name.clone(),
                reason: format!(
                    "{} is not kept (kept revisions: {}); deploy its image instead",
                    match to {
                        RollbackTarget::Previous => "no previous revision".to_owned(),
                        RollbackTarget::Revision(n) => format!("revision {n}"),
                    },
                    if kept.is_empty() {
                        "none".into()
                    } else {
                        kept.join(", ")
                    }
                ),
            });
        };
        if current.is_some_and(|c| c.id == wanted.id) {
            return Ok(Rollout {
                image: wanted.image.clone(),
                revision: Some(wanted.revision),
                changed: false,
                workload: format!("container {}", wanted.name),
            });
        }
        let candidate = Candidate {
            name: wanted.name.clone(),
            revision: wanted.revision,
            image: wanted.image.clone(),
            fresh: false,
        };
        self.roll(app, target, &probe, current, &candidate, ctx)
            .await?;
        Ok(Rollout {
            image: candidate.image,
            revision: Some(candidate.revision),
            changed: true,
            workload: format!("container {}", candidate.name),
        })
    }
}

fn config_err(app: &App, reason: String) -> DockerError {
    DockerError::Config {
        app: app.name.clone(),
        reason,
    }
}

/// Now as RFC 3339 (UTC, seconds).
fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[async_trait]
impl Deployer for EngineDeployer {
    async fn current(&self, app: &App, _ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        self.target(app)?;
        Ok(self.state(app).await?.current().map(AppContainer::deployed))
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        Ok(self.deploy_inner(app, image, meta, ctx).await?)
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        Ok(self.rollback_inner(app, to, ctx).await?)
    }

    async fn history(&self, app: &App, _ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        self.target(app)?;
        let state = self.state(app).await?;
        let current = state.current().map(|c| c.id.clone());
        Ok(state
            .containers
            .iter()
            .map(|c| c.revision(current.as_deref() == Some(c.id.as_str())))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        let now = super::rfc3339_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
