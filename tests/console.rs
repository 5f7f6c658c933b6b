//! `examples/console/`, run as a service against real git repositories: webhooks
//! in the GitHub, Gitea and GitLab formats, polling, runs deploying into a GitOps
//! config repository, a kill mid-run, and a burst of deliveries.

#[path = "common/mod.rs"]
mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use serde_json::Value;
use sha2::Sha256;

const TOKEN: &str = "write-t0ken-Hq3ZpV8xK2";
const GITHUB: &str = "gh-s3cret-Lw7Rt2Nc9Yf4";
const GITEA: &str = "gitea-s3cret-Bx5Mq1Jd8Gs";
const GITLAB: &str = "gitlab-t0ken-Pv6Ez3Wk0Ua";

/// The example's binary, built with the workspace's tests' feature set.
fn example() -> PathBuf {
    common::example_binary("console")
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn write(dir: &Path, path: &str, content: &str) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

fn manifest(app: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app}\nspec:\n  template:\n    spec:\n      containers:\n        - name: {app}\n          image: localhost/console/{app}:none # {{\"$imagepolicy\": \"console:{app}\"}}\n"
    )
}

/// A monorepo pushed to a bare `origin.git`, and two config repositories
/// (staging's and production's) a GitOps controller would apply.
struct World {
    dir: tempfile::TempDir,
    work: PathBuf,
    origin: PathBuf,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let root = root.as_path();
        for fleet in ["fleet", "fleet-prod"] {
            let work = root.join(fleet);
            std::fs::create_dir_all(&work).expect("mkdir");
            git(&work, &["init", "-q", "-b", "main"]);
            for app in ["api", "web"] {
                write(&work, &format!("apps/{app}.yaml"), &manifest(app));
            }
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-q", "-m", "two workloads"]);
            git(
                root,
                &["clone", "-q", "--bare", fleet, &format!("{fleet}.git")],
            );
        }
        let work = root.join("monorepo");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        let world = Self {
            work: work.clone(),
            origin: root.join("origin.git"),
            dir,
        };
        world.write_workspace("");
        write(&work, "apps/api/main.py", "print('api v1')\n");
        write(&work, "apps/web/index.html", "<h1>v1</h1>\n");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "initial"]);
        git(root, &["clone", "-q", "--bare", "monorepo", "origin.git"]);
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                world.origin.to_str().expect("utf-8"),
            ],
        );
        world
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// `shipflow.toml`, with `web_hooks` added to web's table.
    fn write_workspace(&self, web_hooks: &str) {
        let text = format!(
            r#"[workspace]
registry = "localhost/console"
tag = "${{SHORT_SHA}}"

[workspace.gitops]
repository = "{fleet}"
cache_dir = "{cache}-staging"
message = "deploy {{apps}}"
author = {{ name = "console", email = "console@example.com" }}

[environments.staging]
branches = ["main"]

[environments.production]
tags = ["v*"]
gitops = {{ repository = "{prod}", cache_dir = "{cache}-production" }}

[apps.api]
build = {{ type = "native", layers = [{{ from = "apps/api", to = "/srv/app" }}] }}
deploy.gitops = {{ files = [{{ path = "apps/api.yaml", setter = "console:api" }}] }}

[apps.web]
build = {{ type = "native", layers = [{{ from = "apps/web", to = "/srv/www" }}] }}
deploy.gitops = {{ files = [{{ path = "apps/web.yaml", setter = "console:web" }}] }}
{web_hooks}
"#,
            fleet = self.path("fleet.git"),
            prod = self.path("fleet-prod.git"),
            cache = self.path("gitops-cache"),
        );
        write(&self.work, "shipflow.toml", &text);
    }

    /// Commits `content` into `path` and pushes main; returns the commit.
    fn push(&self, path: &str, content: &str) -> String {
        write(&self.work, path, content);
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "-m", &format!("change {path}")],
        );
        git(&self.work, &["push", "-q", "origin", "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn tag(&self, tag: &str) -> String {
        git(&self.work, &["tag", tag]);
        git(&self.work, &["push", "-q", "origin", tag]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// A file of a config repository's main branch.
    fn fleet_file(&self, fleet: &str, path: &str) -> String {
        git(
            self.dir.path(),
            &["--git-dir", fleet, "show", &format!("main:{path}")],
        )
    }

    /// The console's config; `poll` in seconds, `schedules` as TOML.
    fn config(
        &self,
        port: u16,
        poll: Option<u64>,
        read_token: Option<&str>,
        schedules: &str,
    ) -> PathBuf {
        let poll = poll.map_or(String::new(), |s| format!("poll_seconds = {s}\n"));
        let read = read_token.map_or(String::new(), |t| format!("read_token = \"{t}\"\n"));
        let text = format!(
            r#"listen = "127.0.0.1:{port}"
database = "console.db"
state_dir = "state"
max_body_bytes = 65536
shutdown_grace_seconds = 20

[repository]
url = "{origin}"
{poll}
[auth]
token = "{TOKEN}"
{read}
[webhooks]
github = "{GITHUB}"
gitea = "{GITEA}"
gitlab = "{GITLAB}"

[registry]
store = "store"

{schedules}
"#,
            origin = self.origin.display(),
        );
        let path = self.dir.path().join("console.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The console running, in its own process group, its output in a file.
struct Console {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Console {
    fn start(world: &World, poll: Option<u64>) -> Self {
        Self::start_with(world, poll, None, "")
    }

    fn start_with(
        world: &World,
        poll: Option<u64>,
        read_token: Option<&str>,
        schedules: &str,
    ) -> Self {
        let port = free_port();
        let config = world.config(port, poll, read_token, schedules);
        let log = world.dir.path().join(format!("console-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(example())
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("the console starts");
        let console = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the console never listened:\n{}",
                console.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        console
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One HTTP/1.1 request to the console; the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        http(self.port, method, path, headers, body)
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, &[], b"");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Delivers a webhook; the status and the JSON answer.
    fn deliver(&self, provider: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let (status, text) =
            self.request("POST", &format!("/hooks/{provider}"), &all, body.as_bytes());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits until run `id` ends; returns it with its report.
    fn wait_run(&self, id: i64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let run = self.get_json(&format!("/api/runs/{id}"));
            let status = run["run"]["status"].as_str().unwrap_or_default().to_owned();
            if !["queued", "running"].contains(&status.as_str()) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} still {status}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, signal: &str) {
        let group = format!("-{}", self.child.id());
        let ok = Command::new("kill")
            .args([signal, "--", &group])
            .status()
            .expect("kill runs");
        assert!(ok.success());
    }

    /// SIGTERM, and the exit status within `within`.
    fn stop(mut self, within: Duration) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the console's log:\n{}", self.output());
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request to a loopback port; the status and the body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send");
    // The server may answer (413) before reading a large body.
    let _ = stream.write_all(body);
    // Read the head, then Content-Length bytes (a kept-alive peer never closes),
    // else to the end.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let read = |stream: &mut TcpStream, buf: &mut [u8]| loop {
        match stream.read(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{method} {path}: reading the answer: {e}"),
        }
    };
    let (head_len, length) = loop {
        let n = read(&mut stream, &mut buf);
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            break (end + 4, length);
        }
        if n == 0 {
            break (raw.len(), Some(0));
        }
    };
    match length {
        Some(length) => {
            while raw.len() < head_len + length {
                let n = read(&mut stream, &mut buf);
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            let _ = stream.read_to_end(&mut raw);
        }
    }
    let status = String::from_utf8_lossy(&raw[..head_len.min(raw.len())])
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = String::from_utf8_lossy(&raw[head_len.min(raw.len())..]).into_owned();
    (status, body)
}

fn fixture(name: &str, reference: &str, after: &str, kind: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/console")
        .join(name);
    std::fs::read_to_string(path)
        .expect("fixture")
        .replace("{REF}", reference)
        .replace("{AFTER}", after)
        .replace("{KIND}", kind)
}

fn hmac_hex(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A GitHub push delivery, signed with `secret`.
fn github_push(console: &Console, reference: &str, sha: &str, secret: &str) -> (u16, Value) {
    let body = fixture("github-push.json", reference, sha, "");
    let signature = format!("sha256={}", hmac_hex(secret, &body));
    console.deliver(
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    )
}

/// The digest of the image line of a manifest.
fn digest_in(manifest: &str) -> String {
    let at = manifest.find("@sha256:").expect("a digest-pinned image");
    manifest[at + 1..at + 1 + 71].to_owned()
}

#[test]
fn a_push_runs_through_a_webhook_and_a_poll_and_the_page_and_api_show_the_digest() {
    let world = World::new();
    let console = Console::start(&world, None);
    let sha = world.push("apps/web/index.html", "<h1>v2</h1>\n");

    let (status, queued) = github_push(&console, "refs/heads/main", &sha, GITHUB);
    assert_eq!(status, 200, "{queued}");
    assert_eq!(queued["environment"], "staging");
    let id = queued["run"].as_i64().expect("a run id");
    let run = console.wait_run(id, Duration::from_secs(120));
    assert_eq!(
        run["run"]["status"],
        "succeeded",
        "{run}\n{}",
        console.output()
    );
    assert_eq!(run["run"]["trigger"], "github webhook");
    let shipped: Vec<&str> = run["report"]["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .filter(|a| a["outcome"]["status"] == "deployed")
        .filter_map(|a| a["app"].as_str())
        .collect();
    assert_eq!(
        shipped,
        ["web"],
        "only web changed since the previous commit"
    );

    let digest = digest_in(&world.fleet_file("fleet.git", "apps/web.yaml"));
    let status = console.get_json("/api/status");
    let web = status["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["app"] == "web" && d["environment"] == "staging")
        .cloned()
        .expect("web runs in staging");
    assert!(
        web["image"].as_str().expect("image").ends_with(&digest),
        "{web}"
    );
    assert_eq!(web["sha"], sha.as_str());
    let (code, page) = console.request("GET", "/", &[], b"");
    assert_eq!(code, 200);
    assert!(
        page.contains(&digest) && page.contains("succeeded"),
        "{page}"
    );
    let log = console.get_json(&format!("/api/runs/{id}/log"));
    assert!(
        log["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .any(|l| l["line"]
                .as_str()
                .is_some_and(|t| t.starts_with("web deploy: "))),
        "{log}"
    );
    let (_, run_page) = console.request("GET", &format!("/runs/{id}"), &[], b"");
    assert!(
        run_page.contains(&digest) && run_page.contains("apps/web/index.html changed (own path)"),
        "{run_page}"
    );
    let events = console.get_json(&format!("/api/runs/{id}/events"));
    assert!(!events["events"].as_array().expect("events").is_empty());

    // A second change, then a rollback (which needs the token) puts the first back.
    let second = world.push("apps/web/index.html", "<h1>v3</h1>\n");
    let (_, queued) = github_push(&console, "refs/heads/main", &second, GITHUB);
    let run = console.wait_run(
        queued["run"].as_i64().expect("id"),
        Duration::from_secs(120),
    );
    assert_eq!(run["run"]["status"], "succeeded", "{run}");
    let newer = digest_in(&world.fleet_file("fleet.git", "apps/web.yaml"));
    assert_ne!(newer, digest);
    // The deployer's revisions of web in staging: the newer runs, the first is kept.
    let revisions = console.get_json("/api/apps/web/revisions?environment=staging");
    let revisions = revisions["revisions"]
        .as_array()
        .expect("revisions")
        .clone();
    let current = revisions
        .iter()
        .find(|r| r["current"] == true)
        .expect("a current revision");
    assert!(
        current["image"]
            .as_str()
            .is_some_and(|i| i.ends_with(&newer)),
        "{revisions:?}"
    );
    let first = revisions
        .iter()
        .find(|r| r["image"].as_str().is_some_and(|i| i.ends_with(&digest)))
        .expect("the first deploy is a revision");
    let body = format!(
        r#"{{"environment":"staging","revision":{}}}"#,
        first["number"]
    );
    let json = [("Content-Type", "application/json")];
    let (code, _) = console.request("POST", "/api/apps/web/rollback", &json, body.as_bytes());
    assert_eq!(code, 401);
    let bearer = format!("Bearer {TOKEN}");
    let authed = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    let outside = br#"{"environment":"../../etc"}"#;
    let (code, _) = console.request("POST", "/api/apps/web/rollback", &authed, outside);
    assert_eq!(code, 404, "only an environment of shipflow.toml");
    let (code, answer) =
        console.request("POST", "/api/apps/web/rollback", &authed, body.as_bytes());
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        digest_in(&world.fleet_file("fleet.git", "apps/web.yaml")),
        digest
    );
    let (_, page) = console.request("GET", "/apps/web", &[], b"");
    assert!(
        page.contains("rollback") && page.contains(&newer) && page.contains("Roll back to "),
        "{page}"
    );

    // SIGTERM: a clean exit; then polling finds a tag, which ships to production.
    let status = console.stop(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let console = Console::start(&world, Some(1));
    world.push("apps/api/main.py", "print('api v2')\n");
    let tagged = world.tag("v1.0.0");
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let runs = console.get_json("/api/runs");
        let found = runs["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .find(|r| r["trigger"] == "poll" && r["environment"] == "production")
            .cloned();
        if let Some(run) = found {
            break console.wait_run(run["id"].as_i64().expect("id"), Duration::from_secs(120));
        }
        assert!(
            Instant::now() < deadline,
            "no poll run:\n{}",
            console.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        run["run"]["status"],
        "succeeded",
        "{run}\n{}",
        console.output()
    );
    assert_eq!(run["run"]["sha"], tagged.as_str());
    let digest = digest_in(&world.fleet_file("fleet-prod.git", "apps/api.yaml"));
    let (_, page) = console.request("GET", "/", &[], b"");
    assert!(page.contains(&digest), "{page}");
    let output = console.output();
    for secret in [TOKEN, GITHUB, GITEA, GITLAB] {
        assert!(!output.contains(secret), "a secret in the log");
    }
    // The database and its write-ahead log, which holds what is not checkpointed yet.
    let mut database = std::fs::read(world.dir.path().join("console.db")).expect("the database");
    if let Ok(wal) = std::fs::read(world.dir.path().join("console.db-wal")) {
        database.extend(wal);
    }
    for secret in [TOKEN, GITHUB, GITEA, GITLAB] {
        assert!(
            !String::from_utf8_lossy(&database).contains(secret),
            "a secret in the database"
        );
    }
}

#[test]
fn each_provider_needs_its_signature_and_refused_deliveries_run_nothing() {
    let world = World::new();
    let console = Console::start(&world, None);
    let sha = world.push("apps/web/index.html", "<h1>v2</h1>\n");
    let runs = || {
        console.get_json("/api/runs")["runs"]
            .as_array()
            .expect("runs")
            .len()
    };

    // Refused: a wrong secret, no signature, and an unconfigured provider path.
    let (code, _) = github_push(&console, "refs/heads/main", &sha, "wrong");
    assert_eq!(code, 401);
    let body = fixture("github-push.json", "refs/heads/main", &sha, "");
    assert_eq!(
        console
            .deliver("github", &[("X-GitHub-Event", "push")], &body)
            .0,
        401
    );
    let gitea = fixture("gitea-push.json", "refs/heads/main", &sha, "");
    let bad = hmac_hex("wrong", &gitea);
    assert_eq!(
        console
            .deliver(
                "gitea",
                &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &bad)],
                &gitea
            )
            .0,
        401
    );
    assert_eq!(
        console
            .deliver("gitea", &[("X-Gitea-Event", "push")], &gitea)
            .0,
        401
    );
    let gitlab = fixture("gitlab-push.json", "refs/heads/main", &sha, "push");
    assert_eq!(
        console
            .deliver(
                "gitlab",
                &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "wrong")],
                &gitlab
            )
            .0,
        401
    );
    assert_eq!(
        console
            .deliver("gitlab", &[("X-Gitlab-Event", "Push Hook")], &gitlab)
            .0,
        401
    );
    // A signed body changed on the way.
    let signature = format!("sha256={}", hmac_hex(GITHUB, &body));
    let tampered = body.replace("refs/heads/main", "refs/heads/evil");
    assert_eq!(
        console
            .deliver(
                "github",
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-Hub-Signature-256", &signature)
                ],
                &tampered
            )
            .0,
        401
    );
    assert_eq!(runs(), 0, "a refused delivery runs nothing");
    assert!(
        console.output().contains("webhook refused"),
        "{}",
        console.output()
    );

    // Too large: 413 before any signature check.
    let big = "x".repeat(70_000);
    let (code, _) = console.request(
        "POST",
        "/hooks/github",
        &[("X-GitHub-Event", "push")],
        big.as_bytes(),
    );
    assert_eq!(code, 413);

    // Signed, but not a push payload: 400.
    let junk = r#"{"ref":"refs/heads/main","after":"not-a-commit"}"#;
    let junk_signature = format!("sha256={}", hmac_hex(GITHUB, junk));
    let headers = [
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", junk_signature.as_str()),
    ];
    assert_eq!(console.deliver("github", &headers, junk).0, 400);

    // A ping is acknowledged and ignored.
    let ping = r#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let ping_signature = format!("sha256={}", hmac_hex(GITHUB, ping));
    let (code, answer) = console.deliver(
        "github",
        &[
            ("X-GitHub-Event", "ping"),
            ("X-Hub-Signature-256", &ping_signature),
        ],
        ping,
    );
    assert_eq!((code, answer["ignored"].as_str()), (200, Some("ping")));
    assert_eq!(runs(), 0);

    // Accepted: each provider's signed push; GitLab's tag push goes to production.
    let sign = hmac_hex(GITEA, &gitea);
    let (code, gitea_run) = console.deliver(
        "gitea",
        &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &sign)],
        &gitea,
    );
    assert_eq!(
        (code, gitea_run["environment"].as_str()),
        (200, Some("staging")),
        "{gitea_run}"
    );
    let (code, gitlab_run) = console.deliver(
        "gitlab",
        &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", GITLAB)],
        &gitlab,
    );
    assert_eq!(
        (code, gitlab_run["environment"].as_str()),
        (200, Some("staging")),
        "{gitlab_run}"
    );
    let tagged = world.tag("v2.0.0");
    let tag_push = fixture("gitlab-push.json", "refs/tags/v2.0.0", &tagged, "tag_push");
    let (code, tag_run) = console.deliver(
        "gitlab",
        &[
            ("X-Gitlab-Event", "Tag Push Hook"),
            ("X-Gitlab-Token", GITLAB),
        ],
        &tag_push,
    );
    assert_eq!(
        (code, tag_run["environment"].as_str()),
        (200, Some("production")),
        "{tag_run}"
    );
    let (code, github_run) = github_push(&console, "refs/heads/main", &sha, GITHUB);
    assert_eq!(
        (code, github_run["environment"].as_str()),
        (200, Some("staging")),
        "{github_run}"
    );
    // A branch no environment takes is recorded as skipped.
    let (code, other) = github_push(&console, "refs/heads/feature", &sha, GITHUB);
    assert_eq!(code, 200);
    assert_eq!(
        console.get_json(&format!("/api/runs/{}", other["run"]))["run"]["status"],
        "skipped"
    );
    for queued in [&github_run, &tag_run] {
        let run = console.wait_run(
            queued["run"].as_i64().expect("id"),
            Duration::from_secs(120),
        );
        assert!(
            ["succeeded", "nothing_to_do"]
                .contains(&run["run"]["status"].as_str().unwrap_or_default()),
            "{run}\n{}",
            console.output()
        );
    }
}

#[test]
fn a_run_killed_midway_shows_interrupted_and_the_next_trigger_runs() {
    let world = World::new();
    let mut console = Console::start(&world, None);
    // A hook that holds web's build long enough to kill the service during it.
    world.write_workspace("hooks = { pre_build = \"sleep 30\" }");
    let slow = world.push("apps/web/index.html", "<h1>slow</h1>\n");
    let (code, queued) = github_push(&console, "refs/heads/main", &slow, GITHUB);
    assert_eq!(code, 200, "{queued}");
    let id = queued["run"].as_i64().expect("id");
    wait_for_web(&console, id);
    assert_eq!(
        console.get_json(&format!("/api/runs/{id}"))["run"]["status"],
        "running"
    );
    console.signal("-KILL");
    let _ = console.child.wait();
    drop(console);

    let console = Console::start(&world, None);
    let run = console.get_json(&format!("/api/runs/{id}"));
    assert_eq!(run["run"]["status"], "interrupted", "{run}");
    world.write_workspace("");
    let next = world.push("apps/web/index.html", "<h1>v3</h1>\n");
    let (code, queued) = github_push(&console, "refs/heads/main", &next, GITHUB);
    assert_eq!(code, 200);
    let run = console.wait_run(
        queued["run"].as_i64().expect("id"),
        Duration::from_secs(120),
    );
    assert_eq!(
        run["run"]["status"],
        "succeeded",
        "{run}\n{}",
        console.output()
    );
    let digest = digest_in(&world.fleet_file("fleet.git", "apps/web.yaml"));
    assert!(console.request("GET", "/", &[], b"").1.contains(&digest));

    // SIGTERM during a run: the pipeline is cancelled, the run says so, the
    // service exits within its grace period.
    world.write_workspace("hooks = { pre_build = \"sleep 30\" }");
    let slow = world.push("apps/web/index.html", "<h1>slow again</h1>\n");
    let (_, queued) = github_push(&console, "refs/heads/main", &slow, GITHUB);
    let id = queued["run"].as_i64().expect("id");
    wait_for_web(&console, id);
    let stopping = Instant::now();
    let status = console.stop(Duration::from_secs(25));
    println!("stopped {:?} after SIGTERM", stopping.elapsed());
    assert!(status.success(), "{status:?}");
    let console = Console::start(&world, None);
    let run = console.get_json(&format!("/api/runs/{id}"));
    assert_eq!(run["run"]["status"], "cancelled", "{run}");
}

/// Waits until run `id` has planned and web's pre-build hook sleeps.
#[test]
fn an_empty_or_weak_secret_stops_the_console_before_it_listens() {
    let world = World::new();
    let good = world.config(free_port(), None, None, "");
    let text = std::fs::read_to_string(&good).expect("config");
    for (from, to, complaint) in [
        (
            format!("token = \"{TOKEN}\""),
            "token = \"\"".to_owned(),
            "auth.token",
        ),
        (
            format!("gitlab = \"{GITLAB}\""),
            "gitlab = \"\"".to_owned(),
            "webhooks.gitlab",
        ),
        (
            format!("github = \"{GITHUB}\""),
            "github = \"short\"".to_owned(),
            "webhooks.github",
        ),
        (
            format!("token = \"{TOKEN}\""),
            format!("token = \"{TOKEN}\"\nread_token = \"{TOKEN}\""),
            "read_token",
        ),
    ] {
        let path = world.dir.path().join("weak.toml");
        assert!(text.contains(&from));
        std::fs::write(&path, text.replace(&from, &to)).expect("write");
        // Its output in a file, and killed if it starts anyway: a test that fails, not hangs.
        let log = world.dir.path().join("weak.log");
        let mut child = Command::new(example())
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .process_group(0)
            .spawn()
            .expect("the console runs");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{to}: started\n{stderr}"
        );
        assert!(stderr.contains(complaint), "{to}: {stderr}");
    }
}

#[test]
fn a_request_that_never_ends_holds_shutdown_for_the_grace_period_only() {
    let world = World::new();
    let console = Console::start(&world, None);
    // A webhook whose body never comes: the request stays open.
    let mut slow = TcpStream::connect(("127.0.0.1", console.port)).expect("connect");
    slow.write_all(
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    // The configured grace is 20 s; the server's wait is bounded by it.
    let status = console.stop(Duration::from_secs(40));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
}

#[test]
fn a_late_delivery_of_an_older_commit_does_not_supersede_the_queued_newer_one() {
    let world = World::new();
    let console = Console::start(&world, None);
    // A run that holds the environment while the others queue.
    world.write_workspace("hooks = { pre_build = \"sleep 8\" }");
    let slow = world.push("apps/web/index.html", "<h1>slow</h1>\n");
    let (_, queued) = github_push(&console, "refs/heads/main", &slow, GITHUB);
    let running = queued["run"].as_i64().expect("id");
    wait_for_web(&console, running);
    world.write_workspace("");
    let older = world.push("apps/web/index.html", "<h1>older</h1>\n");
    let newer = world.push("apps/web/index.html", "<h1>newer</h1>\n");

    let (code, queued) = github_push(&console, "refs/heads/main", &newer, GITHUB);
    assert_eq!(code, 200, "{queued}");
    let kept = queued["run"].as_i64().expect("id");
    // Delivered late: older than the queued commit, so recorded skipped.
    let (code, late) = github_push(&console, "refs/heads/main", &older, GITHUB);
    assert_eq!(code, 200, "{late}");
    assert_eq!(late["superseded"], serde_json::json!([]), "{late}");
    let late = console.get_json(&format!("/api/runs/{}", late["run"]));
    assert_eq!(late["run"]["status"], "skipped", "{late}");
    assert!(
        late["run"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("older")),
        "{late}"
    );
    let run = console.wait_run(kept, Duration::from_secs(120));
    assert_eq!(run["run"]["status"], "succeeded", "{run}");
    assert_eq!(run["run"]["sha"], newer.as_str());
}

/// A signed GitHub push delivery carrying a delivery id.
fn github_push_with_id(console: &Console, sha: &str, delivery: &str) -> (u16, Value) {
    let body = fixture("github-push.json", "refs/heads/main", sha, "");
    let signature = format!("sha256={}", hmac_hex(GITHUB, &body));
    console.deliver(
        "github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    )
}

#[test]
fn a_redelivery_runs_nothing_and_a_replayed_older_commit_is_skipped() {
    let world = World::new();
    let console = Console::start(&world, None);
    let old = world.push("apps/web/index.html", "<h1>old</h1>\n");
    let (code, queued) = github_push_with_id(&console, &old, "delivery-1");
    assert_eq!(code, 200, "{queued}");
    let first = queued["run"].as_i64().expect("a run id");
    let run = console.wait_run(first, Duration::from_secs(120));
    assert_eq!(run["run"]["status"], "succeeded", "{run}");

    // The same delivery again: acknowledged, nothing queued.
    let (code, answer) = github_push_with_id(&console, &old, "delivery-1");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["ignored"], "duplicate delivery", "{answer}");
    assert!(answer.get("run").is_none(), "{answer}");

    let new = world.push("apps/web/index.html", "<h1>new</h1>\n");
    let (_, queued) = github_push_with_id(&console, &new, "delivery-2");
    let second = queued["run"].as_i64().expect("a run id");
    let run = console.wait_run(second, Duration::from_secs(120));
    assert_eq!(run["run"]["status"], "succeeded", "{run}");

    // The old push replayed under a fresh id: its commit is an ancestor of the
    // environment's last good one, so it is recorded skipped and deploys nothing.
    let (code, queued) = github_push_with_id(&console, &old, "delivery-3");
    assert_eq!(code, 200, "{queued}");
    let replay = queued["run"].as_i64().expect("a run id");
    let run = console.wait_run(replay, Duration::from_secs(120));
    assert_eq!(run["run"]["status"], "skipped", "{run}");
    let reason = run["run"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("ancestor"), "{run}");
    assert!(run["report"].is_null(), "{run}");
}

fn wait_for_web(console: &Console, id: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = console.get_json(&format!("/api/runs/{id}/log"));
        let planned = log["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .any(|l| l["line"].as_str().is_some_and(|t| t.starts_with("web ")));
        if planned {
            std::thread::sleep(Duration::from_secs(2));
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the build never started:\n{}",
            console.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn reading_can_need_a_token_manual_runs_need_the_write_token_and_cron_runs() {
    let world = World::new();
    let schedule = "[[schedules]]\ncron = \"*/2 * * * * *\"\nref = \"main\"\n";
    let console = Console::start_with(&world, None, Some("read-t0ken-Cn4Hy7Qs2Df"), schedule);
    let read = "Bearer read-t0ken-Cn4Hy7Qs2Df".to_owned();
    let basic = format!("Basic {}", base64_of("anyone:read-t0ken-Cn4Hy7Qs2Df"));
    let write = format!("Bearer {TOKEN}");

    let (code, _) = console.request("GET", "/api/runs", &[], b"");
    assert_eq!(code, 401);
    let (code, _) = console.request("GET", "/", &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(code, 401);
    for auth in [&read, &basic, &write] {
        let (code, body) = console.request("GET", "/", &[("Authorization", auth)], b"");
        assert_eq!(code, 200, "{body}");
    }

    let body = br#"{"ref":"main"}"#;
    let with = |auth: &str| {
        [
            ("Content-Type", "application/json".to_owned()),
            ("Authorization", auth.to_owned()),
        ]
    };
    let post = |auth: &str| {
        let headers = with(auth);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        console.request("POST", "/api/runs", &headers, body)
    };
    assert_eq!(post(&read).0, 401, "the read token does not run anything");
    let (code, answer) = post(&write);
    assert_eq!(code, 200, "{answer}");
    let queued: Value = serde_json::from_str(&answer).expect("JSON");
    let id = queued["run"].as_i64().expect("id");
    let reads = [("Authorization", read.as_str())];
    let deadline = Instant::now() + Duration::from_secs(120);
    let run = loop {
        let (_, text) = console.request("GET", &format!("/api/runs/{id}"), &reads, b"");
        let run: Value = serde_json::from_str(&text).expect("JSON");
        if !["queued", "running"].contains(&run["run"]["status"].as_str().unwrap_or_default()) {
            break run;
        }
        assert!(Instant::now() < deadline, "{run}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        ["succeeded", "nothing_to_do", "superseded"]
            .contains(&run["run"]["status"].as_str().unwrap_or_default()),
        "{run}\n{}",
        console.output()
    );
    assert_eq!(run["run"]["trigger"], "manual");

    // The stream of a finished run: its stored lines, then its end.
    let (code, stream) = console.request("GET", &format!("/api/runs/{id}/stream"), &reads, b"");
    assert_eq!(code, 200);
    assert!(
        stream.contains("event: line") && stream.contains("event: end"),
        "{stream}"
    );

    // The schedule fires every two seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, text) = console.request("GET", "/api/runs", &reads, b"");
        let runs: Value = serde_json::from_str(&text).expect("JSON");
        let cron = runs["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .any(|r| r["trigger"] == "cron" && r["environment"] == "staging");
        if cron {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no cron run:\n{}",
            console.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_hundred_deliveries_in_ten_seconds_are_accepted_and_coalesced_per_environment() {
    let world = World::new();
    let console = Console::start(&world, None);
    // Fifty commits, each changing web and tagged: every delivery names new work.
    let mut commits = Vec::new();
    for i in 0..50 {
        write(
            &world.work,
            "apps/web/index.html",
            &format!("<h1>v{i}</h1>\n"),
        );
        git(&world.work, &["commit", "-q", "-am", &format!("web v{i}")]);
        git(&world.work, &["tag", &format!("v1.0.{i}")]);
        commits.push(git(&world.work, &["rev-parse", "HEAD"]));
    }
    git(&world.work, &["push", "-q", "--tags", "origin", "main"]);
    let started = Instant::now();
    let mut timings = Vec::new();
    let mut ids: Vec<(String, i64)> = Vec::new();
    for i in 0..100u32 {
        // Ten bursts of ten, a second apart: all within 10 s.
        let at = Duration::from_millis(950 * u64::from(i / 10));
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        let n = (i / 2) as usize;
        let reference = if i % 2 == 0 {
            "refs/heads/main".to_owned()
        } else {
            format!("refs/tags/v1.0.{n}")
        };
        let sent = Instant::now();
        let (code, queued) = github_push(&console, &reference, &commits[n], GITHUB);
        timings.push(sent.elapsed());
        assert_eq!(code, 200, "delivery {i}: {queued}");
        ids.push((
            queued["environment"]
                .as_str()
                .expect("an environment")
                .to_owned(),
            queued["run"].as_i64().expect("id"),
        ));
    }
    assert!(
        started.elapsed() < Duration::from_secs(11),
        "took {:?}",
        started.elapsed()
    );
    timings.sort();
    let p95 = timings[94];
    println!(
        "100 webhook deliveries: p50 {:?}, p95 {:?}, max {:?}",
        timings[49], p95, timings[99]
    );
    // The issue's target is 50 ms; this guards against regressions with room for
    // a debug build on a shared 2-core machine (7-15 ms measured with every
    // console test at once, 72 ms once with other builds running too).
    assert!(p95 < Duration::from_millis(200), "p95 {p95:?}");

    // Every run ends; per environment, the last delivery's run is the one that ends
    // the queue, and most were superseded while another ran.
    for environment in ["staging", "production"] {
        let mine: Vec<i64> = ids
            .iter()
            .filter(|(e, _)| e == environment)
            .map(|(_, id)| *id)
            .collect();
        let last = *mine.last().expect("deliveries");
        let run = console.wait_run(last, Duration::from_secs(120));
        assert!(
            ["succeeded", "nothing_to_do"]
                .contains(&run["run"]["status"].as_str().unwrap_or_default()),
            "{run}"
        );
        let statuses: Vec<String> = mine
            .iter()
            .map(|id| {
                console.get_json(&format!("/api/runs/{id}"))["run"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        let ran = statuses.iter().filter(|s| *s != "superseded").count();
        println!(
            "{environment}: {} deliveries, {ran} runs, {} superseded",
            mine.len(),
            mine.len() - ran
        );
        assert!(ran < mine.len() / 2, "{environment}: {statuses:?}");
        assert!(
            statuses
                .iter()
                .all(|s| ["succeeded", "nothing_to_do", "superseded"].contains(&s.as_str())),
            "{statuses:?}"
        );
    }
    // One run per environment at a time: their spans do not overlap.
    let runs = console.get_json("/api/runs?limit=500");
    for environment in ["staging", "production"] {
        let mut spans: Vec<(i64, i64)> = runs["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .filter(|r| r["environment"] == environment && r["started_at"].is_i64())
            .map(|r| {
                (
                    r["started_at"].as_i64().unwrap_or(0),
                    r["finished_at"].as_i64().unwrap_or(i64::MAX),
                )
            })
            .collect();
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[1].0 >= pair[0].1,
                "{environment}: overlapping runs {pair:?}"
            );
        }
    }
}

/// Headless Chromium through chromedriver's WebDriver API.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver runs (apt-get install -y chromium chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("tempdir");
        let capabilities = serde_json::json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--no-first-run", "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let mut browser = Self {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["sessionId"].as_str().expect("a session").to_owned();
        browser
    }

    /// A WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let (code, text) = http(self.port, method, path, &headers, body.as_bytes());
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(code, 200, "{method} {path}: {text}");
        answer["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    fn script(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.session(
            "POST",
            "/element",
            Some(serde_json::json!({ "using": "css selector", "value": css })),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element")
            .to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session(
            "POST",
            &format!("/element/{id}/click"),
            Some(serde_json::json!({})),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session(
            "POST",
            &format!("/element/{id}/value"),
            Some(serde_json::json!({ "text": text })),
        );
    }

    /// Waits until `script` returns a truthy value; returns it.
    fn wait_for(&self, script: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.script(script);
            if !(value.is_null() || value == false || value == "") {
                return value;
            }
            assert!(Instant::now() < deadline, "never true: {script}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                self.port,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                b"",
            );
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

#[test]
fn in_chromium_the_page_loads_the_log_follows_live_and_rollback_asks_first() {
    let world = World::new();
    let console = Console::start(&world, None);
    let mut digests = Vec::new();
    for version in ["v2", "v3"] {
        let sha = world.push("apps/web/index.html", &format!("<h1>{version}</h1>\n"));
        let (_, queued) = github_push(&console, "refs/heads/main", &sha, GITHUB);
        let run = console.wait_run(
            queued["run"].as_i64().expect("id"),
            Duration::from_secs(120),
        );
        assert_eq!(run["run"]["status"], "succeeded", "{run}");
        digests.push(digest_in(&world.fleet_file("fleet.git", "apps/web.yaml")));
    }
    let base = format!("http://127.0.0.1:{}", console.port);
    let browser = Browser::start();

    // Load: the matrix shows what runs in staging.
    browser.open(&format!("{base}/"));
    let matrix = browser.script("return document.getElementById('matrix').textContent");
    assert!(
        matrix.as_str().is_some_and(|t| t.contains(&digests[1])),
        "{matrix}"
    );

    // Live: a slow run's page fills in while it runs, without reloading.
    world.write_workspace("hooks = { pre_build = \"sleep 3\" }");
    let slow = world.push("apps/web/index.html", "<h1>v4</h1>\n");
    let (_, queued) = github_push(&console, "refs/heads/main", &slow, GITHUB);
    let id = queued["run"].as_i64().expect("id");
    browser.open(&format!("{base}/runs/{id}"));
    browser.script("window.loadedOnce = true; return true");
    browser.wait_for(
        "return document.getElementById('log').textContent.includes('web ') && !document.getElementById('log').dataset.ended",
        Duration::from_secs(60),
    );
    let ended = browser.wait_for(
        "return document.getElementById('log').dataset.ended",
        Duration::from_secs(120),
    );
    assert_eq!(ended, "succeeded");
    assert_eq!(
        browser.script("return window.loadedOnce === true"),
        true,
        "the page was not reloaded"
    );
    let progress = browser.script("return document.getElementById('apps').textContent");
    assert!(
        progress.as_str().is_some_and(|t| t.contains("web")),
        "{progress}"
    );
    let current = digest_in(&world.fleet_file("fleet.git", "apps/web.yaml"));

    // Rollback: the button asks first; dismissed, nothing happens; accepted, it rolls back.
    browser.open(&format!("{base}/apps/web"));
    browser.type_into("#token", TOKEN);
    browser.click("button.rollback[data-env='staging']");
    let question = browser.session("GET", "/alert/text", None);
    assert!(
        question
            .as_str()
            .is_some_and(|q| q.contains("Roll web back") && q.contains("staging")),
        "{question}"
    );
    browser.session("POST", "/alert/dismiss", Some(serde_json::json!({})));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        digest_in(&world.fleet_file("fleet.git", "apps/web.yaml")),
        current,
        "dismissed: no rollback"
    );
    browser.click("button.rollback[data-env='staging']");
    browser.session("POST", "/alert/accept", Some(serde_json::json!({})));
    let result = browser.wait_for(
        "return document.getElementById('result').textContent",
        Duration::from_secs(60),
    );
    assert!(
        result.as_str().is_some_and(|r| r.contains(&digests[1])),
        "{result}"
    );
    assert_eq!(
        digest_in(&world.fleet_file("fleet.git", "apps/web.yaml")),
        digests[1]
    );
}
