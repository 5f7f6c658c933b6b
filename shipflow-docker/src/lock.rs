//! A per-app host lock: an OS advisory lock (`flock`) on a file under the state
//! directory. The kernel releases it when its holder's process ends, however that
//! ends, so a deployer that crashed never blocks the next one and there is no stale
//! lock to detect or take over. The file stays for good: removing a lock file while
//! its lock is held would let a second deployer lock a new file of the same name.
//! The holder writes who it is into the file, for the message of those who wait.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::DockerError;

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
        let path = dir.join(format!("{app}.lock"));
        let io_err = |source| DockerError::LockIo {
            app: app.to_owned(),
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let started = tokio::time::Instant::now();
        loop {
            // Opened anew each time: a file removed by hand since is not locked again.
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err)?;
            match file.try_lock() {
                Ok(()) if still_at(&file, &path) => {
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
                let holder: Option<Holder> = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
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

/// Whether `path` still names the open `file`.
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
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
}
