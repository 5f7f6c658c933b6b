//! Changed paths with gix versus a spawned `git diff --name-only`, and fingerprint cost,
//! on a generated monorepo.
//!
//! Run with `cargo bench -p shipflow-git --bench changes`. The repository is generated with
//! `git fast-import`: `SHIPFLOW_BENCH_FILES` files (default 100,000) in directories of 10,
//! and `SHIPFLOW_BENCH_COMMITS` commits (default 1,000) between `base` and `main`.
//!
//! Measured on the 2-core project machine, idle (load < 2), three runs on 2026-11-25:
//! 3,155 changed paths (renames on), median of 10, gix in-process 27.3–28.5 ms against
//! 34.2–35.1 ms for a spawned `git diff --name-only`: gix/git = 0.80–0.81. 50 path
//! fingerprints in 4.1–4.4 ms (82–88 µs each); a glob fingerprint, which then walked all
//! 100,000 files, 53–54 ms (a glob now reads only the directories it can reach). While
//! others built (load 5–7) the ratio ranged 0.6–1.2: compare runs on a quiet machine. The diff was 1.75× git's time before it stopped building an index
//! from `HEAD`'s tree.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shipflow_core::AppInputs;
use shipflow_git::GitChangeDetector;

const RUNS: usize = 10;
const FINGERPRINTS: usize = 50;

fn main() {
    let files = env_usize("SHIPFLOW_BENCH_FILES", 100_000);
    let commits = env_usize("SHIPFLOW_BENCH_COMMITS", 1_000);
    let dir = tempfile::TempDir::new().expect("a temp dir");
    let repo = dir.path();

    let started = Instant::now();
    generate(repo, files, commits);
    println!(
        "generated {files} files in {} dirs, {commits} commits between base and main in {:.1?}",
        files / 10,
        started.elapsed()
    );

    let detector = GitChangeDetector::open(repo).expect("open the generated repository");
    let changes = detector.changed("base", "main").expect("diff base..main");
    let git_paths = git(repo, &["diff", "--name-only", "base", "main"]);
    println!(
        "changed paths: gix {}, git {}",
        changes.paths.len(),
        git_paths.lines().count()
    );

    // A fresh detector each run, as a fresh git process: a detector keeps the trees it read.
    let gix = median(RUNS, || {
        let detector = GitChangeDetector::open(repo).expect("open the generated repository");
        let changes = detector.changed("base", "main").expect("diff");
        assert!(!changes.paths.is_empty());
    });
    let spawned = median(RUNS, || {
        let out = git(repo, &["diff", "--name-only", "base", "main"]);
        assert!(!out.is_empty());
    });
    println!(
        "changed paths, median of {RUNS}: gix in-process {gix:.2?}, spawned git diff {spawned:.2?}, gix/git = {:.2}",
        gix.as_secs_f64() / spawned.as_secs_f64()
    );

    let tops = (files / 1000).max(1);
    let inputs: Vec<AppInputs> = (0..FINGERPRINTS)
        .map(|i| AppInputs {
            app: format!("app{i}"),
            paths: vec![
                format!("s{:03}", i % tops),
                format!("s{:03}/d00", (i + 1) % tops),
            ],
            globs: vec![],
        })
        .collect();
    let detector = GitChangeDetector::open(repo).expect("open the generated repository");
    let started = Instant::now();
    for input in &inputs {
        detector.fingerprint_at("main", input).expect("fingerprint");
    }
    let total = started.elapsed();
    println!(
        "{FINGERPRINTS} path fingerprints: {total:.2?} total, {:.2?} each",
        total / FINGERPRINTS as u32
    );

    // A fresh detector each time: a detector remembers a glob's matches per tree.
    for (glob, reach) in [
        ("s001/**/*.txt", "the 1,000 files under s001"),
        ("**/f1.txt", "every directory"),
    ] {
        let inputs = AppInputs {
            app: "glob".into(),
            paths: vec!["s000".into()],
            globs: vec![glob.into()],
        };
        let time = median(3, || {
            GitChangeDetector::open(repo)
                .expect("open the generated repository")
                .fingerprint_at("main", &inputs)
                .expect("fingerprint");
        });
        println!("a fingerprint with glob {glob} (reads {reach}), median of 3: {time:.2?}");
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("the git CLI");
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn path_of(file: usize) -> String {
    format!(
        "s{:03}/d{:02}/f{}.txt",
        file / 1000,
        (file / 10) % 100,
        file % 10
    )
}

/// Writes the repository with one `git fast-import` stream: a base commit with every file,
/// then `commits` commits that each modify three files and sometimes add or delete one.
fn generate(repo: &Path, files: usize, commits: usize) {
    git(repo, &["init", "-q", "-b", "main"]);
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(repo)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let stdin = child.stdin.take().expect("piped stdin");
    let mut out = std::io::BufWriter::new(stdin);
    let mut time = 1_700_000_000u64;
    let mut commit = |out: &mut std::io::BufWriter<_>, message: &str, body: &str| {
        time += 60;
        write!(
            out,
            "commit refs/heads/main\ncommitter Bench <bench@example.com> {time} +0000\ndata {}\n{message}\n{body}",
            message.len() + 1
        )
        .expect("write to fast-import");
    };

    let mut body = String::new();
    for file in 0..files {
        let content = format!("file {file}\n");
        body.push_str(&format!(
            "M 100644 inline {}\ndata {}\n{content}\n",
            path_of(file),
            content.len()
        ));
    }
    commit(&mut out, "base", &body);
    writeln!(out, "reset refs/tags/base\nfrom refs/heads/main\n").expect("write");

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for n in 0..commits {
        let mut body = String::new();
        for _ in 0..3 {
            let file = next() as usize % files;
            let content = format!("file {file} edit {n}\n");
            body.push_str(&format!(
                "M 100644 inline {}\ndata {}\n{content}\n",
                path_of(file),
                content.len()
            ));
        }
        match n % 10 {
            0 => body.push_str(&format!("M 100644 inline new/n{n}.txt\ndata 4\nnew\n\n")),
            5 => body.push_str(&format!("D {}\n", path_of(next() as usize % files))),
            _ => {}
        }
        commit(&mut out, &format!("change {n}"), &body);
    }
    drop(out);
    let status = child.wait().expect("wait for fast-import");
    assert!(status.success(), "git fast-import failed");
    git(repo, &["repack", "-adq"]);
}
