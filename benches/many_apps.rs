//! Many apps at once: a shared file of a 200-app monorepo changed, so every app
//! rebuilds natively and pushes to a loopback registry. Prints, per concurrency
//! limit, the median wall time of the run and per app, the CPU it kept busy (of
//! what the machine has), its peak memory, and the most apps that were in flight
//! at once, which must never exceed the limit; and the speed-up of the highest
//! limit over one app at a time, measured side by side in the same run.
//!
//! ```text
//! cargo bench --bench many_apps                        # 5 rounds per limit
//! SHIPFLOW_BENCH_ROUNDS=9 SHIPFLOW_BENCH_APPS=300 cargo bench --bench many_apps
//! ```
//!
//! Needs docker-registry, busybox-static and git (`.ci/run` installs them). Each app
//! is three layers (busybox, the shared package, its page), as in the end-to-end
//! tests. Every round commits a new version of the shared package first, so each
//! app's shared layer, config and manifest are new and its other layers are already
//! in the registry: the work of a lockfile change. Rounds alternate between the
//! limits, so load from elsewhere hits all alike. Linux only (it reads `/proc`).

#![allow(missing_docs, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Monorepo;
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::oci::testing::TestRegistry;
use shipflow_kit::oci::{NativeBuilder, RegistryClient};
use shipflow_kit::{
    BuilderByType, Event, EventKind, EventSink, Outcome, Pipeline, Selection, Stage, Workspace,
};

fn main() {
    let apps: usize = env_number("SHIPFLOW_BENCH_APPS", 200).max(1);
    let rounds = env_number("SHIPFLOW_BENCH_ROUNDS", 5).max(5);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let limits = [1, cores, 2 * cores];

    let registry = TestRegistry::start().expect("docker-registry starts");
    let names: Vec<String> = (0..apps).map(|i| format!("app{i:04}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let repo = Monorepo::create(&registry.host(), &names, |_, _| String::new());
    let builds = tempfile::tempdir().expect("build dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Warm up: the first push of every app (busybox and the pages reach the registry).
    let warm = runtime.block_on(run(&repo, builds.path(), None, cores));
    println!(
        "{apps} apps, {cores} cores; first run (everything new): {:.2} s",
        warm.wall.as_secs_f64()
    );

    let mut samples: BTreeMap<usize, Vec<Sample>> = BTreeMap::new();
    for round in 0..rounds {
        for &limit in &limits {
            repo.edit("packages/common/version.txt", &format!("{round}-{limit}\n"));
            let sample = runtime.block_on(run(&repo, builds.path(), Some("HEAD~1"), limit));
            assert!(
                sample.max_in_flight <= limit,
                "{} apps in flight with a limit of {limit}",
                sample.max_in_flight
            );
            samples.entry(limit).or_default().push(sample);
        }
    }

    println!("\nlimit  median run  per app   CPU busy          peak RSS  most in flight");
    let mut medians = BTreeMap::new();
    for (limit, runs) in &mut samples {
        runs.sort_by_key(|s| s.wall);
        let mid = &runs[runs.len() / 2];
        let wall = mid.wall.as_secs_f64();
        let busy = mid.cpu.as_secs_f64() / wall;
        let peak = runs.iter().map(|s| s.peak_rss).max().unwrap_or(0);
        let most = runs.iter().map(|s| s.max_in_flight).max().unwrap_or(0);
        println!(
            "{limit:>5}  {wall:>8.2} s  {:>5.1} ms  {:>4.0}% of a core, {:>3.0}% of all  {:>5} MB  {most}",
            wall * 1000.0 / apps as f64,
            busy * 100.0,
            busy * 100.0 / cores as f64,
            peak / (1024 * 1024),
        );
        medians.insert(*limit, wall);
    }
    let one = medians[&1];
    for &limit in &limits[1..] {
        println!(
            "speed-up of {limit} apps at a time over one: {:.2}x",
            one / medians[&limit]
        );
    }
}

/// One run's figures.
struct Sample {
    wall: Duration,
    /// User and system CPU time of this process during the run.
    cpu: Duration,
    /// Peak resident memory of this process during the run, in bytes.
    peak_rss: u64,
    max_in_flight: usize,
}

/// Plans and runs every changed app at `limit` apps at a time, with no deployer.
async fn run(
    repo: &Monorepo,
    builds: &std::path::Path,
    base: Option<&str>,
    limit: usize,
) -> Sample {
    let workspace = Workspace::load(repo.config()).expect("workspace");
    let flight = Arc::new(Flight::default());
    let sink = {
        let flight = flight.clone();
        EventSink::new(move |event| flight.see(event))
    };
    let pipeline = Pipeline::builder(workspace)
        .detector(Arc::new(
            GitChangeDetector::open(repo.path()).expect("repository"),
        ))
        .builder(Arc::new(BuilderByType::new().route(
            shipflow_kit::oci::NATIVE_BUILD_TYPE,
            Arc::new(NativeBuilder::new(builds)),
        )))
        .registry(Arc::new(RegistryClient::builder().build().expect("client")))
        .skip_deploy(true)
        .concurrency(limit)
        .events(sink)
        .build()
        .expect("pipeline");
    reset_peak_rss();
    let cpu = cpu_time();
    let started = Instant::now();
    let report = pipeline
        .run(base, "HEAD", &Selection::default())
        .await
        .expect("run");
    let wall = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu);
    assert!(
        !report.apps.is_empty() && report.apps.iter().all(|a| a.outcome == Outcome::Pushed),
        "every app built and pushed: {:?}",
        report
            .apps
            .iter()
            .map(|a| (&a.app, &a.outcome, &a.error))
            .find(|(_, o, _)| **o != Outcome::Pushed)
    );
    Sample {
        wall,
        cpu,
        peak_rss: peak_rss(),
        max_in_flight: flight.most(),
    }
}

/// Which apps have started and not yet finished their last stage (the push).
#[derive(Default)]
struct Flight {
    /// The apps in flight now, and the most there were at once.
    state: Mutex<(BTreeSet<String>, usize)>,
}

impl Flight {
    fn see(&self, event: &Event) {
        let Some(app) = &event.app else { return };
        let mut state = self.state.lock().expect("not poisoned");
        match (&event.stage, &event.kind) {
            (Stage::Build, EventKind::Started) => {
                state.0.insert(app.clone());
                state.1 = state.1.max(state.0.len());
            }
            (Stage::Push, EventKind::Finished { .. })
            | (Stage::Build, EventKind::Finished { ok: false }) => {
                state.0.remove(app);
            }
            _ => {}
        }
    }

    fn most(&self) -> usize {
        self.state.lock().expect("not poisoned").1
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This process's user + system CPU time, from `/proc/self/stat` (in clock ticks of
/// 1/100 s, Linux's USER_HZ).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name, field 2, may hold spaces: count fields after its ')'.
    let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Resets the peak resident set size the kernel keeps for this process.
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("/proc/self/clear_refs");
}

/// Peak resident set size since the last reset, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}
