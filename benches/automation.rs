//! The image automation loop, measured against real peers: a `docker-registry` on
//! loopback (its `notifications.endpoints` pointed at the loop) and a bare config
//! repository pushed to over `file://`. Prints:
//!
//! - the time from pushing a new tag (shipflow's own client) to the config commit
//!   being on the remote, p50 and p95 over 20 pushes, woken by the registry's
//!   notifications (goal p95 < 2 s) and by polling every 1 s;
//! - the registry requests of one poll of 50 policies over 10 repositories (at
//!   most 10 tag lists, plus pages), counted in the registry's access log;
//! - the commits and time for 50 apps changed in one pass (one commit).
//!
//! ```text
//! cargo bench --bench automation
//! SHIPFLOW_BENCH_PUSHES=50 cargo bench --bench automation
//! ```
//!
//! Needs docker-registry and git (`.ci/run` installs them).

#![allow(missing_docs, clippy::print_stdout)]

#[path = "../tests/support/automation.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use shipflow_kit::automation::{ImageAutomation, NotificationServer, PolicyBinding};
use shipflow_kit::git::gitops::FileTarget;
use shipflow_kit::oci::{ImagePolicy, PolicyRule};
use shipflow_kit::{CancellationToken, Context};
use support::{Fleet, Notify, Registry, client, deployer, deployment_path, push, semver_binding};

fn main() {
    let pushes: usize = std::env::var("SHIPFLOW_BENCH_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let debounce = Duration::from_millis(100);
        let notified = push_to_commit(pushes, Wake::Notifications, debounce).await;
        report(
            &format!("push -> commit on the remote, notifications (debounce {debounce:?})"),
            &notified,
        );
        let polled = push_to_commit(pushes, Wake::Poll(Duration::from_secs(1)), debounce).await;
        report("push -> commit on the remote, polling every 1 s", &polled);
        fifty_apps().await;
    });
}

enum Wake {
    Notifications,
    Poll(Duration),
}

/// Pushes `n` newer tags one after another; per push, the time from the push's
/// start to the commit naming it being on the remote's branch.
async fn push_to_commit(n: usize, wake: Wake, debounce: Duration) -> Vec<Duration> {
    let cancel = CancellationToken::new();
    let (server, notify) = match wake {
        Wake::Notifications => {
            let server = NotificationServer::bind("127.0.0.1:0".parse().expect("addr"))
                .await
                .expect("binds")
                .bearer_token("bench");
            let url = format!("http://{}/events", server.local_addr().expect("addr"));
            (
                Some(server),
                Some(Notify {
                    url,
                    token: Some("bench".into()),
                }),
            )
        }
        Wake::Poll(_) => (None, None),
    };
    let interval = match wake {
        Wake::Notifications => Duration::from_secs(3600),
        Wake::Poll(every) => every,
    };
    let registry = Registry::start(notify);
    let api = registry.repository("team/api");
    let client = client();
    push(&client, &api, "1.0.0", "api-1.0.0").await;
    let fleet = Fleet::new(&[("api".into(), format!("{api}:0.1.0"))]);
    let automation = Arc::new(
        ImageAutomation::builder(deployer(&fleet, "cache"), client.clone())
            .bind(semver_binding("api", &api))
            .interval(interval)
            .debounce(debounce)
            .build()
            .expect("automation"),
    );
    if let Some(server) = server {
        tokio::spawn(server.serve(automation.trigger(), cancel.clone()));
    }
    let (a, c) = (automation.clone(), cancel.clone());
    let task = tokio::spawn(async move { a.run(c).await });
    fleet
        .wait_for_commits(2, Duration::from_secs(60))
        .await
        .expect("the first pass commits");
    let mut samples = Vec::with_capacity(n);
    for i in 1..=n {
        let tag = format!("1.{i}.0");
        let before = fleet.commits();
        let started = Instant::now();
        let digest = push(&client, &api, &tag, &format!("api-{tag}")).await;
        fleet
            .wait_for_commits(before + 1, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("{tag} was not committed within 60 s"));
        samples.push(started.elapsed());
        let file = fleet.show(&deployment_path("api"));
        assert!(
            file.contains(&format!("{api}:{tag}@{digest}")),
            "{tag}: {file}"
        );
        // The next push lands at another point of the poll interval (spread over
        // a second, deterministically).
        tokio::time::sleep(Duration::from_millis((i as u64 * 397) % 1000)).await;
    }
    cancel.cancel();
    let _ = task.await;
    samples
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(what: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: {} pushes, p50 {:.0} ms, p95 {:.0} ms, min {:.0} ms, max {:.0} ms",
        sorted.len(),
        ms(percentile(&sorted, 50.0)),
        ms(percentile(&sorted, 95.0)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
    );
}

/// The registry's access log lines since `from`, by kind.
fn requests(registry: &Registry, from: usize) -> (usize, usize, usize) {
    let log = registry.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"GET /v2/") || l.contains("\"HEAD /v2/"))
        .collect();
    let new = &lines[from.min(lines.len())..];
    let lists = new.iter().filter(|l| l.contains("/tags/list")).count();
    let heads = new.iter().filter(|l| l.contains("\"HEAD /v2/")).count();
    (lists, heads, new.len())
}

fn request_lines(registry: &Registry) -> usize {
    requests(registry, 0).2
}

/// 50 apps over 10 repositories (five policies each): the requests of one poll,
/// and one commit for all 50 when every repository gets a newer release.
async fn fifty_apps() {
    const REPOS: usize = 10;
    const APPS: usize = 50;
    let registry = Registry::start(None);
    let client = client();
    for r in 0..REPOS {
        let repo = registry.repository(&format!("team/svc{r}"));
        push(&client, &repo, "1.0.0", &format!("svc{r}-1.0.0")).await;
        push(&client, &repo, "0.9.0", &format!("svc{r}-0.9.0")).await;
    }
    let ranges = [">=1.0.0", "^1", "1.x", ">=1.0.0 <2.0.0", "~1"];
    let apps: Vec<(String, String)> = (0..APPS)
        .map(|i| {
            let repo = registry.repository(&format!("team/svc{}", i % REPOS));
            (format!("app{i:02}"), format!("{repo}:0.1.0"))
        })
        .collect();
    let fleet = Fleet::new(&apps);
    let bindings: Vec<PolicyBinding> = (0..APPS)
        .map(|i| {
            let app = format!("app{i:02}");
            let repo = registry.repository(&format!("team/svc{}", i % REPOS));
            let policy = ImagePolicy::new(
                &app,
                &repo,
                PolicyRule::Semver {
                    range: ranges[(i / REPOS) % ranges.len()].into(),
                },
            )
            .expect("policy");
            PolicyBinding::new(
                &app,
                policy,
                vec![FileTarget::setter(
                    deployment_path(&app),
                    format!("flux-system:{app}"),
                )],
            )
        })
        .collect();
    let automation = ImageAutomation::builder(deployer(&fleet, "cache"), client.clone())
        .bind_all(bindings)
        .build()
        .expect("automation");
    let ctx = Context::new();

    let mut rows = Vec::new();
    for round in [
        "first pass (all 50 new)",
        "after a release to all 10 repositories",
    ] {
        if round.starts_with("after") {
            for r in 0..REPOS {
                let repo = registry.repository(&format!("team/svc{r}"));
                push(&client, &repo, "1.1.0", &format!("svc{r}-1.1.0")).await;
            }
        }
        // Let the registry write its log of the pushes before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (from, commits) = (request_lines(&registry), fleet.commits());
        let started = Instant::now();
        let pass = automation.reconcile(&ctx).await;
        let took = started.elapsed();
        assert!(pass.errors.is_empty(), "{:?}", pass.errors);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (lists, heads, all) = requests(&registry, from);
        let new_commits = fleet.commits() - commits;
        let files = fleet
            .git(&["show", "--name-only", "--format=", "main"])
            .lines()
            .filter(|l| !l.is_empty())
            .count();
        rows.push(format!(
            "{round}: {} apps written, {new_commits} commit(s) touching {files} files, {:.2} s (resolve + commit + push); registry: {lists} tag lists, {heads} manifest HEADs, {all} requests",
            pass.written.len(),
            took.as_secs_f64()
        ));
        assert_eq!(pass.written.len(), APPS);
        assert_eq!(new_commits, 1, "one commit for all apps");
        assert!(lists <= REPOS, "{lists} tag lists for {REPOS} repositories");
    }
    // A poll with nothing new: requests only, no commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (from, commits) = (request_lines(&registry), fleet.commits());
    let started = Instant::now();
    let pass = automation.reconcile(&ctx).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (lists, heads, all) = requests(&registry, from);
    rows.push(format!(
        "steady poll (nothing new): {} apps written, {} commit(s), {:.2} s; registry: {lists} tag lists, {heads} manifest HEADs, {all} requests",
        pass.written.len(),
        fleet.commits() - commits,
        took.as_secs_f64()
    ));
    println!("\n50 policies over 10 repositories:");
    for row in rows {
        println!("  {row}");
    }
}
