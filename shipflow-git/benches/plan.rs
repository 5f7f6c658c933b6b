//! `plan` on a generated package.json-workspaces monorepo against a spawned
//! `git diff --name-only` on the same commits, at 300 apps and at 3,000.
//!
//! Run with `cargo bench -p shipflow-git --bench plan` (both scales) or
//! `cargo bench -p shipflow-git --bench plan -- small` (300 apps only). `SHIPFLOW_BENCH_ROUNDS`
//! sets the rounds (default 7, at least 5). The repositories are generated once and kept under
//! the target directory (`shipflow-bench/`, 0.2 GB and 2.3 GB); the large one takes about 40 s
//! to generate.
//!
//! Each scale is a repository written with `git fast-import`, repacked and checked out like a
//! clone: apps under `apps/`, packages under `packages/` (one per ten apps), each with a
//! `package.json` naming its workspace dependencies, a `shipflow.toml` whose `depends_on`
//! lists the same dependencies (with the packages' own, since a package path does not pull
//! in others), a shared lockfile glob, a history of small commits with edits, additions,
//! deletions and renames, and two release tags per app. The last commit edits three apps and
//! one package with about thirty dependents at both scales, so one commit back is the same
//! change on a repository ten times larger.
//!
//! A round opens a `GitChangeDetector` and runs `Pipeline::plan`, the work of the CLI's
//! `plan` once the configuration is loaded (loading is timed apart), then spawns
//! `git diff --name-only` on the same revisions; rounds alternate between the scales, so load
//! from elsewhere hits both alike. The affected apps are checked against a set computed here
//! from `git diff --no-renames --name-only` and the `package.json` dependency lists.
//!
//! Measured on the 2-core project machine on 2026-12-02 while others built (load 1.5–5;
//! medians of 9 rounds), one commit back: 300 apps 2.9–3.5 ms against git diff's 2.2 ms
//! (plan/git 1.3–1.6); 3,000 apps 4.2–4.6 ms against 3.2–3.3 ms (1.3–1.5); 3,000/300 =
//! 1.29–1.48 for plan (1.44–1.64 in three more runs before the last fingerprint change;
//! 1.67–2.12 for the version before the app index, same machine, same day) and 1.4–1.5 for
//! git diff itself. With one app selected the 300-app plan takes 1.3 ms, so the same fixed
//! growth makes 2.1–2.3. By step at 3,000 apps: impact analysis 0.26 ms (1.6 ms before the
//! index), diff 1.0 ms, revision 0.64 ms (the first object lookup opens the pack index).
//!
//! Instructions per plan under callgrind (load-free; six plans less one, over five, each
//! with a fresh detector, the workspace clones made beforehand): 8.3 M at 300 apps, 21.4 M
//! at 3,000 (9.1 M and 30.1 M before the app index). At 3,000 apps (300 in brackets): the
//! tree diff 9.1 M (1.5 M): it reads `apps/`, a 105 KB tree of 3,000 entries, on both sides
//! as git does, and inflates it twice, because the old one is a delta against the new one
//! and gix re-inflates a delta's full base on every lookup (its delta cache keeps resolved
//! deltas only); equal subtrees are skipped (a plan inflates 43 objects in all). gix's pack-index
//! open 3.1 M (0.3 M): gix-pack 0.77 checks every 32-bit offset of the 500,000 objects
//! whenever it opens an index, with no option to skip. Fingerprints 5.4 M (4.2 M), the
//! extra being `apps/` read into a directory. The core's impact analysis 1.2 M (0.2 M),
//! 0.8 M of it copying the 2,967 unchanged app names into the plan. Before this bench
//! existed, plan at 300 apps took 800 ms (127 ms for one app): every fingerprint walked
//! the whole tree for the lockfile glob, and the dirty flag read the index and the work
//! tree.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shipflow_core::{Pipeline, Plan, Selection, Workspace, analyze};
use shipflow_git::GitChangeDetector;

/// Bumped whenever the generated repository changes, so a stale cache is never used.
const GENERATOR_VERSION: u32 = 3;
const LOCKFILE: &str = "package-lock.json";

/// The size of one generated monorepo.
#[derive(Debug, Clone, Copy)]
struct Scale {
    apps: usize,
    packages: usize,
    files: usize,
    commits: usize,
}

const SMALL: Scale = Scale {
    apps: 300,
    packages: 30,
    files: 50_000,
    commits: 150,
};

const LARGE: Scale = Scale {
    apps: 3_000,
    packages: 300,
    files: 500_000,
    commits: 150,
};

/// One generated repository, ready to plan on.
struct Subject {
    model: Model,
    root: PathBuf,
    workspace: Workspace,
}

/// What is planned: a base revision and which apps are asked for.
#[derive(Clone, Copy)]
enum Case {
    OneBack,
    OneBackOneApp,
    HundredBack,
}

impl Case {
    const ALL: [Case; 3] = [Case::OneBack, Case::OneBackOneApp, Case::HundredBack];

    fn label(self) -> &'static str {
        match self {
            Case::OneBack => "one commit back",
            Case::OneBackOneApp => "one commit back, one app selected",
            Case::HundredBack => "100 commits back",
        }
    }

    fn base(self) -> &'static str {
        match self {
            Case::OneBack | Case::OneBackOneApp => "HEAD~1",
            Case::HundredBack => "HEAD~100",
        }
    }

    fn selection(self, model: &Model) -> Selection {
        let apps = match self {
            Case::OneBackOneApp => vec![model.last_commit_apps[0].clone()],
            Case::OneBack | Case::HundredBack => Vec::new(),
        };
        Selection { all: false, apps }
    }
}

/// The steps of a plan one commit back, timed one by one.
const STEPS: [&str; 5] = [
    "open",
    "revision",
    "diff",
    "impact analysis (core)",
    "fingerprints",
];

fn main() {
    let small_only = std::env::args().skip(1).any(|arg| arg == "small");
    let rounds = std::env::var("SHIPFLOW_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(7usize)
        .max(5);
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let scales: &[Scale] = if small_only {
        &[SMALL]
    } else {
        &[SMALL, LARGE]
    };
    let subjects: Vec<Subject> = scales.iter().map(|scale| prepare(*scale, rounds)).collect();
    let ratio = |large: Duration, small: Duration| large.as_secs_f64() / small.as_secs_f64();

    // Each round plans on every scale in turn, and spawns git there, so a burst of load
    // from elsewhere hits every figure alike.
    println!(
        "
medians of {rounds} rounds"
    );
    for case in Case::ALL {
        println!("{}:", case.label());
        let mut plans = vec![Vec::new(); subjects.len()];
        let mut diffs = vec![Vec::new(); subjects.len()];
        for subject in &subjects {
            check(&runtime, subject, case);
        }
        for _ in 0..rounds {
            for (i, subject) in subjects.iter().enumerate() {
                plans[i].push(plan(&runtime, subject, case).1);
                diffs[i].push(timed(|| {
                    git(&subject.root, &["diff", "--name-only", case.base(), "HEAD"]);
                }));
            }
        }
        let plans: Vec<Duration> = plans.into_iter().map(middle).collect();
        let diffs: Vec<Duration> = diffs.into_iter().map(middle).collect();
        for (i, subject) in subjects.iter().enumerate() {
            let diff = diffs[i];
            println!(
                "  {:>5} apps: plan {:.2?}, git diff --name-only {diff:.2?}, plan/git = {:.2}",
                subject.model.scale.apps,
                plans[i],
                ratio(plans[i], diff),
            );
        }
        if let ([small, large], [small_diff, large_diff]) = (&plans[..], &diffs[..]) {
            println!(
                "  large/small: plan {:.2}, git diff {:.2}",
                ratio(*large, *small),
                ratio(*large_diff, *small_diff)
            );
        }
    }

    println!("one commit back, where the time goes:");
    let mut steps = vec![vec![Vec::new(); STEPS.len()]; subjects.len()];
    for _ in 0..rounds {
        for (i, subject) in subjects.iter().enumerate() {
            for (step, time) in time_steps(subject).into_iter().enumerate() {
                steps[i][step].push(time);
            }
        }
    }
    let steps: Vec<Vec<Duration>> = steps
        .into_iter()
        .map(|times| times.into_iter().map(middle).collect())
        .collect();
    for (subject, times) in subjects.iter().zip(&steps) {
        let listed: Vec<String> = STEPS
            .iter()
            .zip(times)
            .map(|(step, time)| format!("{step} {time:.2?}"))
            .collect();
        println!(
            "  {:>5} apps: {}",
            subject.model.scale.apps,
            listed.join(", ")
        );
    }
    if let [small, large] = &steps[..] {
        let listed: Vec<String> = STEPS
            .iter()
            .zip(large.iter().zip(small))
            .map(|(step, (large, small))| format!("{step} {:.2}", ratio(*large, *small)))
            .collect();
        println!("  large/small: {}", listed.join(", "));
    }
}

/// Generates (or finds) the repository for `scale` and loads its `shipflow.toml`.
fn prepare(scale: Scale, rounds: usize) -> Subject {
    let model = Model::new(scale);
    let root = cached_repository(&model);
    let config = root.join("shipflow.toml");
    let load = median(rounds, || {
        Workspace::load(&config).expect("load shipflow.toml");
    });
    let workspace = Workspace::load(&config).expect("load shipflow.toml");
    println!(
        "{} apps, {} packages, {} files, {} commits in {}; loading shipflow.toml: {load:.2?}",
        scale.apps,
        scale.packages,
        scale.files,
        scale.commits,
        root.display()
    );
    Subject {
        model,
        root,
        workspace,
    }
}

/// One round: what the CLI's `plan` does once its configuration is loaded (the clone of
/// the loaded workspace is not timed), and its time.
fn plan(runtime: &tokio::runtime::Runtime, subject: &Subject, case: Case) -> (Plan, Duration) {
    let workspace = subject.workspace.clone();
    let selection = case.selection(&subject.model);
    let started = Instant::now();
    let detector = GitChangeDetector::open(&subject.root).expect("open the generated repository");
    let pipeline = Pipeline::builder(workspace)
        .detector(Arc::new(detector))
        .build()
        .expect("a pipeline");
    let plan = runtime
        .block_on(pipeline.plan(Some(case.base()), "HEAD", &selection))
        .expect("plan");
    (plan, started.elapsed())
}

/// The plan names the apps that the diff and the dependency lists give, and as many
/// changed paths as `git diff` lists.
fn check(runtime: &tokio::runtime::Runtime, subject: &Subject, case: Case) {
    let (planned, _) = plan(runtime, subject, case);
    let both_sides = ["diff", "--no-renames", "--name-only", case.base(), "HEAD"];
    let selection = case.selection(&subject.model);
    let expected: BTreeSet<String> = subject
        .model
        .affected(&git(&subject.root, &both_sides))
        .into_iter()
        .filter(|app| selection.apps.is_empty() || selection.apps.contains(app))
        .collect();
    let got: BTreeSet<String> = planned.apps.iter().map(|a| a.app.clone()).collect();
    let label = case.label();
    let apps = subject.model.scale.apps;
    assert_eq!(
        got, expected,
        "{apps} apps, {label}: plan and the independent computation disagree"
    );
    let listed = git(&subject.root, &["diff", "--name-only", case.base(), "HEAD"])
        .lines()
        .count();
    assert_eq!(
        planned.changed_paths, listed,
        "{apps} apps, {label}: changed paths differ from git diff"
    );
    println!(
        "{apps} apps, {label}: {listed} paths changed, {} apps affected (as computed from git diff and package.json)",
        got.len()
    );
}

/// The time of each of [`STEPS`], called directly rather than through the pipeline (which
/// adds a trip to the blocking pool per call).
fn time_steps(subject: &Subject) -> Vec<Duration> {
    let workspace = &subject.workspace;
    let mut times = Vec::with_capacity(STEPS.len());
    let started = Instant::now();
    let detector = GitChangeDetector::open(&subject.root).expect("open the generated repository");
    times.push(started.elapsed());
    let started = Instant::now();
    detector.revision_info("HEAD").expect("revision");
    times.push(started.elapsed());
    let started = Instant::now();
    let changes = detector.changed("HEAD~1", "HEAD").expect("diff");
    times.push(started.elapsed());
    let started = Instant::now();
    let set = analyze(workspace, &changes.paths, &Selection::default()).expect("analyze");
    times.push(started.elapsed());
    let started = Instant::now();
    for app in set.apps.keys() {
        let app = workspace.app(app).expect("an app of the workspace");
        detector
            .fingerprint_at("HEAD", &workspace.inputs(app))
            .expect("fingerprint");
    }
    times.push(started.elapsed());
    times
}

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn middle(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn median(rounds: usize, mut f: impl FnMut()) -> Duration {
    middle((0..rounds).map(|_| timed(&mut f)).collect())
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = git_command(repo, args).output().expect("the git CLI");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git_command(repo: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .args(args)
        .current_dir(repo)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    command
}

/// A deterministic xorshift generator: the same repository on every run.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An app or a package: its directory, its files, its direct workspace dependencies.
struct Project {
    name: String,
    dir: String,
    /// Indices into `Model::packages`.
    deps: Vec<usize>,
    files: Vec<String>,
}

impl Project {
    fn package_json(&self, packages: &[Project]) -> String {
        let deps: Vec<String> = self
            .deps
            .iter()
            .map(|&p| format!("    \"@acme/{}\": \"*\"", packages[p].name))
            .collect();
        format!(
            "{{\n  \"name\": \"@acme/{}\",\n  \"private\": true,\n  \"dependencies\": {{\n{}\n  }}\n}}\n",
            self.name,
            deps.join(",\n")
        )
    }
}

/// One change of a commit.
enum Edit {
    Modify(String),
    Add(String),
    Delete(String),
    Rename(String, String),
}

/// The repository's content and history, computed before anything is written.
struct Model {
    scale: Scale,
    apps: Vec<Project>,
    packages: Vec<Project>,
    /// Files outside apps and packages.
    docs: Vec<String>,
    /// Commits after the first, oldest first.
    history: Vec<Vec<Edit>>,
    /// The apps whose own files the last commit edits.
    last_commit_apps: Vec<String>,
}

impl Model {
    fn new(scale: Scale) -> Self {
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let projects = scale.apps + scale.packages;
        let per_project = scale.files / projects - 1;
        // Packages in groups of ten: the first five depend on nothing, the other five on
        // one or two of the first five, like ui kits over utilities.
        let packages: Vec<Project> = (0..scale.packages)
            .map(|i| {
                let group = i - i % 10;
                let deps = if i % 10 < 5 {
                    Vec::new()
                } else {
                    let mut deps = vec![group + random.below(5)];
                    deps.push(group + random.below(5));
                    deps.truncate(1 + random.below(2));
                    deps.sort_unstable();
                    deps.dedup();
                    deps.retain(|&d| d < scale.packages);
                    deps
                };
                project(format!("pkg-{i:03}"), "packages", deps, per_project)
            })
            .collect();
        let apps: Vec<Project> = (0..scale.apps)
            .map(|i| {
                let mut deps: Vec<usize> = (0..1 + random.below(3))
                    .map(|_| random.below(scale.packages))
                    .collect();
                deps.sort_unstable();
                deps.dedup();
                project(format!("app-{i:04}"), "apps", deps, per_project)
            })
            .collect();
        let docs_count = scale.files - projects * (per_project + 1) - 3;
        let docs = (0..docs_count)
            .map(|i| format!("docs/d{:02}/page-{i}.md", i % 20))
            .collect();
        let mut model = Self {
            scale,
            apps,
            packages,
            docs,
            history: Vec::new(),
            last_commit_apps: Vec::new(),
        };
        model.make_history(&mut random);
        model
    }

    /// Small commits: edits of three files, every tenth adds one, every tenth (offset five)
    /// deletes one, every 25th renames a file from one app to another, some touch docs.
    /// The last edits three apps and the package whose dependents are closest to thirty.
    /// `self`'s file lists stay those of the first commit.
    fn make_history(&mut self, random: &mut Random) {
        let apps = self.apps.len();
        // Every project's files as the history goes: apps first, then packages.
        let mut live: Vec<Vec<String>> = self
            .apps
            .iter()
            .chain(&self.packages)
            .map(|p| p.files.clone())
            .collect();
        for n in 0..self.scale.commits - 1 {
            let mut edits = Vec::new();
            for _ in 0..3 {
                let files = &live[random.below(live.len())];
                edits.push(Edit::Modify(files[random.below(files.len())].clone()));
            }
            match n % 10 {
                0 => {
                    let app = random.below(apps);
                    let path = format!("{}/src/new/n{n}.ts", self.apps[app].dir);
                    live[app].push(path.clone());
                    edits.push(Edit::Add(path));
                }
                5 => {
                    // Never the package.json, which comes first.
                    let files = &mut live[random.below(apps)];
                    let file = 1 + random.below(files.len() - 1);
                    edits.push(Edit::Delete(files.remove(file)));
                }
                _ => {}
            }
            if n % 25 == 12 {
                let (from, to) = (random.below(apps), random.below(apps));
                let file = 1 + random.below(live[from].len() - 1);
                let old = live[from].remove(file);
                let new = format!("{}/src/moved/r{n}.ts", self.apps[to].dir);
                live[to].push(new.clone());
                edits.push(Edit::Rename(old, new));
            }
            if n % 7 == 3 {
                edits.push(Edit::Modify(
                    self.docs[random.below(self.docs.len())].clone(),
                ));
            }
            self.history.push(edits);
        }

        let dependents = self.dependents();
        let package = (0..self.packages.len())
            .min_by_key(|p| dependents[*p].len().abs_diff(30))
            .expect("at least one package");
        let mut edits = vec![Edit::Modify(self.packages[package].files[1].clone())];
        for _ in 0..3 {
            let app = random.below(apps);
            edits.push(Edit::Modify(live[app][1].clone()));
            self.last_commit_apps.push(self.apps[app].name.clone());
        }
        self.history.push(edits);
    }

    /// For each package, the apps that use it, directly or through other packages: a walk
    /// up the reverse `package.json` edges.
    fn dependents(&self) -> Vec<BTreeSet<String>> {
        let mut used_by_packages: Vec<Vec<usize>> = vec![Vec::new(); self.packages.len()];
        let mut used_by_apps: Vec<Vec<usize>> = vec![Vec::new(); self.packages.len()];
        for (p, package) in self.packages.iter().enumerate() {
            for &dep in &package.deps {
                used_by_packages[dep].push(p);
            }
        }
        for (a, app) in self.apps.iter().enumerate() {
            for &dep in &app.deps {
                used_by_apps[dep].push(a);
            }
        }
        (0..self.packages.len())
            .map(|start| {
                let mut apps = BTreeSet::new();
                let mut seen = BTreeSet::from([start]);
                let mut queue = vec![start];
                while let Some(p) = queue.pop() {
                    apps.extend(used_by_apps[p].iter().map(|&a| self.apps[a].name.clone()));
                    for &up in &used_by_packages[p] {
                        if seen.insert(up) {
                            queue.push(up);
                        }
                    }
                }
                apps
            })
            .collect()
    }

    /// The apps that `git diff --no-renames --name-only` output touches: their own
    /// files, the packages they use, or the shared lockfile.
    fn affected(&self, diff: &str) -> BTreeSet<String> {
        let dependents = self.dependents();
        let package_index: BTreeMap<&str, usize> = self
            .packages
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect();
        let mut affected = BTreeSet::new();
        for path in diff.lines() {
            let mut parts = path.splitn(3, '/');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(LOCKFILE), None, None) => {
                    return self.apps.iter().map(|a| a.name.clone()).collect();
                }
                (Some("apps"), Some(app), Some(_)) => {
                    affected.insert(app.to_owned());
                }
                (Some("packages"), Some(package), Some(_)) => {
                    affected.extend(dependents[package_index[package]].iter().cloned());
                }
                _ => {}
            }
        }
        affected
    }

    /// `shipflow.toml`: each app with the packages it uses, the packages' own included.
    fn shipflow_toml(&self) -> String {
        let mut toml = format!(
            "[workspace]\nregistry = \"registry.example.com/acme\"\nshared = [\"{LOCKFILE}\"]\n"
        );
        for app in &self.apps {
            let mut uses = BTreeSet::new();
            let mut stack = app.deps.clone();
            while let Some(p) = stack.pop() {
                if uses.insert(p) {
                    stack.extend(&self.packages[p].deps);
                }
            }
            let deps: Vec<String> = uses
                .iter()
                .map(|&p| format!("\"{}\"", self.packages[p].dir))
                .collect();
            toml.push_str(&format!(
                "\n[apps.{}]\ndepends_on = [{}]\n",
                app.name,
                deps.join(", ")
            ));
        }
        toml
    }

    /// The first commit: every file.
    fn first_commit(&self, out: &mut impl Write) -> std::io::Result<()> {
        let root_json = "{\n  \"name\": \"acme\",\n  \"private\": true,\n  \"workspaces\": [\"apps/*\", \"packages/*\"]\n}\n";
        inline(out, "package.json", root_json)?;
        inline(out, LOCKFILE, "{ \"lockfileVersion\": 3 }\n")?;
        inline(out, "shipflow.toml", &self.shipflow_toml())?;
        for project in self.packages.iter().chain(&self.apps) {
            let (manifest, sources) = project.files.split_first().expect("a package.json");
            inline(out, manifest, &project.package_json(&self.packages))?;
            for file in sources {
                inline(out, file, &format!("export const id = \"{file}\";\n"))?;
            }
        }
        for file in &self.docs {
            inline(out, file, &format!("# {file}\n"))?;
        }
        Ok(())
    }
}

fn project(name: String, parent: &str, deps: Vec<usize>, sources: usize) -> Project {
    let dir = format!("{parent}/{name}");
    let mut files = vec![format!("{dir}/package.json")];
    files.extend((0..sources).map(|i| format!("{dir}/src/m{:02}/f{:02}.ts", i / 10, i % 10)));
    Project {
        name,
        dir,
        deps,
        files,
    }
}

fn inline(out: &mut impl Write, path: &str, content: &str) -> std::io::Result<()> {
    write!(
        out,
        "M 100644 inline {path}\ndata {}\n{content}\n",
        content.len()
    )
}

/// The generated repository for `model`, from the cache when it is there.
fn cached_repository(model: &Model) -> PathBuf {
    let s = model.scale;
    let name = format!(
        "plan-v{GENERATOR_VERSION}-{}apps-{}packages-{}files-{}commits",
        s.apps, s.packages, s.files, s.commits
    );
    let cache = cache_dir();
    let root = cache.join(&name);
    let done = root.join(".git/shipflow-bench-complete");
    if done.exists() {
        return root;
    }
    let partial = cache.join(format!("{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).expect("remove a half-generated repository");
    }
    std::fs::create_dir_all(&partial).expect("create the cache directory");
    let started = Instant::now();
    generate(&partial, model);
    std::fs::write(partial.join(".git/shipflow-bench-complete"), "").expect("mark complete");
    if root.exists() {
        std::fs::remove_dir_all(&root).expect("remove a stale repository");
    }
    std::fs::rename(&partial, &root).expect("move the repository into the cache");
    println!("generated {} in {:.1?}", root.display(), started.elapsed());
    root
}

/// `shipflow-bench/` in the target directory this bench was built in, else in the temp dir.
fn cache_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's path");
    // <target>/release/deps/plan-<hash>
    match exe.ancestors().nth(3) {
        Some(target) if target.join("release").is_dir() => target.join("shipflow-bench"),
        _ => std::env::temp_dir().join("shipflow-bench"),
    }
}

/// Writes the history with one `git fast-import` stream, then checks out `main`.
fn generate(repo: &Path, model: &Model) {
    git(repo, &["init", "-q", "-b", "main"]);
    let mut child = git_command(repo, &["fast-import", "--quiet"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let stdin = child.stdin.take().expect("piped stdin");
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdin);
    let mut time = 1_700_000_000u64;
    let mut mark = 0usize;
    let mut header = |out: &mut std::io::BufWriter<_>, message: &str| {
        time += 60;
        mark += 1;
        write!(
            out,
            "commit refs/heads/main\nmark :{mark}\ncommitter Bench <bench@example.com> {time} +0000\ndata {}\n{message}\n",
            message.len() + 1
        )
    };
    header(&mut out, "first").expect("write to fast-import");
    model.first_commit(&mut out).expect("write to fast-import");
    for (n, edits) in model.history.iter().enumerate() {
        header(&mut out, &format!("change {n}")).expect("write to fast-import");
        for edit in edits {
            match edit {
                Edit::Modify(path) | Edit::Add(path) => inline(
                    &mut out,
                    path,
                    &format!("export const id = \"{path} {n}\";\n"),
                ),
                Edit::Delete(path) => writeln!(out, "D {path}"),
                Edit::Rename(from, to) => writeln!(out, "R {from} {to}"),
            }
            .expect("write to fast-import");
        }
        writeln!(out).expect("write to fast-import");
    }
    // Release tags, as a monorepo that ships apps has: two per app on older commits, one
    // annotated and one not (the last commit, the head, has none).
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for app in &model.apps {
        let commit = 1 + random.below(model.history.len());
        let message = format!("release {} v1", app.name);
        write!(
            out,
            "tag {}/v1\nfrom :{commit}\ntagger Bench <bench@example.com> 1700000000 +0000\ndata {}\n{message}\n",
            app.name,
            message.len() + 1
        )
        .expect("write to fast-import");
        let commit = 1 + random.below(model.history.len());
        writeln!(out, "reset refs/tags/{}/v2\nfrom :{commit}\n", app.name)
            .expect("write to fast-import");
    }
    drop(out);
    let status = child.wait().expect("wait for fast-import");
    assert!(status.success(), "git fast-import failed");
    // As a clone has it: objects packed with fresh deltas (fast-import's own chains end at
    // the newest trees, where a server's pack starts from them), refs packed, files checked
    // out and an index, so the work tree is there to be (not) looked at.
    git(repo, &["repack", "-adfq"]);
    git(repo, &["pack-refs", "--all"]);
    git(repo, &["reset", "-q", "--hard", "main"]);
}
