//! Waiting for a rollout: one watch on the Deployment (`kube::runtime::watcher`,
//! which re-lists on 410 Gone and backs off on errors), judged as `kubectl rollout
//! status` judges it; the new pods are looked at only when the Deployment has been
//! quiet for a while, so a healthy rollout costs a read, a write, a list and a watch.

use crate::compat::Field;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use shipflow_core::{Cancelled, Context};
use tokio::time::Instant;

use crate::deployer::Target;
use crate::lock::LockGuard;
use crate::pods::{Look, PodCheck};
use crate::retry::transient;
use crate::status::{Expected, Verdict, judge, waiting_for};
use crate::{KubeDeployer, KubeError};

/// How long one watch request lasts before it is renewed.
const WATCH_SECONDS: u32 = 290;

/// The counts of a Deployment's status that move when its rollout does.
fn counts(dep: &Deployment) -> [Option<i64>; 6] {
    let s = dep.status.as_ref();
    [
        s.and_then(|s| s.observed_generation),
        s.and_then(|s| s.replicas).map(i64::from),
        s.and_then(|s| s.updated_replicas).map(i64::from),
        s.and_then(|s| s.ready_replicas).map(i64::from),
        s.and_then(|s| s.available_replicas).map(i64::from),
        dep.metadata.generation,
    ]
}

fn images(dep: &Deployment) -> String {
    dep.spec
        .opt()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| {
            p.containers
                .iter()
                .map(|c| c.image.clone().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

impl KubeDeployer {
    /// Waits until the rollout toward `expected` completes, from `start` (the answer to
    /// the write that started it, or the Deployment as found), as `kubectl rollout
    /// status` says, and then stays so for the stabilization window, or fails: a new
    /// pod that failed for good, the progress deadline (not one left from before), a
    /// pod-creation failure that lasts, a paused Deployment, someone else's template,
    /// a lost deploy lock, the timeout, cancellation, or new pods that turn unready
    /// or restart inside the window.
    pub(crate) async fn wait_for_rollout(
        &self,
        t: &Target,
        start: Deployment,
        expected: Expected,
        step: &'static str,
        ctx: &Context,
        lock: Option<&LockGuard>,
    ) -> Result<Deployment, KubeError> {
        let mut deadline = Instant::now() + self.timeout;
        let mut window: Option<Window> = None;
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &t.namespace);
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", t.deployment))
            .timeout(WATCH_SECONDS);
        let mut events = watcher(api, config).backoff(self.retry.delays()).boxed();
        let mut pods = PodCheck::new(self.failure_window);
        let mut dep = start;
        let mut failing_since: Option<Instant> = None;
        let mut errors = 0;
        let mut reported = None;
        let mut said = None;
        let mut lost = std::pin::pin!(async {
            match lock {
                Some(l) => l.lost(step).await,
                None => std::future::pending().await,
            }
        });
        loop {
            let (ready, desired) = match judge(&dep, &expected) {
                Verdict::Complete => {
                    let desired = dep.spec.opt().and_then(|s| s.replicas).unwrap_or(1);
                    let desired = u64::try_from(desired).unwrap_or(0);
                    match window {
                        _ if self.stable_for.is_zero() || !expected.stabilize => {}
                        None => {
                            tracing::debug!(app = %t.app, workload = %t.workload(), "rollout complete; watching it");
                            ctx.progress(desired, Some(desired), "replicas");
                            ctx.message(format!(
                                "watching {} for {:?} before calling it healthy",
                                t.workload(),
                                self.stable_for
                            ));
                            let restarts = pods.restarts(&self.client, &dep, &expected).await;
                            let since = Instant::now();
                            let until = since + self.stable_for;
                            // The window is the deploy's own time, not the rollout's.
                            deadline = deadline.max(until + Duration::from_secs(5));
                            window = Some(Window {
                                since,
                                until,
                                restarts,
                            });
                            reported = Some((desired, desired));
                        }
                        Some(w) if Instant::now() < w.until => {}
                        Some(w) => {
                            let restarts = pods.restarts(&self.client, &dep, &expected).await;
                            if let (Some(before), Some(after)) = (w.restarts, restarts)
                                && after > before
                            {
                                let reason = format!(
                                    "its new pods' containers restarted {} time(s) within {:?} after it completed",
                                    after - before,
                                    self.stable_for
                                );
                                return Err(self
                                    .unstable(t, step, reason, &mut pods, &dep, &expected)
                                    .await);
                            }
                        }
                    }
                    if window.is_none_or(|w| Instant::now() >= w.until) {
                        tracing::debug!(app = %t.app, workload = %t.workload(), "rollout complete");
                        ctx.progress(desired, Some(desired), "replicas");
                        return Ok(dep);
                    }
                    (desired, desired)
                }
                Verdict::Rolling { ready, desired } if let Some(w) = window => {
                    let reason = format!(
                        "{ready} of {desired} new replicas were available {} ms after it completed",
                        w.since.elapsed().as_millis()
                    );
                    return Err(self
                        .unstable(t, step, reason, &mut pods, &dep, &expected)
                        .await);
                }
                Verdict::Paused => return Err(t.paused(step)),
                Verdict::Superseded => {
                    return Err(KubeError::Superseded {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        generation: dep.metadata.generation.unwrap_or(0),
                        images: images(&dep),
                    });
                }
                Verdict::DeadlineExceeded(message) => {
                    let pod = pods
                        .explain(&self.client, &dep, &expected, self.restart_budget)
                        .await;
                    return Err(KubeError::DeadlineExceeded {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        message,
                        pod,
                    });
                }
                Verdict::ReplicaFailure(message) => {
                    // Set on any failed pod creation, cleared by the next success: a
                    // failure only when it lasts.
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= self.failure_window {
                        return Err(KubeError::ReplicaFailure {
                            app: t.app.clone(),
                            workload: t.workload(),
                            step,
                            message,
                        });
                    }
                    (
                        0,
                        u64::try_from(dep.spec.opt().and_then(|s| s.replicas).unwrap_or(1))
                            .unwrap_or(0),
                    )
                }
                Verdict::Rolling { ready, desired } => {
                    failing_since = None;
                    (ready, desired)
                }
            };
            if reported != Some((ready, desired)) {
                ctx.progress(ready, Some(desired), "replicas");
                reported = Some((ready, desired));
            }
            let line = waiting_for(&dep);
            if line != said {
                if let Some(text) = &line {
                    ctx.message(text.clone());
                }
                said = line;
            }
            // Inside the window the watch sees unreadiness and the window's end counts
            // restarts: no looks at the pods in between.
            let check_at = match (window, failing_since) {
                (Some(_), _) => deadline,
                (None, Some(since)) => pods.next_at.min(since + self.failure_window),
                (None, None) => pods.next_at,
            };
            let window_ends = window.map_or(deadline, |w| w.until);
            tokio::select! {
                () = ctx.cancellation().cancelled() => {
                    return Err(KubeError::Cancelled {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        source: Cancelled,
                    });
                }
                e = &mut lost => return Err(e),
                () = tokio::time::sleep_until(deadline) => {
                    let pod = pods.explain(&self.client, &dep, &expected, self.restart_budget).await;
                    return Err(KubeError::Timeout {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        waited: self.timeout,
                        ready,
                        desired,
                        pod,
                    });
                }
                // The window ended: the loop judges once more, and checks restarts.
                () = tokio::time::sleep_until(window_ends), if window.is_some() => {}
                () = tokio::time::sleep_until(check_at) => {
                    match pods.look(&self.client, &dep, &expected, self.restart_budget).await {
                        Ok(Look::Failed(pod)) => return Err(t.pod_failed(step, pod)),
                        Ok(Look::Fine) => {}
                        Err(e) => {
                            // Only a look: the watch goes on, and so does the rollout.
                            tracing::debug!(app = %t.app, error = %e, "cannot look at the new pods");
                            pods.progressed();
                        }
                    }
                }
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d))) => {
                        errors = 0;
                        if counts(&d) != counts(&dep) {
                            pods.progressed();
                        }
                        dep = d;
                    }
                    Some(Ok(watcher::Event::Delete(_))) => return Err(t.not_found(step)),
                    Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                    Some(Err(e)) => {
                        if !passing(&e) {
                            errors += 1;
                        }
                        tracing::debug!(app = %t.app, error = %e, errors, "deployment watch failed; the watcher tries again");
                        if errors >= self.retry.attempts.max(1) || !retryable(&e) {
                            return Err(KubeError::Api {
                                app: t.app.clone(),
                                workload: t.workload(),
                                step,
                                source: Box::new(e),
                            });
                        }
                    }
                    None => return Err(t.not_found(step)),
                },
            }
        }
    }

    /// The error of a rollout that did not stay healthy, with a new pod that
    /// explains it when one does.
    async fn unstable(
        &self,
        t: &Target,
        step: &'static str,
        reason: String,
        pods: &mut PodCheck,
        dep: &Deployment,
        expected: &Expected,
    ) -> KubeError {
        let pod = pods
            .explain(&self.client, dep, expected, self.restart_budget)
            .await;
        KubeError::Unstable {
            app: t.app.clone(),
            workload: t.workload(),
            step,
            reason,
            pod,
        }
    }
}

/// A watch error that is part of normal operation: `410 Gone` (the watcher lists
/// again).
fn passing(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// Whether the watcher's trying again may help.
fn retryable(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => transient(e, false),
        watcher::Error::WatchError(s) => s.code == 410 || s.code >= 500 || s.code == 429,
        watcher::Error::NoResourceVersion => false,
    }
}

/// The default of [`KubeDeployer::failure_window`].
pub(crate) const DEFAULT_FAILURE_WINDOW: Duration = Duration::from_secs(30);

/// The default of [`KubeDeployer::stable_for`].
pub(crate) const DEFAULT_STABLE_FOR: Duration = Duration::from_secs(5);

/// The stabilization window a completed rollout is in: when it ends, and how many
/// times the new pods' containers had restarted when it began.
#[derive(Clone, Copy)]
struct Window {
    since: Instant,
    until: Instant,
    /// `None` when the pods could not be read: then only readiness is watched.
    restarts: Option<u64>,
}
