//! The reference CLI as a user runs it: the built binary in a child process, on
//! real git repositories, its exit codes, help, completions and messages.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Monorepo;

/// `shipflow args…` in `dir`, with no CI variable or engine of the caller's.
fn shipflow(dir: &Path, args: &[&str]) -> Output {
    Command::new(common::cli_binary())
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("GIT_SHA")
        .env_remove("SHIPFLOW_REGISTRY")
        .env_remove("PRIVATE_REGISTRY")
        .output()
        .expect("the CLI runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// A repository of `apps` native apps with no deploy target.
fn native_repo(apps: &[&str]) -> Monorepo {
    Monorepo::create("127.0.0.1:5000", apps, |_, _| String::new())
}

#[test]
fn nothing_to_do_exits_0_and_4_only_with_detailed_exitcode() {
    let repo = native_repo(&["api", "web"]);
    let dir = repo.path();
    for command in ["plan", "build"] {
        let out = shipflow(dir, &[command, "--base", "HEAD"]);
        assert_exit(&out, 0);
        let out = shipflow(dir, &[command, "--base", "HEAD", "--detailed-exitcode"]);
        assert_exit(&out, 4);
    }

    repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let out = shipflow(dir, &["build", "--base", "HEAD~1", "--detailed-exitcode"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("web  stored in "), "{text}");
    assert!(
        text.contains("1 stored in ") && !text.contains("pushed"),
        "a build writes to the local store: {text}"
    );
    assert!(
        stderr(&out).contains("web: build started"),
        "progress lines in a log"
    );

    let quiet = shipflow(dir, &["build", "--base", "HEAD~1", "-q"]);
    assert_exit(&quiet, 0);
    assert_eq!(stderr(&quiet), "", "-q: nothing but errors on stderr");
}

#[test]
fn json_output_carries_its_schema_version() {
    let repo = native_repo(&["api", "web"]);
    let dir = repo.path();
    for (args, field) in [
        (&["plan", "--all", "-o", "json"][..], "apps"),
        (
            &["plan", "--base", "HEAD", "--format", "json"][..],
            "unchanged",
        ),
        (&["build", "--all", "--output", "json"][..], "duration_ms"),
    ] {
        let out = shipflow(dir, args);
        assert_exit(&out, 0);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", stdout(&out)));
        assert_eq!(doc["schema_version"], 1, "{args:?}: {doc}");
        assert!(doc.get(field).is_some(), "{args:?}: no {field}: {doc}");
        assert!(doc.get("cancelled_by").is_none(), "{doc}");
    }
}

#[test]
fn help_lists_exit_codes_examples_and_every_environment_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = shipflow(dir.path(), &["--help"]);
    assert_exit(&out, 0);
    let help = stdout(&out);
    for needle in [
        "Exit codes:",
        "--detailed-exitcode",
        "130",
        "143",
        "Examples:",
        "shipflow completions bash",
        "Environment",
        "GIT_SHA",
        "K8S_NAMESPACE",
        "PRIVATE_REGISTRY",
        "SHIPFLOW_REGISTRY",
        "SHIPFLOW_REGISTRY_USER",
        "GITHUB_REF_NAME",
        "CI_COMMIT_REF_NAME",
        "BUILD_NUMBER",
        "KUBECONFIG",
        "DOCKER_HOST",
        "RUST_LOG",
        "configmap",
        "-q, --quiet",
        "-v, --verbose",
        "-o, --output",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    assert!(!help.contains("\n  config "), "config is now configmap");
    let short = stdout(&shipflow(dir.path(), &["-h"]));
    assert!(short.contains("Exit codes: 0 success"), "{short}");

    let deploy = stdout(&shipflow(dir.path(), &["deploy", "--help"]));
    for flag in [
        "-n, --namespace",
        "--insecure-registry",
        "[alias: --insecure]",
        "--target",
    ] {
        assert!(
            deploy.contains(flag),
            "deploy --help lacks {flag}:\n{deploy}"
        );
    }
    // Bad usage is 2, as clap makes it.
    assert_exit(&shipflow(dir.path(), &["plan", "--no-such-flag"]), 2);
}

#[test]
fn completions_are_scripts_the_shell_parses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = shipflow(dir.path(), &["completions", "bash"]);
    assert_exit(&out, 0);
    let script = dir.path().join("shipflow.bash");
    std::fs::write(&script, &out.stdout).expect("write the script");
    assert!(
        stdout(&out).contains("configmap"),
        "subcommands are completed"
    );
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(check.status.success(), "bash -n: {}", stderr(&check));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = shipflow(dir.path(), &["completions", shell]);
        assert_exit(&out, 0);
        assert!(!out.stdout.is_empty(), "{shell}");
    }
    assert_exit(&shipflow(dir.path(), &["completions", "tcsh"]), 2);
}

/// A repository of 300 apps built from Dockerfiles, as the monorepo of the issue.
fn dockerfile_monorepo() -> Monorepo {
    let names: Vec<String> = (0..300).map(|i| format!("app-{i:04}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let repo = Monorepo::create("127.0.0.1:5000", &names, |_, _| String::new());
    let mut toml = "[workspace]\nregistry = \"127.0.0.1:5000/e2e\"\n".to_owned();
    for name in names {
        toml.push_str(&format!(
            "[apps.{name}]\nbuild = {{ type = \"dockerfile\" }}\n"
        ));
    }
    repo.edit("shipflow.toml", &toml);
    repo
}

#[test]
fn at_300_apps_messages_name_only_the_apps_concerned() {
    let repo = dockerfile_monorepo();
    let dir = repo.path();
    let nowhere = "unix:///nonexistent/docker.sock";
    let build = |args: &[&str]| {
        Command::new(common::cli_binary())
            .current_dir(dir)
            .args(args)
            .env("DOCKER_HOST", nowhere)
            .output()
            .expect("the CLI runs")
    };

    let one = build(&["build", "--all", "--apps", "app-0000"]);
    assert_exit(&one, 1);
    let text = stderr(&one);
    assert!(text.contains("app-0000 build from a Dockerfile"), "{text}");
    assert!(!text.contains("app-0001"), "only the selected app: {text}");

    let all = build(&["build", "--all"]);
    assert_exit(&all, 1);
    let text = stderr(&all);
    assert!(
        text.contains("app-0000, app-0001, app-0002, … and 297 more build from a Dockerfile"),
        "{text}"
    );

    // Nothing changed since HEAD: nothing builds, no engine is needed.
    assert_exit(&build(&["build", "--base", "HEAD"]), 0);

    let nope = shipflow(dir, &["plan", "--apps", "nope"]);
    assert_exit(&nope, 2);
    let text = stderr(&nope);
    assert!(
        text.contains("no app nope in shipflow.toml, nor one with a similar name"),
        "{text}"
    );
    assert!(
        text.contains("`shipflow plan --all` lists all 300 apps"),
        "{text}"
    );
    assert!(!text.contains("app-0150"), "not every app: {text}");
    assert!(text.len() < 300, "one short line: {text}");

    let typo = shipflow(dir, &["plan", "--apps", "app-0299x"]);
    assert_exit(&typo, 2);
    assert!(
        stderr(&typo).contains("did you mean app-0299?"),
        "{}",
        stderr(&typo)
    );
}

#[test]
fn the_target_is_the_one_the_apps_configure() {
    let repo = Monorepo::create("127.0.0.1:5000", &["api", "web"], |app, _| match app {
        "web" => "[apps.web.deploy.docker]\ncontainer = \"cli-test-web\"\n".into(),
        _ => "[apps.api.deploy.kubernetes]\n".into(),
    });
    let dir = repo.path();

    // web configures docker only: its history is asked of the Docker Engine.
    let out = Command::new(common::cli_binary())
        .current_dir(dir)
        .args(["history", "web"])
        .env("DOCKER_HOST", "unix:///var/run/docker.sock")
        .output()
        .expect("the CLI runs");
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("web: never deployed"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("engine: docker"), "{}", stderr(&out));

    // Both apps: two targets, so --target must say which.
    let out = shipflow(dir, &["status"]);
    assert_exit(&out, 2);
    let text = stderr(&out);
    assert!(
        text.contains("several deploy targets")
            && text.contains("--target k8s (api)")
            && text.contains("--target docker (web)"),
        "{text}"
    );

    let bare = native_repo(&["web"]);
    let out = shipflow(bare.path(), &["deploy", "--all"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("no deploy target configured for web"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ci_branch_variables_name_the_branch_of_a_detached_head() {
    let repo = native_repo(&["web"]);
    let dir = repo.path();
    let sha = repo.git(&["rev-parse", "HEAD"]);
    repo.git(&["checkout", "-q", "--detach", sha.trim()]);
    let toml = std::fs::read_to_string(repo.config()).expect("shipflow.toml");
    std::fs::write(
        repo.config(),
        toml.replace("tag = \"${SHORT_SHA}\"", "tag = \"${BRANCH}-${SHORT_SHA}\""),
    )
    .expect("write");
    let out = Command::new(common::cli_binary())
        .current_dir(dir)
        .args(["plan", "--all", "-o", "json"])
        .env("GITHUB_REF_NAME", "release-7")
        .env_remove("GITHUB_HEAD_REF")
        .output()
        .expect("the CLI runs");
    assert_exit(&out, 0);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let tag = doc["apps"][0]["tag"].as_str().expect("a tag");
    assert!(tag.starts_with("release-7-"), "{doc}");
}

#[test]
fn verbose_logs_shipflow_at_debug_without_colour_codes_in_a_log() {
    let repo = native_repo(&["web"]);
    let quiet = shipflow(repo.path(), &["plan", "--all"]);
    assert_exit(&quiet, 0);
    assert!(!stderr(&quiet).contains("DEBUG"), "{}", stderr(&quiet));
    let verbose = shipflow(repo.path(), &["-v", "plan", "--all"]);
    assert_exit(&verbose, 0);
    let log = stderr(&verbose);
    assert!(log.contains(" DEBUG shipflow_"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI codes when stderr is no terminal: {log}"
    );
}

#[test]
fn building_in_the_cluster_needs_its_settings_and_bad_ones_name_their_key() {
    let repo = native_repo(&["web"]);
    let out = shipflow(repo.path(), &["push", "--all", "--build-in-cluster"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("[workspace.build-jobs]"),
        "{}",
        stderr(&out)
    );

    let config = std::fs::read_to_string(repo.config()).expect("config");
    let config = format!(
        "{config}\n[workspace.build-jobs]\nbuilder = \"r.local/shipflow:1\"\nmax_jobs = 0\n"
    );
    repo.edit("shipflow.toml", &config);
    let out = shipflow(repo.path(), &["push", "--all", "--build-in-cluster"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("max_jobs"), "{}", stderr(&out));
}
