//! Ctrl-C and CI timeouts against the built CLI in a child process: a signal
//! cancels the run at once, what ran before keeps or gets back its place, and the
//! next run completes.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Monorepo;
use shipflow_kit::docker::testing::TestPodman;
use shipflow_kit::k8s::testing::{Outcome as Rollout, SimCluster};
use shipflow_kit::oci::testing::TestRegistry;

/// `shipflow args…` in `dir` with `env`, its stderr read line by line.
struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Run {
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(common::cli_binary())
            .current_dir(dir)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the CLI starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Waits (at most `limit`) for a stderr line containing `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {needle:?} within {limit:?}; stderr so far:\n{}",
            self.stderr.join("\n")
        );
    }

    /// Sends `signal` (`INT`, `TERM`) to the CLI.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    /// The exit status within `limit`, with stdout and the rest of stderr; the
    /// child is killed, and the test fails, when it takes longer.
    fn finish(mut self, limit: Duration) -> (ExitStatus, Duration, String, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stderr.extend(self.lines.try_iter());
                panic!(
                    "the CLI did not exit within {limit:?} of the signal; stderr:\n{}",
                    self.stderr.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = started.elapsed();
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        // The reader thread ends at EOF; take what it has left.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.stderr.push(line);
        }
        (status, took, stdout, self.stderr.join("\n"))
    }
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(common::cli_binary())
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .output()
        .expect("the CLI runs")
}

#[track_caller]
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// web deployed as v1 on real Podman, and v2 committed: v2 serves no
/// `/health.txt`, so its health check fails for 30 s.
struct NeverHealthy {
    repo: Monorepo,
    port: u16,
    container: String,
    prefix: String,
    host: String,
    state: PathBuf,
    podman: TestPodman,
    // Last: the registry outlives the engine's pulls.
    _registry: TestRegistry,
}

impl NeverHealthy {
    fn new() -> Self {
        let registry = TestRegistry::start().expect("docker-registry starts");
        let podman = TestPodman::start(&[&registry.host()]).expect("podman service starts");
        let port = common::free_port();
        let container = format!("sig{port}-web");
        let repo = Monorepo::create(&registry.host(), &["web"], |app, _| {
            format!(
                "[apps.{app}.deploy.docker]\ncontainer = \"{container}\"\n\
                 ports = [\"127.0.0.1:{port}:8080\"]\n\
                 health = {{ http = \"/health.txt\", timeout = 30 }}\n"
            )
        });
        repo.edit("apps/web/health.txt", "ok\n");
        let setup = NeverHealthy {
            port,
            container,
            prefix: format!("{}/e2e", registry.host()),
            host: podman.docker_host(),
            state: podman.dir().join("state"),
            repo,
            podman,
            _registry: registry,
        };
        // The target is docker, the only one web configures.
        assert_success(&setup.run(&["deploy", "--all"]));
        assert_eq!(setup.served().as_deref(), Some("<h1>web v1</h1>\n"));
        std::fs::remove_file(setup.repo.path().join("apps/web/health.txt")).expect("rm");
        setup.repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
        setup
    }

    fn env(&self) -> [(&str, &str); 2] {
        [
            ("XDG_STATE_HOME", self.state.to_str().expect("utf-8")),
            ("DOCKER_HOST", self.host.as_str()),
        ]
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["--registry", &self.prefix]);
        all
    }

    fn run(&self, args: &[&str]) -> Output {
        run(self.repo.path(), &self.args(args), &self.env())
    }

    /// The deploy of v2, two seconds into its health check.
    fn deploying_v2(&self) -> Run {
        let args = self.args(&["deploy", "--base", "HEAD~1"]);
        let mut deploy = Run::start(self.repo.path(), &args, &self.env());
        deploy.wait_for("web: deploy started", Duration::from_secs(60));
        std::thread::sleep(Duration::from_secs(2));
        deploy
    }

    fn served(&self) -> Option<String> {
        common::http_get(self.port)
    }

    /// `name state` of web's containers.
    fn containers(&self) -> Vec<String> {
        let ps = self
            .podman
            .command()
            .args(["ps", "-a", "--format", "{{.Names}} {{.State}}"])
            .output()
            .expect("podman ps");
        String::from_utf8_lossy(&ps.stdout)
            .lines()
            .filter(|l| l.contains(&self.container))
            .map(str::to_owned)
            .collect()
    }
}

#[test]
fn sigint_during_a_deploy_that_never_gets_healthy_restores_v1_at_once() {
    let setup = NeverHealthy::new();
    let deploy = setup.deploying_v2();
    deploy.signal("INT");
    let (status, took, stdout, stderr) = deploy.finish(Duration::from_secs(5));

    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        stderr.contains("SIGINT: cancelling… waiting for web's deploy to restore what ran before"),
        "{stderr}"
    );
    // The report says what was cancelled and what serves again.
    assert!(
        stdout.contains("cancelled during the health check") && stdout.contains("serves again"),
        "the report: {stdout}"
    );
    assert_eq!(
        setup.served().as_deref(),
        Some("<h1>web v1</h1>\n"),
        "v1 answers again"
    );
    // The new revision's container is kept, stopped, for its logs.
    let containers = setup.containers();
    let running = containers.iter().filter(|c| c.contains(" Up ")).count();
    assert_eq!(running, 1, "only v1 runs: {containers:?}");
    assert!(
        containers.len() >= 2,
        "v2's container is kept: {containers:?}"
    );
}

#[test]
fn a_second_sigint_exits_at_once_and_the_next_deploy_repairs() {
    let setup = NeverHealthy::new();
    let deploy = setup.deploying_v2();
    deploy.signal("INT");
    std::thread::sleep(Duration::from_millis(50));
    deploy.signal("INT");
    let (status, took, stdout, stderr) = deploy.finish(Duration::from_secs(1));

    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        stderr.contains("SIGINT again: exiting now")
            && stderr.contains("web: stopped mid-deploy")
            && stderr.contains("crash repair"),
        "{stderr}"
    );

    // Back to v1's files: the next deploy repairs what was left and serves v1.
    setup.repo.git(&["revert", "--no-edit", "HEAD"]);
    assert_success(&setup.run(&["deploy", "--all"]));
    assert_eq!(setup.served().as_deref(), Some("<h1>web v1</h1>\n"));
    let containers = setup.containers();
    let running = containers.iter().filter(|c| c.contains(" Up ")).count();
    assert_eq!(running, 1, "one revision runs: {containers:?}");
}

/// `GET http://host/path` on a loopback registry: the status line and body.
fn http_get(host: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(host).expect("registry answers");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

/// `len` bytes no compressor can shrink (xorshift), so the push takes a while.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    data
}

#[test]
fn sigterm_during_a_large_push_exits_at_once_and_the_next_push_completes() {
    let registry = TestRegistry::start().expect("docker-registry starts");
    let repo = Monorepo::create(&registry.host(), &["big"], |_, _| String::new());
    let dir = repo.path();
    std::fs::write(dir.join("apps/big/blob.bin"), noise(80 << 20)).expect("write the blob");
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", "-m", "a large layer"]);
    let tag = repo
        .git(&["rev-parse", "--short=7", "HEAD"])
        .trim()
        .to_owned();
    let prefix = format!("{}/e2e", registry.host());
    let args = ["push", "--all", "--registry", &prefix];

    let mut push = Run::start(dir, &args, &[]);
    push.wait_for("big: push started", Duration::from_secs(120));
    // Into the upload of the large layer (it takes about a second).
    std::thread::sleep(Duration::from_millis(300));
    push.signal("TERM");
    let (status, took, stdout, stderr) = push.finish(Duration::from_secs(2));
    assert_eq!(status.code(), Some(143), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(stderr.contains("SIGTERM: cancelling…"), "{stderr}");
    assert!(
        stdout.contains("stopped: cancelled"),
        "the report: {stdout}"
    );
    let tags = http_get(&registry.host(), "/v2/e2e/big/tags/list");
    assert!(
        !tags.contains(&format!("\"{tag}\"")),
        "no manifest under the tag after a cancelled push: {tags}"
    );

    let again = run(dir, &args, &[]);
    assert_success(&again);
    let tags = http_get(&registry.host(), "/v2/e2e/big/tags/list");
    assert!(tags.contains(&format!("\"{tag}\"")), "{tags}");
}

/// The same on Kubernetes (the simulated API server): SIGINT while a rollout that
/// never becomes ready is watched. Exit 130 within 5 s, the Deployment back on the
/// revision that ran before, and the app's deploy-lock Lease released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_stuck_kubernetes_rollout_rolls_it_back_and_releases_the_lease() {
    let registry = TestRegistry::start().expect("docker-registry starts");
    let sim = SimCluster::start().await.expect("simulated API server");
    sim.seed_deployment("default", "web", "web", "registry.local/placeholder:v0", 2);
    let repo = Monorepo::create(&registry.host(), &["web"], |_, _| {
        "deploy.kubernetes = {}".into()
    });
    let kubeconfig = repo.path().join("kubeconfig");
    std::fs::write(&kubeconfig, sim.kubeconfig()).expect("kubeconfig");
    let kubeconfig = kubeconfig.to_str().expect("utf-8").to_owned();
    let prefix = format!("{}/e2e", registry.host());
    let dir = repo.path().to_owned();
    let image = || -> String {
        sim.deployment("default", "web").expect("web")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .expect("an image")
            .to_owned()
    };

    let first = {
        let (dir, kubeconfig, prefix) = (dir.clone(), kubeconfig.clone(), prefix.clone());
        tokio::task::spawn_blocking(move || {
            run(
                &dir,
                &[
                    "deploy",
                    "--all",
                    "--registry",
                    &prefix,
                    "--kubeconfig",
                    &kubeconfig,
                ],
                &[],
            )
        })
        .await
        .expect("joined")
    };
    assert_success(&first);
    let v1 = image();
    assert!(v1.contains("@sha256:"), "{v1}");

    sim.set_outcome("default", "web", Rollout::NeverReady);
    repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let deploy = {
        let (dir, kubeconfig, prefix) = (dir.clone(), kubeconfig.clone(), prefix.clone());
        tokio::task::spawn_blocking(move || {
            let args = [
                "deploy",
                "--base",
                "HEAD~1",
                "--registry",
                &prefix,
                "--kubeconfig",
                &kubeconfig,
            ];
            let mut deploy = Run::start(&dir, &args, &[]);
            deploy.wait_for("web: deploy started", Duration::from_secs(60));
            deploy
        })
        .await
        .expect("joined")
    };
    // Wait until the new template is in place, then a little into the watch.
    let started = Instant::now();
    while image() == v1 {
        assert!(started.elapsed() < Duration::from_secs(30), "never patched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    deploy.signal("INT");
    let (status, took, stdout, stderr) =
        tokio::task::spawn_blocking(move || deploy.finish(Duration::from_secs(5)))
            .await
            .expect("joined");

    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(
        stdout.contains("cancelled during deploy, what ran before was restored"),
        "the report: {stdout}"
    );
    assert_eq!(image(), v1, "the Deployment runs what it ran before");
    assert!(
        sim.lease("default", "shipflow-lock-web").is_none(),
        "the deploy lock is released"
    );
}
