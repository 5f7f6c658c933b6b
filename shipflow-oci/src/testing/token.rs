//! A bearer-token service for [`TestRegistry`](super::TestRegistry): the scheme of
//! Docker Hub, GHCR and Harbor, on loopback.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// The `service` a [`TokenService`]'s tokens are for (their `aud` claim), which the
/// registry started by [`TestRegistry::start_with_token_auth`] names in its
/// challenges and so clients send in their token requests.
///
/// [`TestRegistry::start_with_token_auth`]: super::TestRegistry::start_with_token_auth
pub const TOKEN_SERVICE: &str = "shipflow-registry";

/// The issuer of a [`TokenService`]'s tokens (their `iss` claim).
pub const TOKEN_ISSUER: &str = "shipflow-test-issuer";

/// What a [`TokenService`] does with a request for actions its rule does not grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Leaves them out of the token and grants the rest, as Docker's token spec
    /// says a token server does (and Docker Hub does).
    Narrow,
    /// Answers 403 Forbidden and grants nothing, as some token servers do.
    Forbid,
}

/// Which actions (`pull`, `push`) the user may take on a repository.
type Rule = Box<dyn Fn(&str) -> Vec<&'static str> + Send>;

/// Repository → actions, sorted, so that two grants compare equal when they grant the same.
type Access = BTreeMap<String, BTreeSet<String>>;

/// A bearer-token service for a registry: a self-signed RSA certificate (made with
/// the `openssl` CLI) whose key signs a JWT per request, granting the actions the
/// request's scopes ask for as far as a rule allows; a loopback HTTP server hands
/// those tokens to clients with the right basic credentials, and answers others
/// 401. It also takes the OAuth2 form that identity tokens use (`az acr login`
/// writes one): a `POST` with `grant_type=refresh_token` whose `refresh_token` is
/// the password, answered with an `access_token`. Nothing it handles is printed or
/// logged: neither the credentials nor the tokens.
///
/// Start a registry that wants its tokens with
/// [`TestRegistry::start_with_token_auth`](super::TestRegistry::start_with_token_auth),
/// or put [`registry_auth`](Self::registry_auth) in a registry config of your own.
/// The server thread lives as long as the process; the key and certificate are
/// deleted on drop.
///
/// ```no_run
/// use shipflow_oci::testing::{TestRegistry, TokenService};
///
/// let tokens = TokenService::start("ci", "s3cret", "team/api")?;
/// let registry = TestRegistry::start_with_token_auth(&tokens)?;
/// let target = registry.reference("team/api:v1");
/// // … push `target` with `Credentials::basic("ci", "s3cret")` …
/// for scopes in tokens.scopes() {
///     println!("a token was asked for {scopes:?}");
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct TokenService {
    realm: String,
    cert: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl TokenService {
    /// Starts a service that gives `user` / `password` pull and push on
    /// `repository` and nothing elsewhere (other repositories' actions are left out
    /// of the token, as [`Refusal::Narrow`] says).
    ///
    /// Fails, never skips, when `openssl` is not installed.
    pub fn start(user: &str, password: &str, repository: &str) -> io::Result<Self> {
        let repository = repository.to_owned();
        Self::start_with_rule(user, password, Refusal::Narrow, move |name| {
            if name == repository {
                vec!["pull", "push"]
            } else {
                Vec::new()
            }
        })
    }

    /// Starts a service that gives `user` / `password`, for each repository a
    /// request's scopes name, the requested actions that `rule(repository)` allows;
    /// what it does not allow is handled as `refusal` says. The rule is asked on
    /// every request, so it may change its answer during a test.
    ///
    /// Fails, never skips, when `openssl` is not installed.
    pub fn start_with_rule(
        user: &str,
        password: &str,
        refusal: Refusal,
        rule: impl Fn(&str) -> Vec<&'static str> + Send + 'static,
    ) -> io::Result<Self> {
        let rule: Rule = Box::new(rule);
        let openssl = super::which("openssl").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "`openssl` is not installed (not on PATH): install it with \
                 `apt-get install -y openssl`",
            )
        })?;
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let der = dir.path().join("cert.der");
        run(Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=shipflow-test-token", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert))?;
        run(Command::new(&openssl)
            .args(["x509", "-in"])
            .arg(&cert)
            .args(["-outform", "DER", "-out"])
            .arg(&der))?;
        let der = std::fs::read(&der)?;
        let signer = Signer {
            openssl,
            key,
            header: serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [STANDARD.encode(&der)]}),
            user: user.to_owned(),
            issued: HashMap::new(),
        };

        let expected_auth = format!("basic {}", STANDARD.encode(format!("{user}:{password}")));
        let password = password.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::Builder::new()
            .name("token-service".to_owned())
            .spawn(move || {
                serve(
                    &listener,
                    &expected_auth,
                    &password,
                    refusal,
                    &rule,
                    signer,
                    &seen,
                )
            })?;
        Ok(Self {
            realm: format!("http://127.0.0.1:{port}/token"),
            cert,
            requests,
            _dir: dir,
        })
    }

    /// The URL tokens are asked for at, `http://127.0.0.1:<port>/token`.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The PEM certificate whose key signs the tokens (a registry's
    /// `rootcertbundle`).
    pub fn cert(&self) -> &Path {
        &self.cert
    }

    /// The request targets (path and query string, e.g.
    /// `/token?scope=repository%3Ateam%2Fapi%3Apull&service=shipflow-registry`) of
    /// the token requests served so far, with and without valid credentials, in
    /// order. They hold no secret: credentials travel in a header.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The scopes of each token request served so far, in order, decoded
    /// (e.g. `["repository:team/api:pull,push", "repository:team/base:pull"]`).
    pub fn scopes(&self) -> Vec<Vec<String>> {
        self.requests()
            .iter()
            .map(|target| {
                query_pairs(target)
                    .into_iter()
                    .filter(|(k, _)| k == "scope")
                    .map(|(_, v)| v)
                    .collect()
            })
            .collect()
    }

    /// The `auth:` section of a `docker-registry` config (top-level YAML) that
    /// wants this service's tokens, for [`TestRegistry::start_with`].
    ///
    /// [`TestRegistry::start_with`]: super::TestRegistry::start_with
    pub fn registry_auth(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert.display()
        )
    }
}

/// Runs `command`, failing with its stderr when it does not succeed.
fn run(command: &mut Command) -> io::Result<()> {
    let out = command.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{command:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Answers the token requests arriving on `listener`, forever.
fn serve(
    listener: &TcpListener,
    expected_auth: &str,
    password: &str,
    refusal: Refusal,
    rule: &Rule,
    mut signer: Signer,
    seen: &Mutex<Vec<String>>,
) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |i| i + 4);
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut authorized = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("authorization:")
                && l.split_once(':')
                    .map(|(_, v)| v.trim().to_ascii_lowercase())
                    == Some(expected_auth.to_ascii_lowercase())
        });
        let mut oauth = false;
        if head.starts_with("POST ") {
            // The OAuth2 refresh-token grant: the form in the body, the token the
            // password. The log keeps the form without the token.
            let body = read_body(&mut stream, &head, buf[end..].to_vec());
            let form: Vec<(String, String)> = form_pairs(&body);
            let token = form
                .iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, v)| v.as_str());
            oauth = form
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token");
            authorized = oauth && token == Some(password);
            if let Ok(mut kept) = reqwest::Url::parse("http://token.invalid/token") {
                kept.query_pairs_mut().extend_pairs(
                    form.iter()
                        .filter(|(k, _)| k != "refresh_token")
                        .flat_map(|(k, v)| {
                            // A POST form carries all scopes space-separated in one field.
                            let values: Vec<&str> = if k == "scope" {
                                v.split_whitespace().collect()
                            } else {
                                vec![v.as_str()]
                            };
                            values.into_iter().map(move |v| (k.as_str(), v))
                        }),
                );
                target = format!("/token?{}", kept.query().unwrap_or_default());
            }
        }
        seen.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(target.clone());
        let (status, body) = if !authorized {
            (
                "401 Unauthorized",
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.to_owned(),
            )
        } else {
            let requested = requested_access(&target);
            let granted = grant(&requested, rule);
            if refusal == Refusal::Forbid && granted != requested {
                (
                    "403 Forbidden",
                    r#"{"errors":[{"code":"DENIED","message":"requested access is not granted"}]}"#
                        .to_owned(),
                )
            } else {
                match signer.token(&granted) {
                    Some(token) if oauth => (
                        "200 OK",
                        serde_json::json!({"access_token": token, "expires_in": 3600}).to_string(),
                    ),
                    Some(token) => (
                        "200 OK",
                        serde_json::json!({"token": token, "expires_in": 3600}).to_string(),
                    ),
                    None => (
                        "500 Internal Server Error",
                        r#"{"errors":[{"code":"UNKNOWN","message":"signing failed"}]}"#.to_owned(),
                    ),
                }
            }
        };
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// The rest of a request's body after `start` (what came with the head), as its
/// `Content-Length` says.
fn read_body(stream: &mut std::net::TcpStream, head: &str, mut body: Vec<u8>) -> String {
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// The decoded pairs of an `application/x-www-form-urlencoded` body.
fn form_pairs(body: &str) -> Vec<(String, String)> {
    query_pairs(&format!("/?{body}"))
}

/// The decoded query parameters of a request target such as `/token?scope=…`.
fn query_pairs(target: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://token.invalid{target}"))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// The repository access a token request's `scope` parameters ask for (each may hold
/// several space-separated scopes; scopes of other resource types are ignored).
fn requested_access(target: &str) -> Access {
    let mut access = Access::new();
    for (_, scope) in query_pairs(target)
        .into_iter()
        .filter(|(k, _)| k == "scope")
    {
        for one in scope.split_whitespace() {
            let Some(("repository", rest)) = one.split_once(':') else {
                continue;
            };
            let Some((name, actions)) = rest.rsplit_once(':') else {
                continue;
            };
            access
                .entry(name.to_owned())
                .or_default()
                .extend(actions.split(',').map(str::to_owned));
        }
    }
    access
}

/// What of `requested` the rule allows.
fn grant(requested: &Access, rule: &Rule) -> Access {
    requested
        .iter()
        .filter_map(|(name, actions)| {
            let allowed = rule(name);
            let granted: BTreeSet<String> = actions
                .iter()
                .filter(|a| allowed.contains(&a.as_str()))
                .cloned()
                .collect();
            (!granted.is_empty()).then(|| (name.clone(), granted))
        })
        .collect()
}

/// Signs JWTs for the token service with the `openssl` CLI (one per distinct grant).
struct Signer {
    openssl: PathBuf,
    key: PathBuf,
    header: serde_json::Value,
    user: String,
    issued: HashMap<Access, String>,
}

impl Signer {
    /// A token granting `access`, or `None` when `openssl` fails.
    fn token(&mut self, access: &Access) -> Option<String> {
        if let Some(token) = self.issued.get(access) {
            return Some(token.clone());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs();
        let access_claim: Vec<_> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": self.user, "aud": TOKEN_SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60,
            "jti": format!("shipflow-test-{}", self.issued.len()),
            "access": access_claim,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(self.header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new(&self.openssl)
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()?
            .write_all(signing_input.as_bytes())
            .ok()?;
        let out = child.wait_with_output().ok()?;
        if !out.status.success() || out.stdout.is_empty() {
            return None;
        }
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(&out.stdout));
        self.issued.insert(access.clone(), token.clone());
        Some(token)
    }
}
