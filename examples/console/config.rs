//! The service's configuration file: where it listens and keeps state, the
//! repository it follows, its tokens and webhook secrets, and its schedules.
//! Which refs ship to which environment is `shipflow.toml`'s `[environments]`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// A token or secret: compared, never shown (`Debug` prints `***`).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a value derived from other secrets (an Authorization header).
    pub(crate) fn new(value: String) -> Self {
        Self(value)
    }

    /// The value, for comparing and signing only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `console.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Where the HTTP server listens.
    #[serde(default = "default_listen")]
    pub(crate) listen: SocketAddr,
    /// The SQLite run history (a file; `--database` overrides it).
    #[serde(default = "default_database")]
    pub(crate) database: PathBuf,
    /// The cache clone, a work tree per environment, and image builds.
    #[serde(default = "default_state_dir")]
    pub(crate) state_dir: PathBuf,
    /// The largest webhook or API body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub(crate) max_body_bytes: usize,
    /// How long shutdown waits for a running pipeline to stop after cancelling it.
    #[serde(default = "default_grace")]
    pub(crate) shutdown_grace_seconds: u64,
    /// The monorepo.
    pub(crate) repository: Repository,
    /// Tokens.
    pub(crate) auth: Auth,
    /// Webhook secrets per provider; a provider without one is refused.
    #[serde(default)]
    pub(crate) webhooks: Webhooks,
    /// Where images go.
    #[serde(default)]
    pub(crate) registry: RegistrySettings,
    /// Cron schedules.
    #[serde(default)]
    pub(crate) schedules: Vec<Schedule>,
}

/// `[repository]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Repository {
    /// What `git clone` accepts: a URL or a path.
    pub(crate) url: String,
    /// Fetch and look for moved branches and tags this often; no polling without it.
    pub(crate) poll_seconds: Option<u64>,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("url", &redact_userinfo(&self.url))
            .field("poll_seconds", &self.poll_seconds)
            .finish()
    }
}

/// `text` with the whole userinfo of every `scheme://userinfo@` replaced by `***`:
/// a remote URL may carry a token, as its password or as its user name, and git
/// repeats it in its messages.
pub(crate) fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = authority_end(tail);
        match tail[..end].rfind('@') {
            Some(userinfo) => {
                out.push_str("***");
                rest = &tail[userinfo..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Where the authority (`userinfo@host:port`) after `scheme://` ends.
fn authority_end(tail: &str) -> usize {
    tail.find(|c: char| matches!(c, '/' | '?' | '#' | '\'' | '"') || c.is_whitespace())
        .unwrap_or(tail.len())
}

/// A remote URL split into the URL without its userinfo and that userinfo
/// (`user` or `user:password`), if it had one.
pub(crate) fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some(at) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let (head, tail) = url.split_at(at + 3);
    let end = authority_end(tail);
    match tail[..end].rfind('@') {
        Some(userinfo) => (
            format!("{head}{}", &tail[userinfo + 1..]),
            Some(tail[..userinfo].to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

/// `[auth]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Auth {
    /// The bearer token of mutating actions (manual runs, rollbacks).
    pub(crate) token: Secret,
    /// When set, reading (pages and JSON) needs this token or `token`.
    pub(crate) read_token: Option<Secret>,
}

/// `[webhooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Webhooks {
    /// The secret of GitHub's `X-Hub-Signature-256`.
    pub(crate) github: Option<Secret>,
    /// The secret of Gitea's `X-Gitea-Signature`.
    pub(crate) gitea: Option<Secret>,
    /// GitLab's `X-Gitlab-Token`.
    pub(crate) gitlab: Option<Secret>,
}

/// `[registry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrySettings {
    /// A directory of OCI layouts to store images in instead of a registry.
    pub(crate) store: Option<PathBuf>,
    /// Plain HTTP to the registry (loopback registries of tests).
    #[serde(default)]
    pub(crate) insecure: bool,
}

/// `[[schedules]]`: run a branch or tag on a cron expression (UTC).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Schedule {
    /// Five fields (minute granularity) or six (seconds first).
    pub(crate) cron: String,
    /// The ref to run, e.g. `refs/heads/main` or `main`.
    #[serde(rename = "ref")]
    pub(crate) reference: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_database() -> PathBuf {
    PathBuf::from("console.db")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(".console")
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_grace() -> u64 {
    30
}

impl Config {
    /// Reads `path`; relative paths in it are relative to its directory.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        config.database = dir.join(&config.database);
        config.state_dir = dir.join(&config.state_dir);
        if let Some(store) = &mut config.registry.store {
            *store = dir.join(&*store);
        }
        config
            .check_secrets()
            .with_context(|| format!("{} is not valid", path.display()))?;
        Ok(config)
    }

    /// Refuses tokens and secrets that would switch a check off or that anyone
    /// could guess: empty, shorter than [`MIN_SECRET_BYTES`], the example's
    /// placeholders, or a read token equal to the write token.
    fn check_secrets(&self) -> anyhow::Result<()> {
        let named = [
            ("auth.token", Some(&self.auth.token)),
            ("auth.read_token", self.auth.read_token.as_ref()),
            ("webhooks.github", self.webhooks.github.as_ref()),
            ("webhooks.gitea", self.webhooks.gitea.as_ref()),
            ("webhooks.gitlab", self.webhooks.gitlab.as_ref()),
        ];
        for (name, secret) in named {
            let Some(secret) = secret else { continue };
            let value = secret.expose();
            if value.len() < MIN_SECRET_BYTES {
                anyhow::bail!("{name} must be at least {MIN_SECRET_BYTES} bytes long");
            }
            if PLACEHOLDERS.contains(&value) {
                anyhow::bail!(
                    "{name} is the example's placeholder: replace it with a random value"
                );
            }
        }
        if let Some(read) = &self.auth.read_token
            && read.expose() == self.auth.token.expose()
        {
            anyhow::bail!("auth.read_token must differ from auth.token");
        }
        Ok(())
    }
}

/// The shortest token or secret accepted.
pub(crate) const MIN_SECRET_BYTES: usize = 16;

/// The values of the shipped `console.toml`, which must be replaced.
const PLACEHOLDERS: &[&str] = &[
    "change-me-write-token",
    "change-me-read-token",
    "change-me-github-secret",
    "change-me-gitea-secret",
    "change-me-gitlab-token",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let config: Config = toml::from_str(
            "[repository]\nurl = \"/r\"\n[auth]\ntoken = \"tok-123\"\n[webhooks]\ngithub = \"gh-456\"\n",
        )
        .expect("valid");
        let shown = format!("{config:?}");
        // (the short values are for this Debug check only: loading refuses them)
        assert!(
            !shown.contains("tok-123") && !shown.contains("gh-456"),
            "{shown}"
        );
        assert_eq!(config.auth.token.expose(), "tok-123");
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_userinfo(
                "fatal: unable to access 'https://ci:glpat-xyz@gitlab.example.com/a.git/': 403"
            ),
            "fatal: unable to access 'https://***@gitlab.example.com/a.git/': 403"
        );
        assert_eq!(
            redact_userinfo("ssh://git@host/repo /path"),
            "ssh://***@host/repo /path"
        );
        assert_eq!(redact_userinfo("/srv/git/repo.git"), "/srv/git/repo.git");
    }

    #[test]
    fn a_token_as_the_user_name_is_redacted_too() {
        assert_eq!(
            redact_userinfo("https://ghp_abcDEF123@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact_userinfo("fatal: 'https://oauth2:glpat-x@h/a.git' and http://tok@h2?x"),
            "fatal: 'https://***@h/a.git' and http://***@h2?x"
        );
        assert_eq!(
            redact_userinfo("https://h.example/a@b"),
            "https://h.example/a@b"
        );
        assert_eq!(redact_userinfo("https://h.example"), "https://h.example");
    }

    #[test]
    fn userinfo_is_split_off_the_url() {
        assert_eq!(
            split_userinfo("https://ghp_abc@github.com/o/r.git"),
            (
                "https://github.com/o/r.git".to_owned(),
                Some("ghp_abc".to_owned())
            )
        );
        assert_eq!(
            split_userinfo("https://ci:pw@h:8443/a.git"),
            ("https://h:8443/a.git".to_owned(), Some("ci:pw".to_owned()))
        );
        assert_eq!(
            split_userinfo("/srv/git/r.git"),
            ("/srv/git/r.git".to_owned(), None)
        );
        assert_eq!(
            split_userinfo("https://h/a@b"),
            ("https://h/a@b".to_owned(), None)
        );
    }

    fn checked(auth: &str, webhooks: &str) -> anyhow::Result<()> {
        let text = format!("[repository]\nurl = \"/r\"\n[auth]\n{auth}\n[webhooks]\n{webhooks}\n");
        let config: Config = toml::from_str(&text).expect("valid TOML");
        config.check_secrets()
    }

    #[test]
    fn weak_or_placeholder_secrets_are_refused() {
        const GOOD: &str = "token = \"Zq8vW2mPx4Lr7Tn1Yb5K\"";
        checked(GOOD, "github = \"c3VwZXItc2VjcmV0LXZhbHVl\"").expect("strong values load");
        for (auth, webhooks, complaint) in [
            ("token = \"\"", "", "auth.token must be at least"),
            ("token = \"short-token\"", "", "auth.token must be at least"),
            (GOOD, "gitlab = \"\"", "webhooks.gitlab must be at least"),
            (GOOD, "github = \"\"", "webhooks.github must be at least"),
            (GOOD, "gitea = \"\"", "webhooks.gitea must be at least"),
            (
                "token = \"Zq8vW2mPx4Lr7Tn1Yb5K\"\nread_token = \"\"",
                "",
                "auth.read_token must be at least",
            ),
            (
                "token = \"Zq8vW2mPx4Lr7Tn1Yb5K\"\nread_token = \"Zq8vW2mPx4Lr7Tn1Yb5K\"",
                "",
                "must differ from auth.token",
            ),
            ("token = \"change-me-write-token\"", "", "placeholder"),
            (GOOD, "gitea = \"change-me-gitea-secret\"", "placeholder"),
        ] {
            let error = checked(auth, webhooks).expect_err(complaint).to_string();
            assert!(error.contains(complaint), "{auth} {webhooks}: {error}");
        }
    }

    #[test]
    fn the_shipped_example_is_refused_until_its_values_are_replaced() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/console/console.toml");
        let error = format!("{:#}", Config::load(&path).expect_err("placeholders"));
        assert!(error.contains("placeholder"), "{error}");
    }
}
