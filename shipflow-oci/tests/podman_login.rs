//! Credentials that a real `podman login` wrote, to a real registry with htpasswd
//! auth, push an image: found where Podman keeps them
//! (`$XDG_RUNTIME_DIR/containers/auth.json`, `$REGISTRY_AUTH_FILE`).

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use common::{TestRegistry, temp_layout, three_layers, write_image};
use shipflow_core::{Context, Registry};
use shipflow_oci::{DockerConfig, OciError, RegistryClient};

const USER: &str = "ci";
const PASSWORD: &str = "podman-pass-3391";

/// `podman login` to `registry` with `env` (and `extra` arguments).
fn podman_login(registry: &TestRegistry, env: &[(&str, &Path)], extra: &[&str]) {
    let mut command = Command::new("podman");
    command
        .args([
            "login",
            "--tls-verify=false",
            "-u",
            USER,
            "--password-stdin",
        ])
        .args(extra)
        .arg(registry.host())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .expect("podman is installed (apt-get install -y podman)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(PASSWORD.as_bytes())
            .expect("password to podman");
    }
    let out = child.wait_with_output().expect("podman login ran");
    assert!(
        out.status.success(),
        "podman login: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn push_with(
    paths: Vec<std::path::PathBuf>,
    registry: &TestRegistry,
    tag: &str,
) -> Result<(), OciError> {
    let (_dir, layout) = temp_layout();
    let image = write_image(&layout, "api", "v1", &three_layers(tag));
    let client = RegistryClient::builder().auth_files(paths).build()?;
    client
        .push(
            &image,
            &registry.reference(&format!("team/api:{tag}")),
            &Context::new(),
        )
        .await
        .map(|_| ())
        .map_err(|e| *e.downcast::<OciError>().expect("an OciError"))
}

#[tokio::test]
async fn podman_login_credentials_push() {
    let registry = TestRegistry::start_with_basic_auth(USER, PASSWORD);
    let home = tempfile::tempdir().expect("home");
    let run = tempfile::tempdir().expect("XDG_RUNTIME_DIR");

    // Nothing logged in: refused.
    let env_of = |pairs: Vec<(&'static str, OsString)>| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        }
    };
    let bare = env_of(vec![
        ("HOME", home.path().into()),
        ("XDG_RUNTIME_DIR", run.path().into()),
    ]);
    let err = push_with(DockerConfig::search_paths(&bare), &registry, "none")
        .await
        .expect_err("not logged in");
    assert!(matches!(err, OciError::Unauthorized { .. }), "{err:?}");

    // `podman login` writes $XDG_RUNTIME_DIR/containers/auth.json.
    podman_login(
        &registry,
        &[("HOME", home.path()), ("XDG_RUNTIME_DIR", run.path())],
        &[],
    );
    assert!(run.path().join("containers/auth.json").is_file());
    push_with(DockerConfig::search_paths(&bare), &registry, "runtime-dir")
        .await
        .expect("push with podman's credentials");

    // `podman login --authfile`, found through REGISTRY_AUTH_FILE.
    let elsewhere = tempfile::tempdir().expect("auth file dir");
    let auth_file = elsewhere.path().join("auth.json");
    podman_login(
        &registry,
        &[("HOME", home.path())],
        &["--authfile", auth_file.to_str().expect("utf-8 path")],
    );
    let empty_run = tempfile::tempdir().expect("empty XDG_RUNTIME_DIR");
    let with_file = env_of(vec![
        ("HOME", home.path().into()),
        ("XDG_RUNTIME_DIR", empty_run.path().into()),
        ("REGISTRY_AUTH_FILE", auth_file.clone().into()),
    ]);
    assert_eq!(DockerConfig::search_paths(&with_file)[0], auth_file);
    push_with(
        DockerConfig::search_paths(&with_file),
        &registry,
        "auth-file",
    )
    .await
    .expect("push with REGISTRY_AUTH_FILE's credentials");
}
