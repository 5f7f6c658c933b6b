//! Test harness: a real Podman API service ([`TestPodman`]: own socket, own
//! configuration and own image storage, so tests running at once never see each
//! other's images or containers), a real `docker-registry` and, on demand, a real
//! Caddy, each on free loopback ports in a temp dir; images built `FROM scratch` with
//! busybox-static. Binaries that are missing make the tests fail, not skip. The
//! service removes its containers when the harness is dropped, and its storage goes
//! with its temp dir.

#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shipflow_core::{App, Digest, ImageRef, Workspace};
use shipflow_docker::testing::TestPodman;
use shipflow_docker::{Engine, EngineDeployer};
use shipflow_oci::testing::TokenService;

/// Panics with an install hint when `binary` is not installed.
pub fn require(binary: &str, package: &str) -> PathBuf {
    shipflow_docker::testing::require(binary, package)
        .unwrap_or_else(|e| panic!("{e}: these tests need it"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// busybox httpd on port 80 behind a shell that exits on SIGTERM (PID 1 ignores
/// signals it has no handler for).
pub const HTTPD: &str =
    "trap 'kill $p; exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & p=$!; wait";

/// A child process killed on drop.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut command: Command, log: &Path) -> Service {
    let file = std::fs::File::create(log).expect("log file");
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file);
    Service(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}")),
    )
}

/// Podman's API service with its own storage, a registry, and on demand Caddy.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub registry: String,
    podman: TestPodman,
    _registry: Service,
    caddy: Option<Service>,
    pub caddy_admin: Option<String>,
    creds: Option<(String, String)>,
    /// The bearer-token service of a token-auth registry.
    pub tokens: Option<TokenService>,
}

impl Harness {
    pub fn start() -> Self {
        Self::start_with(None, None)
    }

    /// A harness whose registry requires basic auth for `user` / `password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_with(Some((user.to_owned(), password.to_owned())), None)
    }

    /// A harness whose registry wants bearer tokens, which a token service gives
    /// `user` / `password` for `repository`.
    pub fn start_with_token_auth(user: &str, password: &str, repository: &str) -> Self {
        let tokens = TokenService::start(user, password, repository)
            .unwrap_or_else(|e| panic!("the token service does not start: {e}"));
        Self::start_with(Some((user.to_owned(), password.to_owned())), Some(tokens))
    }

    fn start_with(creds: Option<(String, String)>, tokens: Option<TokenService>) -> Self {
        let registry_bin = require("docker-registry", "docker-registry");
        require("busybox", "busybox-static");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();

        let reg_port = free_port();
        let registry = format!("127.0.0.1:{reg_port}");
        let auth = match (&creds, &tokens) {
            (_, Some(tokens)) => tokens.registry_auth(),
            (Some((user, password)), None) => {
                let hash = bcrypt::hash(password, 4).expect("bcrypt");
                std::fs::write(d.join("htpasswd"), format!("{user}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: shipflow-test\n    path: {}\n",
                    d.join("htpasswd").display()
                )
            }
            (None, None) => String::new(),
        };
        std::fs::write(
            d.join("registry.yml"),
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {registry}\n{auth}",
                d.join("registry-data").display()
            ),
        )
        .expect("registry config");
        let mut cmd = Command::new(registry_bin);
        cmd.arg("serve").arg(d.join("registry.yml"));
        let registry_service = spawn(cmd, &d.join("registry.log"));

        let podman = TestPodman::start(&[&registry]).expect("podman system service starts");
        wait_until("docker-registry", Duration::from_secs(20), || {
            TcpStream::connect(&registry).is_ok()
        });
        Self {
            dir,
            registry,
            podman,
            _registry: registry_service,
            caddy: None,
            caddy_admin: None,
            creds,
            tokens,
        }
    }

    /// Starts Caddy listening on `listen_port` with route `@id` `route` proxying to
    /// a dead upstream until switched; returns its admin address.
    pub fn start_caddy(&mut self, listen_port: u16, route: &str) -> String {
        let caddy = require("caddy", "caddy");
        let admin = format!("127.0.0.1:{}", free_port());
        let d = self.dir.path();
        let config = serde_json::json!({
            "admin": { "listen": admin },
            "apps": { "http": { "servers": { "app": {
                "listen": [format!("127.0.0.1:{listen_port}")],
                "automatic_https": { "disable": true },
                "routes": [{ "@id": route, "handle": [{
                    "handler": "reverse_proxy",
                    "upstreams": [{ "dial": "127.0.0.1:9" }]
                }]}]
            }}}}
        });
        std::fs::write(d.join("caddy.json"), config.to_string()).expect("caddy config");
        let mut cmd = Command::new(caddy);
        cmd.arg("run")
            .arg("--config")
            .arg(d.join("caddy.json"))
            .env("HOME", d)
            .env("XDG_DATA_HOME", d.join("caddy-data"))
            .env("XDG_CONFIG_HOME", d.join("caddy-config"));
        self.caddy = Some(spawn(cmd, &d.join("caddy.log")));
        wait_until("caddy admin", Duration::from_secs(20), || {
            TcpStream::connect(&admin).is_ok()
        });
        let url = format!("http://{admin}");
        self.caddy_admin = Some(url.clone());
        url
    }

    pub async fn engine(&self) -> Engine {
        self.podman
            .engine()
            .await
            .expect("connect to the podman service")
    }

    /// A deployer with a short probe interval and its own lock dir.
    pub async fn deployer(&self) -> EngineDeployer {
        EngineDeployer::builder(self.engine().await)
            .state_dir(self.dir.path().join("state"))
            .probe_interval(Duration::from_millis(100))
            .drain(Duration::from_millis(300))
            .stop_timeout(2)
            .build()
    }

    /// The app `name` from a workspace whose `[apps.<name>.deploy.docker]` is `docker`
    /// (TOML).
    pub fn app(&self, name: &str, docker: &str) -> App {
        self.app_toml(name, &format!("[apps.{name}.deploy.docker]\n{docker}\n"))
    }

    /// The app `name` from a workspace of `apps` (TOML after `[workspace]`).
    pub fn app_toml(&self, name: &str, apps: &str) -> App {
        let toml = format!("[workspace]\nregistry = \"{}\"\n{apps}", self.registry);
        let ws = Workspace::from_toml(&toml, ".").expect("workspace");
        ws.app(name).expect("app").clone()
    }

    fn podman(&self) -> Command {
        self.podman.command()
    }

    /// Builds an image `FROM scratch` with busybox whose command is `cmd` (a shell
    /// script) and `/www/index.html` = `body`, pushes it to the registry, removes it
    /// from the engine (so deploys pull), and returns the digest-pinned reference.
    pub fn image(&self, repo: &str, tag: &str, body: &str, cmd: &str) -> ImageRef {
        let ctx = self.dir.path().join(format!("ctx-{repo}-{tag}"));
        std::fs::create_dir_all(ctx.join("www")).expect("context dir");
        std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("copy busybox-static");
        std::fs::write(ctx.join("www/index.html"), body).expect("index");
        // Unique content per image: Podman finds a `repo@digest` under any name
        // with that digest, so two equal images of a test would not both be pulled.
        std::fs::write(
            ctx.join("www/.id"),
            format!("{}/{repo}:{tag}", self.registry),
        )
        .expect("id");
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\nCMD [\"/bin/busybox\", \"sh\", \"-c\", {}]\n",
                serde_json::to_string(cmd).expect("json")
            ),
        )
        .expect("Dockerfile");
        let reference = format!("{}/{repo}:{tag}", self.registry);
        self.run(
            self.podman()
                .args(["build", "-q", "-t", &reference])
                .arg(&ctx),
        );
        let digest_file = ctx.join("digest");
        let mut push = self.podman();
        push.arg("push");
        if let Some((user, password)) = &self.creds {
            push.arg("--creds").arg(format!("{user}:{password}"));
        }
        self.run(
            push.args(["-q", "--tls-verify=false", "--digestfile"])
                .arg(&digest_file)
                .arg(&reference),
        );
        self.run(self.podman().args(["rmi", &reference]));
        let digest: Digest = std::fs::read_to_string(&digest_file)
            .expect("digest file")
            .trim()
            .parse()
            .expect("digest");
        let image: ImageRef = reference.parse().expect("reference");
        image.pinned(digest)
    }

    /// An image serving `body` with busybox httpd on port 80.
    pub fn web_image(&self, repo: &str, tag: &str, body: &str) -> ImageRef {
        self.image(repo, tag, body, HTTPD)
    }

    fn run(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman ps -a` names of the app's containers with their state (`running`,
    /// `exited`, `created`).
    pub fn containers(&self, app: &str) -> Vec<(String, String)> {
        let out = self.run(self.podman().args([
            "ps",
            "-a",
            "--filter",
            &format!("label=dev.shipflow.app={app}"),
            "--format",
            "{{.Names}} {{.State}}",
        ]));
        let mut list: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| {
                // Podman 4.3 prints `Up 3 seconds`, `Exited (0) …`, `Created`.
                let state = match s.split_whitespace().next().unwrap_or_default() {
                    "Up" => "running".to_owned(),
                    other => other.to_ascii_lowercase(),
                };
                (n.to_owned(), state)
            })
            .collect();
        list.sort();
        list
    }

    /// The registry's log (its access log lists every request).
    pub fn registry_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Runs the podman CLI with the harness's configuration.
    pub fn podman_cli(&self, args: &[&str]) -> String {
        self.run(self.podman().args(args))
    }
}

/// GET `http://127.0.0.1:<port>/` with a short timeout: the body, or the error.
pub async fn get(http: &reqwest::Client, port: u16) -> Result<String, String> {
    get_path(http, port, "/").await
}

/// GET `http://127.0.0.1:<port><path>`: the trimmed body of a 2xx, or the error.
pub async fn get_path(http: &reqwest::Client, port: u16, path: &str) -> Result<String, String> {
    let response = http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body.trim().to_owned())
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}
