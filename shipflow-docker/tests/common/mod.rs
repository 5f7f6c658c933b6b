//! Test harness: a real engine ([`TestEngine`]: the machine's Docker Engine, or a
//! Podman API service with its own socket, configuration and storage), a real
//! `docker-registry` and, on demand, a real Caddy, each on free loopback ports in a
//! temp dir; images built `FROM scratch` with busybox-static by the engine's own
//! command line. Every app's name starts with the engine instance's prefix, so tests
//! running at once on the shared Docker Engine never see each other's containers.
//! Binaries or engines that are missing make the tests fail, not skip. The engine
//! instance removes its containers (and, on Docker, the registry's images) when the
//! harness is dropped.

#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shipflow_core::{App, Digest, ImageRef, Workspace};
use shipflow_docker::testing::TestEngine;
use shipflow_docker::{Engine, EngineDeployer, EngineKind};
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

pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
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

/// The CGI script of every test image: the page's body, after `$QUERY_STRING`
/// seconds.
/// With a length, so that a proxy may keep the client's connection alive, and
/// `Connection: close`, which busybox httpd does not say for CGI answers although
/// it closes every connection (a proxy would otherwise reuse a closed one).
const CGI: &str = "#!/bin/busybox sh\n\
    case \"$QUERY_STRING\" in [0-9]*) /bin/busybox sleep \"$QUERY_STRING\";; esac\n\
    body=$(/bin/busybox cat /www/index.html)\n\
    printf 'Content-Type: text/plain\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n%s' \"${#body}\" \"$body\"\n";

/// A child process killed on drop.
pub struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn(mut command: Command, log: &Path) -> Service {
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

/// Starts Caddy in `dir` listening on `listen_port` with route `@id` `route`
/// proxying to a dead upstream until switched: the process and its admin URL.
pub fn start_caddy_in(dir: &Path, listen_port: u16, route: &str) -> (Service, String) {
    let caddy = require("caddy", "caddy");
    let admin = format!("127.0.0.1:{}", free_port());
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
    std::fs::write(dir.join("caddy.json"), config.to_string()).expect("caddy config");
    let mut cmd = Command::new(caddy);
    cmd.arg("run")
        .arg("--config")
        .arg(dir.join("caddy.json"))
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("caddy-data"))
        .env("XDG_CONFIG_HOME", dir.join("caddy-config"));
    let service = spawn(cmd, &dir.join("caddy.log"));
    wait_until("caddy admin", Duration::from_secs(20), || {
        TcpStream::connect(&admin).is_ok()
    });
    (service, format!("http://{admin}"))
}

/// Starts HAProxy in `dir` listening on `listen_port` with backend `backend`, whose
/// two server slots `blue` and `green` wait in maintenance until switched: the
/// process and its runtime API's Unix socket.
pub fn start_haproxy_in(dir: &Path, listen_port: u16, backend: &str) -> (Service, PathBuf) {
    let haproxy = require("haproxy", "haproxy");
    let socket = dir.join("haproxy.sock");
    let config = format!(
        "global\n    stats socket {} mode 600 level admin\n    log stdout format raw local0\n\
         defaults\n    mode http\n    log global\n    option httplog\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
         frontend app\n    bind 127.0.0.1:{listen_port}\n    default_backend {backend}\n\
         backend {backend}\n    server blue 127.0.0.1:9 disabled\n    server green 127.0.0.1:9 disabled\n",
        socket.display()
    );
    std::fs::write(dir.join("haproxy.cfg"), config).expect("haproxy config");
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    let service = spawn(cmd, &dir.join("haproxy.log"));
    wait_until("haproxy", Duration::from_secs(20), || {
        socket.exists() && TcpStream::connect(("127.0.0.1", listen_port)).is_ok()
    });
    (service, socket)
}

/// An engine, a registry, and on demand Caddy or HAProxy.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub registry: String,
    engine: TestEngine,
    _registry: Service,
    caddy: Option<Service>,
    pub caddy_admin: Option<String>,
    haproxy: Option<Service>,
    creds: Option<(String, String)>,
    /// The bearer-token service of a token-auth registry.
    pub tokens: Option<TokenService>,
}

impl Harness {
    pub fn start(kind: EngineKind) -> Self {
        Self::start_with(kind, None, None)
    }

    /// A harness whose registry requires basic auth for `user` / `password`.
    pub fn start_with_basic_auth(kind: EngineKind, user: &str, password: &str) -> Self {
        Self::start_with(kind, Some((user.to_owned(), password.to_owned())), None)
    }

    /// A harness whose registry wants bearer tokens, which a token service gives
    /// `user` / `password` for `repository`.
    pub fn start_with_token_auth(
        kind: EngineKind,
        user: &str,
        password: &str,
        repository: &str,
    ) -> Self {
        let tokens = TokenService::start(user, password, repository)
            .unwrap_or_else(|e| panic!("the token service does not start: {e}"));
        Self::start_with(
            kind,
            Some((user.to_owned(), password.to_owned())),
            Some(tokens),
        )
    }

    fn start_with(
        kind: EngineKind,
        creds: Option<(String, String)>,
        tokens: Option<TokenService>,
    ) -> Self {
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

        let engine = TestEngine::start(kind, &[&registry])
            .unwrap_or_else(|e| panic!("the {kind} engine is needed: {e}"));
        wait_until("docker-registry", Duration::from_secs(20), || {
            TcpStream::connect(&registry).is_ok()
        });
        let harness = Self {
            dir,
            registry,
            engine,
            _registry: registry_service,
            caddy: None,
            caddy_admin: None,
            haproxy: None,
            creds,
            tokens,
        };
        if let (EngineKind::Docker, Some((user, password))) = (kind, &harness.creds) {
            // Docker's command line has no `--creds`: log in, in the test's own config.
            let mut login = harness.cli();
            login.args(["login", "-u", user, "-p", password, &harness.registry]);
            harness.run(&mut login);
        }
        harness
    }

    /// Docker or Podman.
    pub fn kind(&self) -> EngineKind {
        self.engine.kind()
    }

    /// `base` in the engine instance's namespace: the name of an app or container.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.engine.prefix())
    }

    /// Starts Caddy listening on `listen_port` with route `@id` `route` proxying to
    /// a dead upstream until switched; returns its admin address.
    pub fn start_caddy(&mut self, listen_port: u16, route: &str) -> String {
        let (caddy, url) = start_caddy_in(self.dir.path(), listen_port, route);
        self.caddy = Some(caddy);
        self.caddy_admin = Some(url.clone());
        url
    }

    /// Starts HAProxy listening on `listen_port` with backend `backend`, whose two
    /// server slots `blue` and `green` wait in maintenance until switched; returns
    /// its runtime API's Unix socket.
    pub fn start_haproxy(&mut self, listen_port: u16, backend: &str) -> PathBuf {
        let (haproxy, socket) = start_haproxy_in(self.dir.path(), listen_port, backend);
        self.haproxy = Some(haproxy);
        socket
    }

    pub async fn engine(&self) -> Engine {
        self.engine
            .engine()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.kind()))
    }

    /// The test engine (its socket, command line, namespace).
    pub fn test_engine(&self) -> &TestEngine {
        &self.engine
    }

    /// A deployer with a short probe interval, drain and stabilization window (apps
    /// that test the window set their own), and its own lock dir.
    pub async fn deployer(&self) -> EngineDeployer {
        EngineDeployer::builder(self.engine().await)
            .state_dir(self.dir.path().join("state"))
            .probe_interval(Duration::from_millis(100))
            .drain(Duration::from_millis(300))
            .stable_for(Duration::from_millis(300))
            .stop_timeout(2)
            .build()
    }

    /// The app [`name`](Self::name)`(base)` from a workspace whose
    /// `[apps.<name>.deploy.docker]` is `docker` (TOML).
    pub fn app(&self, base: &str, docker: &str) -> App {
        let name = self.name(base);
        self.app_toml(&name, &format!("[apps.{name}.deploy.docker]\n{docker}\n"))
    }

    /// The app `name` from a workspace of `apps` (TOML after `[workspace]`).
    pub fn app_toml(&self, name: &str, apps: &str) -> App {
        let toml = format!("[workspace]\nregistry = \"{}\"\n{apps}", self.registry);
        let ws = Workspace::from_toml(&toml, ".").expect("workspace");
        ws.app(name).expect("app").clone()
    }

    /// The engine's command line (`docker` or `podman`), pointed at it.
    pub fn cli(&self) -> Command {
        self.engine.command()
    }

    /// Builds an image `FROM scratch` with busybox whose command is `cmd` (a shell
    /// script) and `/www/index.html` = `body`, pushes it to the registry, removes it
    /// from the engine (so deploys pull), and returns the digest-pinned reference.
    pub fn image(&self, repo: &str, tag: &str, body: &str, cmd: &str) -> ImageRef {
        let ctx = self.dir.path().join(format!("ctx-{repo}-{tag}"));
        std::fs::create_dir_all(ctx.join("www")).expect("context dir");
        std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("copy busybox-static");
        std::fs::write(ctx.join("www/index.html"), body).expect("index");
        // `/cgi-bin/rev` answers GETs and POSTs with the body; `?<seconds>` first
        // sleeps that long (a slow request).
        std::fs::create_dir_all(ctx.join("www/cgi-bin")).expect("cgi dir");
        std::fs::write(ctx.join("www/cgi-bin/rev"), CGI).expect("cgi script");
        std::fs::set_permissions(
            ctx.join("www/cgi-bin/rev"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("cgi mode");
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
                "FROM scratch\n{}COPY busybox /bin/busybox\nCOPY www /www\nCMD [\"/bin/busybox\", \"sh\", \"-c\", {}]\n",
                self.own_chain(),
                serde_json::to_string(cmd).expect("json")
            ),
        )
        .expect("Dockerfile");
        let reference = format!("{}/{repo}:{tag}", self.registry);
        self.run(self.cli().args(["build", "-q", "-t", &reference]).arg(&ctx));
        let digest = self.push(&reference, &ctx.join("digest"));
        self.run(self.cli().args(["rmi", &reference]));
        let image: ImageRef = reference.parse().expect("reference");
        image.pinned(digest)
    }

    /// A Dockerfile line that starts this harness's own chain of build-cache images
    /// on the shared Docker Engine ([`TestEngine::dockerfile_label`]).
    pub fn own_chain(&self) -> String {
        self.engine.dockerfile_label()
    }

    /// Pushes `reference` with the engine's command line; its manifest digest.
    fn push(&self, reference: &str, digest_file: &Path) -> Digest {
        let mut push = self.cli();
        push.arg("push");
        let text = match self.kind() {
            EngineKind::Podman => {
                if let Some((user, password)) = &self.creds {
                    push.arg("--creds").arg(format!("{user}:{password}"));
                }
                self.run(
                    push.args(["-q", "--tls-verify=false", "--digestfile"])
                        .arg(digest_file)
                        .arg(reference),
                );
                std::fs::read_to_string(digest_file).expect("digest file")
            }
            // `<tag>: digest: sha256:… size: 527`
            EngineKind::Docker => {
                let out = self.run(push.arg(reference));
                out.split("digest: ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .unwrap_or_else(|| panic!("no digest in `docker push` output: {out}"))
                    .to_owned()
            }
        };
        text.trim().parse().expect("digest")
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

    /// `docker ps -a` (or `podman ps -a`) names of the app's containers with their
    /// state (`running`, `exited`, `created`).
    pub fn containers(&self, app: &str) -> Vec<(String, String)> {
        let out = self.run(self.cli().args([
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
                // Docker prints `running`, `exited`, `created`; Podman 4.3 prints
                // `Up 3 seconds`, `Exited (0) …`, `Created`.
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

    /// Runs the engine's command line with `args` (those both `docker` and `podman`
    /// take); its output.
    pub fn cli_run(&self, args: &[&str]) -> String {
        self.run(self.cli().args(args))
    }

    /// Removes container `name` at once, whatever its state.
    pub fn remove_now(&self, name: &str) {
        match self.kind() {
            EngineKind::Docker => self.cli_run(&["rm", "-f", name]),
            EngineKind::Podman => self.cli_run(&["rm", "-f", "-t", "0", name]),
        };
    }

    /// Pulls `reference` from the harness's plain-HTTP registry.
    pub fn pull(&self, reference: &str) {
        match self.kind() {
            EngineKind::Docker => self.cli_run(&["pull", "-q", reference]),
            EngineKind::Podman => self.cli_run(&["pull", "-q", "--tls-verify=false", reference]),
        };
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
