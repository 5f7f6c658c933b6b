//! [`DockerConfig`]: registry credentials from a docker `config.json`, the way the
//! docker CLI finds them: `credHelpers` for the registry, then `auths`, then
//! `credsStore`, helpers run as `docker-credential-<name> get`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::{Credentials, OciError};

/// The docker CLI's key for Docker Hub in `auths` and for credential helpers.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// A parsed docker `config.json`: where credentials for each registry come from.
///
/// Its `Debug` output lists registries and helper names, never a secret.
///
/// ```no_run
/// # fn main() -> Result<(), shipflow_oci::OciError> {
/// // $DOCKER_CONFIG/config.json, else ~/.docker/config.json (None if neither exists).
/// if let Some(config) = shipflow_oci::DockerConfig::load()? {
///     let credentials = config.credentials("registry.example.com")?;
///     println!("{credentials:?}"); // the password shows as <redacted>
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConfig {
    #[serde(skip)]
    path: Option<PathBuf>,
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Clone, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerConfig")
            .field("path", &self.path)
            .field("auths", &self.auths.keys().collect::<Vec<_>>())
            .field("creds_store", &self.creds_store)
            .field("cred_helpers", &self.cred_helpers)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

impl DockerConfig {
    /// Reads `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`; `None`
    /// when the file does not exist.
    pub fn load() -> Result<Option<Self>, OciError> {
        let dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => match std::env::var_os("HOME") {
                Some(home) => Path::new(&home).join(".docker"),
                None => return Ok(None),
            },
        };
        let path = dir.join("config.json");
        if !path.is_file() {
            return Ok(None);
        }
        Self::from_file(&path).map(Some)
    }

    /// The credential files Docker and Podman read, in the order their credentials
    /// are looked up, for the environment `env` (a variable's value by name; pass
    /// `|name| std::env::var_os(name)` for the process's own):
    ///
    /// 1. Podman's: `$REGISTRY_AUTH_FILE` when set; else
    ///    `$XDG_RUNTIME_DIR/containers/auth.json` (without it,
    ///    `/run/containers/<uid>/auth.json`) and
    ///    `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/containers/auth.json`),
    ///    where `podman login` writes (containers/image reads these before Docker's);
    /// 2. Docker's: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    ///
    /// ```
    /// use std::path::PathBuf;
    /// let env = |name: &str| match name {
    ///     "HOME" => Some("/home/ci".into()),
    ///     "XDG_RUNTIME_DIR" => Some("/run/user/1000".into()),
    ///     _ => None,
    /// };
    /// assert_eq!(
    ///     shipflow_oci::DockerConfig::search_paths(env),
    ///     [
    ///         PathBuf::from("/run/user/1000/containers/auth.json"),
    ///         PathBuf::from("/home/ci/.config/containers/auth.json"),
    ///         PathBuf::from("/home/ci/.docker/config.json"),
    ///     ]
    /// );
    /// ```
    pub fn search_paths(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Vec<PathBuf> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = var("HOME");
        let mut paths = Vec::new();
        match var("REGISTRY_AUTH_FILE") {
            Some(file) => paths.push(file),
            None => {
                match var("XDG_RUNTIME_DIR") {
                    Some(run) => paths.push(run.join("containers/auth.json")),
                    // Where Podman keeps it without XDG_RUNTIME_DIR (root, mostly).
                    None => {
                        use std::os::unix::fs::MetadataExt as _;
                        if let Ok(me) = std::fs::metadata("/proc/self") {
                            paths.push(PathBuf::from(format!(
                                "/run/containers/{}/auth.json",
                                me.uid()
                            )));
                        }
                    }
                }
                if let Some(config) =
                    var("XDG_CONFIG_HOME").or_else(|| home.as_ref().map(|h| h.join(".config")))
                {
                    paths.push(config.join("containers/auth.json"));
                }
            }
        }
        match (var("DOCKER_CONFIG"), home) {
            (Some(dir), _) => paths.push(dir.join("config.json")),
            (None, Some(home)) => paths.push(home.join(".docker/config.json")),
            (None, None) => {}
        }
        paths
    }

    /// Reads each of `paths` that exists, in order.
    pub fn load_files(paths: &[PathBuf]) -> Result<Vec<Self>, OciError> {
        paths
            .iter()
            .filter(|p| p.is_file())
            .map(Self::from_file)
            .collect()
    }

    /// The file this config was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads the config file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, OciError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| OciError::DockerConfig {
            path: path.to_path_buf(),
            registry: None,
            reason: format!("cannot read it: {e}"),
        })?;
        let mut config = Self::from_json_at(&text, Some(path))?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self, OciError> {
        Self::from_json_at(text, None)
    }

    fn from_json_at(text: &str, path: Option<&Path>) -> Result<Self, OciError> {
        // Only the kind of error and where: serde_json's message can quote a value,
        // and a value here may be a base64 `user:password`.
        serde_json::from_str(text).map_err(|e| OciError::DockerConfig {
            path: path.map_or_else(|| PathBuf::from("config.json"), Path::to_path_buf),
            registry: None,
            reason: format!(
                "invalid {} at line {} column {}",
                match e.classify() {
                    serde_json::error::Category::Io => "file",
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof =>
                        "JSON",
                    serde_json::error::Category::Data => "content (not the config.json layout)",
                },
                e.line(),
                e.column()
            ),
        })
    }

    /// The credentials for `registry` (a host such as `127.0.0.1:5000` or
    /// `docker.io`): its `credHelpers` entry, else its `auths` entry, else the
    /// `credsStore`; `None` when none of them knows the registry.
    pub fn credentials(&self, registry: &str) -> Result<Option<Credentials>, OciError> {
        let server = if is_docker_hub(registry) {
            DOCKER_HUB_SERVER
        } else {
            registry
        };
        if let Some(helper) = self
            .cred_helpers
            .iter()
            .find(|(key, _)| same_registry(key, registry))
            .map(|(_, helper)| helper)
        {
            return self.run_helper(helper, registry, server);
        }
        if let Some(credentials) = self.auths_credentials(registry)? {
            return Ok(Some(credentials));
        }
        match &self.creds_store {
            Some(store) if !store.is_empty() => self.run_helper(store, registry, server),
            _ => Ok(None),
        }
    }

    /// The credentials of `registry`'s `auths` entry, decoded; no helper is run.
    pub(crate) fn auths_credentials(
        &self,
        registry: &str,
    ) -> Result<Option<Credentials>, OciError> {
        match self
            .auths
            .iter()
            .find(|(key, _)| same_registry(key, registry))
            .map(|(_, entry)| entry)
        {
            Some(entry) => self.decode(entry, registry),
            None => Ok(None),
        }
    }

    fn error(&self, registry: &str, reason: String) -> OciError {
        OciError::DockerConfig {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("config.json")),
            registry: Some(registry.to_owned()),
            reason,
        }
    }

    fn decode(&self, entry: &AuthEntry, registry: &str) -> Result<Option<Credentials>, OciError> {
        // An identity token wins: `auth` then only holds a placeholder user.
        if let Some(token) = entry.identitytoken.as_deref().filter(|t| !t.is_empty()) {
            return Ok(Some(Credentials::identity_token(token)));
        }
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    self.error(registry, "its `auth` is not base64 of user:password".into())
                })?;
            let (user, password) = decoded.split_once(':').ok_or_else(|| {
                self.error(
                    registry,
                    "its `auth` has no ':' between user and password".into(),
                )
            })?;
            return Ok(Some(Credentials::basic(user, password)));
        }
        Ok(match (&entry.username, &entry.password) {
            (Some(user), Some(password)) => Some(Credentials::basic(user, password)),
            _ => None,
        })
    }

    /// `docker-credential-<helper> get` with the server on stdin, for at most
    /// [`HELPER_TIMEOUT`].
    fn run_helper(
        &self,
        helper: &str,
        registry: &str,
        server: &str,
    ) -> Result<Option<Credentials>, OciError> {
        // A helper is a program found on PATH by name, as Docker runs it: a name
        // that is a path (or empty) would run whatever file it points at.
        let plain = !helper.is_empty()
            && helper
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !helper.starts_with('.');
        if !plain {
            return Err(self.error(
                registry,
                format!("credential helper {helper:?} is not a helper name (letters, digits, '-', '_', '.')"),
            ));
        }
        let program = format!("docker-credential-{helper}");
        let mut child = Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                self.error(
                    registry,
                    format!(
                        "cannot run {program}: {e}; install the helper or remove it from the config"
                    ),
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(server.as_bytes());
        }
        let out = wait_at_most(child, HELPER_TIMEOUT)
            .map_err(|e| self.error(registry, format!("{program} get failed: {e}")))?
            .ok_or_else(|| {
                self.error(
                    registry,
                    format!(
                        "{program} get did not answer within {}s (is it waiting for a passphrase or a desktop prompt?); unlock it first or use explicit credentials",
                        HELPER_TIMEOUT.as_secs()
                    ),
                )
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // The protocol's answer for an unknown server; anything else is a failure.
            // Helper output is never quoted: it may hold a secret.
            if stdout.contains("credentials not found")
                || String::from_utf8_lossy(&out.stderr).contains("credentials not found")
            {
                return Ok(None);
            }
            return Err(self.error(
                registry,
                format!(
                    "{program} get exited with {}; run `{program} list` to check it",
                    out.status
                ),
            ));
        }
        let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|_| {
            self.error(
                registry,
                format!("{program} get did not answer {{\"Username\", \"Secret\"}} JSON"),
            )
        })?;
        // The helpers' convention for an identity token.
        if answer.username == "<token>" {
            return Ok(Some(Credentials::identity_token(answer.secret)));
        }
        Ok(Some(Credentials::basic(answer.username, answer.secret)))
    }
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// `registry` as explicit credentials are keyed: Docker Hub's names as `docker.io`.
pub(crate) fn canonical_registry(registry: &str) -> String {
    let registry = registry.trim().trim_end_matches('/');
    let host = registry
        .strip_prefix("https://")
        .or_else(|| registry.strip_prefix("http://"))
        .unwrap_or(registry);
    if is_docker_hub(host) {
        "docker.io".to_owned()
    } else {
        host.to_owned()
    }
}

/// Whether a config key (`https://host:port/v1/`, `host:port`, …) names `registry`.
fn same_registry(key: &str, registry: &str) -> bool {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    host == registry || (is_docker_hub(host) && is_docker_hub(registry))
}

/// How long a credential helper may take: one that waits for a passphrase or a
/// desktop prompt nobody sees must not hang the push.
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits for `child` and collects its output, killing it after `limit`: `None` then.
fn wait_at_most(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::io::Result<Option<std::process::Output>> {
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The readers are left to finish on their own: a grandchild may hold the pipes.
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Ok(Some(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_decode_base64_and_plain_fields_matching_any_key_form() {
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
        let config = DockerConfig::from_json(&format!(
            r#"{{"auths": {{"https://reg.example.com/v1/": {{"auth": "{auth}"}},
                "other:5000": {{"username": "u", "password": "p"}},
                "https://index.docker.io/v1/": {{"auth": "{auth}"}}}}}}"#
        ))
        .expect("valid config");
        let c = config
            .credentials("reg.example.com")
            .expect("lookup")
            .expect("found");
        assert_eq!((c.username(), c.password()), ("ci", "s3cret"));
        let c = config
            .credentials("other:5000")
            .expect("lookup")
            .expect("found");
        assert_eq!((c.username(), c.password()), ("u", "p"));
        assert!(config.credentials("docker.io").expect("lookup").is_some());
        assert!(
            config
                .credentials("unknown.example.com")
                .expect("lookup")
                .is_none()
        );
        assert!(!format!("{config:?}").contains(&auth));
    }

    #[test]
    fn an_identity_token_wins_over_the_placeholder_auth() {
        let config = DockerConfig::from_json(
            r#"{"auths": {"reg.azurecr.io": {"auth": "MDAwMDAwMDAtMDAwMDo=", "identitytoken": "rt-1"}, "plain": {"username": "u", "password": "p"}}}"#,
        )
        .expect("valid");
        let token = config
            .credentials("reg.azurecr.io")
            .expect("readable")
            .expect("known");
        assert_eq!(token.refresh_token(), Some("rt-1"));
        assert!(!format!("{token:?}").contains("rt-1"));
        let plain = config
            .credentials("plain")
            .expect("readable")
            .expect("known");
        assert_eq!(plain.refresh_token(), None);
    }

    #[test]
    fn a_helper_that_never_answers_is_stopped() {
        let started = std::time::Instant::now();
        let child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sleep runs");
        let out = wait_at_most(child, std::time::Duration::from_millis(200)).expect("waited");
        assert!(out.is_none());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));

        let child = Command::new("echo")
            .arg("answer")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("echo runs");
        let out = wait_at_most(child, std::time::Duration::from_secs(10))
            .expect("waited")
            .expect("answered");
        assert!(out.status.success());
        assert_eq!(out.stdout, b"answer\n");
    }

    #[test]
    fn a_malformed_file_is_an_error_without_its_values() {
        for text in [
            r#"{"auths": {"reg": "Y2k6czNjcmV0LXBhc3M="}}"#,
            r#"{"auths": {"reg": {"auth": 123456789}}}"#,
        ] {
            let err = DockerConfig::from_json(text).expect_err("not the layout");
            let text = err.to_string();
            assert!(
                text.contains("line 1 column")
                    && !text.contains("Y2k6")
                    && !text.contains("123456789"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bad_auth_entry_is_an_error_without_the_secret() {
        let config = DockerConfig::from_json(r#"{"auths": {"reg": {"auth": "bm9jb2xvbg=="}}}"#)
            .expect("valid");
        let err = config.credentials("reg").expect_err("no colon");
        let text = err.to_string();
        assert!(
            text.contains("reg") && !text.contains("nocolon") && !text.contains("bm9jb2xvbg"),
            "{text}"
        );
    }

    #[test]
    fn a_helper_name_that_is_a_path_is_refused_not_run() {
        let config = DockerConfig::from_json(
            r#"{"credHelpers": {"r.io": "../../../tmp/evil"}, "credsStore": "/bin/sh"}"#,
        )
        .expect("parses");
        let err = config.credentials("r.io").expect_err("refused");
        assert!(err.to_string().contains("is not a helper name"), "{err}");
        let err = config.credentials("other.io").expect_err("refused");
        assert!(
            err.to_string().contains("\"/bin/sh\" is not a helper name"),
            "{err}"
        );
    }
}
