//! `GitOpsDeployer` against real bare git repositories, over `file://` and through
//! `git daemon` on loopback, cross-checked with the git command.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shipflow_core::testing::{FakeBuilder, MemoryRegistry, ScriptedDetector};
use shipflow_core::{
    App, Backoff, Context, DeployMeta, Deployer, EventKind, EventSink, ImageRef, Outcome, Pipeline,
    RollbackTarget, Selection, Workspace,
};
use shipflow_git::gitops::{
    GitCli, GitOpsDeployer, GitOpsError, PushOutcome, Transport, TransportError, schema,
};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .expect("git runs (install git)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

const API: &str = r#"# The api, as Flux's image automation writes it.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api # keep this comment
spec:
  template:
    spec:
      containers:
        - name: api
          image: "localhost:5000/acme/api:v1@sha256:0000000000000000000000000000000000000000000000000000000000000000" # {"$imagepolicy": "flux-system:api"}
          args: ['--port', "8080"]
---
apiVersion: v1
kind: ConfigMap
data:
  note: untouched
"#;

const WORKER: &str = r#"worker:
  image:
    repository: localhost:5000/acme/worker # {"$imagepolicy": "flux-system:worker:name"}
    tag: v1 # {"$imagepolicy": "flux-system:worker:tag"}
    digest: 'sha256:0000000000000000000000000000000000000000000000000000000000000000'   # {"$imagepolicy": "flux-system:worker:digest"}
  pullPolicy: IfNotPresent
"#;

const KUSTOMIZATION: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../deploy\nimages:\n- name: web\n  newName: localhost:5000/acme/web   # pinned by shipflow\n  newTag: v1\n- name: other\n  newTag: keep\n";

const VALUES: &str = "replicaCount: 2\nimage:\n  repository: localhost:5000/acme/search\n  tag: \"v1\"\nsidecar:\n  tag: \"v1\"\n";

const TOML: &str = r#"
[workspace]
registry = "localhost:5000/acme"
[apps.api]
deploy.gitops = { files = [{ path = "deploy/api.yaml", setter = "flux-system:api" }] }
[apps.worker]
deploy.gitops = { files = [{ path = "deploy/worker.yaml", setter = "flux-system:worker" }] }
[apps.web]
deploy.gitops = { files = [{ path = "clusters/prod/kustomization.yaml", kustomize = "web" }] }
[apps.search]
deploy.gitops = { files = [{ path = "charts/search/values.yaml", helm = "image.tag", part = "tag" }] }
"#;

/// A bare config repository with the fixtures on `main`, and a scratch directory.
struct Fleet {
    dir: tempfile::TempDir,
    bare: PathBuf,
    url: String,
}

impl Fleet {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        for (path, text) in files {
            let file = work.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, text).expect("write");
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

    fn standard() -> Self {
        Self::new(&[
            ("deploy/api.yaml", API),
            ("deploy/worker.yaml", WORKER),
            ("clusters/prod/kustomization.yaml", KUSTOMIZATION),
            ("charts/search/values.yaml", VALUES),
            ("README.md", "fleet\n"),
        ])
    }

    fn deployer(&self, cache: &str) -> GitOpsDeployer {
        GitOpsDeployer::builder(&self.url)
            .cache_dir(self.dir.path().join(cache))
            .build()
    }

    fn git(&self, args: &[&str]) -> String {
        let mut all = vec!["--git-dir", self.bare.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        git(self.dir.path(), &all)
    }

    fn show(&self, rev: &str, path: &str) -> String {
        self.git(&["show", &format!("{rev}:{path}")])
    }

    fn commits(&self) -> usize {
        self.git(&["rev-list", "--count", "main"])
            .trim()
            .parse()
            .expect("a count")
    }
}

fn workspace() -> Workspace {
    Workspace::loader()
        .schema(schema())
        .from_toml(TOML, "/nonexistent-root")
        .expect("workspace loads")
}

fn app<'a>(ws: &'a Workspace, name: &str) -> &'a App {
    ws.app(name).expect("app")
}

fn image(app: &str, tag: &str, n: u32) -> ImageRef {
    format!("localhost:5000/acme/{app}:{tag}@{}", digest(n))
        .parse()
        .expect("reference")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_format_changes_only_the_image_bytes_and_git_shows_one_commit() {
    let fleet = Fleet::standard();
    let ws = workspace();
    let deployer = fleet.deployer("cache");
    let ctx = Context::new();
    let meta = DeployMeta::default();
    for name in ["api", "worker", "web", "search"] {
        let rollout = deployer
            .deploy(app(&ws, name), &image(name, "v2", 7), &meta, &ctx)
            .await
            .expect("deploys");
        assert!(rollout.changed, "{name} changed");
    }
    let old = digest(0);
    let new = digest(7);
    assert_eq!(
        fleet.show("main", "deploy/api.yaml"),
        API.replace(&format!("api:v1@{old}"), &format!("api:v2@{new}"))
    );
    assert_eq!(
        fleet.show("main", "deploy/worker.yaml"),
        WORKER.replace("tag: v1 #", "tag: v2 #").replace(&old, &new)
    );
    assert_eq!(
        fleet.show("main", "clusters/prod/kustomization.yaml"),
        KUSTOMIZATION.replace(
            "  newTag: v1\n",
            &format!("  newTag: v2\n  digest: {new}\n")
        )
    );
    assert_eq!(
        fleet.show("main", "charts/search/values.yaml"),
        VALUES.replacen("tag: \"v1\"", &format!("tag: \"v2@{new}\""), 1)
    );
    // Sequential deploys with nothing in flight: one commit each, by the configured author.
    assert_eq!(fleet.commits(), 5);
    let log = fleet.git(&["log", "--format=%an <%ae>|%s", "main"]);
    assert!(
        log.lines()
            .take(4)
            .all(|l| l.starts_with("shipflow <shipflow@localhost>|deploy ")),
        "{log}"
    );
    let stat = fleet.git(&["show", "--stat", "--format=%B", "main"]);
    assert!(
        stat.contains("- search: localhost:5000/acme/search:v1 -> "),
        "{stat}"
    );
    assert!(stat.contains("charts/search/values.yaml | 2 +-"), "{stat}");

    // Deploying what the files already name commits nothing.
    let again = deployer
        .deploy(app(&ws, "api"), &image("api", "v2", 7), &meta, &ctx)
        .await
        .expect("deploys");
    assert!(!again.changed);
    assert_eq!(fleet.commits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_history_and_rollback_follow_the_branch() {
    let fleet = Fleet::standard();
    let ws = workspace();
    let deployer = fleet.deployer("cache");
    let ctx = Context::new();
    let api = app(&ws, "api");
    let now = deployer
        .current(api, &ctx)
        .await
        .expect("reads")
        .expect("named");
    assert_eq!(
        now.image,
        format!("localhost:5000/acme/api:v1@{}", digest(0))
    );
    for n in 1..=3 {
        deployer
            .deploy(
                api,
                &image("api", &format!("v{}", n + 1), n),
                &DeployMeta::default(),
                &ctx,
            )
            .await
            .expect("deploys");
        // Another app moves in between: not part of api's history.
        deployer
            .deploy(
                app(&ws, "search"),
                &image("search", "s", 100 + n),
                &DeployMeta::default(),
                &ctx,
            )
            .await
            .expect("deploys");
    }
    let history = deployer.history(api, &ctx).await.expect("history");
    let images: Vec<&str> = history.iter().map(|r| r.image.as_str()).collect();
    assert_eq!(
        images,
        (0..=3)
            .map(|n| format!("localhost:5000/acme/api:v{}@{}", n + 1, digest(n)))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        history.iter().map(|r| r.number).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(history[3].current && history[..3].iter().all(|r| !r.current));
    // The cause names the commit, as `git log` does.
    let subject = fleet.git(&["log", "-1", "--format=%h %s", "main~1"]);
    let cause = history[3].change_cause.clone().expect("cause");
    assert!(
        cause.ends_with(subject.trim().split_once(' ').expect("two").1),
        "{cause}"
    );

    let search_before = fleet.show("main", "charts/search/values.yaml");
    let rolled = deployer
        .rollback(api, RollbackTarget::Previous, &ctx)
        .await
        .expect("rolls back");
    assert!(rolled.changed);
    assert_eq!(
        rolled.image,
        format!("localhost:5000/acme/api:v3@{}", digest(2))
    );
    let now = deployer
        .current(api, &ctx)
        .await
        .expect("reads")
        .expect("named");
    assert_eq!(now.image, rolled.image);
    // A new commit that touches api's file only; search is left where it was.
    let changed = fleet.git(&["show", "--name-only", "--format=", "main"]);
    assert_eq!(changed.trim(), "deploy/api.yaml");
    assert_eq!(
        fleet.show("main", "charts/search/values.yaml"),
        search_before
    );
    assert!(
        fleet
            .git(&["log", "-1", "--format=%B", "main"])
            .contains("rollback to revision 3")
    );

    let to_first = deployer
        .rollback(api, RollbackTarget::Revision(1), &ctx)
        .await
        .expect("rolls back");
    assert_eq!(
        to_first.image,
        format!("localhost:5000/acme/api:v1@{}", digest(0))
    );
    assert_eq!(fleet.show("main", "deploy/api.yaml"), API);
    let err = deployer
        .rollback(api, RollbackTarget::Revision(42), &ctx)
        .await
        .expect_err("no such revision");
    assert!(
        err.to_string()
            .contains("revision 42 is not in the history"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_shows_the_diff_and_commits_nothing() {
    let fleet = Fleet::standard();
    let ws = workspace();
    let deployer = fleet.deployer("cache");
    let messages = Arc::new(Mutex::new(Vec::new()));
    let seen = messages.clone();
    let ctx = Context::new()
        .with_dry_run(true)
        .with_events(EventSink::new(move |e| {
            if let EventKind::Message { text } = &e.kind {
                seen.lock().expect("lock").push(text.clone());
            }
        }));
    let tip = fleet.git(&["rev-parse", "main"]);
    let rollout = deployer
        .deploy(
            app(&ws, "web"),
            &image("web", "v9", 9),
            &DeployMeta::default(),
            &ctx,
        )
        .await
        .expect("dry run");
    assert!(rollout.changed);
    assert_eq!(fleet.git(&["rev-parse", "main"]), tip);
    let diff = format!(
        "--- a/clusters/prod/kustomization.yaml\n+++ b/clusters/prod/kustomization.yaml\n@@ -8,1 +8,2 @@\n-  newTag: v1\n+  newTag: v9\n+  digest: {}\n",
        digest(9)
    );
    assert_eq!(
        *messages.lock().expect("lock"),
        [format!("would commit:\n{diff}")]
    );
    let preview = deployer
        .preview(app(&ws, "web"), &image("web", "v9", 9))
        .await
        .expect("preview");
    assert_eq!(preview, diff);
}

/// A transport where someone else pushes `their` change just before our first push.
#[derive(Debug)]
struct Racing {
    inner: GitCli,
    scratch: PathBuf,
    url: String,
    change: (String, String, String),
    raced: Mutex<bool>,
    pushes: Mutex<Vec<PushOutcome>>,
}

impl Transport for Racing {
    fn fetch(
        &self,
        git_dir: &Path,
        url: &str,
        branch: &str,
        into: &str,
    ) -> Result<bool, TransportError> {
        self.inner.fetch(git_dir, url, branch, into)
    }

    fn push(
        &self,
        git_dir: &Path,
        url: &str,
        commit: &str,
        branch: &str,
    ) -> Result<PushOutcome, TransportError> {
        let mut raced = self.raced.lock().expect("lock");
        if !*raced {
            *raced = true;
            let work = self.scratch.join("other");
            git(&self.scratch, &["clone", "-q", &self.url, "other"]);
            let (path, from, to) = &self.change;
            let file = work.join(path);
            let text = std::fs::read_to_string(&file)
                .expect("read")
                .replace(from, to);
            std::fs::write(&file, text).expect("write");
            git(&work, &["commit", "-q", "-am", "someone else"]);
            git(&work, &["push", "-q", "origin", "main"]);
        }
        let outcome = self.inner.push(git_dir, url, commit, branch)?;
        self.pushes.lock().expect("lock").push(outcome.clone());
        Ok(outcome)
    }
}

fn racing(fleet: &Fleet, change: (&str, &str, &str)) -> (GitOpsDeployer, Arc<Racing>) {
    let transport = Arc::new(Racing {
        inner: GitCli::new(),
        scratch: fleet.dir.path().to_owned(),
        url: fleet.url.clone(),
        change: (change.0.into(), change.1.into(), change.2.into()),
        raced: Mutex::new(false),
        pushes: Mutex::new(Vec::new()),
    });
    let deployer = GitOpsDeployer::builder(&fleet.url)
        .cache_dir(fleet.dir.path().join("cache"))
        .transport(transport.clone())
        .backoff(Backoff::new(
            4,
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .build();
    (deployer, transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_push_applies_the_edit_again_on_the_new_tip() {
    let fleet = Fleet::standard();
    let ws = workspace();
    // Someone else changes another line of the same file first.
    let (deployer, transport) = racing(
        &fleet,
        ("deploy/api.yaml", "name: api # keep", "name: api2 # keep"),
    );
    deployer
        .deploy(
            app(&ws, "api"),
            &image("api", "v2", 5),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("lands after a retry");
    let pushes = transport.pushes.lock().expect("lock").clone();
    assert!(
        matches!(
            pushes.as_slice(),
            [PushOutcome::Rejected { .. }, PushOutcome::Pushed]
        ),
        "{pushes:?}"
    );
    assert_eq!(
        fleet.show("main", "deploy/api.yaml"),
        API.replace("name: api # keep", "name: api2 # keep")
            .replace(
                &format!("api:v1@{}", digest(0)),
                &format!("api:v2@{}", digest(5))
            )
    );
    // Ours sits on theirs: no merge, no lost commit.
    assert_eq!(
        fleet
            .git(&["log", "--format=%s", "main"])
            .lines()
            .collect::<Vec<_>>(),
        ["deploy api", "someone else", "fleet"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_edit_of_the_same_line_fails_clearly() {
    let fleet = Fleet::standard();
    let ws = workspace();
    let (deployer, _) = racing(
        &fleet,
        (
            "charts/search/values.yaml",
            "tag: \"v1\"\nsidecar",
            "tag: \"hotfix\"\nsidecar",
        ),
    );
    let err = deployer
        .deploy(
            app(&ws, "search"),
            &image("search", "v2", 5),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect_err("conflicts");
    let gitops = err.downcast_ref::<GitOpsError>().expect("typed");
    assert!(matches!(gitops, GitOpsError::Edit { .. }), "{gitops:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "search: gitops: charts/search/values.yaml: line 4 (tag) was changed by someone else to \"hotfix\" (it was \"v1\"; this run writes \"v2@{}\"): pull, check which image should run, and deploy again",
            digest(5)
        )
    );
    // Theirs stands.
    assert!(
        fleet
            .show("main", "charts/search/values.yaml")
            .contains("tag: \"hotfix\"")
    );
}

/// 20 apps, each with its own marked line in one shared file.
fn many(n: usize) -> (Fleet, Workspace) {
    let mut file = String::from("# every app of the fleet\n");
    let mut toml = String::from("[workspace]\nregistry = \"localhost:5000/acme\"\n");
    for i in 0..n {
        file.push_str(&format!(
            "app{i:02}:\n  image: localhost:5000/acme/app{i:02}:v0@{} # {{\"$imagepolicy\": \"flux-system:app{i:02}\"}}\n",
            digest(0)
        ));
        toml.push_str(&format!(
            "[apps.app{i:02}]\ndeploy.gitops = {{ files = [{{ path = \"fleet.yaml\", setter = \"flux-system:app{i:02}\" }}] }}\n"
        ));
    }
    let fleet = Fleet::new(&[("fleet.yaml", &file)]);
    let ws = Workspace::loader()
        .schema(schema())
        .from_toml(&toml, "/nonexistent-root")
        .expect("loads");
    (fleet, ws)
}

/// Every app's line names its digest, and each app is in exactly one commit message.
fn assert_all_landed(fleet: &Fleet, n: usize) -> usize {
    let file = fleet.show("main", "fleet.yaml");
    for i in 0..n {
        assert!(
            file.contains(&format!("app{i:02}:v1@{}", digest(1000 + i as u32))),
            "app{i:02} lost:\n{file}"
        );
    }
    let log = fleet.git(&["log", "--format=%B%x00", "main"]);
    for i in 0..n {
        let mentions = log.matches(&format!("- app{i:02}: ")).count();
        assert_eq!(mentions, 1, "app{i:02} in {mentions} commits:\n{log}");
    }
    // No empty or duplicate commits: every commit but the first changes fleet.yaml.
    let changed = fleet.git(&["log", "--format=%H", "--", "fleet.yaml"]);
    assert_eq!(changed.lines().count(), fleet.commits());
    fleet.commits() - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_writers_with_their_own_clones_lose_nothing() {
    const N: usize = 20;
    let (fleet, ws) = many(N);
    let ws = Arc::new(ws);
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let deployer = GitOpsDeployer::builder(&fleet.url)
            .cache_dir(fleet.dir.path().join(format!("cache{i}")))
            .backoff(Backoff::new(
                40,
                Duration::from_millis(20),
                Duration::from_millis(400),
            ))
            .build();
        let ws = ws.clone();
        tasks.spawn(async move {
            let name = format!("app{i:02}");
            let image: ImageRef =
                format!("localhost:5000/acme/{name}:v1@{}", digest(1000 + i as u32))
                    .parse()
                    .expect("reference");
            deployer
                .deploy(
                    app(&ws, &name),
                    &image,
                    &DeployMeta::default(),
                    &Context::new(),
                )
                .await
                .map(|r| r.changed)
                .map_err(|e| e.to_string())
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.expect("task"), Ok(true));
    }
    let commits = assert_all_landed(&fleet, N);
    // Separate clones cannot share a commit: one each.
    assert_eq!(commits, N);
    eprintln!(
        "20 separate writers: {commits} commits in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_deploys_through_one_deployer_share_commits() {
    const N: usize = 20;
    let (fleet, ws) = many(N);
    let ws = Arc::new(ws);
    let deployer = GitOpsDeployer::builder(&fleet.url)
        .cache_dir(fleet.dir.path().join("cache"))
        .build();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let deployer = deployer.clone();
        let ws = ws.clone();
        tasks.spawn(async move {
            let name = format!("app{i:02}");
            let image: ImageRef =
                format!("localhost:5000/acme/{name}:v1@{}", digest(1000 + i as u32))
                    .parse()
                    .expect("reference");
            deployer
                .deploy(
                    app(&ws, &name),
                    &image,
                    &DeployMeta::default(),
                    &Context::new(),
                )
                .await
                .map(|r| r.changed)
                .map_err(|e| e.to_string())
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.expect("task"), Ok(true));
    }
    let commits = assert_all_landed(&fleet, N);
    // Deploys queued while a push is under way join the next commit.
    assert!(commits < N, "{commits} commits for {N} deploys");
    eprintln!(
        "20 deploys, one deployer: {commits} commits in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_run_deploys_every_changed_app_in_one_commit() {
    let fleet = Fleet::standard();
    let ws = workspace();
    // No linger, one app at a time, builds that take a while: the apps reach their
    // deploy far apart, and the run still makes one commit.
    let deployer = GitOpsDeployer::builder(&fleet.url)
        .cache_dir(fleet.dir.path().join("cache"))
        .build();
    let detector = ScriptedDetector::new()
        .with_change("apps/api/main.rs")
        .with_change("apps/web/index.html")
        .with_change("apps/worker/main.rs");
    let pipeline = Pipeline::builder(ws)
        .detector(Arc::new(detector))
        .builder(Arc::new(
            FakeBuilder::new().with_delay(Duration::from_millis(300)),
        ))
        .registry(Arc::new(MemoryRegistry::new()))
        .deployer(Arc::new(deployer))
        .concurrency(1)
        .build()
        .expect("pipeline");
    let report = pipeline
        .run(Some("main"), "HEAD", &Selection::default())
        .await
        .expect("runs");
    let outcomes: Vec<(&str, &Outcome)> = report
        .apps
        .iter()
        .map(|a| (a.app.as_str(), &a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("api", &Outcome::Deployed),
            ("web", &Outcome::Deployed),
            ("worker", &Outcome::Deployed)
        ]
    );
    assert_eq!(
        fleet.commits(),
        2,
        "{}",
        fleet.git(&["log", "--stat", "main"])
    );
    let message = fleet.git(&["log", "-1", "--format=%B", "main"]);
    assert!(
        message.starts_with("deploy api, web, worker\n"),
        "{message}"
    );
    // The pipeline deploys by digest and says the tag it pushed: the default
    // format writes name:tag@digest.
    let api = report.apps[0].image.clone().expect("image");
    let written = format!(
        "image: \"{}:{}@{}\"",
        api.name(),
        report.apps[0].tag,
        api.digest().expect("pinned")
    );
    let file = fleet.show("main", "deploy/api.yaml");
    assert!(file.contains(&written), "{written}\n{file}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_through_git_daemon_on_loopback() {
    let fleet = Fleet::standard();
    std::fs::write(fleet.bare.join("git-daemon-export-ok"), "").expect("export");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    // `git daemon` serves from a child process of its own: it runs in a process
    // group of its own, killed whole when the test ends (also on a panic), and
    // with no inherited stdout or stderr, which would keep the test runner's
    // output pipe open after the test.
    let daemon = Command::new("git")
        .args([
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            "--enable=receive-pack",
            &format!("--base-path={}", fleet.dir.path().display()),
        ])
        .arg(fleet.dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("git daemon runs (install git-daemon-sysvinit or git's daemon)");
    let _daemon = GroupKill(daemon);
    let url = format!("git://127.0.0.1:{port}/fleet.git");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Command::new("git")
        .args(["ls-remote", &url])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "git daemon did not answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ws = workspace();
    let deployer = GitOpsDeployer::builder(&url)
        .cache_dir(fleet.dir.path().join("cache"))
        .build();
    let result = deployer
        .deploy(
            app(&ws, "api"),
            &image("api", "v3", 3),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await;
    assert!(result.expect("deploys").changed);
    assert!(
        fleet
            .show("main", "deploy/api.yaml")
            .contains(&format!("api:v3@{}", digest(3)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_cancelled_while_queued_writes_nothing() {
    let fleet = Fleet::standard();
    let ws = workspace();
    let deployer = GitOpsDeployer::builder(&fleet.url)
        .cache_dir(fleet.dir.path().join("cache"))
        .linger(Duration::from_secs(5))
        .build();
    let ctx = Context::new();
    let cancel = ctx.cancellation().clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let err = deployer
        .deploy(
            app(&ws, "api"),
            &image("api", "v2", 2),
            &DeployMeta::default(),
            &ctx,
        )
        .await
        .expect_err("cancelled");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the cancel ended the wait"
    );
    assert!(
        shipflow_core::caused_by::<shipflow_core::Cancelled>(err.as_ref()),
        "{err}"
    );
    assert_eq!(fleet.commits(), 1);
    // The withdrawn edit does not ride along with the next deploy.
    deployer
        .deploy(
            app(&ws, "web"),
            &image("web", "v2", 3),
            &DeployMeta::default(),
            &Context::new(),
        )
        .await
        .expect("deploys");
    assert_eq!(fleet.show("main", "deploy/api.yaml"), API);
}

/// Kills a child's whole process group when dropped.
struct GroupKill(std::process::Child);

impl Drop for GroupKill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_all_commits_every_update_in_one_commit_and_images_reads_them_back() {
    use shipflow_git::gitops::{FileTarget, GitOpsTarget, ImageUpdate};
    const N: usize = 20;
    let (fleet, _ws) = many(N);
    let deployer = fleet.deployer("cache");
    let target = |i: usize| {
        GitOpsTarget::new(vec![FileTarget::setter(
            "fleet.yaml",
            format!("flux-system:app{i:02}"),
        )])
    };
    let targets: Vec<(String, GitOpsTarget)> =
        (0..N).map(|i| (format!("app{i:02}"), target(i))).collect();
    let before = deployer.images(&targets).await.expect("reads");
    assert!(
        before
            .iter()
            .all(|f| f.tag.as_deref() == Some("v0") && f.digest.as_deref() == Some(&digest(0))),
        "{before:?}"
    );
    let updates = |tag: &str| -> Vec<ImageUpdate> {
        (0..N)
            .map(|i| {
                let name = format!("app{i:02}");
                let image: ImageRef = format!(
                    "localhost:5000/acme/{name}:{tag}@{}",
                    digest(1000 + i as u32)
                )
                .parse()
                .expect("reference");
                ImageUpdate::new(
                    &name,
                    image,
                    format!("policy {name} chose {tag}"),
                    target(i),
                )
            })
            .collect()
    };
    // A dry run shows the diff and writes nothing.
    let dry = deployer
        .write_all(updates("v1"), &Context::new().with_dry_run(true))
        .await;
    assert!(
        dry.iter()
            .all(|r| r.as_ref().is_ok_and(|w| w.changed && w.commit.is_none()))
    );
    assert_eq!(fleet.commits(), 1);

    let results = deployer.write_all(updates("v1"), &Context::new()).await;
    let commits: std::collections::BTreeSet<Option<String>> = results
        .iter()
        .map(|r| r.as_ref().expect("written").commit.clone())
        .collect();
    assert_eq!(commits.len(), 1, "one commit for all: {results:?}");
    assert_eq!(fleet.commits(), 2);
    assert_eq!(assert_all_landed(&fleet, N), 1);
    let message = fleet.git(&["log", "-1", "--format=%B", "main"]);
    assert!(message.contains("(policy app07 chose v1)"), "{message}");
    let after = deployer.images(&targets).await.expect("reads");
    assert_eq!(after[7].tag.as_deref(), Some("v1"));
    assert_eq!(after[7].digest.as_deref(), Some(digest(1007).as_str()));

    // The same images again: nothing to commit.
    let again = deployer.write_all(updates("v1"), &Context::new()).await;
    assert!(
        again
            .iter()
            .all(|r| r.as_ref().is_ok_and(|w| !w.changed && w.commit.is_none()))
    );
    assert_eq!(fleet.commits(), 2);
}
