//! A per-app host lock: a file created exclusively under the state directory, holding
//! who took it and until when. A lock past its expiry, or held by a process of this
//! host that is gone, is taken over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::DockerError;

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    pid: u32,
    host: String,
    /// Seconds since the epoch.
    since: u64,
    /// Seconds since the epoch.
    expires: u64,
}

impl Holder {
    fn describe(&self) -> String {
        format!(
            "pid {} on {}, since {} s ago, expires in {} s",
            self.pid,
            self.host,
            now().saturating_sub(self.since),
            self.expires.saturating_sub(now())
        )
    }

    fn stale(&self) -> bool {
        self.expires <= now()
            || (self.host == hostname() && !Path::new(&format!("/proc/{}", self.pid)).exists())
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

/// A held lock; released when dropped.
#[derive(Debug)]
pub(crate) struct HostLock {
    path: PathBuf,
}

impl HostLock {
    /// Takes the lock of `app` under `dir`, waiting up to `wait`; a lock lives at most
    /// `ttl` (a crashed holder blocks others no longer than that).
    pub(crate) async fn acquire(
        dir: &Path,
        app: &str,
        wait: Duration,
        ttl: Duration,
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
            let holder = Holder {
                pid: std::process::id(),
                host: hostname(),
                since: now(),
                expires: now() + ttl.as_secs(),
            };
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    let body = serde_json::to_vec(&holder).unwrap_or_default();
                    file.write_all(&body).map_err(io_err)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err(e)),
            }
            let current: Option<Holder> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match current {
                Some(h) if h.stale() => {
                    tracing::warn!(app, holder = h.describe(), "taking over a stale lock");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                // Being written right now, or held.
                _ if started.elapsed() < wait => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                holder => {
                    return Err(DockerError::Locked {
                        app: app.to_owned(),
                        path: path.display().to_string(),
                        holder: holder.map_or_else(|| "unreadable holder".into(), |h| h.describe()),
                        waited: started.elapsed(),
                    });
                }
            }
        }
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
