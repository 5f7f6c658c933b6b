//! The deploy lock: one `coordination.k8s.io/v1` Lease per app, named
//! `shipflow-lock-<app>` in the app's namespace, so that two pipelines never roll the
//! same app at once.
//!
//! Taking it: create the Lease; if it exists and its holder let it expire, take it
//! over with a resourceVersion-guarded replace (so only one of several contenders
//! wins); otherwise watch it until it is released or expires, up to
//! [`LockOptions::wait`]. While held, a background task renews it every third of the
//! lease duration. Releasing deletes it, guarded by its resourceVersion.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions, WatchEvent, WatchParams};
use sha2::{Digest, Sha256};
use shipflow_core::{Cancelled, Context};
use tokio::sync::oneshot;

use crate::KubeError;
use crate::retry::RetryPolicy;

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

/// The locks a deployer (and its clones) holds, as `namespace/name/identity`, so a
/// lock taken again inside one is known to be nested from here rather than from the
/// holder the server shows: a create whose answer was lost shows this identity too.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeldLocks(Arc<std::sync::Mutex<BTreeSet<String>>>);

impl HeldLocks {
    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
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
    /// the app for at most this long (whole seconds, at least 1; default 30 s).
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
    stop: Option<oneshot::Sender<()>>,
    renewer: Option<tokio::task::JoinHandle<Option<String>>>,
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        if let Some(renewer) = &self.renewer {
            renewer.abort();
        }
        if !self.nested {
            self.held.set().remove(&self.key());
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
                e,
            )),
        }
    }
}

fn lock_error(app: &str, lease: &str, step: &'static str, e: kube::Error) -> KubeError {
    KubeError::Request {
        app: app.to_owned(),
        object: format!("lease {lease}"),
        step,
        source: Box::new(e),
    }
}

/// When `lease` expires, if it has a holder.
fn expiry(lease: &Lease) -> Option<(String, Timestamp)> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = spec.lease_duration_seconds.unwrap_or(0);
    Some((
        holder,
        renewed + SignedDuration::from_secs(i64::from(seconds)),
    ))
}

fn duration_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
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
    let started = tokio::time::Instant::now();
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
        let created = retry.run(step, false, || api.create(&pp, &fresh)).await;
        let taken = match created {
            Ok(lease) => lease,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let Some(existing) = retry
                    .run(step, false, || api.get_opt(&name))
                    .await
                    .map_err(err)?
                else {
                    continue; // released meanwhile: create again
                };
                let now = Timestamp::now();
                let held = expiry(&existing);
                let ours = held.as_ref().is_some_and(|(h, _)| *h == options.identity);
                let free = held.as_ref().is_none_or(|(_, until)| *until < now);
                if ours && !free && held_locks.set().contains(&key) {
                    // Held by this identity already (an outer lock): it renews and
                    // releases; this one only says so.
                    return Ok(DeployLock {
                        app: app.to_owned(),
                        api,
                        namespace: namespace.to_owned(),
                        name,
                        identity: options.identity.clone(),
                        nested: true,
                        held: held_locks.clone(),
                        stop: None,
                        renewer: None,
                    });
                }
                // Ours on the server but not held here: our create landed and its
                // answer was lost. Take it as a fresh lock, renewed and released.
                if free || ours {
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
                                    "took over deploy lock {lease_name} from {} (expired)",
                                    held.map(|(h, _)| h).unwrap_or_default()
                                ));
                            }
                            lease
                        }
                        // Another contender was quicker: look again.
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(err(e)),
                    }
                } else {
                    let (holder, until) = held.unwrap_or_default();
                    if tokio::time::Instant::now() >= deadline {
                        return Err(KubeError::Locked {
                            app: app.to_owned(),
                            lease: lease_name.clone(),
                            holder,
                            expires: until.to_string(),
                            waited: started.elapsed(),
                        });
                    }
                    if !said {
                        ctx.message(format!(
                            "waiting for deploy lock {lease_name}: held by {holder} until {until}"
                        ));
                        said = true;
                    }
                    let rv = existing.metadata.resource_version.unwrap_or_default();
                    let left = until.duration_since(now);
                    let wake = deadline.min(
                        tokio::time::Instant::now()
                            + Duration::try_from(left).unwrap_or_default()
                            + Duration::from_millis(10),
                    );
                    wait_for_change(&api, &name, &rv, wake, ctx)
                        .await
                        .map_err(|e| match e {
                            Waited::Cancelled => KubeError::Cancelled {
                                app: app.to_owned(),
                                workload: lease_name.clone(),
                                step,
                                source: Cancelled,
                            },
                            Waited::Api(e) => err(e),
                        })?;
                    continue;
                }
            }
            Err(e) => return Err(err(e)),
        };
        tracing::debug!(%app, lease = %lease_name, holder = %options.identity, "deploy lock taken");
        held_locks.set().insert(key);
        let rv = taken.metadata.resource_version.clone().unwrap_or_default();
        let (stop, stopped) = oneshot::channel();
        let renewer = tokio::spawn(renew(
            api.clone(),
            Arc::new(taken),
            rv,
            options.lease_duration.max(Duration::from_secs(1)) / 3,
            stopped,
        ));
        return Ok(DeployLock {
            app: app.to_owned(),
            api,
            namespace: namespace.to_owned(),
            name,
            identity: options.identity.clone(),
            nested: false,
            held: held_locks.clone(),
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
    wake: tokio::time::Instant,
    ctx: &Context,
) -> Result<(), Waited> {
    let seconds = wake
        .saturating_duration_since(tokio::time::Instant::now())
        .as_secs()
        + 1;
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

/// Renews the lease every `every` until told to stop; returns the last
/// resourceVersion it wrote, or `None` when the lease was lost to someone else.
async fn renew(
    api: Api<Lease>,
    lease: Arc<Lease>,
    mut rv: String,
    every: Duration,
    mut stop: oneshot::Receiver<()>,
) -> Option<String> {
    let name = lease.metadata.name.clone().unwrap_or_default();
    let mut lease = (*lease).clone();
    loop {
        tokio::select! {
            _ = &mut stop => return Some(rv),
            () = tokio::time::sleep(every) => {}
        }
        lease.metadata.resource_version = Some(rv.clone());
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        match api.replace(&name, &PostParams::default(), &lease).await {
            Ok(renewed) => {
                rv = renewed.metadata.resource_version.unwrap_or(rv);
            }
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                tracing::warn!(lease = %name, "deploy lock lost: another holder took it over");
                return None;
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "renewing the deploy lock failed; trying again");
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
