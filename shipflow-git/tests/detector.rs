//! GitChangeDetector against real repositories made with the `git` CLI, cross-checked with
//! what `git` itself reports on the same repository.

use std::path::{Path, PathBuf};
use std::process::Command;

use rstest::rstest;
use shipflow_core::{AppInputs, ChangeDetector, ChangeKind, ChangedPath, Context};
use shipflow_git::{GitChangeDetector, GitError};
use tempfile::TempDir;

/// A repository in a temp dir, driven by the `git` CLI with no user or system config.
struct Repo {
    _dir: TempDir,
    root: PathBuf,
}

impl Repo {
    /// `git init -b main` in a fresh temp dir.
    fn new() -> Self {
        let dir = TempDir::new().expect("a temp dir");
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).expect("create repo dir");
        let repo = Self { _dir: dir, root };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// A repository at `root` (made by a clone), kept alive by `dir`.
    fn at(dir: TempDir, root: PathBuf) -> Self {
        Self { _dir: dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Runs git in the repository; panics with git's stderr when it fails.
    fn git(&self, args: &[&str]) -> String {
        let out = self.try_git(args);
        match out {
            Ok(stdout) => stdout,
            Err(stderr) => panic!("git {args:?} failed: {stderr}"),
        }
    }

    fn try_git(&self, args: &[&str]) -> Result<String, String> {
        git_in(&self.root, args)
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("a file has a parent")).expect("mkdir -p");
        std::fs::write(path, content).expect("write file");
    }

    fn remove(&self, rel: &str) {
        self.git(&["rm", "-q", "-r", rel]);
    }

    /// Commits everything and returns the commit id.
    fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.rev("HEAD")
    }

    fn rev(&self, rev: &str) -> String {
        self.git(&["rev-parse", &format!("{rev}^{{commit}}")])
    }

    fn detector(&self) -> GitChangeDetector {
        GitChangeDetector::open(&self.root).expect("open the test repository")
    }

    /// What `git diff --raw -M base head` reports, as changed paths: the same letters as
    /// `--name-status`, plus the modes, so an executable-bit change (git's `M` with a new
    /// mode) maps to `TypeChanged` like the core model asks.
    fn git_diff(&self, base: &str, head: &str) -> Vec<ChangedPath> {
        let raw = self.git(&["diff", "--raw", "-M", "--no-abbrev", base, head]);
        let mut paths: Vec<ChangedPath> = raw.lines().map(parse_raw_line).collect();
        paths.sort();
        // --name-status must agree with --raw on paths and letters.
        let name_status = self.git(&["diff", "--name-status", "-M", base, head]);
        assert_eq!(
            name_status.lines().count(),
            paths.len(),
            "--name-status and --raw disagree: {name_status}"
        );
        paths
    }
}

fn git_in(dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("the git CLI is installed (it is the reference these tests check against)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `:100644 100755 <old> <new> M\tpath` or `... R087\told\tnew`.
fn parse_raw_line(line: &str) -> ChangedPath {
    let (meta, paths) = line.split_once('\t').expect("a raw diff line has a tab");
    let fields: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
    let (old_mode, new_mode, status) = (fields[0], fields[1], fields[4]);
    let mut paths = paths.split('\t');
    let first = paths.next().expect("a path").to_owned();
    match &status[..1] {
        "A" => ChangedPath::new(first, ChangeKind::Added),
        "D" => ChangedPath::new(first, ChangeKind::Deleted),
        "T" => ChangedPath::new(first, ChangeKind::TypeChanged),
        "M" if old_mode != new_mode => ChangedPath::new(first, ChangeKind::TypeChanged),
        "M" => ChangedPath::new(first, ChangeKind::Modified),
        "R" => ChangedPath::renamed(first, paths.next().expect("a rename has two paths")),
        other => panic!("unexpected status {other} in {line}"),
    }
}

/// Enough lines that git and gix agree a lightly edited file is a rename (≥ 50% similar).
fn long_text(tag: &str) -> String {
    (0..40).map(|i| format!("{tag} line {i}\n")).collect()
}

/// The base commit every change case starts from.
fn base_repo() -> (Repo, String) {
    let repo = Repo::new();
    repo.write("README.md", "# monorepo\n");
    repo.write("apps/api/src/main.rs", &long_text("api"));
    repo.write("apps/api/Dockerfile", "FROM scratch\n");
    repo.write("apps/web/index.html", "<h1>web</h1>\n");
    repo.write("libs/common/lib.rs", &long_text("common"));
    repo.write("scripts/deploy.sh", "echo deploy\n");
    repo.write("config/app.toml", "name = \"api\"\n");
    repo.write("tools/gen/a.txt", "a\n");
    let base = repo.commit("base");
    (repo, base)
}

fn add(repo: &Repo) {
    repo.write("apps/api/src/new.rs", "pub fn new() {}\n");
}

fn delete(repo: &Repo) {
    repo.remove("apps/web/index.html");
}

fn modify(repo: &Repo) {
    repo.write("libs/common/lib.rs", &long_text("changed"));
}

fn chmod_x(repo: &Repo) {
    use std::os::unix::fs::PermissionsExt;
    let path = repo.path("scripts/deploy.sh");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod +x");
}

fn file_to_symlink(repo: &Repo) {
    let path = repo.path("config/app.toml");
    std::fs::remove_file(&path).expect("rm file");
    std::os::unix::fs::symlink("../README.md", path).expect("ln -s");
}

fn rename(repo: &Repo) {
    std::fs::create_dir_all(repo.path("libs/shared")).expect("mkdir");
    repo.git(&["mv", "libs/common/lib.rs", "libs/shared/lib.rs"]);
}

fn rename_dir(repo: &Repo) {
    std::fs::create_dir_all(repo.path("services")).expect("mkdir");
    repo.git(&["mv", "apps/api", "services/api"]);
}

fn rename_and_edit(repo: &Repo) {
    repo.git(&["mv", "apps/api/src/main.rs", "apps/api/src/app.rs"]);
    let mut text = long_text("api");
    text.push_str("one more line\n");
    repo.write("apps/api/src/app.rs", &text);
}

fn submodule_pointer(repo: &Repo) {
    // The base has no gitlink; commit one pointing at the base, then move it. The empty
    // directory is an unpopulated submodule, so `git add -A` keeps the gitlink.
    std::fs::create_dir_all(repo.path("vendor/lib")).expect("mkdir");
    let first = repo.rev("HEAD");
    repo.git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("160000,{first},vendor/lib"),
    ]);
    repo.git(&["commit", "-q", "-m", "add gitlink"]);
    let second = repo.rev("HEAD");
    repo.git(&[
        "update-index",
        "--cacheinfo",
        &format!("160000,{second},vendor/lib"),
    ]);
}

fn nested_dirs(repo: &Repo) {
    repo.write("apps/api/src/deep/er/still/mod.rs", "mod x;\n");
    repo.write("tools/gen/a.txt", "a changed\n");
    repo.remove("README.md");
}

fn dir_to_file(repo: &Repo) {
    repo.remove("tools/gen");
    repo.write("tools/gen", "now a file\n");
}

fn changed(kind: ChangeKind, path: &str) -> ChangedPath {
    ChangedPath::new(path, kind)
}

#[rstest]
#[case::add(add, vec![changed(ChangeKind::Added, "apps/api/src/new.rs")])]
#[case::delete(delete, vec![changed(ChangeKind::Deleted, "apps/web/index.html")])]
#[case::modify(modify, vec![changed(ChangeKind::Modified, "libs/common/lib.rs")])]
#[case::chmod_x(chmod_x, vec![changed(ChangeKind::TypeChanged, "scripts/deploy.sh")])]
#[case::file_to_symlink(file_to_symlink, vec![changed(ChangeKind::TypeChanged, "config/app.toml")])]
#[case::rename(rename, vec![ChangedPath::renamed("libs/common/lib.rs", "libs/shared/lib.rs")])]
#[case::rename_dir(rename_dir, vec![
    ChangedPath::renamed("apps/api/Dockerfile", "services/api/Dockerfile"),
    ChangedPath::renamed("apps/api/src/main.rs", "services/api/src/main.rs"),
])]
#[case::rename_and_edit(
    rename_and_edit,
    vec![ChangedPath::renamed("apps/api/src/main.rs", "apps/api/src/app.rs")]
)]
#[case::submodule_pointer(submodule_pointer, vec![changed(ChangeKind::Modified, "vendor/lib")])]
#[case::nested_dirs(nested_dirs, vec![
    changed(ChangeKind::Deleted, "README.md"),
    changed(ChangeKind::Added, "apps/api/src/deep/er/still/mod.rs"),
    changed(ChangeKind::Modified, "tools/gen/a.txt"),
])]
#[case::dir_to_file(dir_to_file, vec![
    changed(ChangeKind::Added, "tools/gen"),
    changed(ChangeKind::Deleted, "tools/gen/a.txt"),
])]
fn changed_paths_match_git(#[case] change: fn(&Repo), #[case] expected: Vec<ChangedPath>) {
    let (repo, _) = base_repo();
    change(&repo);
    // Cases that commit on their own (the gitlink) diff from their own first commit.
    let base = repo.rev("HEAD");
    let head = repo.commit("change");

    let changes = repo
        .detector()
        .changed(&base, &head)
        .expect("diff two commits");

    assert_eq!(
        changes.paths,
        repo.git_diff(&base, &head),
        "gix vs git diff"
    );
    let mut expected = expected;
    expected.sort();
    assert_eq!(changes.paths, expected);
    assert_eq!(changes.base.as_deref(), Some(base.as_str()));
    assert_eq!(changes.head, head);
}

#[test]
fn same_commit_has_no_changes() {
    let (repo, base) = base_repo();
    let changes = repo.detector().changed(&base, "HEAD").expect("diff");
    assert!(changes.paths.is_empty());
    assert_eq!(repo.git_diff(&base, "HEAD"), changes.paths);
}

/// main: c1 - c2 (tag v1, annotated) - c3 (pushed as origin/develop) - c4 = HEAD;
/// feature: c2 - f1.
fn history() -> Repo {
    let repo = Repo::new();
    repo.write("a.txt", "1\n");
    repo.commit("c1");
    repo.write("a.txt", "2\n");
    repo.write("b.txt", "b\n");
    repo.commit("c2");
    repo.git(&["tag", "-a", "v1", "-m", "release v1"]);
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("feature.txt", "feature\n");
    repo.commit("f1");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("c.txt", "c\n");
    repo.commit("c3");

    let origin = repo.root.with_file_name("origin.git");
    let origin = origin.to_str().expect("utf-8 temp path");
    repo.git(&["clone", "-q", "--bare", ".", origin]);
    repo.git(&["remote", "add", "origin", origin]);
    repo.git(&["push", "-q", "origin", "main:develop"]);
    repo.git(&["fetch", "-q", "origin"]);

    repo.write("nested/dir/d.txt", "d\n");
    repo.remove("b.txt");
    repo.commit("c4");
    repo
}

#[rstest]
#[case::full_sha("FULL_SHA")]
#[case::short_sha("SHORT_SHA")]
#[case::branch("feature")]
#[case::remote_branch("origin/develop")]
#[case::annotated_tag("v1")]
#[case::ancestry("HEAD~3")]
#[case::merge_base("feature...HEAD")]
#[case::merge_base_implicit_head("feature...")]
fn revision_forms_resolve_like_git(#[case] base: &str) {
    let repo = history();
    let c1 = repo.rev("HEAD~3");
    let base = match base {
        "FULL_SHA" => c1.clone(),
        "SHORT_SHA" => c1[..7].to_owned(),
        other => other.to_owned(),
    };
    let expected_base = match base.split_once("...") {
        Some((left, _)) => repo.git(&["merge-base", left, "HEAD"]),
        None => repo.rev(&base),
    };

    let changes = repo
        .detector()
        .changed(&base, "HEAD")
        .expect("resolve and diff");

    assert_eq!(changes.base.as_deref(), Some(expected_base.as_str()));
    assert_eq!(changes.head, repo.rev("HEAD"));
    assert!(!changes.paths.is_empty());
    assert_eq!(changes.paths, repo.git_diff(&expected_base, "HEAD"));
}

#[test]
fn merge_base_matches_git_three_dot_diff() {
    let repo = history();
    let changes = repo
        .detector()
        .changed("feature...main", "main")
        .expect("diff");
    let git = repo.git(&["diff", "--name-only", "feature...main"]);
    let git: Vec<&str> = git.lines().collect();
    let ours: Vec<&str> = changes.paths.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(ours, git);
    assert_eq!(ours, ["b.txt", "c.txt", "nested/dir/d.txt"]);
}

#[test]
fn opens_from_a_subdirectory() {
    let repo = history();
    let detector = GitChangeDetector::open(repo.path("nested/dir")).expect("discover upwards");
    let workdir = detector.workdir().expect("a work tree").canonicalize();
    assert_eq!(
        workdir.expect("canonical"),
        repo.root.canonicalize().expect("canonical")
    );
    let changes = detector.changed("HEAD~1", "HEAD").expect("diff");
    assert_eq!(changes.paths, repo.git_diff("HEAD~1", "HEAD"));
}

#[test]
fn unknown_revision_says_what_to_do() {
    let repo = history();
    let err = repo
        .detector()
        .changed("no-such-branch", "HEAD")
        .expect_err("an unknown base");
    assert!(matches!(err, GitError::UnknownRevision { ref rev } if rev == "no-such-branch"));
    assert_eq!(
        err.to_string(),
        "unknown revision \"no-such-branch\": check the name, or fetch it (git fetch origin no-such-branch)"
    );
    assert!(repo.try_git(&["rev-parse", "no-such-branch"]).is_err());

    let err = repo
        .detector()
        .changed("HEAD", "nope...HEAD")
        .expect_err("an unknown head");
    assert!(matches!(err, GitError::UnknownRevision { .. }), "{err}");
}

#[test]
fn not_a_repository_names_the_path() {
    let dir = TempDir::new().expect("temp dir");
    let err = GitChangeDetector::open(dir.path()).expect_err("no repository here");
    assert!(matches!(err, GitError::NotARepository { ref path } if path == dir.path()));
    assert_eq!(
        err.to_string(),
        format!(
            "{} is not inside a git repository: run shipflow from a clone of your monorepo (or `git init` one)",
            dir.path().display()
        )
    );
}

#[test]
fn unborn_head_says_commit_first() {
    let repo = Repo::new();
    let detector = repo.detector();
    let message = "HEAD has no commit yet: commit something first";

    let err = detector.changed("HEAD~1", "HEAD").expect_err("no commits");
    assert!(matches!(err, GitError::UnbornHead), "{err:?}");
    assert_eq!(err.to_string(), message);
    let err = detector.revision_info("HEAD").expect_err("no commits");
    assert_eq!(err.to_string(), message);
    let err = detector.default_base().expect_err("no commits");
    assert_eq!(err.to_string(), message);
}

/// A `--depth 1` clone of [`history`]'s main branch.
fn shallow_clone() -> (Repo, Repo) {
    let upstream = history();
    let dir = TempDir::new().expect("temp dir");
    let root = dir.path().join("shallow");
    let url = format!("file://{}", upstream.root.display());
    let dest = root.to_str().expect("utf-8 temp path");
    git_in(dir.path(), &["clone", "-q", "--depth", "1", &url, dest]).expect("shallow clone");
    (upstream, Repo::at(dir, root))
}

#[test]
fn shallow_clone_lacking_the_base_says_fetch_more() {
    let (upstream, shallow) = shallow_clone();
    assert!(shallow.path(".git/shallow").exists());
    // git itself cannot resolve it either.
    assert!(shallow.try_git(&["rev-parse", "HEAD~1^{commit}"]).is_err());
    let detector = shallow.detector();

    let err = detector
        .changed("HEAD~1", "HEAD")
        .expect_err("HEAD~1 is cut off");
    assert!(matches!(err, GitError::ShallowHistory { ref rev } if rev == "HEAD~1"));
    assert_eq!(
        err.to_string(),
        "history is shallow and lacks HEAD~1: fetch with --depth N or --unshallow"
    );

    let old = upstream.rev("HEAD~3");
    let err = detector
        .changed(&old, "HEAD")
        .expect_err("the old commit is not fetched");
    assert_eq!(
        err.to_string(),
        format!("history is shallow and lacks {old}: fetch with --depth N or --unshallow")
    );

    // What the clone does have still works.
    let changes = detector.changed("HEAD", "HEAD").expect("the one commit");
    assert!(changes.paths.is_empty());
}

#[test]
fn shallow_clone_lacking_the_merge_base_says_fetch_more() {
    let upstream = history();
    let dir = TempDir::new().expect("temp dir");
    let root = dir.path().join("shallow");
    let url = format!("file://{}", upstream.root.display());
    let dest = root.to_str().expect("utf-8 temp path");
    git_in(
        dir.path(),
        &[
            "clone",
            "-q",
            "--depth",
            "1",
            "--no-single-branch",
            &url,
            dest,
        ],
    )
    .expect("shallow clone of all branches");
    let shallow = Repo::at(dir, root);
    // git cannot find it either.
    assert!(
        shallow
            .try_git(&["merge-base", "origin/feature", "HEAD"])
            .is_err()
    );

    let err = shallow
        .detector()
        .changed("origin/feature...HEAD", "HEAD")
        .expect_err("the merge base is cut off");
    assert!(matches!(err, GitError::ShallowHistory { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "history is shallow and lacks the merge base of origin/feature and HEAD: fetch with --depth N or --unshallow"
    );
}

#[test]
fn unrelated_histories_have_no_merge_base() {
    let repo = history();
    repo.git(&["checkout", "-q", "--orphan", "other"]);
    repo.commit("unrelated");
    let err = repo
        .detector()
        .changed("main...other", "other")
        .expect_err("no common ancestor");
    assert!(matches!(err, GitError::NoMergeBase { .. }), "{err:?}");
}

#[rstest]
#[case::clone_with_local_commit("clone", Some("origin/HEAD...HEAD"))]
#[case::feature_branch("feature", Some("main...HEAD"))]
#[case::main_without_remote("main", Some("HEAD~1"))]
#[case::single_commit("single", None)]
fn default_base_prefers_upstream(#[case] setup: &str, #[case] expected: Option<&str>) {
    let repo = match setup {
        "clone" => {
            let upstream = history();
            let dir = TempDir::new().expect("temp dir");
            let root = dir.path().join("clone");
            let dest = root.to_str().expect("utf-8 temp path");
            let src = upstream.root.to_str().expect("utf-8 temp path");
            git_in(dir.path(), &["clone", "-q", src, dest]).expect("clone");
            let clone = Repo::at(dir, root);
            clone.write("local.txt", "local\n");
            clone.commit("local");
            clone
        }
        "feature" => {
            let repo = history();
            repo.git(&["checkout", "-q", "feature"]);
            repo.git(&["remote", "remove", "origin"]);
            repo
        }
        "main" => {
            let (repo, _) = base_repo();
            repo.write("x.txt", "x\n");
            repo.commit("second");
            repo
        }
        _ => base_repo().0,
    };
    let base = repo.detector().default_base().expect("a default base");
    assert_eq!(base.as_deref(), expected);
    if let Some(base) = base {
        repo.detector()
            .changed(&base, "HEAD")
            .expect("the default base resolves");
    }
}

#[test]
fn revision_info_matches_git() {
    let repo = history();
    repo.git(&["tag", "v2"]);
    let detector = repo.detector();

    let info = detector.revision_info("HEAD").expect("info");
    let sha = repo.rev("HEAD");
    assert_eq!(info.sha, sha);
    assert_eq!(info.short_sha, sha[..7]);
    assert_eq!(info.branch.as_deref(), Some("main"));
    assert_eq!(info.tag.as_deref(), Some("v2"));
    let committed: i64 = repo
        .git(&["log", "-1", "--format=%ct"])
        .parse()
        .expect("a timestamp");
    assert_eq!(info.committed_at, Some(committed));
    assert!(!info.dirty, "a fresh commit is clean");

    // An annotated tag on an older commit, looked up by tag name.
    let info = detector.revision_info("v1").expect("info");
    assert_eq!(info.sha, repo.rev("v1"));
    assert_eq!(info.tag.as_deref(), Some("v1"));
    assert_eq!(info.branch, None);

    // A local branch by name.
    let info = detector.revision_info("feature").expect("info");
    assert_eq!(info.branch.as_deref(), Some("feature"));
    assert_eq!(info.tag, None);
}

/// How the tags of [`exact_tag_matches_git_tag_points_at`] are stored.
#[derive(Debug, Clone, Copy)]
enum TagRefs {
    /// One file per tag, as `git tag` leaves them.
    Loose,
    /// In `packed-refs`, as a clone has them.
    Packed,
    /// Packed, then one tag moved and one added as loose files, which win.
    PackedThenLoose,
    /// Packed by an older writer: no peeled commits, no `fully-peeled`.
    PackedUnpeeled,
}

#[rstest]
fn exact_tag_matches_git_tag_points_at(
    #[values(
        TagRefs::Loose,
        TagRefs::Packed,
        TagRefs::PackedThenLoose,
        TagRefs::PackedUnpeeled
    )]
    refs: TagRefs,
) {
    let repo = history();
    // Several tags on one commit (the first by name wins), lightweight, annotated and
    // symbolic, a tag of a tag, and a tag of a tree.
    repo.git(&["tag", "z-light"]);
    repo.git(&["symbolic-ref", "refs/tags/0-symbolic", "refs/tags/z-light"]);
    repo.git(&["tag", "-a", "m-annotated", "-m", "m"]);
    repo.git(&["tag", "-a", "c-annotated", "-m", "c", "HEAD~1"]);
    repo.git(&["tag", "-a", "b-tag-of-tag", "-m", "b", "v1"]);
    repo.git(&["tag", "a-tree", "HEAD^{tree}"]);
    // A name that contains another commit's id, first by name there if it counted.
    let name = format!("0-deploy-{}", repo.rev("HEAD"));
    repo.git(&["tag", &name, "HEAD~2"]);
    match refs {
        TagRefs::Loose => {}
        TagRefs::Packed => {
            repo.git(&["pack-refs", "--all"]);
        }
        TagRefs::PackedThenLoose => {
            repo.git(&["pack-refs", "--all"]);
            repo.git(&["tag", "-f", "-a", "m-annotated", "-m", "moved", "HEAD~2"]);
            repo.git(&["tag", "a-loose", "HEAD~1"]);
        }
        TagRefs::PackedUnpeeled => {
            repo.git(&["pack-refs", "--all"]);
            let path = repo.path(".git/packed-refs");
            let packed = std::fs::read_to_string(&path).expect("read packed-refs");
            let old: String = packed
                .lines()
                .filter(|line| !line.starts_with('^'))
                .map(|line| match line.starts_with("# pack-refs with:") {
                    true => "# pack-refs with: sorted \n".to_owned(),
                    false => format!("{line}\n"),
                })
                .collect();
            std::fs::write(&path, old).expect("write packed-refs");
        }
    }
    let detector = repo.detector();
    for rev in ["HEAD", "HEAD~1", "HEAD~2", "v1", "feature"] {
        let sha = repo.rev(rev);
        let listed = repo.git(&["tag", "--points-at", &sha]);
        let mut from_git: Vec<&str> = listed.lines().collect();
        from_git.sort();
        let info = detector.revision_info(&sha).expect("info");
        assert_eq!(
            info.tag.as_deref(),
            from_git.first().copied(),
            "{rev}: {listed}"
        );
    }
}

#[rstest]
#[case::clean(|_: &Repo| {}, false)]
#[case::untracked_file(|repo: &Repo| repo.write("untracked.txt", "x\n"), false)]
#[case::edited_file(|repo: &Repo| repo.write("a.txt", "edited\n"), true)]
#[case::staged_file(|repo: &Repo| {
    repo.write("staged.txt", "x\n");
    repo.git(&["add", "staged.txt"]);
}, true)]
fn dirty_matches_git_status(#[case] change: fn(&Repo), #[case] dirty: bool) {
    let repo = history();
    change(&repo);
    let porcelain = repo.git(&["status", "--porcelain", "--untracked-files=no"]);
    assert_eq!(!porcelain.is_empty(), dirty, "git status says: {porcelain}");
    let detector = repo.detector().include_worktree(true);
    assert_eq!(detector.revision_info("HEAD").expect("info").dirty, dirty);
    // Only HEAD has a work tree.
    assert!(!detector.revision_info("HEAD~1").expect("info").dirty);
    // Without the work tree option, the work tree is not looked at.
    assert!(!repo.detector().revision_info("HEAD").expect("info").dirty);
}

#[test]
fn without_the_worktree_option_neither_index_nor_work_tree_is_read() {
    let repo = history();
    let inputs = AppInputs {
        app: "api".into(),
        paths: vec!["a.txt".into()],
        globs: vec!["*.txt".into()],
    };
    let detector = repo.detector();
    let read = |detector: &GitChangeDetector| {
        (
            detector.changed("HEAD~2", "HEAD").expect("diff"),
            detector.revision_info("HEAD").expect("info"),
            detector.fingerprint_at("HEAD", &inputs).expect("fp"),
        )
    };
    let before = read(&detector);
    // An index git itself cannot read, and every tracked file deleted: `git status` fails,
    // the detector answers as before.
    std::fs::write(repo.path(".git/index"), "not an index").expect("write the index");
    for entry in std::fs::read_dir(&repo.root).expect("list the work tree") {
        let path = entry.expect("an entry").path();
        if path.file_name() != Some(".git".as_ref()) {
            std::fs::remove_dir_all(&path)
                .or_else(|_| std::fs::remove_file(&path))
                .expect("remove from the work tree");
        }
    }
    assert!(repo.try_git(&["status", "--porcelain"]).is_err());
    assert_eq!(read(&detector), before);
    assert_eq!(read(&repo.detector()), before);
    // The work tree option does read them, and says so.
    let err = repo
        .detector()
        .include_worktree(true)
        .revision_info("HEAD")
        .expect_err("a broken index");
    assert!(err.to_string().contains("work tree"), "{err}");
}

#[test]
fn detached_head_reports_the_branch_the_caller_gives() {
    let repo = history();
    repo.git(&["checkout", "-q", "--detach", "HEAD~1"]);
    // No environment variable is read (in CI, GITHUB_REF_NAME and the like are set).
    let info = repo.detector().revision_info("HEAD").expect("info");
    assert_eq!(info.branch, None);
    assert_eq!(info.sha, repo.rev("HEAD"));
    let given = repo
        .detector()
        .detached_head_branch(Some("feature/x".into()))
        .revision_info("HEAD")
        .expect("info");
    assert_eq!(given.branch.as_deref(), Some("feature/x"));
    let empty = repo
        .detector()
        .detached_head_branch(Some(String::new()))
        .revision_info("HEAD")
        .expect("info");
    assert_eq!(empty.branch, None, "an empty name is no name");
    // An attached HEAD reports its own branch.
    repo.git(&["checkout", "-q", "main"]);
    let attached = repo
        .detector()
        .detached_head_branch(Some("feature/x".into()))
        .revision_info("HEAD")
        .expect("info");
    assert_eq!(attached.branch.as_deref(), Some("main"));
}

fn api_inputs() -> AppInputs {
    AppInputs {
        app: "api".into(),
        paths: vec!["apps/api".into(), "libs/common".into()],
        globs: vec!["*.lock".into()],
    }
}

#[test]
fn fingerprint_is_equal_for_equal_content_across_branches() {
    let (repo, base) = base_repo();
    repo.write("Cargo.lock", "lock v1\n");
    let main = repo.commit("lock");
    repo.git(&["checkout", "-q", "-b", "other", &base]);
    repo.write("apps/web/index.html", "<h1>other</h1>\n");
    repo.write("Cargo.lock", "lock v1\n");
    let other = repo.commit("same api inputs, different web");
    let detector = repo.detector();

    let at_main = detector.fingerprint_at(&main, &api_inputs()).expect("fp");
    let at_other = detector.fingerprint_at(&other, &api_inputs()).expect("fp");
    assert_eq!(at_main, at_other);
    assert_eq!(at_main.0.len(), 64);
    assert!(at_main.0.chars().all(|c| c.is_ascii_hexdigit()));
    // The branch name resolves to the same thing.
    assert_eq!(
        detector.fingerprint_at("main", &api_inputs()).expect("fp"),
        at_main
    );
}

#[test]
fn reverting_restores_the_old_fingerprint() {
    let (repo, base) = base_repo();
    let detector = repo.detector();
    let before = detector.fingerprint_at(&base, &api_inputs()).expect("fp");
    repo.write("apps/api/src/main.rs", "fn main() {}\n");
    let changed = repo.commit("change api");
    let during = detector
        .fingerprint_at(&changed, &api_inputs())
        .expect("fp");
    assert_ne!(before, during);
    repo.git(&["revert", "--no-edit", "HEAD"]);
    let after = detector.fingerprint_at("HEAD", &api_inputs()).expect("fp");
    assert_eq!(before, after);
}

#[test]
fn an_input_is_found_where_git_and_byte_order_disagree() {
    // Git sorts the directory `api` as `api/`, after `api-a` and `api.md`; the lookup
    // searches byte order, where `api` comes first.
    let (repo, _) = base_repo();
    for neighbour in ["api-a/x", "api-b/x", "api-c/x", "api.md", "api.txt"] {
        repo.write(&format!("apps/{neighbour}"), "neighbour\n");
    }
    let with_neighbours = repo.commit("neighbours");
    let tree = repo.git(&["ls-tree", "--name-only", "HEAD", "apps/"]);
    assert_eq!(
        tree.lines().collect::<Vec<_>>(),
        [
            "apps/api-a",
            "apps/api-b",
            "apps/api-c",
            "apps/api.md",
            "apps/api.txt",
            "apps/api",
            "apps/web"
        ]
    );
    repo.write("apps/api/src/main.rs", "changed\n");
    let edited = repo.commit("edit api");
    let detector = repo.detector();
    let before = detector
        .fingerprint_at(&with_neighbours, &api_inputs())
        .expect("fp");
    let after = detector.fingerprint_at(&edited, &api_inputs()).expect("fp");
    assert_ne!(before, after, "apps/api must be found and hashed");
}

fn edit_dependency(repo: &Repo) {
    repo.write("libs/common/lib.rs", "changed\n");
}
fn edit_own_file(repo: &Repo) {
    repo.write("apps/api/src/main.rs", "changed\n");
}
fn add_own_file(repo: &Repo) {
    repo.write("apps/api/src/deep/new.rs", "new\n");
}
fn chmod_own_file(repo: &Repo) {
    use std::os::unix::fs::PermissionsExt;
    let path = repo.path("apps/api/src/main.rs");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
fn edit_root_lock(repo: &Repo) {
    repo.write("Cargo.lock", "new lock\n");
}
fn edit_unrelated_app(repo: &Repo) {
    repo.write("apps/web/index.html", "changed\n");
}
fn edit_nested_lock(repo: &Repo) {
    // `*.lock` does not cross `/`.
    repo.write("apps/web/yarn.lock", "changed\n");
}
fn edit_sibling_prefix(repo: &Repo) {
    // `apps/api` is a path, not a prefix: `apps/api-v2` is another app.
    repo.write("apps/api-v2/main.rs", "changed\n");
}

#[rstest]
#[case::dependency_path(edit_dependency, true)]
#[case::own_file(edit_own_file, true)]
#[case::own_new_file(add_own_file, true)]
#[case::own_mode(chmod_own_file, true)]
#[case::matching_glob(edit_root_lock, true)]
#[case::unrelated_app(edit_unrelated_app, false)]
#[case::glob_does_not_cross_slash(edit_nested_lock, false)]
#[case::sibling_with_same_prefix(edit_sibling_prefix, false)]
fn fingerprint_follows_the_inputs(
    #[case] change: fn(&Repo),
    #[case] should_change: bool,
    #[values(false, true)] uncommitted: bool,
) {
    let (repo, _) = base_repo();
    repo.write("Cargo.lock", "lock\n");
    repo.write("apps/web/yarn.lock", "yarn\n");
    repo.commit("locks");
    let fingerprint =
        |detector: &GitChangeDetector| detector.fingerprint_at("HEAD", &api_inputs()).expect("fp");
    let before = fingerprint(&repo.detector());
    change(&repo);
    if !uncommitted {
        repo.commit("change");
        let after = fingerprint(&repo.detector());
        assert_eq!(before != after, should_change, "{before} vs {after}");
        return;
    }
    // With the work tree on, an uncommitted edit counts as if committed, and the
    // same edit gives the same fingerprint; without it, the work tree does not count.
    let with_worktree = repo.detector().include_worktree(true);
    let dirty = fingerprint(&with_worktree);
    assert_eq!(before != dirty, should_change, "{before} vs {dirty}");
    assert_eq!(fingerprint(&with_worktree), dirty);
    assert_eq!(fingerprint(&repo.detector()), before);
    repo.git(&["stash", "-u", "-q"]);
    assert_eq!(
        fingerprint(&with_worktree),
        before,
        "an untouched work tree counts for nothing"
    );
}

#[rstest]
#[case::own_file(edit_own_file, true)]
#[case::own_new_file(add_own_file, true)]
#[case::dependency_path(edit_dependency, true)]
#[case::unrelated_app(edit_unrelated_app, false)]
#[case::sibling_with_same_prefix(edit_sibling_prefix, false)]
#[case::outside_every_input(edit_root_lock, false)]
fn with_only_paths_as_inputs_the_work_tree_is_read_within_them(
    #[case] change: fn(&Repo),
    #[case] should_change: bool,
) {
    // No glob: only the inputs' own paths are walked for uncommitted changes.
    let inputs = AppInputs {
        app: "api".into(),
        paths: vec!["apps/api".into(), "libs/common/".into()],
        globs: vec![],
    };
    let (repo, _) = base_repo();
    let detector = repo.detector().include_worktree(true);
    let before = detector.fingerprint_at("HEAD", &inputs).expect("fp");
    change(&repo);
    let after = detector.fingerprint_at("HEAD", &inputs).expect("fp");
    assert_eq!(before != after, should_change, "{before} vs {after}");
}

#[test]
fn fingerprint_of_a_missing_path_is_stable_until_it_appears() {
    let (repo, base) = base_repo();
    let inputs = AppInputs {
        app: "new".into(),
        paths: vec!["apps/new".into()],
        globs: vec![],
    };
    let detector = repo.detector();
    let missing = detector.fingerprint_at(&base, &inputs).expect("fp");
    repo.write("README.md", "other\n");
    let unrelated = repo.commit("unrelated");
    assert_eq!(
        detector.fingerprint_at(&unrelated, &inputs).expect("fp"),
        missing
    );
    repo.write("apps/new/main.rs", "hi\n");
    let added = repo.commit("add app");
    assert_ne!(
        detector.fingerprint_at(&added, &inputs).expect("fp"),
        missing
    );
}

#[test]
fn fingerprint_treats_paths_through_files_and_submodules_as_absent() {
    let (repo, _) = base_repo();
    submodule_pointer(&repo);
    let head = repo.commit("move gitlink");
    let detector = repo.detector();
    let fp_at = |rev: &str, paths: &[&str]| {
        let inputs = AppInputs {
            app: "x".into(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            globs: vec![],
        };
        detector.fingerprint_at(rev, &inputs).expect("fp")
    };
    let fp = |paths: &[&str]| fp_at(&head, paths);
    // A path through a gitlink or a file is absent (not an error): moving the gitlink
    // leaves it absent, so its fingerprint stays.
    assert_eq!(
        fp(&["vendor/lib/src"]),
        fp_at("HEAD~1", &["vendor/lib/src"])
    );
    assert_ne!(
        fp(&["vendor/lib/src"]),
        fp(&["nowhere"]),
        "the path is hashed too"
    );
    fp(&["scripts/deploy.sh/x"]);
    // The gitlink itself is an input: moving it changes the fingerprint.
    assert_ne!(fp(&["vendor/lib"]), fp_at("HEAD~1", &["vendor/lib"]));
    // `./apps/api/` and `apps/api` are the same input; `.` is the whole tree.
    assert_eq!(fp(&["./apps/api/"]), fp(&["apps/api"]));
    assert_ne!(fp(&["."]), fp(&["apps/api"]));
}

/// A glob input covers the committed files `git ls-files ':(glob)…'` matches: a file is
/// covered when editing it alone changes the fingerprint.
#[rstest]
#[case::root_file("package-lock.json")]
#[case::root_wildcard("*.lock")]
#[case::one_level_below("proto/*/*.proto")]
#[case::everything_under("packages/common/**")]
#[case::at_any_depth("**/*.lock")]
#[case::bracket_class("apps/[ab]pi/*.txt")]
#[case::deep_file("apps/api/Dockerfile")]
fn a_glob_input_covers_the_files_git_matches(#[case] glob: &str) {
    let files = [
        "package-lock.json",
        "Cargo.lock",
        "apps/web/yarn.lock",
        "proto/v1/a.proto",
        "proto/v1/old/b.proto",
        "proto/c.proto",
        "packages/common/src/deep/x.ts",
        "packages/common/y.ts",
        "packages/commons/z.ts",
        "apps/api/Dockerfile",
        "apps/api/src/Dockerfile",
        "apps/api/x.txt",
        "apps/bpi/y.txt",
        "apps/cpi/z.txt",
        "docs/package-lock.json",
    ];
    let repo = Repo::new();
    for file in files {
        repo.write(file, "v1\n");
    }
    let base = repo.commit("all");
    let listed = repo.git(&["ls-files", &format!(":(glob){glob}")]);
    let expected: Vec<&str> = listed.lines().collect();
    assert!(!expected.is_empty(), "git matches nothing for {glob}");
    let inputs = AppInputs {
        app: "x".into(),
        paths: vec![],
        globs: vec![glob.into()],
    };
    let detector = repo.detector();
    let at_base = detector.fingerprint_at(&base, &inputs).expect("fp");
    for file in files {
        repo.git(&["checkout", "-q", "--detach", &base]);
        repo.write(file, "v2\n");
        let edited = repo.commit(file);
        let covered = detector.fingerprint_at(&edited, &inputs).expect("fp") != at_base;
        assert_eq!(covered, expected.contains(&file), "{glob} and {file}");
    }
}

#[test]
fn overlapping_globs_count_each_file_once() {
    let (repo, base) = base_repo();
    let inputs = |globs: &[&str]| AppInputs {
        app: "api".into(),
        paths: vec!["apps/api".into()],
        globs: globs.iter().map(|glob| glob.to_string()).collect(),
    };
    repo.write("Cargo.lock", "lock\n");
    let head = repo.commit("lock");
    let detector = repo.detector();
    let fp = |rev: &str, globs: &[&str]| detector.fingerprint_at(rev, &inputs(globs)).expect("fp");
    assert_eq!(fp(&head, &["*.lock", "Cargo.lock"]), fp(&head, &["*.lock"]));
    assert_eq!(fp(&head, &["Cargo.lock", "*.lock"]), fp(&head, &["*.lock"]));
    assert_ne!(fp(&head, &["*.lock"]), fp(&base, &["*.lock"]));
}

#[test]
fn fingerprint_rejects_a_bad_glob() {
    let (repo, base) = base_repo();
    let inputs = AppInputs {
        app: "api".into(),
        paths: vec![],
        globs: vec!["src/[".into()],
    };
    let err = repo
        .detector()
        .fingerprint_at(&base, &inputs)
        .expect_err("an unclosed class");
    assert!(matches!(err, GitError::InvalidGlob { ref glob, .. } if glob == "src/["));
}

#[tokio::test]
async fn the_trait_boxes_typed_errors() {
    let (repo, base) = base_repo();
    modify(&repo);
    let head = repo.commit("modify");
    let detector: Box<dyn ChangeDetector> = Box::new(repo.detector());
    let ctx = Context::new();

    let changes = detector
        .changed_paths(&base, &head, &ctx)
        .await
        .expect("diff");
    assert_eq!(changes.paths, repo.git_diff(&base, &head));
    let fp = detector
        .fingerprint(&head, &api_inputs(), &ctx)
        .await
        .expect("fp");
    assert_eq!(
        fp,
        repo.detector()
            .fingerprint_at(&head, &api_inputs())
            .expect("fp")
    );
    let info = detector.revision(&head, &ctx).await.expect("info");
    assert_eq!(info.sha, head);

    let err = detector
        .changed_paths("missing", "HEAD", &ctx)
        .await
        .expect_err("unknown");
    let typed = err.downcast_ref::<GitError>().expect("a GitError inside");
    assert!(matches!(typed, GitError::UnknownRevision { .. }));

    let cancelled = Context::new();
    cancelled.cancellation().cancel();
    assert!(
        detector
            .changed_paths(&base, &head, &cancelled)
            .await
            .is_err()
    );
}

/// What `git status --porcelain=v2 --untracked-files=all` says differs between `HEAD` and the
/// work tree, as changed paths (no renames: the cases below make none). Version 2, because
/// version 1 starts lines with a space that the helper's trimming would eat.
fn git_status(repo: &Repo) -> Vec<ChangedPath> {
    let porcelain = repo.git(&["status", "--porcelain=v2", "--untracked-files=all"]);
    let mut paths: Vec<ChangedPath> = porcelain
        .lines()
        .filter_map(|line| {
            if let Some(path) = line.strip_prefix("? ") {
                return Some(ChangedPath::new(path, ChangeKind::Added));
            }
            // `1 XY sub mH mI mW hH hI path`
            let fields: Vec<&str> = line.splitn(9, ' ').collect();
            assert_eq!(fields[0], "1", "unexpected status line {line}");
            let (head_mode, worktree_mode) = (fields[3], fields[5]);
            let kind = match fields[1] {
                // A mode change (executable bit, file to symlink) is a type change, like
                // `git_diff` maps it.
                _ if head_mode != "000000"
                    && worktree_mode != "000000"
                    && head_mode != worktree_mode =>
                {
                    ChangeKind::TypeChanged
                }
                // Added to the index, then removed from the work tree: nothing left to compare.
                "AD" => return None,
                code if code.contains('A') => ChangeKind::Added,
                code if code.contains('D') => ChangeKind::Deleted,
                code if code.contains('T') => ChangeKind::TypeChanged,
                code if code.contains('M') => ChangeKind::Modified,
                other => panic!("unexpected status {other} in {line}"),
            };
            Some(ChangedPath::new(fields[8], kind))
        })
        .collect();
    paths.sort();
    paths
}

/// The base commit, then a commit that edits the README, then `change` left uncommitted.
fn worktree_repo(change: fn(&Repo)) -> (Repo, String) {
    let (repo, base) = base_repo();
    repo.write("README.md", "# monorepo, edited\n");
    repo.commit("edit the readme");
    change(&repo);
    (repo, base)
}

#[rstest]
#[case::modified_file(
    |repo: &Repo| repo.write("libs/common/lib.rs", "edited\n"),
    vec![changed(ChangeKind::Modified, "libs/common/lib.rs")],
)]
#[case::staged_modification(
    |repo: &Repo| {
        repo.write("libs/common/lib.rs", "edited\n");
        repo.git(&["add", "libs/common/lib.rs"]);
    },
    vec![changed(ChangeKind::Modified, "libs/common/lib.rs")],
)]
#[case::staged_new_file(
    |repo: &Repo| {
        repo.write("apps/api/src/new.rs", "pub fn new() {}\n");
        repo.git(&["add", "apps/api/src/new.rs"]);
    },
    vec![changed(ChangeKind::Added, "apps/api/src/new.rs")],
)]
#[case::untracked_file(
    |repo: &Repo| repo.write("notes.txt", "todo\n"),
    vec![changed(ChangeKind::Added, "notes.txt")],
)]
#[case::untracked_file_in_new_subdirectory(
    |repo: &Repo| repo.write("apps/web/assets/img/logo.svg", "<svg/>\n"),
    vec![changed(ChangeKind::Added, "apps/web/assets/img/logo.svg")],
)]
#[case::deleted_file(
    |repo: &Repo| std::fs::remove_file(repo.path("apps/web/index.html")).expect("rm"),
    vec![changed(ChangeKind::Deleted, "apps/web/index.html")],
)]
#[case::staged_deletion(
    |repo: &Repo| repo.remove("apps/web/index.html"),
    vec![changed(ChangeKind::Deleted, "apps/web/index.html")],
)]
#[case::ignored_files_not_reported(
    |repo: &Repo| {
        repo.write(".gitignore", "*.log\nbuild/\n");
        repo.git(&["add", ".gitignore"]);
        repo.write("debug.log", "noise\n");
        repo.write("apps/api/build/out.bin", "binary\n");
    },
    vec![changed(ChangeKind::Added, ".gitignore")],
)]
#[case::staged_then_removed_is_no_change(
    |repo: &Repo| {
        repo.write("tmp.txt", "x\n");
        repo.git(&["add", "tmp.txt"]);
        std::fs::remove_file(repo.path("tmp.txt")).expect("rm");
    },
    vec![],
)]
#[case::executable_bit(
    chmod_x,
    vec![changed(ChangeKind::TypeChanged, "scripts/deploy.sh")],
)]
#[case::file_to_symlink(
    file_to_symlink,
    vec![changed(ChangeKind::TypeChanged, "config/app.toml")],
)]
#[case::several_at_once(
    |repo: &Repo| {
        repo.write("libs/common/lib.rs", "edited\n");
        repo.write("tools/gen/b.txt", "b\n");
        std::fs::remove_file(repo.path("scripts/deploy.sh")).expect("rm");
    },
    vec![
        changed(ChangeKind::Modified, "libs/common/lib.rs"),
        changed(ChangeKind::Deleted, "scripts/deploy.sh"),
        changed(ChangeKind::Added, "tools/gen/b.txt"),
    ],
)]
fn worktree_changes_match_git_status(
    #[case] change: fn(&Repo),
    #[case] mut expected: Vec<ChangedPath>,
) {
    let (repo, base) = worktree_repo(change);
    expected.sort();
    assert_eq!(
        git_status(&repo),
        expected,
        "git status disagrees with the table"
    );
    let committed = repo.git_diff(&base, "HEAD");
    assert_eq!(committed, vec![changed(ChangeKind::Modified, "README.md")]);

    // On: the commit diff plus the work tree, sorted, each path once.
    let detector = repo.detector().include_worktree(true);
    let mut both = committed.clone();
    both.extend(expected);
    both.sort();
    let result = detector
        .changed(&base, "HEAD")
        .expect("changed with work tree");
    assert_eq!(result.paths, both);
    assert_eq!(result.head, repo.rev("HEAD"), "head stays the commit id");

    // Off (the default): only the commit diff.
    let off = repo.detector().changed(&base, "HEAD").expect("changed");
    assert_eq!(off.paths, committed);

    // Another head revision has no work tree.
    let other = detector.changed(&base, "HEAD~1").expect("changed");
    assert_eq!(other.paths, repo.git_diff(&base, "HEAD~1"));
}

/// A path changed by a commit and again in the work tree is reported once, as it differs
/// from the base: cross-checked with `git diff <base>` (base against the work tree).
#[test]
fn worktree_changes_compose_with_the_commit_diff() {
    let (repo, base) = base_repo();
    repo.write("apps/api/src/new.rs", "pub fn new() {}\n");
    repo.write("libs/common/lib.rs", "edited in a commit\n");
    repo.write("README.md", "# monorepo, edited\n");
    repo.remove("apps/web/index.html");
    repo.commit("add, edit, delete");
    // Added then deleted: gone. Modified then deleted: deleted. Deleted then recreated:
    // modified. Modified then modified again: modified.
    std::fs::remove_file(repo.path("apps/api/src/new.rs")).expect("rm");
    std::fs::remove_file(repo.path("libs/common/lib.rs")).expect("rm");
    repo.write("apps/web/index.html", "<h1>back</h1>\n");
    repo.write("README.md", "# monorepo, edited twice\n");

    let raw = repo.git(&["diff", "--raw", "--no-renames", "--no-abbrev", &base]);
    let mut expected: Vec<ChangedPath> = raw.lines().map(parse_raw_line).collect();
    // `git diff <base>` does not see untracked files, so it calls the recreated (untracked)
    // file deleted; against the work tree it is there, with new content.
    expected.retain(|change| change.path != "apps/web/index.html");
    expected.push(changed(ChangeKind::Modified, "apps/web/index.html"));
    expected.sort();
    expected.dedup();
    let result = repo
        .detector()
        .include_worktree(true)
        .changed(&base, "HEAD")
        .expect("changed with work tree");
    assert_eq!(result.paths, expected);
    assert_eq!(
        result.paths,
        vec![
            changed(ChangeKind::Modified, "README.md"),
            changed(ChangeKind::Modified, "apps/web/index.html"),
            changed(ChangeKind::Deleted, "libs/common/lib.rs"),
        ]
    );
}

/// Through the trait too, and from a subdirectory: untracked files anywhere in the work tree count.
#[tokio::test]
async fn worktree_changes_through_the_trait_from_a_subdirectory() {
    let (repo, base) = worktree_repo(|repo| repo.write("notes.txt", "todo\n"));
    let detector = GitChangeDetector::open(repo.path("apps/api"))
        .expect("open from a subdirectory")
        .include_worktree(true);
    let result = detector
        .changed_paths(&base, "HEAD", &Context::default())
        .await
        .expect("changed paths");
    assert_eq!(
        result.paths,
        vec![
            changed(ChangeKind::Modified, "README.md"),
            changed(ChangeKind::Added, "notes.txt"),
        ]
    );
}

/// A committed rename stays a rename when the new file is edited in the work tree, and turns
/// into the old name's deletion when the new file is deleted.
#[rstest]
#[case::edited_after_rename(
    |repo: &Repo| repo.write("libs/shared/lib.rs", "edited\n"),
    ChangedPath::renamed("libs/common/lib.rs", "libs/shared/lib.rs"),
)]
#[case::deleted_after_rename(
    |repo: &Repo| std::fs::remove_file(repo.path("libs/shared/lib.rs")).expect("rm"),
    changed(ChangeKind::Deleted, "libs/common/lib.rs"),
)]
fn committed_rename_then_worktree_change(#[case] change: fn(&Repo), #[case] expected: ChangedPath) {
    let (repo, base) = base_repo();
    rename(&repo);
    repo.commit("rename");
    assert_eq!(
        repo.git_diff(&base, "HEAD"),
        vec![ChangedPath::renamed(
            "libs/common/lib.rs",
            "libs/shared/lib.rs"
        )]
    );
    change(&repo);
    let result = repo
        .detector()
        .include_worktree(true)
        .changed(&base, "HEAD")
        .expect("changed with work tree");
    assert_eq!(result.paths, vec![expected]);
}

/// A log sink for one test: what a `fmt` subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("the log buffer's lock")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn rust_log_shipflow_debug_shows_what_detection_did() {
    let repo = history();
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("shipflow=debug"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let detector = repo.detector();
        detector.default_base().expect("a default base");
        detector.changed("HEAD~1", "HEAD").expect("diff");
        detector.revision_info("HEAD").expect("info");
        detector.fingerprint_at("HEAD", &api_inputs()).expect("fp");
    });
    let log = String::from_utf8(buffer.0.lock().expect("the lock").clone()).expect("utf-8");
    let head = repo.rev("HEAD");
    for expected in [
        "opened repository",
        "default base: skipped, it does not resolve candidate=\"origin/HEAD\"",
        "default base: an upstream other than HEAD candidate=\"origin/main\"",
        &format!("resolved revision rev=\"HEAD\" commit={head}"),
        "diffed the commits' trees base=\"HEAD~1\" head=\"HEAD\"",
        "paths=2",
        "revision facts rev=\"HEAD\"",
        "dirty_checked=false",
        "walked the tree for a glob glob=\"*.lock\" trees=1",
        "fingerprint app=api",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
    assert!(
        log.lines().all(|line| line.contains("DEBUG shipflow_git")),
        "{log}"
    );
}
