//! [`EngineDeployer`]: rolls an app's container on one Docker or Podman host.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::query_parameters::CreateContainerOptions;
use shipflow_core::{
    App, BoxError, Context, DeployMeta, Deployed, Deployer, ImageRef, Revision, RollbackTarget,
    Rollout,
};

mod ops;
mod rollout;

use crate::config::{DOCKER_TARGET, DockerTarget, Strategy};
use crate::health::Probe;
use crate::lock::DeployLock;
use crate::spec::{Publish, container_body};
use crate::state::{self, AppContainer};
use crate::switch::TrafficSwitch;
use crate::timing::timed;
use crate::{DockerError, Engine};

/// How many stopped containers are kept for rollback when the target says nothing.
const DEFAULT_KEEP: u32 = 3;
/// How many log lines a failure report carries.
const LOG_LINES: &str = "20";
/// Seconds a new container gets between SIGTERM and SIGKILL when its switch is
/// cancelled: a cancel ends the run at once, whatever `stop_timeout` says.
const CANCEL_STOP_SECS: i32 = 1;
/// How long a cancelled switch waits for the revision it brought back to be healthy,
/// whatever the health timeout.
const RESTORE_AFTER_CANCEL: Duration = Duration::from_secs(3);
/// How long a new revision must stay healthy after its first passing probe, unless
/// the app says (`health.stable_for`): Swarm's update monitor waits as long.
const DEFAULT_STABLE_FOR: Duration = Duration::from_secs(5);

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
    probe_interval: Option<Duration>,
    drain: Duration,
    stable_for: Duration,
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

    /// Where host locks live (created `0700`; refused if another user owns it);
    /// default `$XDG_STATE_HOME/shipflow/docker`, else `~/.local/state/shipflow/docker`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.deployer.state_dir = dir.into();
        self
    }

    /// How long a deploy waits for another one of the same app; default 5 minutes.
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.deployer.lock_wait = wait;
        self
    }

    /// Overrides every target's health probe interval.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.deployer.probe_interval = Some(interval);
        self
    }

    /// How long the old container of a `start-first` deploy keeps running after the
    /// switch, to finish requests in flight, behind a proxy that cannot tell when
    /// none is left (Caddy); default 2 s. HAProxy's drain ends when no request is in
    /// flight, or at its `drain_timeout`.
    pub fn drain(mut self, drain: Duration) -> Self {
        self.deployer.drain = drain;
        self
    }

    /// How long a new revision must stay healthy after its first passing probe
    /// before it replaces the old one for good, for apps whose `health.stable_for`
    /// does not say; default 5 s, zero turns it off. During it the old revision
    /// stays ready to serve again at once.
    pub fn stable_for(mut self, window: Duration) -> Self {
        self.deployer.stable_for = window;
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
        let state_dir = crate::lock::default_state_dir();
        EngineDeployerBuilder {
            deployer: EngineDeployer {
                engine,
                // A health probe judges the app's own answer: a redirect (say, to
                // HTTPS) is that answer, not something to follow.
                http: reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default(),
                credentials: None,
                state_dir,
                lock_wait: Duration::from_secs(300),
                probe_interval: None,
                drain: Duration::from_secs(2),
                stable_for: DEFAULT_STABLE_FOR,
                stop_timeout: 10,
                switch: None,
            },
        }
    }

    /// The engine deployed to (Docker or Podman, see [`Engine::kind`]).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn target(&self, app: &App) -> Result<Arc<DockerTarget>, DockerError> {
        app.deploy_target::<DockerTarget>(DOCKER_TARGET)
            .map_err(|source| DockerError::Settings {
                app: app.name.clone(),
                source,
            })?
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
        self.switch
            .clone()
            .or_else(|| target.proxy.as_ref().map(crate::switch::for_target))
    }

    /// The app's host lock; waiting for it ends on cancel.
    async fn lock(&self, app: &App, ctx: &Context) -> Result<DeployLock, DockerError> {
        let acquire = DeployLock::acquire(&self.engine, &self.state_dir, &app.name, self.lock_wait);
        tokio::select! {
            lock = timed(&app.name, "lock", acquire) => lock,
            () = ctx.cancellation().cancelled() => {
                Err(DockerError::cancelled(&app.name, "waiting for the host lock", false))
            }
        }
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
            return Err(DockerError::cancelled(&app.name, step, false));
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
        let target = &*self.target(app)?;
        if image.digest().is_none() {
            return Err(DockerError::NotPinned {
                app: app.name.clone(),
                image: image.to_string(),
            });
        }
        self.check(app, target, "deploy", ctx)?;
        let probe = self.probe(app, target)?;
        let _lock = self.lock(app, ctx).await?;
        let repair = self.repair(app, target, &probe, ctx);
        let state = timed(&app.name, "repair", repair).await?;
        let reference = image.to_string();
        let current = state.current();
        if let Some(current) = current.filter(|c| c.image == reference) {
            return Ok(
                Rollout::new(reference, format!("container {}", current.name), false)
                    .with_revision(Some(current.revision)),
            );
        }
        self.ensure_image(app, &reference, ctx).await?;
        self.check(app, target, "deploy", ctx)?;
        let number = state.next_revision();
        let base = state::base_name(app, target);
        let name = state::unchecked_name(&base, number);
        let labels = state::labels(app, number, image, meta, &rfc3339_now());
        let publish = match target.strategy {
            Strategy::Recreate => Publish::AsConfigured,
            Strategy::StartFirst => Publish::EphemeralLoopback,
        };
        let body = container_body(target, &reference, labels, publish)
            .map_err(|reason| config_err(app, reason))?;
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let create = async {
            let create = self.engine.client().create_container(Some(options), body);
            timed(&app.name, "create", create)
                .await
                .map(drop)
                .map_err(Self::engine_err(app, format!("create {name}")))
        };
        let new = Candidate {
            name: name.clone(),
            revision: number,
            image: reference.clone(),
            fresh: true,
        };
        let name = self
            .roll(app, target, &probe, current, (&new, create), ctx)
            .await?;
        let prune = self.prune(app, target, &state, current, ctx);
        timed(&app.name, "prune", prune).await?;
        Ok(Rollout::new(new.image, format!("container {name}"), true)
            .with_revision(Some(new.revision)))
    }

    async fn rollback_inner(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, DockerError> {
        let target = &*self.target(app)?;
        self.check(app, target, "rollback", ctx)?;
        let probe = self.probe(app, target)?;
        let _lock = self.lock(app, ctx).await?;
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
                .filter(|c| c.passed())
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
            return Ok(Rollout::new(
                wanted.image.clone(),
                format!("container {}", wanted.name),
                false,
            )
            .with_revision(Some(wanted.revision)));
        }
        let candidate = Candidate {
            name: wanted.name.clone(),
            revision: wanted.revision,
            image: wanted.image.clone(),
            fresh: false,
        };
        let kept = async { Ok(()) };
        self.roll(app, target, &probe, current, (&candidate, kept), ctx)
            .await?;
        Ok(Rollout::new(
            candidate.image,
            format!("container {}", candidate.name),
            true,
        )
        .with_revision(Some(candidate.revision)))
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
    shipflow_core::rfc3339_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
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
        let deploy = self.deploy_inner(app, image, meta, ctx);
        Ok(timed(&app.name, "deploy", deploy).await?)
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
