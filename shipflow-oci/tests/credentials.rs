//! Credentials from docker `config.json` against a real `docker-registry` with
//! basic auth: `auths`, `credsStore` and `credHelpers` (through a fake
//! `docker-credential-*` helper on PATH), `DOCKER_CONFIG` and `~/.docker`.
//!
//! The environment (PATH, DOCKER_CONFIG, HOME) is set on a child process that runs
//! this test binary's `push_with_environment_credentials`, never mutated in-process.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::{TestRegistry, temp_layout, three_layers, write_image};
use shipflow_core::{Context, Registry};
use shipflow_oci::{Credentials, DockerConfig, RegistryClient};

const USER: &str = "ci";
const PASSWORD: &str = "pa55-w0rd-never-shown";
const CHILD_ENV: &str = "SHIPFLOW_TEST_PUSH_TO";

/// Runs in the child process only: pushes with whatever the environment's docker
/// config says.
#[tokio::test]
async fn push_with_environment_credentials() {
    let Ok(host) = std::env::var(CHILD_ENV) else {
        return; // not the child: nothing to do
    };
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("env"));
    let target = format!("{host}/team/api:v1").parse().expect("reference");
    let client = RegistryClient::builder().build().expect("client");
    client
        .push(&image, &target, &Context::new())
        .await
        .expect("push with env credentials");
}

/// Runs the child with `env`, returns whether its push succeeded and its output.
fn push_in_child(registry: &TestRegistry, env: &[(&str, &str)], unset: &[&str]) -> (bool, String) {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args([
            "--exact",
            "push_with_environment_credentials",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, registry.host());
    for (key, value) in env {
        command.env(key, value);
    }
    for key in unset {
        command.env_remove(key);
    }
    let out = command.output().expect("run child test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A `docker-credential-fake` that answers for `host` and logs each call.
fn fake_helper(dir: &Path, name: &str, host: &str) {
    let log = dir.join(format!("{name}.calls"));
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\necho \"$server\" >> '{}'\nif [ \"$server\" = '{host}' ]; then\n  printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}' \"$server\"\nelse\n  echo 'credentials not found in native keychain'\n  exit 1\nfi\n",
        log.display()
    );
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).expect("write helper");
    common::run("chmod", &["755", common::path_str(&path)]);
}

fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn calls(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.calls"))).unwrap_or_default()
}

#[test]
fn creds_store_helper_found_through_docker_config_and_path() {
    let registry = TestRegistry::start_with_basic_auth(USER, PASSWORD);
    let dir = tempfile::tempdir().expect("tempdir");
    fake_helper(dir.path(), "fake", &registry.host());
    std::fs::write(dir.path().join("config.json"), r#"{"credsStore": "fake"}"#).expect("config");
    let (ok, out) = push_in_child(
        &registry,
        &[
            ("DOCKER_CONFIG", &dir.path().display().to_string()),
            ("PATH", &path_with(dir.path())),
        ],
        &[],
    );
    assert!(ok, "{out}");
    assert_eq!(
        calls(dir.path(), "fake").lines().collect::<Vec<_>>(),
        [registry.host()],
        "helper asked once"
    );
    assert!(!out.contains(PASSWORD));
}

#[test]
fn cred_helpers_win_over_the_store_and_home_config_is_the_fallback() {
    let registry = TestRegistry::start_with_basic_auth(USER, PASSWORD);
    let dir = tempfile::tempdir().expect("tempdir");
    fake_helper(dir.path(), "fake", &registry.host());
    let config = format!(
        r#"{{"credsStore": "missing-helper", "credHelpers": {{"{}": "fake"}}}}"#,
        registry.host()
    );
    std::fs::write(dir.path().join("config.json"), config).expect("config");
    let (ok, out) = push_in_child(
        &registry,
        &[
            ("DOCKER_CONFIG", &dir.path().display().to_string()),
            ("PATH", &path_with(dir.path())),
        ],
        &[],
    );
    assert!(ok, "{out}");
    assert!(calls(dir.path(), "fake").contains(&registry.host()));

    // No DOCKER_CONFIG: $HOME/.docker/config.json, with a base64 `auth`.
    let home = tempfile::tempdir().expect("home");
    std::fs::create_dir_all(home.path().join(".docker")).expect("mkdir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        home.path().join(".docker/config.json"),
        format!(
            r#"{{"auths": {{"http://{}": {{"auth": "{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .expect("config");
    let (ok, out) = push_in_child(
        &registry,
        &[("HOME", &home.path().display().to_string())],
        &["DOCKER_CONFIG"],
    );
    assert!(ok, "{out}");
}

#[tokio::test]
async fn explicit_credentials_win_and_no_secret_shows_in_debug_or_errors() {
    let registry = TestRegistry::start_with_basic_auth(USER, PASSWORD);
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers("explicit"));
    let wrong = "wr0ng-secret-in-config";
    let config = DockerConfig::from_json(&format!(
        r#"{{"auths": {{"{}": {{"username": "{USER}", "password": "{wrong}"}}}}}}"#,
        registry.host()
    ))
    .expect("config");

    let explicit = RegistryClient::builder()
        .docker_config(config.clone())
        .credentials(registry.host(), Credentials::basic(USER, PASSWORD))
        .build()
        .expect("client");
    explicit
        .push(&image, &registry.reference("team/api:v1"), &Context::new())
        .await
        .expect("explicit credentials win over the config");

    let from_config = RegistryClient::builder()
        .docker_config(config.clone())
        .build()
        .expect("client");
    let err = from_config
        .push(&image, &registry.reference("team/api:v2"), &Context::new())
        .await
        .expect_err("the config's password is wrong");
    let shown = format!("{err} {err:?} {from_config:?} {explicit:?} {config:?}");
    assert!(err.to_string().contains("401"), "{err}");
    assert!(err.to_string().contains(USER), "names the user: {err}");
    for secret in [PASSWORD, wrong] {
        assert!(!shown.contains(secret), "secret leaked: {shown}");
    }
}
