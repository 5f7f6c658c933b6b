//! A per-app host lock: an OS advisory lock (`flock`) on a file under the state
//! directory. The kernel releases it when its holder's process ends, however that
//! ends, so a deployer that crashed never blocks the next one and there is no stale
//! lock to detect or take over. The file stays for good: removing a lock file while
//! its lock is held would let a second deployer lock a new file of the same name.
//! The holder writes who it is into the file, for the message of those who wait.
//!
//! The state directory is created `0700` and refused when someone else owns it or
//! it is group- or world-writable; the lock file is opened in it without following
//! a symlink, so a link planted at the lock's name is refused, never written through.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use crate::{DockerError, Engine};

/// The default state directory: `$XDG_STATE_HOME/shipflow/docker`, else
/// `~/.local/state/shipflow/docker`, else (no `HOME`) `<temp>/shipflow-<uid>/docker`,
/// which [`HostLock::acquire`] refuses should another user have made it first.
pub(crate) fn default_state_dir() -> PathBuf {
    // The XDG base directory spec: a relative value is ignored.
    let var = |key| {
        std::env::var_os(key)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    var("XDG_STATE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".local/state")))
        .map(|base| base.join("shipflow/docker"))
        .unwrap_or_else(|| {
            let uid = rustix::process::geteuid().as_raw();
            std::env::temp_dir().join(format!("shipflow-{uid}/docker"))
        })
}

/// Creates `dir` (and its missing parents) `0700` and opens it, refusing a directory
/// that another user owns or that others may write to: they could swap the lock file.
fn open_state_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    let me = rustix::process::geteuid().as_raw();
    if stat.st_uid != me {
        return Err(std::io::Error::other(format!(
            "the state directory is owned by uid {}, not by this user (uid {me}); use a directory of your own",
            stat.st_uid
        )));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(std::io::Error::other(format!(
            "the state directory has mode {:o}: others may write to it; `chmod 700` it",
            stat.st_mode & 0o7777
        )));
    }
    Ok(fd)
}

/// How often a waiting deployer tries the lock again.
const RETRY: Duration = Duration::from_millis(100);

/// Who holds a lock, as written into the lock file. For messages only: the OS lock
/// decides who holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    host: String,
    /// Seconds since the epoch.
    since: u64,
}

impl Holder {
    fn describe(&self) -> String {
        format!(
            "pid {} on {}, since {} s ago",
            self.pid,
            self.host,
            now().saturating_sub(self.since)
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// A held lock; the OS releases it when this is dropped (or the process ends).
#[derive(Debug)]
pub(crate) struct HostLock {
    _file: File,
}

impl HostLock {
    /// Takes the lock of `app` under `dir`, trying again until `wait` has passed;
    /// then fails naming the holder.
    pub(crate) async fn acquire(
        dir: &Path,
        app: &str,
        wait: Duration,
    ) -> Result<Self, DockerError> {
        let name = format!("{app}.lock");
        let path = dir.join(&name);
        let io_err = |source| DockerError::LockIo {
            app: app.to_owned(),
            path: path.display().to_string(),
            source,
        };
        let dir_fd = open_state_dir(dir).map_err(|source| DockerError::LockIo {
            app: app.to_owned(),
            path: dir.display().to_string(),
            source,
        })?;
        let started = tokio::time::Instant::now();
        loop {
            // Opened anew each time: a file removed by hand since is not locked again.
            // Never through a symlink (ELOOP): one planted there is refused.
            let fd = rustix::fs::openat(
                &dir_fd,
                &name,
                OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| io_err(e.into()))?;
            let mut file = File::from(fd);
            match file.try_lock() {
                Ok(()) if still_at(&file, &dir_fd, &name) => {
                    // Should this fail, the lock is released with the file on return,
                    // and what the file says does not matter to the next one.
                    let holder = Holder {
                        pid: std::process::id(),
                        host: hostname(),
                        since: now(),
                    };
                    let body = serde_json::to_vec(&holder).unwrap_or_default();
                    file.set_len(0).map_err(io_err)?;
                    file.write_all(&body).map_err(io_err)?;
                    return Ok(Self { _file: file });
                }
                // Locked a file removed meanwhile: unlocked on drop; the one now at
                // `path` is tried next time.
                Ok(()) | Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io_err(e)),
            }
            if started.elapsed() >= wait {
                let holder = read_holder(&dir_fd, &name);
                return Err(DockerError::Locked {
                    app: app.to_owned(),
                    path: path.display().to_string(),
                    holder: holder
                        .map_or_else(|| "the file names no holder yet".into(), |h| h.describe()),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Who the lock file `name` in `dir` names, if it names anyone (not through a link).
fn read_holder(dir: &OwnedFd, name: &str) -> Option<Holder> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(File::from(fd), 4096), &mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// Whether `name` in `dir` still names the open `file`.
fn still_at(file: &File, dir: &OwnedFd, name: &str) -> bool {
    match (
        rustix::fs::fstat(file),
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW),
    ) {
        (Ok(open), Ok(named)) => open.st_dev == named.st_dev && open.st_ino == named.st_ino,
        _ => false,
    }
}

/// The image of engine lock sentinels: an empty file system, imported on first use.
const SENTINEL_IMAGE: &str = "localhost/shipflow-lock:1";
/// The label a sentinel carries: the app it locks.
const SENTINEL_LABEL: &str = "dev.shipflow.lock";
/// How long a sentinel whose lease nobody renews stays held, as its waiters see it.
const LEASE: Duration = Duration::from_secs(20);
/// How often a holder renews its lease.
const HEARTBEAT: Duration = Duration::from_secs(4);
/// How long reading a held sentinel may take.
const OBSERVE: Duration = Duration::from_secs(3);
/// The longest pause between two tries of a held engine lock.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The app's lock: the host's [`HostLock`], then the engine's [`EngineLock`].
#[derive(Debug)]
pub(crate) struct DeployLock {
    _engine: EngineLock,
    _host: HostLock,
}

impl DeployLock {
    /// Takes the host lock of `app` under `dir`, then its lock on `engine`; both
    /// waits together end after `wait`.
    pub(crate) async fn acquire(
        engine: &Engine,
        dir: &Path,
        app: &str,
        wait: Duration,
    ) -> Result<Self, DockerError> {
        let started = tokio::time::Instant::now();
        let host = HostLock::acquire(dir, app, wait).await?;
        let engine =
            EngineLock::acquire(engine, app, wait.saturating_sub(started.elapsed()), LEASE).await?;
        Ok(Self {
            _engine: engine,
            _host: host,
        })
    }
}

/// A lock on the engine itself, for runners on other machines that share it
/// (`DOCKER_HOST=ssh://…`): a sentinel container `<app>--lock`, created by name,
/// which the engine does atomically (409 to all but one). Never started: its image
/// is empty. The holder renews a lease by writing a counter into it every few
/// seconds; a waiter that sees neither the sentinel nor its lease change for the
/// lease's length, by its own clock (as client-go's leader election does, so
/// clocks need not agree), removes it by id and tries again. Released when
/// dropped; a holder that crashed leaves a sentinel that expires.
#[derive(Debug)]
pub(crate) struct EngineLock {
    engine: Engine,
    id: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

/// The longest a released lock's removal may take before it is left to expire.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a waiter saw of a held sentinel.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    id: String,
    lease: Option<Vec<u8>>,
    /// The holder its creator labelled it with: known before the first lease lands.
    holder: Option<String>,
}

fn sentinel_name(app: &str) -> String {
    format!("{app}--lock")
}

fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether creating a container failed because its name is taken: 409 (Docker,
/// newer Podman), or 500 "… is already in use" (Podman 4.3).
fn name_taken(e: &bollard::errors::Error) -> bool {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => *status_code == 409 || (*status_code == 500 && message.contains("already in use")),
        _ => false,
    }
}

impl EngineLock {
    /// Takes the engine lock of `app`, trying again with backoff until `wait` has
    /// passed; then fails naming the holder. A sentinel whose lease did not change
    /// for `lease` is taken over.
    pub(crate) async fn acquire(
        engine: &Engine,
        app: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<Self, DockerError> {
        let name = sentinel_name(app);
        let engine_err = |step: &str, source: bollard::errors::Error| DockerError::Engine {
            app: app.to_owned(),
            step: format!("{step} the engine lock {name}"),
            source: Box::new(source),
        };
        let holder = Holder {
            pid: std::process::id(),
            host: hostname(),
            since: now(),
        };
        let docker = engine.client();
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut last: Option<(Seen, tokio::time::Instant)> = None;
        let mut imported = false;
        loop {
            let config = bollard::models::ContainerCreateBody {
                image: Some(SENTINEL_IMAGE.to_owned()),
                cmd: Some(vec!["lock".into()]),
                labels: Some(
                    [
                        (SENTINEL_LABEL.to_owned(), app.to_owned()),
                        (
                            format!("{SENTINEL_LABEL}.holder"),
                            serde_json::to_string(&holder).unwrap_or_default(),
                        ),
                    ]
                    .into(),
                ),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let options = bollard::query_parameters::CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            };
            match docker.create_container(Some(options), config).await {
                Ok(created) => {
                    let id = created.id;
                    let beat = renew(engine.clone(), id.clone(), holder.clone(), app.to_owned());
                    return Ok(Self {
                        engine: engine.clone(),
                        id,
                        heartbeat: tokio::spawn(beat),
                    });
                }
                Err(e) if status(&e) == Some(404) && !imported => {
                    imported = true;
                    import_sentinel_image(engine)
                        .await
                        .map_err(|e| engine_err("import the image of", e))?;
                    continue;
                }
                Err(e) if name_taken(&e) => {}
                Err(e) => return Err(engine_err("create", e)),
            }
            // Bounded: Podman 4.3 never ends reading a container removed meanwhile.
            let seen = match tokio::time::timeout(OBSERVE, observe(engine, &name)).await {
                Ok(Ok(seen)) => seen,
                // Gone while read (Podman: 500 "does not exist in database"), or
                // no answer: tried again.
                Ok(Err(_)) | Err(_) if started.elapsed() < wait => {
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    return Err(DockerError::EngineLocked {
                        app: app.to_owned(),
                        container: name,
                        holder: "the sentinel did not answer".into(),
                        waited: started.elapsed(),
                    });
                }
            };
            let Some(seen) = seen else {
                // Released meanwhile.
                continue;
            };
            match &last {
                Some((before, since)) if *before == seen => {
                    if since.elapsed() >= lease {
                        tracing::warn!(
                            app,
                            sentinel = %name,
                            "the engine lock's lease was not renewed for {lease:?}: taking it over"
                        );
                        let remove = bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        };
                        match docker.remove_container(&seen.id, Some(remove)).await {
                            Ok(()) => {}
                            // Another waiter took it over first.
                            Err(e) if status(&e) == Some(404) => {}
                            Err(e) => return Err(engine_err("remove the expired", e)),
                        }
                        last = None;
                        continue;
                    }
                }
                _ => last = Some((seen, tokio::time::Instant::now())),
            }
            if started.elapsed() >= wait {
                let seen = last.as_ref().map(|(seen, _)| seen);
                let from_lease = seen
                    .and_then(|seen| seen.lease.as_deref())
                    .and_then(|body| serde_json::from_slice::<Lease>(body).ok())
                    .map(|lease| lease.holder);
                let from_label = seen
                    .and_then(|seen| seen.holder.as_deref())
                    .and_then(|label| serde_json::from_str::<Holder>(label).ok());
                let holder = from_lease
                    .or(from_label)
                    .map_or_else(|| "it names no holder".into(), |holder| holder.describe());
                return Err(DockerError::EngineLocked {
                    app: app.to_owned(),
                    container: name,
                    holder,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl Drop for EngineLock {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        let _timed = Defer(move || crate::timing::log("", "unlock", started));
        self.heartbeat.abort();
        let remove = || bollard::query_parameters::RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        // Removed before the deploy returns, so that the next one finds it free.
        // In a task on a multi-thread runtime's worker (a pipeline's app tasks),
        // with the engine's own connection: the worker hands its other tasks on
        // while it waits, and wake-ups of this task are kept by the scheduler.
        let worker = tokio::runtime::Handle::try_current().ok().filter(|r| {
            r.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                && tokio::task::try_id().is_some()
        });
        if let Some(runtime) = worker {
            let removal = self
                .engine
                .client()
                .remove_container(&self.id, Some(remove()));
            let removed = tokio::task::block_in_place(|| {
                runtime.block_on(tokio::time::timeout(RELEASE_TIMEOUT, removal))
            });
            if let Err(e) = flatten(removed) {
                tracing::warn!(sentinel = %self.id, "releasing the engine lock: {e}; it expires unrenewed");
            }
            return;
        }
        // Elsewhere from a thread and connection of its own, waited for. Never by
        // a nested `block_on` on this thread: on the thread that runs a runtime's
        // `block_on`, that takes the wake-ups meant for the futures joined beside
        // the deploy (seen: a test that joined a deploy with a polling loop hung
        // once the removal outlasted the loop's next timer).
        let (engine, id) = (self.engine.clone(), self.id.clone());
        let released = std::thread::Builder::new()
            .name("shipflow-unlock".into())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    let removal = async {
                        let engine = engine.reconnect().map_err(|e| e.to_string())?;
                        engine
                            .client()
                            .remove_container(&id, Some(remove()))
                            .await
                            .map_err(|e| e.to_string())
                    };
                    if let Err(e) = flatten(tokio::time::timeout(RELEASE_TIMEOUT, removal).await) {
                        tracing::warn!(sentinel = %id, "releasing the engine lock: {e}; it expires unrenewed");
                    }
                });
            });
        match released {
            Ok(thread) => {
                let _ = thread.join();
            }
            Err(e) => {
                tracing::warn!(sentinel = %self.id, "releasing the engine lock: {e}; it expires unrenewed");
            }
        }
    }
}

/// Runs its closure when dropped (on every way out of a function).
struct Defer<F: FnMut()>(F);

impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// A removal bounded by [`RELEASE_TIMEOUT`], as one error.
fn flatten<E: std::fmt::Display>(
    removed: Result<Result<(), E>, tokio::time::error::Elapsed>,
) -> Result<(), String> {
    match removed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {RELEASE_TIMEOUT:?}")),
    }
}

/// What a holder writes into its sentinel, `/lease`: who, and a counter that
/// changes with every renewal.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: Holder,
    beat: u64,
}

/// Renews the lease of sentinel `id` every [`HEARTBEAT`] until aborted.
async fn renew(engine: Engine, id: String, holder: Holder, app: String) {
    let mut lease = Lease { holder, beat: 0 };
    loop {
        let body = serde_json::to_vec(&lease).unwrap_or_default();
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(now());
        header.set_cksum();
        let written = tar
            .append_data(&mut header, "lease", body.as_slice())
            .and_then(|()| tar.into_inner());
        if let Ok(tar) = written {
            let options = bollard::query_parameters::UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            };
            match engine
                .client()
                .upload_to_container(&id, Some(options), bollard::body_full(tar.into()))
                .await
            {
                Ok(()) => {}
                Err(e) if status(&e) == Some(404) => {
                    tracing::error!(
                        app,
                        "the engine lock was taken over: its lease was not renewed in time"
                    );
                    return;
                }
                Err(e) => tracing::warn!(app, "renewing the engine lock: {e}"),
            }
        }
        lease.beat += 1;
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// The sentinel `name` as it is now: its id and lease; `None` once it is gone.
async fn observe(engine: &Engine, name: &str) -> Result<Option<Seen>, bollard::errors::Error> {
    use futures_util::StreamExt;
    let docker = engine.client();
    let (id, holder) = match docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(inspect) => {
            let holder = inspect
                .config
                .and_then(|c| c.labels)
                .and_then(|mut labels| labels.remove(&format!("{SENTINEL_LABEL}.holder")));
            (inspect.id.unwrap_or_default(), holder)
        }
        Err(e) if status(&e) == Some(404) => return Ok(None),
        Err(e) => return Err(e),
    };
    let options = bollard::query_parameters::DownloadFromContainerOptions {
        path: "/lease".into(),
    };
    let mut stream = docker.download_from_container(&id, Some(options));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) if tar.len() < 64 * 1024 => tar.extend_from_slice(&chunk),
            Ok(_) => break,
            // Not renewed yet, or the sentinel went meanwhile (seen next time).
            Err(e) if status(&e) == Some(404) => {
                return Ok(Some(Seen {
                    id,
                    lease: None,
                    holder,
                }));
            }
            Err(e) => return Err(e),
        }
    }
    let lease = tar::Archive::new(tar.as_slice())
        .entries()
        .ok()
        .and_then(|mut entries| entries.next())
        .and_then(Result::ok)
        .and_then(|mut entry| {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut body).ok()?;
            Some(body)
        });
    Ok(Some(Seen { id, lease, holder }))
}

/// Imports [`SENTINEL_IMAGE`], an empty file system, into the engine.
async fn import_sentinel_image(engine: &Engine) -> Result<(), bollard::errors::Error> {
    use futures_util::StreamExt;
    let empty = tar::Builder::new(Vec::new())
        .into_inner()
        .unwrap_or_else(|_| vec![0; 1024]);
    let (repo, tag) = SENTINEL_IMAGE
        .split_once(':')
        .unwrap_or((SENTINEL_IMAGE, "1"));
    let options = bollard::query_parameters::CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: vec![format!("LABEL {SENTINEL_LABEL}=sentinel")],
        ..Default::default()
    };
    let mut stream =
        engine
            .client()
            .create_image(Some(options), Some(bollard::body_full(empty.into())), None);
    let mut id = None;
    while let Some(item) = stream.next().await {
        id = item?.id.or(id);
    }
    // Podman (4.3) names an image imported through its Docker API by neither `repo`
    // nor `tag`: tag it by id.
    if let Some(id) = id {
        let (repo, tag) = SENTINEL_IMAGE
            .split_once(':')
            .unwrap_or((SENTINEL_IMAGE, "1"));
        let options = bollard::query_parameters::TagImageOptions {
            repo: Some(repo.into()),
            tag: Some(tag.into()),
        };
        engine.client().tag_image(&id, Some(options)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A child process killed when the test ends, passed or not.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn take(dir: &Path, wait: Duration) -> Result<HostLock, DockerError> {
        HostLock::acquire(dir, "web", wait).await
    }

    /// A lock file as a deployer that died left it: its pid is gone.
    fn dead_holders_file(dir: &Path) {
        let body = format!(
            r#"{{"pid":4194303,"host":"{}","since":1,"expires":99999999999}}"#,
            hostname()
        );
        std::fs::write(dir.join("web.lock"), body).expect("write the dead holder's lock");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_takeovers_of_a_dead_holders_lock_never_both_hold() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = Arc::new(dir.path().to_owned());
        let held = Arc::new(AtomicUsize::new(0));
        let both = Arc::new(AtomicBool::new(false));
        for _ in 0..50 {
            dead_holders_file(&dir);
            let start = Arc::new(tokio::sync::Barrier::new(6));
            let contenders: Vec<_> = (0..6)
                .map(|_| {
                    let (dir, held, both, start) =
                        (dir.clone(), held.clone(), both.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        let Ok(lock) = take(&dir, Duration::ZERO).await else {
                            return false;
                        };
                        if held.fetch_add(1, Ordering::SeqCst) > 0 {
                            both.store(true, Ordering::SeqCst);
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        held.fetch_sub(1, Ordering::SeqCst);
                        drop(lock);
                        true
                    })
                })
                .collect();
            let mut took = 0;
            for contender in contenders {
                took += usize::from(contender.await.expect("contender"));
            }
            assert!(took >= 1, "nobody took over the dead holder's lock");
            assert!(
                !both.load(Ordering::SeqCst),
                "two deployers held the lock at once"
            );
        }
    }

    #[tokio::test]
    async fn a_file_that_names_no_holder_blocks_nobody() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A deployer died between creating the file and writing it, or failed to write.
        std::fs::write(dir.path().join("web.lock"), "").expect("empty lock file");
        take(dir.path(), Duration::ZERO).await.expect("empty file");
        std::fs::write(dir.path().join("web.lock"), "{\"pid\":").expect("torn lock file");
        take(dir.path(), Duration::ZERO).await.expect("torn file");
    }

    #[tokio::test]
    async fn a_held_lock_names_its_holder_and_is_free_again_once_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lock = take(dir.path(), Duration::ZERO).await.expect("free");
        let started = std::time::Instant::now();
        let err = take(dir.path(), Duration::from_millis(300))
            .await
            .expect_err("held");
        assert!(started.elapsed() >= Duration::from_millis(300), "waited");
        let text = err.to_string();
        assert!(matches!(err, DockerError::Locked { .. }), "{text}");
        assert!(
            text.contains(&format!("pid {} on {}", std::process::id(), hostname())),
            "{text}"
        );
        drop(lock);
        take(dir.path(), Duration::ZERO).await.expect("released");
        assert!(dir.path().join("web.lock").exists(), "the file stays");
    }

    #[tokio::test]
    async fn a_lock_held_by_another_process_is_free_once_that_process_is_killed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("web.lock");
        let ready = dir.path().join("ready");
        // One process holding the lock: the shell opens the file, util-linux's
        // flock(1) takes the same kind of lock on that open file, and the shell
        // becomes `sleep`, keeping it.
        let mut holder = Reaped(
            std::process::Command::new("sh")
                .args([
                    "-c",
                    "exec 9>>\"$0\"; flock 9; touch \"$1\"; exec sleep 600",
                ])
                .arg(&path)
                .arg(&ready)
                .spawn()
                .expect("sh and flock(1)"),
        );
        while !ready.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let err = take(dir.path(), Duration::from_millis(200)).await;
        assert!(
            matches!(err, Err(DockerError::Locked { .. })),
            "another process holds it: {err:?}"
        );
        holder.0.kill().expect("kill the holder");
        holder.0.wait().expect("reap the holder");
        take(dir.path(), Duration::ZERO)
            .await
            .expect("the kernel released the dead holder's lock");
    }

    #[tokio::test]
    async fn a_symlink_planted_at_the_lock_path_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().expect("temp dir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("write the victim");
        let state = dir.path().join("state");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .expect("state dir");
        std::os::unix::fs::symlink(&victim, state.join("web.lock")).expect("plant the link");
        let err = take(&state, Duration::ZERO).await.expect_err("a link");
        assert!(matches!(err, DockerError::LockIo { .. }), "{err}");
        assert!(err.to_string().contains("web.lock"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious",
            "written through the link"
        );
        // A dangling link is not followed to create its target either.
        let missing = dir.path().join("missing");
        std::fs::remove_file(state.join("web.lock")).expect("unlink");
        std::os::unix::fs::symlink(&missing, state.join("web.lock")).expect("plant the link");
        take(&state, Duration::ZERO)
            .await
            .expect_err("a dangling link");
        assert!(!missing.exists(), "created through the link");
    }

    #[tokio::test]
    async fn the_state_directory_is_made_0700_and_refused_when_others_may_write_to_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("a/b/state");
        take(&state, Duration::ZERO).await.expect("a new directory");
        let mode = std::fs::metadata(&state)
            .expect("made")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = take(&state, Duration::ZERO)
            .await
            .expect_err("world-writable");
        let text = err.to_string();
        assert!(text.contains(&state.display().to_string()), "{text}");
        assert!(text.contains("chmod 700"), "{text}");
    }

    #[tokio::test]
    async fn a_state_directory_owned_by_someone_else_is_refused() {
        // Another user's directory: `/` when not root; as root, one given to nobody.
        let dir = tempfile::tempdir().expect("temp dir");
        let theirs = if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&theirs)
                .expect("mkdir");
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
            theirs
        } else {
            PathBuf::from("/")
        };
        let err = take(&theirs, Duration::ZERO).await.expect_err("not ours");
        let text = err.to_string();
        assert!(text.contains("owned by uid"), "{text}");
        assert!(text.contains(&theirs.display().to_string()), "{text}");
        assert!(!theirs.join("web.lock").exists(), "no lock file made there");
    }
}
