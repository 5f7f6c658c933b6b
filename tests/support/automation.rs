//! Real peers for the image automation's tests and bench: a `docker-registry` the
//! test can stop and start again on the same port and storage (with its
//! `notifications.endpoints` pointed at the loop), a bare config repository made
//! and read with the git command, and images pushed with shipflow's own client.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shipflow_kit::oci::{OCI_MANIFEST_MEDIA_TYPE, OciLayout, RegistryClient};
use shipflow_kit::{Context, Digest, ImageRef, Registry as _};

/// Where the registry posts its notifications, and the token it sends.
pub struct Notify {
    pub url: String,
    pub token: Option<String>,
}

/// A `docker-registry` on a fixed loopback port with storage in a temp dir;
/// [`Registry::stop`] and [`Registry::start_again`] make an outage. Killed on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    /// Starts one; with `notify`, its `notifications.endpoints` posts every push there.
    /// Fails (never skips) when `docker-registry` is not installed.
    pub fn start(notify: Option<Notify>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(notify) = notify {
            config.push_str(&format!(
                "notifications:\n  endpoints:\n    - name: automation\n      url: {}\n      timeout: 2s\n      threshold: 3\n      backoff: 200ms\n      ignore:\n        actions: [pull]\n",
                notify.url
            ));
            if let Some(token) = notify.token {
                config.push_str(&format!(
                    "      headers:\n        Authorization: [\"Bearer {token}\"]\n"
                ));
            }
        }
        std::fs::write(dir.path().join("config.yml"), config).expect("write the config");
        let mut registry = Self {
            dir,
            port,
            child: None,
        };
        registry.start_again();
        registry
    }

    /// Starts the process (again), same port, same storage; waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("docker-registry does not start (apt-get install -y docker-registry): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("docker-registry exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer within 20 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process: the registry is down until [`Registry::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream
            .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 16];
        matches!(stream.read(&mut head), Ok(n) if n >= 12 && &head[9..12] == b"200")
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>/<path>`.
    pub fn repository(&self, path: &str) -> String {
        format!("{}/{path}", self.host())
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many `GET …/tags/list` requests (pages included) the registry logged.
    pub fn tag_list_requests(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/tags/list"))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A registry client for loopback, retrying little so an outage shows fast.
pub fn client() -> RegistryClient {
    RegistryClient::builder()
        .without_docker_config()
        .retries(2, Duration::from_millis(50))
        .build()
        .expect("client")
}

/// Pushes a small image, distinct per `seed`, as `repository:tag`; its digest.
pub async fn push(client: &RegistryClient, repository: &str, tag: &str, seed: &str) -> Digest {
    let dir = tempfile::tempdir().expect("temp dir");
    let layout = OciLayout::create(dir.path().join("layout")).expect("layout");
    let layer = layout
        .write_blob(
            format!("layer of {seed}\n").as_bytes(),
            "application/vnd.oci.image.layer.v1.tar",
        )
        .expect("layer");
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"seed": seed}},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest.to_string()]},
    });
    let config = layout
        .write_blob(
            &serde_json::to_vec(&config).expect("json"),
            "application/vnd.oci.image.config.v1+json",
        )
        .expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.digest.to_string(), "size": config.size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.digest.to_string(), "size": layer.size}],
    });
    layout
        .put_manifest(&serde_json::to_vec(&manifest).expect("json"), "t")
        .expect("manifest");
    let image = layout.local_image("app", "t").expect("image");
    let target: ImageRef = format!("{repository}:{tag}").parse().expect("reference");
    client
        .push(&image, &target, &Context::new())
        .await
        .unwrap_or_else(|e| panic!("push {target}: {e}"));
    image.digest
}

/// A bare config repository with one deployment per app, each image behind a Flux
/// setter marker `flux-system:<app>`.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub bare: PathBuf,
    pub url: String,
}

/// `apps/<app>/deployment.yaml`.
pub fn deployment_path(app: &str) -> String {
    format!("apps/{app}/deployment.yaml")
}

impl Fleet {
    /// `apps`: (app, image it names at first).
    pub fn new(apps: &[(String, String)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        for (app, image) in apps {
            let file = work.join(deployment_path(app));
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(
                file,
                format!(
                    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app} # kept\nspec:\n  template:\n    spec:\n      containers:\n        - name: {app}\n          image: {image} # {{\"$imagepolicy\": \"flux-system:{app}\"}}\n"
                ),
            )
            .expect("write");
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "fleet"]);
        let bare = dir.path().join("fleet.git");
        git(
            dir.path(),
            &[
                "clone",
                "-q",
                "--bare",
                "work",
                bare.to_str().expect("utf-8"),
            ],
        );
        let url = format!("file://{}", bare.display());
        Self { dir, bare, url }
    }

    /// `git --git-dir <bare> args…`.
    pub fn git(&self, args: &[&str]) -> String {
        let mut all = vec!["--git-dir", self.bare.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        git(self.dir.path(), &all)
    }

    /// Commits on `main`.
    pub fn commits(&self) -> usize {
        self.git(&["rev-list", "--count", "main"])
            .trim()
            .parse()
            .expect("a count")
    }

    /// `git show main:<path>`.
    pub fn show(&self, path: &str) -> String {
        self.git(&["show", &format!("main:{path}")])
    }

    /// Waits until `main` has at least `n` commits; how long it took, or `None`.
    pub async fn wait_for_commits(&self, n: usize, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.commits() >= n {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

/// `git args…` in `dir`, panicking with its message on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("git runs (apt-get install -y git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deployer for `fleet` with its own clone in `fleet`'s temp dir under `cache`.
pub fn deployer(fleet: &Fleet, cache: &str) -> shipflow_kit::git::GitOpsDeployer {
    shipflow_kit::git::GitOpsDeployer::builder(&fleet.url)
        .cache_dir(fleet.dir.path().join(cache))
        .message("automation: {apps}")
        .build()
}

/// `app` kept at the highest release `>=1.0.0` of `repository`, in its deployment.
pub fn semver_binding(app: &str, repository: &str) -> shipflow_kit::automation::PolicyBinding {
    let policy = shipflow_kit::oci::ImagePolicy::new(
        app,
        repository,
        shipflow_kit::oci::PolicyRule::Semver {
            range: ">=1.0.0".into(),
        },
    )
    .expect("policy");
    shipflow_kit::automation::PolicyBinding::new(
        app,
        policy,
        vec![shipflow_kit::git::gitops::FileTarget::setter(
            deployment_path(app),
            format!("flux-system:{app}"),
        )],
    )
}
