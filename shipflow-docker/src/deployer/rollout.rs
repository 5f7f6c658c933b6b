//! Switching from one container to another (`recreate` or `start-first`), bringing
//! the old one back when the new one is unhealthy, repairing what a crashed run
//! left, and pruning old revisions.

use bollard::query_parameters::RemoveImageOptions;
use shipflow_core::{App, Context, Restored};

use crate::config::DockerTarget;

use super::{
    CANCEL_STOP_SECS, Candidate, DEFAULT_KEEP, EngineDeployer, RESTORE_AFTER_CANCEL, config_err,
};
use crate::DockerError;
use crate::health::{Probe, published_addr, service_port};
use crate::state::{self, AppContainer, AppState, Phase, Verdict};
use crate::states;
use crate::switch::TrafficSwitch;
use crate::timing::timed;

impl EngineDeployer {
    /// Repairs what a deployer that died mid-way left: containers created but never
    /// started are removed; of several running containers the newest healthy one
    /// stays (and gets the proxy); when none runs although a healthy revision is
    /// kept, the newest kept one is started again and waited for until healthy. When
    /// one runs behind a proxy, the proxy is pointed at where it listens now.
    pub(super) async fn repair(
        &self,
        app: &App,
        target: &DockerTarget,
        probe: &Probe,
        ctx: &Context,
    ) -> Result<AppState, DockerError> {
        let mut state = self.state(app).await?;
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
        // A revision whose run died before its health check passed (or during its
        // stabilization window) is not trusted: it never serves again by itself.
        let unchecked: Vec<&AppContainer> = state
            .containers
            .iter()
            .filter(|c| c.verdict == Verdict::Unchecked && c.phase != Phase::Created)
            .collect();
        if !unchecked.is_empty() {
            for c in unchecked {
                ctx.message(format!(
                    "repair: {} never passed its health check (the run that started it ended first); keeping it as failed",
                    c.name
                ));
                if c.running() {
                    self.stop(app, &c.id).await?;
                }
                self.rename(app, &c.id, &state::failed_name(&c.name))
                    .await?;
            }
            state = self.state(app).await?;
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
                    .wait_healthy_once(self.engine.client(), &self.http, &c.id, ctx)
                    .await
                {
                    keep = c;
                    break;
                }
            }
            // A cancelled probe says nothing about health: change nothing.
            if ctx.cancelled() {
                return Err(DockerError::cancelled(&app.name, "repair", false));
            }
            let switch = self.switch(target);
            if let Some(switch) = &switch {
                self.switch_to(app, switch.as_ref(), &keep.name).await?;
            }
            let drained = tokio::time::Instant::now() + self.drain;
            for c in running.iter().filter(|c| c.id != keep.id) {
                if let Some(switch) = &switch {
                    self.drain(app, switch.as_ref(), c, drained, ctx).await;
                }
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
            // Serving before anything relies on it (a same-image deploy returns next).
            let wait = probe.wait_healthy(self.engine.client(), &self.http, &kept.id, ctx);
            if let Err(cause) = timed(&app.name, "health", wait).await {
                ctx.message(format!("repair: {} is not healthy: {cause}", kept.name));
            }
            if let Some(switch) = self.switch(target) {
                self.switch_to(app, switch.as_ref(), &kept.name).await?;
            }
            repaired = true;
        } else if let ([current], Some(switch)) = (running.as_slice(), self.switch(target)) {
            self.resync_switch(app, switch.as_ref(), current, ctx)
                .await?;
        }
        if repaired {
            self.state(app).await
        } else {
            Ok(state)
        }
    }

    /// Renames a fresh revision that passed its health check and its stabilization
    /// window from its unchecked name to its plain one: from now on it is a good
    /// revision, to serve and to roll back to.
    async fn mark_passed(&self, app: &App, unchecked: &str) -> Result<String, DockerError> {
        let passed = state::passed_name(unchecked).to_owned();
        self.rename(app, unchecked, &passed).await?;
        Ok(passed)
    }

    /// Waits until the proxy has no request in flight to `old`, which traffic was
    /// switched away from: as long as a proxy that can tell says (HAProxy, up to its
    /// drain timeout), else until `until` (the deployer's fixed drain after the
    /// switch). A cancel cuts it short: the switch is done either way.
    async fn drain(
        &self,
        app: &App,
        switch: &dyn TrafficSwitch,
        old: &AppContainer,
        until: tokio::time::Instant,
        ctx: &Context,
    ) {
        let wait = until.saturating_duration_since(tokio::time::Instant::now());
        let drain = async {
            match self.upstream_of(app, &old.name).await {
                Ok(upstream) => {
                    ctx.message(format!("draining {} ({upstream})", old.name));
                    if let Err(e) = switch.drain(&upstream, wait).await {
                        ctx.message(format!("draining {}: {e}", old.name));
                    }
                }
                Err(_) => tokio::time::sleep(wait).await,
            }
        };
        tokio::select! {
            () = timed(&app.name, "drain", drain) => {}
            () = ctx.cancellation().cancelled() => {}
        }
    }

    /// Points the proxy at container `name`'s service port.
    pub(super) async fn switch_to(
        &self,
        app: &App,
        switch: &dyn TrafficSwitch,
        name: &str,
    ) -> Result<(), DockerError> {
        let upstream = self.upstream_of(app, name).await?;
        switch_upstream(app, switch, upstream).await
    }

    /// Points the proxy at the one running container `current` again if it dials
    /// something else: a container that was restarted (restart policy, engine
    /// restart, reboot) may have got another loopback port than the one it was
    /// switched to.
    async fn resync_switch(
        &self,
        app: &App,
        switch: &dyn TrafficSwitch,
        current: &AppContainer,
        ctx: &Context,
    ) -> Result<(), DockerError> {
        let upstream = match self.upstream_of(app, &current.name).await {
            Ok(upstream) => upstream,
            // Restarting, say: the deploy goes on, and switches to its new container.
            Err(e) => {
                ctx.message(format!(
                    "repair: where {} listens is not known: {e}",
                    current.name
                ));
                return Ok(());
            }
        };
        let dialled = match switch.upstream().await {
            Ok(Some(dialled)) if dialled == upstream => return Ok(()),
            Ok(Some(dialled)) => dialled,
            Ok(None) => "something unknown".to_owned(),
            Err(e) => format!("something unknown ({e})"),
        };
        ctx.message(format!(
            "repair: proxy route {} dials {dialled}, but {} listens on {upstream}; switching",
            switch.route(),
            current.name
        ));
        switch_upstream(app, switch, upstream).await
    }

    /// Where the service port of container `name` is published.
    async fn upstream_of(&self, app: &App, name: &str) -> Result<String, DockerError> {
        let target = &*self.target(app)?;
        let port = service_port(target)
            .map_err(|reason| config_err(app, reason))?
            .ok_or_else(|| {
                config_err(
                    app,
                    "start-first needs a port (ports or health.port)".into(),
                )
            })?;
        let inspect = states::inspect(self.engine.client(), name)
            .await
            .map_err(Self::engine_err(app, format!("inspect {name}")))?;
        published_addr(&inspect, port).ok_or_else(|| {
            config_err(
                app,
                format!("container port {port} of {name} is not published"),
            )
        })
    }

    /// Switches from `old` to `new` with the target's strategy; on an unhealthy new
    /// container, the old one serves again and the new one is kept stopped. `create`
    /// makes the new container (a no-op for kept ones); with `recreate` it runs while
    /// the old one stops, and when it fails the old one is started again.
    ///
    /// The new one counts as healthy once it passed its health gate and then stayed
    /// healthy for the stabilization window (`health.stable_for`); until then the old
    /// one stays ready to serve again at once (running behind the proxy with
    /// `start-first`, stopped but kept with `recreate`). Only then is a fresh
    /// revision renamed from its unchecked name. Returns the name it runs under.
    pub(super) async fn roll(
        &self,
        app: &App,
        target: &DockerTarget,
        probe: &Probe,
        old: Option<&AppContainer>,
        (new, create): (&Candidate, impl Future<Output = Result<(), DockerError>>),
        ctx: &Context,
    ) -> Result<String, DockerError> {
        let switch = self.switch(target);
        let stop_old = async {
            match old {
                Some(old) if switch.is_none() => {
                    ctx.message(format!("stopping {}", old.name));
                    self.stop(app, &old.id).await.map(|()| Some(old))
                }
                _ => Ok(None),
            }
        };
        let (created, stopped) = tokio::join!(create, stop_old);
        if let Err(e) = created {
            if let Ok(Some(old)) = stopped
                && let Err(again) = self.start(app, &old.id).await
            {
                // Both matter: why the new one is missing, and that the old one is down.
                return Err(DockerError::NotRestored {
                    app: app.name.clone(),
                    container: new.name.clone(),
                    cause: format!("it could not be created: {}", cause_of(&e)),
                    restored: format!(
                        "revision {} does not run either: starting {} again failed: {}",
                        old.revision,
                        old.name,
                        cause_of(&again)
                    ),
                    logs: String::new(),
                });
            }
            return Err(e);
        }
        stopped?;
        ctx.message(format!("starting {}", new.name));
        let healthy = match self.start(app, &new.name).await {
            Ok(()) => {
                let wait = probe.wait_healthy(self.engine.client(), &self.http, &new.name, ctx);
                timed(&app.name, "health", wait).await
            }
            Err(e) => Err(e.to_string()),
        };
        let mut switched = false;
        let healthy = match (healthy, &switch) {
            (Ok(()), Some(switch)) => {
                if target
                    .proxy
                    .as_ref()
                    .is_some_and(|p| p.caddy_admin.is_some())
                {
                    ctx.message(format!(
                        "switching Caddy route {}: Caddy closes idle kept-alive client connections on every config change, so a request sent on one just then fails; HAProxy's runtime API (proxy.haproxy_admin) switches without that",
                        switch.route()
                    ));
                }
                let to_new = self.switch_to(app, switch.as_ref(), &new.name).await;
                switched = to_new.is_ok();
                to_new.map_err(|e| e.to_string())
            }
            (result, _) => result,
        };
        // The old one stops taking new requests at the switch: its drain starts there.
        let drained = tokio::time::Instant::now() + self.drain;
        let healthy = match healthy {
            Ok(()) => {
                let window = probe.stable_for(self.stable_for);
                if !window.is_zero() {
                    ctx.message(format!(
                        "watching {} for {window:?} before calling it healthy",
                        new.name
                    ));
                }
                let client = self.engine.client();
                let watch = probe.watch_stable(client, &self.http, &new.name, window, ctx);
                timed(&app.name, "stable", watch).await
            }
            failed => failed,
        };
        match healthy {
            Ok(()) => {
                tracing::debug!(app = %app.name, container = %new.name, "the new revision is healthy");
                let name = if new.fresh {
                    self.mark_passed(app, &new.name).await?
                } else {
                    new.name.clone()
                };
                if let (Some(old), Some(switch)) = (old, &switch) {
                    self.drain(app, switch.as_ref(), old, drained, ctx).await;
                    self.stop(app, &old.id).await?;
                }
                Ok(name)
            }
            Err(cause) => {
                tracing::debug!(
                    app = %app.name,
                    container = %new.name,
                    cancelled = ctx.cancelled(),
                    %cause,
                    "the new revision is not healthy; bringing back what ran before"
                );
                let logs = self.last_logs(&new.name).await;
                // Whatever fails from here on, the old container is brought back. A
                // cancelled run stops the new one at once.
                let mut failures = Vec::new();
                // Traffic first goes back to what still runs, then the new one stops.
                if let (true, Some(switch), Some(old)) = (switched, &switch, old)
                    && let Err(e) = self.switch_to(app, switch.as_ref(), &old.name).await
                {
                    failures.push(format!("switching back to {} failed: {e}", old.name));
                }
                let grace = if ctx.cancelled() {
                    CANCEL_STOP_SECS
                } else {
                    self.stop_timeout
                };
                if let Err(e) = self.stop_within(app, &new.name, grace).await {
                    failures.push(format!("stopping {} failed: {}", new.name, cause_of(&e)));
                }
                // Podman cleans up an exited container's network after the fact (its
                // `stopped` state): a late clean-up removes the port forwarding the
                // old container, started on the same port, has just set up. Reading
                // the state waits until it is `exited`.
                let _ = states::inspect(self.engine.client(), &new.name).await;
                let mut container = new.name.clone();
                if new.fresh {
                    let failed = state::failed_name(&new.name);
                    if self.rename(app, &new.name, &failed).await.is_ok() {
                        container = failed;
                    }
                }
                // Whether what ran before runs again: the pipeline then need not roll back.
                let mut back = false;
                let restored = match old {
                    None => "nothing ran before".to_owned(),
                    Some(old) if switch.is_some() => {
                        back = true;
                        if switched {
                            format!("traffic went back to revision {}", old.revision)
                        } else {
                            format!("revision {} kept serving", old.revision)
                        }
                    }
                    Some(old) => match self.start(app, &old.id).await {
                        Err(e) => {
                            failures.push(format!(
                                "starting {} again failed: {}",
                                old.name,
                                cause_of(&e)
                            ));
                            format!("revision {} does not run either", old.revision)
                        }
                        Ok(()) => match self.wait_restored(app, probe, &old.id, ctx).await {
                            Ok(()) => {
                                back = true;
                                format!("revision {} ({}) serves again", old.revision, old.image)
                            }
                            Err(e) => format!(
                                "revision {} was started again but is not healthy either: {e}",
                                old.revision
                            ),
                        },
                    },
                };
                if !failures.is_empty() {
                    return Err(DockerError::NotRestored {
                        app: app.name.clone(),
                        container,
                        cause,
                        restored: format!("{restored}, but {}", failures.join("; ")),
                        logs,
                    });
                }
                if ctx.cancelled() {
                    return Err(DockerError::cancelled(
                        &app.name,
                        format!("the health check of {container} ({restored})"),
                        back,
                    ));
                }
                Err(DockerError::Unhealthy {
                    app: app.name.clone(),
                    container,
                    cause,
                    restored,
                    logs,
                    previous: back.then_some(Restored::new()),
                })
            }
        }
    }

    /// Waits until the old container, started again, is healthy. Bringing it back
    /// goes on after a cancel, but for at most [`RESTORE_AFTER_CANCEL`]: a cancelled
    /// run ends within seconds whatever the health timeout.
    async fn wait_restored(
        &self,
        app: &App,
        probe: &Probe,
        old: &str,
        ctx: &Context,
    ) -> Result<(), String> {
        let client = self.engine.client();
        if !ctx.cancelled() {
            let wait = probe.wait_healthy(client, &self.http, old, ctx);
            match timed(&app.name, "health", wait).await {
                Err(_) if ctx.cancelled() => {}
                done => return done,
            }
        }
        let bounded = probe.clone().bounded(RESTORE_AFTER_CANCEL);
        let uncancelled = Context::new();
        let wait = bounded.wait_healthy(client, &self.http, old, &uncancelled);
        timed(&app.name, "health", wait).await
    }

    /// Removes stopped containers after a successful roll: healthy ones beyond the
    /// newest `keep` (rollback targets), and failed ones but the newest (its logs
    /// explain the last failure). A run of failed deploys thus never pushes out the
    /// last good revision. Candidates are those of `before` (the state the roll
    /// started from) and `old`, which the roll stopped: read from what is known, so no
    /// second list of the engine.
    pub(super) async fn prune(
        &self,
        app: &App,
        target: &DockerTarget,
        before: &AppState,
        old: Option<&AppContainer>,
        ctx: &Context,
    ) -> Result<(), DockerError> {
        let keep = target.keep.unwrap_or(DEFAULT_KEEP) as usize;
        let mut stopped: Vec<&AppContainer> = before
            .containers
            .iter()
            .filter(|c| c.phase == Phase::Stopped)
            .chain(old)
            .collect();
        stopped.sort_by_key(|c| std::cmp::Reverse(c.revision));
        let (healthy, failed): (Vec<_>, Vec<_>) = stopped.into_iter().partition(|c| c.passed());
        let beyond_keep = healthy.iter().skip(keep);
        let older_failed = failed.iter().skip(1);
        for c in beyond_keep.chain(older_failed) {
            let why = if !c.passed() {
                "failed, and a newer one failed too".to_owned()
            } else {
                format!("beyond keep = {keep}")
            };
            ctx.message(format!("removing {} ({why})", c.name));
            self.remove(app, &c.id).await?;
            // The engine refuses while another container uses the image: then it stays.
            let remove =
                self.engine
                    .client()
                    .remove_image(&c.image, None::<RemoveImageOptions>, None);
            let _ = timed(&app.name, "remove image", remove).await;
        }
        Ok(())
    }
}

/// Points the proxy at `upstream`.
async fn switch_upstream(
    app: &App,
    switch: &dyn TrafficSwitch,
    upstream: String,
) -> Result<(), DockerError> {
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

/// What went wrong in an engine call, without the app (the error it goes in names it).
fn cause_of(error: &DockerError) -> String {
    match error {
        DockerError::Engine { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}
