//! The deploy lock: one `coordination.k8s.io/v1` Lease per app, named
//! `shipflow-lock-<app>` in the app's namespace, so that two pipelines never roll the
//! same app at once.
//!
//! Taking it: create the Lease; if another holder has it, watch it. As client-go's
//! leader election does, a lease is judged by this client's own clock only: it has
//! expired once this client has seen it unchanged (not renewed) for its whole
//! duration, whatever its `renewTime` says (the holder's clock may be far off). An
//! expired lease is taken over with a resourceVersion-guarded replace, so only one
//! of several contenders wins; waiting stops after [`LockOptions::wait`].
//!
//! Holding it: a background task renews it every third of the lease duration. When
//! the renewal finds the lease taken over (a 409 or 404), or cannot renew it for two
//! thirds of its duration, the lock is lost: the holder's work stops before its next
//! change ([`KubeError::LockLost`]). Releasing deletes the Lease, guarded by its
//! resourceVersion.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions, WatchEvent, WatchParams};
use sha2::{Digest, Sha256};
use shipflow_core::{Cancelled, Context};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::KubeError;
use crate::retry::{Failure, RetryPolicy};

/// The prefix of a deploy lock's Lease name; the app's name follows.
pub const LOCK_PREFIX: &str = "shipflow-lock-";

/// The Lease name of `app`'s deploy lock: `shipflow-lock-<app>`. App names may hold
/// `_` and end in `-` or `_`, which Kubernetes names may not: those become `-` and a
/// hash of the app's name follows, so `my_app` and `my-app` keep separate locks.
pub(crate) fn lease_name(app: &str) -> String {
    let clean: String = app
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .collect();
    if clean == app && !app.ends_with('-') {
        return format!("{LOCK_PREFIX}{app}");
    }
    let hash = Sha256::digest(app.as_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{LOCK_PREFIX}{}-{hex}", clean.trim_end_matches('-'))
}

/// Whether a held lock is still held: `None` while it is, why it was lost after.
pub(crate) type Held = watch::Receiver<Option<String>>;

/// The locks a deployer (and its clones) holds, by `namespace/name/identity`, each
/// with its lost-or-held signal, so a lock taken again inside one is known to be
/// nested from here rather than from the holder the server shows (a create whose
/// answer was lost shows this identity too), and learns when the outer one is lost.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeldLocks(Arc<std::sync::Mutex<BTreeMap<String, Held>>>);

impl HeldLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Held>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a [`KubeDeployer`](crate::KubeDeployer) takes an app's deploy lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// Who holds the lock, shown to whoever waits for it: make it say which pipeline
    /// and where (default: host name, process id and a random part).
    pub identity: String,
    /// How long the lease lasts without being renewed; a pipeline that dies holds
    /// the app for at most this long after another one first sees its lease
    /// (whole seconds, at least 1; default 30 s).
    pub lease_duration: Duration,
    /// How long to wait for a lock another pipeline holds before failing (default 5 min).
    pub wait: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            identity: default_identity(),
            lease_duration: Duration::from_secs(30),
            wait: Duration::from_secs(300),
        }
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shipflow".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{host}/pid-{}/{nanos:08x}", std::process::id())
}

/// A held deploy lock. It is renewed in the background until [`release`](Self::release)
/// deletes it; dropping it without releasing stops the renewal and lets the lease
/// expire.
#[derive(Debug)]
pub struct DeployLock {
    app: String,
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    /// Already ours when taken (a nested lock): releasing leaves it to the outer one.
    nested: bool,
    held: HeldLocks,
    still: Held,
    stop: Option<oneshot::Sender<()>>,
    renewer: Option<tokio::task::JoinHandle<Option<String>>>,
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
        if !self.nested {
            self.held.map().remove(&self.key());
        }
    }
}

impl DeployLock {
    /// The Lease, `namespace/name`.
    pub fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Who holds it: this lock's identity.
    pub fn holder(&self) -> &str {
        &self.identity
    }

    /// Whether it is still held: `Err` says why it was lost (taken over by another
    /// holder, or not renewed in time).
    pub fn check(&self) -> Result<(), KubeError> {
        self.guard().check("check deploy lock")
    }

    pub(crate) fn guard(&self) -> LockGuard {
        LockGuard {
            app: self.app.clone(),
            lease: self.lease(),
            still: self.still.clone(),
        }
    }

    fn key(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.name, self.identity)
    }

    /// Stops renewing and deletes the Lease (if it is still this holder's).
    pub async fn release(mut self) -> Result<(), KubeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let last_rv = match self.renewer.take() {
            Some(renewer) => renewer.await.ok().flatten(),
            None => None,
        };
        if self.nested {
            return Ok(());
        }
        let Some(rv) = last_rv else {
            // Lost to another holder while renewing: nothing of ours to delete.
            return Ok(());
        };
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(rv),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(&self.name, &dp).await {
            Ok(_) => Ok(()),
            // Gone, or taken over after it expired: not ours any more.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
            Err(e) => Err(lock_error(
                &self.app,
                &self.lease(),
                "release deploy lock",
                Failure::Api(e),
            )),
        }
    }
}

/// What a deploy holds while it works: it tells whether the lock is still held.
#[derive(Debug, Clone)]
pub(crate) struct LockGuard {
    app: String,
    lease: String,
    still: Held,
}

impl LockGuard {
    /// `Err(LockLost)` once the lock is lost.
    pub(crate) fn check(&self, step: &'static str) -> Result<(), KubeError> {
        match self.still.borrow().as_ref() {
            None => Ok(()),
            Some(why) => Err(self.lost_error(step, why)),
        }
    }

    fn lost_error(&self, step: &'static str, why: &str) -> KubeError {
        KubeError::LockLost {
            app: self.app.clone(),
            lease: self.lease.clone(),
            step,
            why: why.to_owned(),
        }
    }

    /// Resolves with the error once the lock is lost; never while it is held.
    pub(crate) async fn lost(&self, step: &'static str) -> KubeError {
        let mut still = self.still.clone();
        let why = match still.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The renewer is gone without saying why: the lease is no longer renewed.
            Err(_) => "its renewal stopped".to_owned(),
        };
        self.lost_error(step, &why)
    }
}

fn lock_error(app: &str, lease: &str, step: &'static str, e: Failure) -> KubeError {
    match e {
        Failure::Api(e) => KubeError::Request {
            app: app.to_owned(),
            object: format!("lease {lease}"),
            step,
            source: Box::new(e),
        },
        Failure::Cancelled => KubeError::Cancelled {
            app: app.to_owned(),
            workload: format!("lease {lease}"),
            step,
            source: Cancelled,
        },
    }
}

fn holder(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .clone()
        .filter(|h| !h.is_empty())
}

fn lease_duration(lease: &Lease) -> Duration {
    let seconds = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(0);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn duration_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// A lease as this client saw it: the version it saw, and when it first saw it.
struct Observed {
    rv: String,
    since: Instant,
}

/// Takes the deploy lock of `app` (Lease `namespace/shipflow-lock-<app>`).
pub(crate) async fn acquire(
    client: &kube::Client,
    retry: &RetryPolicy,
    held_locks: &HeldLocks,
    app: &str,
    namespace: &str,
    options: &LockOptions,
    ctx: &Context,
) -> Result<DeployLock, KubeError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let name = lease_name(app);
    let key = format!("{namespace}/{name}/{}", options.identity);
    let lease_name = format!("{namespace}/{name}");
    let step = "take deploy lock";
    let err = |e| lock_error(app, &lease_name, step, e);
    let cancel = ctx.cancellation();
    let started = Instant::now();
    let deadline = started + options.wait;
    let duration = duration_seconds(options.lease_duration);
    let mine = |transitions: i32| LeaseSpec {
        holder_identity: Some(options.identity.clone()),
        lease_duration_seconds: Some(duration),
        acquire_time: Some(MicroTime(Timestamp::now())),
        renew_time: Some(MicroTime(Timestamp::now())),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let mut said = false;
    let mut observed: Option<Observed> = None;
    loop {
        let fresh = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(mine(0)),
        };
        let pp = PostParams::default();
        let created = retry
            .run(step, false, cancel, || api.create(&pp, &fresh))
            .await;
        let taken = match created {
            Ok(lease) => lease,
            Err(Failure::Api(kube::Error::Api(s))) if s.code == 409 => {
                let Some(existing) = retry
                    .run(step, false, cancel, || api.get_opt(&name))
                    .await
                    .map_err(err)?
                else {
                    continue; // released meanwhile: create again
                };
                let rv = existing
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default();
                let since = match &observed {
                    Some(o) if o.rv == rv => o.since,
                    _ => Instant::now(),
                };
                observed = Some(Observed { rv, since });
                let who = holder(&existing);
                let ours = who.as_deref() == Some(options.identity.as_str());
                let valid_for = lease_duration(&existing);
                let expired = who.is_none() || since.elapsed() >= valid_for;
                if ours {
                    let outer = held_locks.map().get(&key).cloned();
                    if let Some(still) = outer.filter(|s| s.borrow().is_none()) {
                        // Held by this identity already (an outer lock): it renews and
                        // releases; this one only shares its fate.
                        return Ok(DeployLock {
                            app: app.to_owned(),
                            api,
                            namespace: namespace.to_owned(),
                            name,
                            identity: options.identity.clone(),
                            nested: true,
                            held: held_locks.clone(),
                            still,
                            stop: None,
                            renewer: None,
                        });
                    }
                }
                // Ours on the server but not held here: our create landed and its
                // answer was lost. Take it as a fresh lock, renewed and released.
                if expired || ours {
                    let transitions = existing
                        .spec
                        .as_ref()
                        .and_then(|s| s.lease_transitions)
                        .unwrap_or(0);
                    let mut takeover = existing.clone();
                    takeover.spec = Some(mine(transitions + 1));
                    match api.replace(&name, &PostParams::default(), &takeover).await {
                        Ok(lease) => {
                            if !ours {
                                ctx.message(format!(
                                    "took over deploy lock {lease_name} from {} (not renewed for {:?})",
                                    who.unwrap_or_default(),
                                    since.elapsed()
                                ));
                            }
                            lease
                        }
                        // Another contender was quicker: look again.
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(err(Failure::Api(e))),
                    }
                } else {
                    let holder = who.unwrap_or_default();
                    if Instant::now() >= deadline {
                        return Err(KubeError::Locked {
                            app: app.to_owned(),
                            lease: lease_name.clone(),
                            holder,
                            unchanged: since.elapsed(),
                            duration: valid_for,
                            waited: started.elapsed(),
                        });
                    }
                    if !said {
                        ctx.message(format!(
                            "waiting for deploy lock {lease_name}: held by {holder} (lease of {valid_for:?})"
                        ));
                        said = true;
                    }
                    let wake = deadline.min(since + valid_for + Duration::from_millis(10));
                    let rv = existing.metadata.resource_version.unwrap_or_default();
                    wait_for_change(&api, &name, &rv, wake, ctx)
                        .await
                        .map_err(|e| match e {
                            Waited::Cancelled => err(Failure::Cancelled),
                            Waited::Api(e) => err(Failure::Api(e)),
                        })?;
                    continue;
                }
            }
            Err(e) => return Err(err(e)),
        };
        tracing::debug!(%app, lease = %lease_name, holder = %options.identity, "deploy lock taken");
        let (tell, still) = watch::channel(None);
        held_locks.map().insert(key, still.clone());
        let rv = taken.metadata.resource_version.clone().unwrap_or_default();
        let (stop, stopped) = oneshot::channel();
        let renewer = tokio::spawn(renew(
            api.clone(),
            Arc::new(taken),
            rv,
            options.lease_duration.max(Duration::from_secs(1)),
            stopped,
            tell,
        ));
        return Ok(DeployLock {
            app: app.to_owned(),
            api,
            namespace: namespace.to_owned(),
            name,
            identity: options.identity.clone(),
            nested: false,
            held: held_locks.clone(),
            still,
            stop: Some(stop),
            renewer: Some(renewer),
        });
    }
}

enum Waited {
    Cancelled,
    Api(kube::Error),
}

/// Waits until the Lease changes (released, renewed, taken), `wake`, or cancellation.
async fn wait_for_change(
    api: &Api<Lease>,
    name: &str,
    rv: &str,
    wake: Instant,
    ctx: &Context,
) -> Result<(), Waited> {
    let seconds = wake.saturating_duration_since(Instant::now()).as_secs() + 1;
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(u32::try_from(seconds).unwrap_or(u32::MAX));
    let mut stream = api.watch(&wp, rv).await.map_err(Waited::Api)?.boxed();
    tokio::select! {
        () = ctx.cancellation().cancelled() => Err(Waited::Cancelled),
        () = tokio::time::sleep_until(wake) => Ok(()),
        event = stream.next() => match event {
            Some(Err(e)) => Err(Waited::Api(e)),
            // A 410 or the end of the watch: just look again.
            Some(Ok(WatchEvent::Error(_))) | None | Some(Ok(_)) => Ok(()),
        },
    }
}

/// Renews the lease every third of `duration` until told to stop; returns the last
/// resourceVersion it wrote, or `None` when the lease was lost. A lost lease is
/// told through `tell`: taken over (409, 404), or not renewed within two thirds of
/// `duration` (as client-go's renew deadline).
async fn renew(
    api: Api<Lease>,
    lease: Arc<Lease>,
    mut rv: String,
    duration: Duration,
    mut stop: oneshot::Receiver<()>,
    tell: watch::Sender<Option<String>>,
) -> Option<String> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let mut lease = (*lease).clone();
    let every = duration / 3;
    let renew_deadline = duration * 2 / 3;
    let mut renewed = Instant::now();
    let mut wait = every;
    loop {
        tokio::select! {
            _ = &mut stop => return Some(rv),
            () = tokio::time::sleep(wait) => {}
        }
        lease.metadata.resource_version = Some(rv.clone());
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match api.replace(&name, &PostParams::default(), &lease).await {
            Ok(next) => {
                rv = next.metadata.resource_version.unwrap_or(rv);
                renewed = Instant::now();
                wait = every;
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                tracing::warn!(lease = %name, "deploy lock lost: another holder took it over");
                let _ = tell.send(Some("another holder took the lease over".into()));
                return None;
            }
            Err(e) if renewed.elapsed() >= renew_deadline => {
                tracing::warn!(lease = %name, error = %e, "deploy lock lost: not renewed in time");
                let _ = tell.send(Some(format!(
                    "not renewed for {:?} of its {duration:?}: {e}",
                    renewed.elapsed()
                )));
                return None;
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "renewing the deploy lock failed; trying again");
                wait = (every / 4).max(Duration::from_millis(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_kubernetes_names_and_distinct() {
        assert_eq!(lease_name("api"), "shipflow-lock-api");
        let (a, b, c) = (
            lease_name("my_app"),
            lease_name("my-app"),
            lease_name("app_"),
        );
        assert_eq!(b, "shipflow-lock-my-app");
        assert!(
            a.starts_with("shipflow-lock-my-app-") && a.len() == b.len() + 9,
            "{a}"
        );
        assert!(
            c.starts_with("shipflow-lock-app-") && !c.ends_with('-'),
            "{c}"
        );
        for name in [a, b, c] {
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
        }
    }
}
