//! The monorepo as the service sees it: a mirror clone that `git fetch` keeps up
//! to date, and a detached work tree per environment that a run checks out.
//! The git CLI does the network and the checkouts; change detection is gix's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use tokio::process::Command;
use tokio::sync::Mutex;

use crate::config::{Secret, redact_userinfo, split_userinfo};

/// The longest a git command may take (a first clone of a large monorepo
/// included); a remote that hangs then fails the run instead of stalling it.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The cache clone and its work trees.
#[derive(Debug)]
pub(crate) struct Repo {
    /// The remote without its credentials: what argv and the mirror's config see.
    url: String,
    /// The credentials of an http(s) URL, as `http.extraHeader` given through
    /// the environment of the commands that talk to the remote.
    auth: Option<Secret>,
    mirror: PathBuf,
    worktrees: PathBuf,
    /// One git command changing the mirror at a time.
    lock: Mutex<()>,
}

impl Repo {
    /// Clones `url` into `state_dir` the first time.
    pub(crate) async fn open(url: &str, state_dir: &Path) -> anyhow::Result<Self> {
        let (url, auth) = remote(url);
        let repo = Self {
            url,
            auth,
            mirror: state_dir.join("mirror.git"),
            worktrees: state_dir.join("environments"),
            lock: Mutex::new(()),
        };
        if !repo.mirror.join("HEAD").exists() {
            std::fs::create_dir_all(state_dir)
                .with_context(|| format!("cannot create {}", state_dir.display()))?;
            let mirror = repo.mirror.to_string_lossy().into_owned();
            git_with(
                None,
                &["clone", "--quiet", "--mirror", &repo.url, &mirror],
                repo.auth.as_ref(),
            )
            .await
            .context("cannot clone the repository")?;
        } else {
            // Only this service uses the mirror: a lock left by a killed git is stale.
            remove_stale_locks(&repo.mirror)?;
            // A mirror cloned from a URL with credentials in it kept them in its config.
            git(
                Some(&repo.mirror),
                &["remote", "set-url", "origin", &repo.url],
            )
            .await
            .ok();
        }
        Ok(repo)
    }

    /// The mirror's git directory.
    pub(crate) fn mirror(&self) -> &Path {
        &self.mirror
    }

    /// Fetches every branch and tag.
    pub(crate) async fn fetch(&self) -> anyhow::Result<()> {
        let _guard = self.lock.lock().await;
        git_with(
            Some(&self.mirror),
            &[
                "fetch",
                "--quiet",
                "--prune",
                &self.url,
                "+refs/heads/*:refs/heads/*",
                "+refs/tags/*:refs/tags/*",
            ],
            self.auth.as_ref(),
        )
        .await
        .context("cannot fetch the repository")?;
        Ok(())
    }

    /// Branches and tags with the commit each points at.
    pub(crate) async fn refs(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let out = git(
            Some(&self.mirror),
            &[
                "for-each-ref",
                "--format=%(refname) %(objectname) %(*objectname)",
                "refs/heads",
                "refs/tags",
            ],
        )
        .await?;
        Ok(out
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let name = parts.next()?;
                let object = parts.next()?;
                // An annotated tag: the commit it points at.
                let commit = parts.next().unwrap_or(object);
                Some((name.to_owned(), commit.to_owned()))
            })
            .collect())
    }

    /// The commit `rev` names, if it exists.
    pub(crate) async fn resolve(&self, rev: &str) -> anyhow::Result<Option<String>> {
        let spec = format!("{rev}^{{commit}}");
        match git(
            Some(&self.mirror),
            &["rev-parse", "--verify", "--quiet", &spec],
        )
        .await
        {
            Ok(sha) => Ok(Some(sha.trim().to_owned())),
            Err(_) => Ok(None),
        }
    }

    /// Whether commit `ancestor` is `descendant` or one of its ancestors.
    pub(crate) async fn is_ancestor(
        &self,
        ancestor: &str,
        descendant: &str,
    ) -> anyhow::Result<bool> {
        let status = Command::new("git")
            .arg("-C")
            .arg(&self.mirror)
            .args(["merge-base", "--is-ancestor", ancestor, descendant])
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(GIT_TIMEOUT, status)
            .await
            .map_err(|_| anyhow::anyhow!("git merge-base took over {GIT_TIMEOUT:?}"))?
            .context("cannot run git: install it")?;
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!("git merge-base cannot compare {ancestor} and {descendant}"),
        }
    }

    /// A file's content at a revision.
    pub(crate) async fn show(&self, rev: &str, path: &str) -> anyhow::Result<String> {
        git(Some(&self.mirror), &["show", &format!("{rev}:{path}")]).await
    }

    /// The work tree of `environment`, checked out at `sha` (detached, cleaned).
    pub(crate) async fn checkout(&self, environment: &str, sha: &str) -> anyhow::Result<PathBuf> {
        let _guard = self.lock.lock().await;
        let dir = self.worktree(environment);
        if dir.join(".git").exists() {
            let reused = async {
                git(
                    Some(&dir),
                    &["checkout", "--quiet", "--force", "--detach", sha],
                )
                .await?;
                git(Some(&dir), &["clean", "--quiet", "-fdx"]).await
            };
            match reused.await {
                Ok(_) => return Ok(dir),
                // A work tree broken by a killed run: made again below.
                Err(e) => {
                    tracing::warn!(environment, "recreating the work tree: {e:#}");
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("cannot remove {}", dir.display()))?;
                }
            }
        }
        std::fs::create_dir_all(&self.worktrees)?;
        let path = dir.to_string_lossy().into_owned();
        git(Some(&self.mirror), &["worktree", "prune"]).await?;
        git(
            Some(&self.mirror),
            &[
                "worktree", "add", "--quiet", "--force", "--detach", &path, sha,
            ],
        )
        .await?;
        Ok(dir)
    }

    /// Where `environment`'s work tree is (it may not exist yet).
    pub(crate) fn worktree(&self, environment: &str) -> PathBuf {
        self.worktrees.join(environment)
    }
}

/// Removes the `*.lock` files under the git directory `dir` (its work trees'
/// administrative directories included, its object store left out): git
/// refuses to work while one exists, and one outlives a killed git.
fn remove_stale_locks(dir: &Path) -> anyhow::Result<()> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() && entry.file_name() != "objects" {
            remove_stale_locks(&path)?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
            tracing::warn!("removing the stale lock {}", path.display());
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Runs git in `dir` (a git or work tree directory); its stdout, or an error with its stderr.
async fn git(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<String> {
    git_with(dir, args, None).await
}

/// `url` without its userinfo, and for http(s) that userinfo as an
/// `Authorization: Basic` header (a user name alone is a token: empty password).
fn remote(url: &str) -> (String, Option<Secret>) {
    let (bare, userinfo) = split_userinfo(url);
    let http = ["http://", "https://"].iter().any(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    });
    match userinfo {
        Some(userinfo) if http => {
            let pair = if userinfo.contains(':') {
                userinfo
            } else {
                format!("{userinfo}:")
            };
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            (
                bare,
                Some(Secret::new(format!("Authorization: Basic {encoded}"))),
            )
        }
        // ssh and others: the user name is the login, not a secret.
        _ => (url.to_owned(), None),
    }
}

/// Runs git in `dir` (a git or work tree directory), with `header` as an extra
/// HTTP header; its stdout, or an error with its stderr.
async fn git_with(
    dir: Option<&Path>,
    args: &[&str],
    header: Option<&Secret>,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    if let Some(header) = header {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", header.expose());
    }
    let out = cmd
        .args(args)
        // Never wait for a password on a terminal: fail instead.
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    // On a timeout the child is dropped, which kills it.
    let out = tokio::time::timeout(GIT_TIMEOUT, out)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "git {} took over {GIT_TIMEOUT:?}: stopped",
                args.first().unwrap_or(&"")
            )
        })?
        .context("cannot run git: install it")?;
    if !out.status.success() {
        let stderr = redact_userinfo(&String::from_utf8_lossy(&out.stderr));
        bail!(
            "git {} failed: {}",
            args.first().unwrap_or(&""),
            stderr.trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_credentials_leave_the_url_for_a_header() {
        let (url, auth) = remote("https://ghp_abc@github.com/o/r.git");
        assert_eq!(url, "https://github.com/o/r.git");
        let header = auth.expect("a header");
        // base64("ghp_abc:")
        assert_eq!(header.expose(), "Authorization: Basic Z2hwX2FiYzo=");
        let (url, auth) = remote("ssh://git@host/r.git");
        assert_eq!(
            (url.as_str(), auth.is_none()),
            ("ssh://git@host/r.git", true)
        );
        let (url, auth) = remote("/srv/r.git");
        assert_eq!((url.as_str(), auth.is_none()), ("/srv/r.git", true));
    }

    fn run(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .current_dir(dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    /// A commit in a new repository under `dir`; its path.
    fn origin(dir: &Path) -> String {
        let origin = dir.join("origin");
        std::fs::create_dir_all(&origin).expect("mkdir");
        run(&origin, &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(origin.join("a.txt"), "a\n").expect("write");
        run(&origin, &["add", "."]);
        let identity = ["-c", "user.name=t", "-c", "user.email=t@t"];
        run(
            &origin,
            &[&identity[..], &["commit", "--quiet", "-m", "a"]].concat(),
        );
        origin.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn http_credentials_reach_the_server_as_a_header_and_stay_out_of_the_mirror() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        drop(
            Repo::open(&origin(dir.path()), &state)
                .await
                .expect("clone"),
        );
        // A server that records the first request and answers 404.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            let (mut stream, _) = listener.accept().expect("a request");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            String::from_utf8_lossy(&request).into_owned()
        });
        let secret = "glpat-Xy7Qw3Er9Ty";
        let url = format!("http://ci:{secret}@127.0.0.1:{port}/a.git");
        let repo = Repo::open(&url, &state).await.expect("the existing mirror");
        let error = format!("{:#}", repo.fetch().await.expect_err("404"));
        let request = server.join().expect("the server");
        let expected = base64::engine::general_purpose::STANDARD.encode(format!("ci:{secret}"));
        assert!(
            request.contains(&format!("Authorization: Basic {expected}")),
            "{request}"
        );
        assert!(!request.contains(secret), "{request}");
        assert!(!error.contains(secret), "{error}");
        let config = std::fs::read_to_string(repo.mirror().join("config")).expect("config");
        assert!(!config.contains(secret), "{config}");
        assert!(
            config.contains(&format!("http://127.0.0.1:{port}/a.git")),
            "{config}"
        );
    }

    #[tokio::test]
    async fn stale_locks_go_at_start_and_a_broken_work_tree_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = origin(dir.path());
        let state = dir.path().join("state");
        let repo = Repo::open(&url, &state).await.expect("clone");
        let sha = repo
            .resolve("HEAD")
            .await
            .expect("rev-parse")
            .expect("a commit");
        let tree = repo.checkout("staging", &sha).await.expect("checkout");
        // A killed run: locks in the mirror and in the work tree's admin directory.
        let admin = repo.mirror().join("worktrees/staging");
        for lock in [
            repo.mirror().join("packed-refs.lock"),
            repo.mirror().join("refs/heads/main.lock"),
            admin.join("index.lock"),
        ] {
            std::fs::write(&lock, "").expect("lock");
        }
        // A project's own lock file in the work tree is not git's.
        std::fs::write(tree.join("Cargo.lock"), "kept").expect("write");
        drop(repo);
        let repo = Repo::open(&url, &state).await.expect("reopen");
        assert!(!repo.mirror().join("packed-refs.lock").exists());
        assert!(!repo.mirror().join("refs/heads/main.lock").exists());
        assert!(!admin.join("index.lock").exists());
        assert!(tree.join("Cargo.lock").exists());
        repo.checkout("staging", &sha)
            .await
            .expect("checkout after the locks");
        // A work tree whose git link is broken is made again.
        std::fs::write(tree.join(".git"), "gitdir: /nonexistent\n").expect("break");
        let again = repo.checkout("staging", &sha).await.expect("recreated");
        assert_eq!(
            std::fs::read_to_string(again.join("a.txt")).expect("read"),
            "a\n"
        );
    }
}
