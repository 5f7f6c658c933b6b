//! The image automation loop against real peers: a `docker-registry` whose
//! `notifications.endpoints` posts to the loop's endpoint, a bare config repository
//! over `file://`, every result cross-checked with the git command.

#[path = "support/automation.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shipflow_kit::automation::{Action, AutomationEvent, ImageAutomation, NotificationServer};
use shipflow_kit::{CancellationToken, Context};
use support::{Fleet, Notify, Registry, client, deployer, deployment_path, push, semver_binding};

const TOKEN: &str = "n0tify-t0ken";

type Events = Arc<Mutex<Vec<AutomationEvent>>>;

/// The loop and the endpoint running in tasks, stopped by `cancel`.
struct Running {
    trigger: shipflow_kit::automation::Trigger,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    events: Events,
}

impl Running {
    async fn start(
        fleet: &Fleet,
        bindings: Vec<shipflow_kit::automation::PolicyBinding>,
        interval: Duration,
        debounce: Duration,
        server: Option<NotificationServer>,
    ) -> Self {
        let events: Events = Arc::default();
        let sink = events.clone();
        let automation = Arc::new(
            ImageAutomation::builder(deployer(fleet, "cache"), client())
                .bind_all(bindings)
                .interval(interval)
                .debounce(debounce)
                .retry(Duration::from_millis(200), Duration::from_secs(1))
                .on_event(move |e| sink.lock().expect("events").push(e.clone()))
                .build()
                .expect("automation"),
        );
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        if let Some(server) = server {
            tasks.push(tokio::spawn(
                server.serve(automation.trigger(), cancel.clone()),
            ));
        }
        let (a, c) = (automation.clone(), cancel.clone());
        tasks.push(tokio::spawn(async move { a.run(c).await }));
        Self {
            trigger: automation.trigger(),
            cancel,
            tasks,
            events,
        }
    }

    /// Cancels, and checks everything stops promptly.
    async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("stops within 10 s of the cancel")
                .expect("no panic");
        }
    }

    fn events(&self) -> Vec<AutomationEvent> {
        self.events.lock().expect("events").clone()
    }
}

/// An endpoint on a free port wanting [`TOKEN`], and its URL.
async fn endpoint() -> (NotificationServer, String) {
    let server = NotificationServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds")
        .bearer_token(TOKEN);
    let url = format!("http://{}/events", server.local_addr().expect("addr"));
    (server, url)
}

fn notify(url: &str) -> Option<Notify> {
    Some(Notify {
        url: url.to_owned(),
        token: Some(TOKEN.to_owned()),
    })
}

fn image_line(repository: &str, tag: &str, digest: &impl std::fmt::Display) -> String {
    format!("image: {repository}:{tag}@{digest} # {{\"$imagepolicy\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tag_the_policy_prefers_is_committed_once_by_notification_within_seconds() {
    let (server, url) = endpoint().await;
    let registry = Registry::start(notify(&url));
    let api = registry.repository("team/api");
    let client = client();
    let first = push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    // A poll an hour away: only the notification can bring the next push in time.
    let running = Running::start(
        &fleet,
        vec![semver_binding("api", &api)],
        Duration::from_secs(3600),
        Duration::from_millis(100),
        Some(server),
    )
    .await;
    fleet
        .wait_for_commits(2, Duration::from_secs(30))
        .await
        .expect("the first pass commits what the policy chooses");
    let file = fleet.show(&deployment_path("api"));
    assert!(file.contains(&image_line(&api, "1.0.0", &first)), "{file}");
    assert!(file.contains("name: api # kept"), "{file}");

    let pushed = Instant::now();
    let newer = push(&client, &api, "1.1.0", "api-1.1.0").await;
    let latency = fleet
        .wait_for_commits(3, Duration::from_secs(20))
        .await
        .map(|_| pushed.elapsed())
        .expect("the push is committed without waiting for the poll");
    assert!(latency < Duration::from_secs(5), "took {latency:?}");
    let file = fleet.show(&deployment_path("api"));
    assert!(file.contains(&image_line(&api, "1.1.0", &newer)), "{file}");
    let message = fleet.git(&["log", "-1", "--format=%B", "main"]);
    assert!(message.starts_with("automation: api\n"), "{message}");
    assert!(
        message.contains(&format!("api:1.0.0@{first} -> {api}:1.1.0@{newer}"))
            && message.contains("policy api chose tag 1.1.0 of 2 tags by semver range `>=1.0.0`"),
        "{message}"
    );
    // The diff is the image value alone.
    let diff = fleet.git(&["diff", "--unified=0", "main~1", "main"]);
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(changed.len(), 2, "{diff}");

    // Tags the policy does not prefer are notified too, and change nothing.
    push(&client, &api, "0.9.0", "api-0.9.0").await;
    push(&client, &api, "1.2.0-rc.1", "api-1.2.0-rc.1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.commits(),
        3,
        "{}",
        fleet.git(&["log", "--oneline", "main"])
    );
    let notified_passes = running
        .events()
        .iter()
        .filter(|e| matches!(e, AutomationEvent::Pass { full: false, .. }))
        .count();
    assert!(notified_passes >= 2, "{:?}", running.events());
    println!("push to commit on the remote, by notification: {latency:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_tag_is_committed_by_polling_without_notifications() {
    let registry = Registry::start(None);
    let api = registry.repository("team/api");
    let client = client();
    push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    let running = Running::start(
        &fleet,
        vec![semver_binding("api", &api)],
        Duration::from_secs(1),
        Duration::from_millis(100),
        None,
    )
    .await;
    fleet
        .wait_for_commits(2, Duration::from_secs(30))
        .await
        .expect("first commit");
    let pushed = Instant::now();
    let newer = push(&client, &api, "2.0.0", "api-2.0.0").await;
    fleet
        .wait_for_commits(3, Duration::from_secs(20))
        .await
        .expect("the next poll commits the push");
    let latency = pushed.elapsed();
    assert!(latency < Duration::from_secs(5), "took {latency:?}");
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&image_line(&api, "2.0.0", &newer))
    );
    // Polls go on; nothing more is committed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fleet.commits(), 3);
    println!("push to commit on the remote, polling every 1 s: {latency:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_changed_at_once_make_one_commit() {
    let (server, url) = endpoint().await;
    let registry = Registry::start(notify(&url));
    let (api, web) = (
        registry.repository("team/api"),
        registry.repository("team/web"),
    );
    let client = client();
    push(&client, &api, "1.0.0", "api-1.0.0").await;
    push(&client, &web, "1.0.0", "web-1.0.0").await;
    let fleet = Fleet::new(&[
        ("api".into(), format!("{api}:0.1.0")),
        ("web".into(), format!("{web}:0.1.0")),
    ]);
    let running = Running::start(
        &fleet,
        vec![semver_binding("api", &api), semver_binding("web", &web)],
        Duration::from_secs(3600),
        Duration::from_secs(1),
        Some(server),
    )
    .await;
    fleet
        .wait_for_commits(2, Duration::from_secs(30))
        .await
        .expect("first commit");
    assert_eq!(fleet.commits(), 2, "both apps' first images in one commit");
    let new_api = push(&client, &api, "1.1.0", "api-1.1.0").await;
    let new_web = push(&client, &web, "1.0.1", "web-1.0.1").await;
    fleet
        .wait_for_commits(3, Duration::from_secs(20))
        .await
        .expect("the pushes are committed");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        fleet.commits(),
        3,
        "one commit for both: {}",
        fleet.git(&["log", "--stat", "main"])
    );
    let files = fleet.git(&["show", "--name-only", "--format=%s", "main"]);
    assert_eq!(
        files.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        [
            "automation: api, web",
            "apps/api/deployment.yaml",
            "apps/web/deployment.yaml"
        ]
    );
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&image_line(&api, "1.1.0", &new_api))
    );
    assert!(
        fleet
            .show(&deployment_path("web"))
            .contains(&image_line(&web, "1.0.1", &new_web))
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_digest_is_never_committed_twice() {
    let registry = Registry::start(None);
    let api = registry.repository("team/api");
    let client = client();
    let first = push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    let build = |cache: &str| {
        ImageAutomation::builder(deployer(&fleet, cache), client.clone())
            .bind(semver_binding("api", &api))
            .build()
            .expect("automation")
    };
    let automation = build("one");
    let ctx = Context::new();
    let pass = automation.reconcile(&ctx).await;
    assert!(pass.errors.is_empty(), "{:?}", pass.errors);
    assert_eq!(pass.written, ["api"]);
    assert!(pass.commit.is_some());
    assert_eq!(fleet.commits(), 2);

    // Again, and from a fresh loop that only knows what the repository says.
    let again = automation.reconcile(&ctx).await;
    assert!(
        again.written.is_empty() && again.commit.is_none(),
        "{again:?}"
    );
    let fresh = build("two").reconcile(&ctx).await;
    assert!(
        fresh.written.is_empty() && fresh.commit.is_none(),
        "{fresh:?}"
    );
    assert_eq!(fleet.commits(), 2);

    // The same image under a tag the policy now prefers: same digest, no commit.
    let same = push(&client, &api, "1.0.1", "api-1.0.0").await;
    assert_eq!(same, first);
    let events: Arc<Mutex<Vec<AutomationEvent>>> = Arc::default();
    let sink = events.clone();
    let watching = ImageAutomation::builder(deployer(&fleet, "three"), client.clone())
        .bind(semver_binding("api", &api))
        .on_event(move |e| sink.lock().expect("events").push(e.clone()))
        .build()
        .expect("automation");
    let retag = watching.reconcile(&ctx).await;
    assert!(retag.commit.is_none(), "{retag:?}");
    let decisions: Vec<_> = events
        .lock()
        .expect("events")
        .iter()
        .filter_map(|e| match e {
            AutomationEvent::Decision(d) => Some((d.image.clone(), d.action.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        decisions,
        [(format!("{api}:1.0.1@{first}"), Action::Keep)],
        "the policy chose 1.0.1 and kept it"
    );
    assert_eq!(fleet.commits(), 2);

    // A new digest is committed, once, by whichever loop sees it first.
    let newer = push(&client, &api, "1.0.2", "api-1.0.2").await;
    let a = automation.reconcile(&ctx).await;
    let b = watching.reconcile(&ctx).await;
    assert_eq!(a.written, ["api"]);
    assert!(b.commit.is_none(), "{b:?}");
    assert_eq!(
        fleet.commits(),
        3,
        "{}",
        fleet.git(&["log", "--oneline", "main"])
    );
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&image_line(&api, "1.0.2", &newer))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_is_retried_with_capped_backoff_and_the_loop_commits_after() {
    let mut registry = Registry::start(None);
    let api = registry.repository("team/api");
    let client = client();
    push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    let running = Running::start(
        &fleet,
        vec![semver_binding("api", &api)],
        Duration::from_millis(500),
        Duration::from_millis(50),
        None,
    )
    .await;
    fleet
        .wait_for_commits(2, Duration::from_secs(30))
        .await
        .expect("first commit");
    registry.stop();
    let down = running.events().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during: Vec<AutomationEvent> = running.events()[down..].to_vec();
    let retries: Vec<Duration> = during
        .iter()
        .filter_map(|e| match e {
            AutomationEvent::Pass { retry_in, .. } => *retry_in,
            _ => None,
        })
        .collect();
    assert!(retries.len() >= 4, "{during:?}");
    assert!(retries[0] < Duration::from_millis(200), "{retries:?}");
    assert!(
        retries.iter().all(|r| *r <= Duration::from_secs(1)),
        "capped at 1 s: {retries:?}"
    );
    assert!(
        retries[3..]
            .iter()
            .any(|r| *r >= Duration::from_millis(500)),
        "doubling: {retries:?}"
    );
    let failures: Vec<&String> = during
        .iter()
        .filter_map(|e| match e {
            AutomationEvent::Failed {
                error,
                transient: true,
            } => Some(error),
            _ => None,
        })
        .collect();
    assert!(!failures.is_empty(), "{during:?}");
    assert!(
        failures[0].contains("app api") && failures[0].contains("listing the tags of"),
        "{}",
        failures[0]
    );
    assert!(
        !running.tasks.iter().any(|t| t.is_finished()),
        "still running"
    );
    assert_eq!(fleet.commits(), 2);

    registry.start_again();
    let newer = push(&client, &api, "1.1.0", "api-1.1.0").await;
    fleet
        .wait_for_commits(3, Duration::from_secs(20))
        .await
        .expect("committed once the registry is back");
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&image_line(&api, "1.1.0", &newer))
    );
    running.stop().await;
}

/// `curl`'s status code for a request to `url`.
fn curl(url: &str, method: &str, headers: &[&str], body: Option<&std::path::Path>) -> u16 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(body) = body {
        cmd.arg("--data-binary").arg(format!("@{}", body.display()));
    }
    let out = cmd
        .arg(url)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("curl runs (apt-get install -y curl)");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl printed no status: {out:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notifications_are_refused_and_wake_nothing() {
    let (server, url) = endpoint().await;
    let registry = Registry::start(None);
    let api = registry.repository("team/api");
    let client = client();
    push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    let running = Running::start(
        &fleet,
        vec![semver_binding("api", &api)],
        Duration::from_secs(3600),
        Duration::from_millis(50),
        Some(server),
    )
    .await;
    fleet
        .wait_for_commits(2, Duration::from_secs(30))
        .await
        .expect("first commit");
    // Pushed, but this registry notifies no one: only a good notification brings it.
    let newer = push(&client, &api, "1.1.0", "api-1.1.0").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let body = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        path
    };
    let good = body(
        "good.json",
        br#"{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/api","tag":"1.1.0","digest":"sha256:00"},"request":{"host":"r"}}]}"#,
    );
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let json = "Content-Type: application/vnd.docker.distribution.events.v1+json";
    assert_eq!(curl(&url, "POST", &[json], Some(&good)), 401, "no token");
    assert_eq!(
        curl(
            &url,
            "POST",
            &[json, "Authorization: Bearer wrong"],
            Some(&good)
        ),
        401,
        "wrong token"
    );
    assert_eq!(
        curl(
            &url,
            "POST",
            &[json, &bearer],
            Some(&body("text", b"not json"))
        ),
        400
    );
    assert_eq!(
        curl(
            &url,
            "POST",
            &[json, &bearer],
            Some(&body("shape", br#"{"events": {"action": "push"}}"#))
        ),
        400
    );
    assert_eq!(
        curl(
            &url,
            "POST",
            &[json, &bearer],
            Some(&body("bad-repo", br#"{"events": [{"action": "push", "target": {"repository": "../Team", "tag": "1"}}]}"#))
        ),
        400
    );
    let mut huge = b"{\"events\": [".to_vec();
    huge.resize(2 << 20, b' ');
    assert_eq!(
        curl(&url, "POST", &[json, &bearer], Some(&body("huge", &huge))),
        413
    );
    assert_eq!(curl(&url, "GET", &[&bearer], None), 405);
    let elsewhere = url.replace("/events", "/other");
    assert_eq!(curl(&elsewhere, "POST", &[json, &bearer], Some(&good)), 404);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fleet.commits(), 2, "nothing woke the loop");
    let passes = running
        .events()
        .iter()
        .filter(|e| matches!(e, AutomationEvent::Pass { .. }))
        .count();
    assert_eq!(passes, 1, "only the first pass ran: {:?}", running.events());

    let sent = Instant::now();
    assert_eq!(curl(&url, "POST", &[json, &bearer], Some(&good)), 200);
    fleet
        .wait_for_commits(3, Duration::from_secs(10))
        .await
        .expect("a good notification wakes the loop");
    assert!(sent.elapsed() < Duration::from_secs(5));
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&image_line(&api, "1.1.0", &newer))
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_trigger_wakes_the_loop_for_its_repository_only() {
    let registry = Registry::start(None);
    let (api, web) = (
        registry.repository("team/api"),
        registry.repository("team/web"),
    );
    let client = client();
    push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    let events: Events = Arc::default();
    let sink = events.clone();
    let automation = Arc::new(
        ImageAutomation::builder(deployer(&fleet, "cache"), client.clone())
            .bind(semver_binding("api", &api))
            .interval(Duration::from_secs(3600))
            .debounce(Duration::from_millis(50))
            .on_event(move |e| sink.lock().expect("events").push(e.clone()))
            .build()
            .expect("automation"),
    );
    let trigger = automation.trigger();
    let cancel = CancellationToken::new();
    let (a, c) = (automation.clone(), cancel.clone());
    let task = tokio::spawn(async move { a.run(c).await });
    fleet
        .wait_for_commits(2, Duration::from_secs(30))
        .await
        .expect("first commit");
    let newer = push(&client, &api, "1.1.0", "api-1.1.0").await;
    // Another repository: a pass that resolves no policy, no commit.
    let other: shipflow_kit::ImageRef = format!("{web}:9.9.9").parse().expect("reference");
    trigger.pushed(&other);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(fleet.commits(), 2);
    // The pipeline that pushed says so.
    let pushed: shipflow_kit::ImageRef = format!("{api}:1.1.0@{newer}").parse().expect("reference");
    trigger.pushed(&pushed);
    fleet
        .wait_for_commits(3, Duration::from_secs(10))
        .await
        .expect("the trigger wakes the loop");
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&image_line(&api, "1.1.0", &newer))
    );
    // The pass reports once its commit is pushed: wait for that report.
    let passes = || -> Vec<(bool, usize)> {
        events
            .lock()
            .expect("events")
            .iter()
            .filter_map(|e| match e {
                AutomationEvent::Pass { full, policies, .. } => Some((*full, *policies)),
                _ => None,
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while passes().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(passes(), [(true, 1), (false, 0), (false, 1)]);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("no panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_repository_outage_is_retried_and_the_digest_lands_once_it_is_back() {
    let registry = Registry::start(None);
    let api = registry.repository("team/api");
    let client = client();
    push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    let running = Running::start(
        &fleet,
        vec![semver_binding("api", &api)],
        Duration::from_secs(3600),
        Duration::from_millis(50),
        None,
    )
    .await;
    fleet
        .wait_for_commits(2, Duration::from_secs(30))
        .await
        .expect("first commit");
    let away = fleet.dir.path().join("moved-away.git");
    std::fs::rename(&fleet.bare, &away).expect("take the repository away");
    let newer = push(&client, &api, "1.1.0", "api-1.1.0").await;
    let trigger_from = running.events().len();
    // Woken now rather than at the next poll, an hour away.
    running.trigger.poll_now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = running.events()[trigger_from..].to_vec();
    let failed: Vec<&String> = during
        .iter()
        .filter_map(|e| match e {
            AutomationEvent::Failed {
                error,
                transient: true,
            } => Some(error),
            _ => None,
        })
        .collect();
    assert!(failed.len() >= 2, "retried: {during:?}");
    assert!(
        failed[0].contains("app api: writing") && failed[0].contains("git fetch"),
        "{}",
        failed[0]
    );
    std::fs::rename(&away, &fleet.bare).expect("bring it back");
    fleet
        .wait_for_commits(3, Duration::from_secs(10))
        .await
        .expect("committed once the repository is back");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        fleet.commits(),
        3,
        "{}",
        fleet.git(&["log", "--oneline", "main"])
    );
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&image_line(&api, "1.1.0", &newer))
    );
    running.stop().await;
}
