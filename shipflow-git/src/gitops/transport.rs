//! [`Transport`]: fetching and pushing the config repository. gix cannot push yet
//! (GitoxideLabs/gitoxide#306), so [`GitCli`] runs the `git` command, which honours
//! the user's credential helpers and ssh configuration; gix can replace it later
//! behind the same trait.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// The branch now points at the commit.
    Pushed,
    /// The remote refused: the branch moved (someone else pushed) or is locked.
    Rejected {
        /// The remote's reason, as `git` reports it.
        reason: String,
    },
}

/// A transport failure: the step and what went wrong, with no credential in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("git {step} {url} failed: {message}")]
pub struct TransportError {
    /// `fetch` or `push`.
    pub step: &'static str,
    /// The repository, with any password removed.
    pub url: String,
    /// What `git` said.
    pub message: String,
}

/// Fetches and pushes one branch of a remote repository from a local bare clone.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Fetches `branch` of `url` into the local ref `into` of the repository at
    /// `git_dir`; `Ok(false)` when the remote has no such branch.
    fn fetch(
        &self,
        git_dir: &Path,
        url: &str,
        branch: &str,
        into: &str,
    ) -> Result<bool, TransportError>;

    /// Pushes `commit` (a descendant of the branch's tip) to `branch` of `url`.
    fn push(
        &self,
        git_dir: &Path,
        url: &str,
        commit: &str,
        branch: &str,
    ) -> Result<PushOutcome, TransportError>;
}

/// The `git` command line.
#[derive(Debug, Clone)]
pub struct GitCli {
    program: PathBuf,
}

impl Default for GitCli {
    fn default() -> Self {
        Self {
            program: "git".into(),
        }
    }
}

impl GitCli {
    /// `git` from `PATH`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Another `git` program.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    fn run(
        &self,
        step: &'static str,
        git_dir: &Path,
        url: &str,
        args: &[&str],
    ) -> Result<std::process::Output, TransportError> {
        Command::new(&self.program)
            .arg("--git-dir")
            .arg(git_dir)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| TransportError {
                step,
                url: redact(url),
                message: format!("cannot run {}: {e}", self.program.display()),
            })
    }
}

impl Transport for GitCli {
    fn fetch(
        &self,
        git_dir: &Path,
        url: &str,
        branch: &str,
        into: &str,
    ) -> Result<bool, TransportError> {
        let refspec = format!("+refs/heads/{branch}:{into}");
        let out = self.run(
            "fetch",
            git_dir,
            url,
            &["fetch", "--quiet", "--no-tags", url, &refspec],
        )?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("couldn't find remote ref") {
            return Ok(false);
        }
        Err(TransportError {
            step: "fetch",
            url: redact(url),
            message: scrub(&stderr, url),
        })
    }

    fn push(
        &self,
        git_dir: &Path,
        url: &str,
        commit: &str,
        branch: &str,
    ) -> Result<PushOutcome, TransportError> {
        let refspec = format!("{commit}:refs/heads/{branch}");
        let out = self.run(
            "push",
            git_dir,
            url,
            &["push", "--porcelain", "--quiet", url, &refspec],
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        // --porcelain: one line per ref, `<flag>\t<from>:<to>\t<summary>`; `!` is a refusal.
        let refused = stdout
            .lines()
            .find(|l| l.starts_with('!'))
            .map(|l| l.rsplit('\t').next().unwrap_or(l).to_owned());
        match (out.status.success(), refused) {
            (true, _) => Ok(PushOutcome::Pushed),
            (false, Some(reason)) => Ok(PushOutcome::Rejected { reason }),
            (false, None) => Err(TransportError {
                step: "push",
                url: redact(url),
                message: scrub(&String::from_utf8_lossy(&out.stderr), url),
            }),
        }
    }
}

/// `url` without its user information, which may be a token:
/// `https://ci:secret@host/x` → `https://***@host/x`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `git`'s message, trimmed, with the URL's password removed.
fn scrub(message: &str, url: &str) -> String {
    message.trim().replace(url, &redact(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("https://ci:tok3n@git.example.com/fleet.git"),
            "https://***@git.example.com/fleet.git"
        );
        assert_eq!(
            redact("git@github.com:acme/fleet.git"),
            "git@github.com:acme/fleet.git"
        );
        assert_eq!(redact("file:///srv/fleet.git"), "file:///srv/fleet.git");
        let message = scrub(
            "fatal: unable to access 'https://ci:tok3n@h/x': refused\n",
            "https://ci:tok3n@h/x",
        );
        assert!(!message.contains("tok3n"), "{message}");
    }
}
