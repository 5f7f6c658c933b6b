//! The `podman` command line with the runtime's own configuration and storage, so
//! that clusters running at once (and other tests' Podman) never see each other's
//! images or containers.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use shipflow_core::testing::require;
use tokio::io::AsyncReadExt;

/// The most of a command's output kept (the rest is dropped).
const MAX_OUTPUT: u64 = 64 * 1024;

/// `podman` with a configuration and storage of its own, in a temp dir.
#[derive(Debug)]
pub(crate) struct Engine {
    dir: tempfile::TempDir,
    binary: PathBuf,
}

impl Engine {
    /// Writes the configuration: runtime `runc` and no default ulimits (what works
    /// on sandboxed machines, where `crun` fails), its own storage, run and temp
    /// dirs. Fails, naming the Debian package, when `podman`, `runc` or
    /// `slirp4netns` is not installed.
    pub(crate) fn new() -> io::Result<Self> {
        let binary = require("podman", "podman")?;
        require("runc", "runc")?;
        require("slirp4netns", "slirp4netns")?;
        let dir = tempfile::Builder::new().prefix("sim-podman-").tempdir()?;
        let d = dir.path();
        for sub in ["logs", "termination", "tmp"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\ntmp_dir = \"{}\"\n",
                d.join("tmp").display()
            ),
        )?;
        std::fs::write(d.join("registries.conf"), "")?;
        std::fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("storage").display(),
                d.join("run").display()
            ),
        )?;
        Ok(Self { dir, binary })
    }

    /// The runtime's scratch directory (logs, termination messages).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment that points `podman` at this configuration and storage.
    pub(crate) fn env(&self) -> [(&'static str, PathBuf); 3] {
        let d = self.dir.path();
        [
            ("CONTAINERS_CONF", d.join("containers.conf")),
            ("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf")),
            ("CONTAINERS_STORAGE_CONF", d.join("storage.conf")),
        ]
    }

    /// A blocking `podman` command pointed at this storage.
    pub(crate) fn command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.binary);
        command.envs(self.env());
        command
    }

    /// Runs `podman <args>` for at most `timeout`: its stdout, or its stderr (without
    /// Podman's `Error: ` prefix) when it fails. Both bounded.
    pub(crate) async fn run(&self, args: &[String], timeout: Duration) -> Result<String, String> {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let verb = args.first().map_or("", String::as_str);
        let mut child = command
            .spawn()
            .map_err(|e| format!("podman {verb} did not start: {e}"))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(format!("podman {verb}: no output pipes"));
        };
        let work = async {
            let (out, err) = tokio::join!(read_bounded(stdout), read_bounded(stderr));
            (child.wait().await, out, err)
        };
        let (status, out, err) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("podman {verb} did not finish within {timeout:?}"))?;
        let status = status.map_err(|e| format!("podman {verb}: {e}"))?;
        if status.success() {
            Ok(out)
        } else {
            // Podman's own error is its last `Error: ` line (progress comes before).
            let err = err.trim();
            let err = err
                .match_indices("Error: ")
                .map(|(at, _)| at)
                .filter(|at| *at == 0 || err[..*at].ends_with('\n'))
                .last()
                .map_or(err, |at| &err[at + "Error: ".len()..]);
            Err(if err.is_empty() {
                format!("podman {verb} failed with {status}")
            } else {
                err.to_owned()
            })
        }
    }

    /// Removes every container at once (best effort, blocking): what dropping the
    /// cluster does.
    pub(crate) fn remove_all(&self) {
        let _ = self
            .command()
            .args(["rm", "-af", "-t", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Engine {
    /// Waits (up to 10 s) for the processes still working in the storage to end:
    /// each container's `conmon` runs `podman container cleanup` after the
    /// container's exit, which would otherwise recreate the storage after its
    /// removal. Then detaches whatever is still mounted in it (the overlay driver
    /// bind-mounts its own directory, and a `podman` killed mid-command leaves that
    /// mount behind), deepest first, so that the directory can be removed.
    fn drop(&mut self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline && working_in(&dir) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in points {
            let _ = std::process::Command::new("umount")
                .args(["-l", point])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether a process other than this one has `dir` in its command line.
fn working_in(dir: &str) -> bool {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && name != me
            && std::fs::read(entry.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(dir))
    })
}

/// At most [`MAX_OUTPUT`] bytes of `reader`, as text; the rest is drained.
async fn read_bounded(reader: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut limited = reader.take(MAX_OUTPUT);
    let _ = limited.read_to_end(&mut kept).await;
    let _ = tokio::io::copy(&mut limited.into_inner(), &mut tokio::io::sink()).await;
    String::from_utf8_lossy(&kept).into_owned()
}
