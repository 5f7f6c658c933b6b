//! `examples/image_automation.rs`, run as a user would: one pass from a policies
//! file, then the loop with its notification endpoint, stopped by SIGINT.

#[path = "common/mod.rs"]
mod common;
#[path = "support/automation.rs"]
mod support;

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Fleet, Registry, client, deployment_path, free_port, push};

/// The example's binary, built with the workspace's tests' feature set.
fn example() -> PathBuf {
    common::example_binary("image_automation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_commits_from_a_policies_file_then_follows_notifications_until_sigint() {
    let binary = example();
    let registry = Registry::start(None);
    let (api, web) = (
        registry.repository("team/api"),
        registry.repository("team/web"),
    );
    let client = client();
    let api1 = push(&client, &api, "1.0.0", "api-1.0.0").await;
    push(&client, &web, "build-9", "web-9").await;
    let web10 = push(&client, &web, "build-10", "web-10").await;
    let fleet = Fleet::new(&[
        ("api".into(), format!("{api}:0.1.0")),
        ("web".into(), format!("{web}:build-1")),
    ]);
    let policies = fleet.dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        format!(
            r#"
[[bindings]]
app = "api"
policy = {{ name = "api", repository = "{api}", policy = {{ semver = {{ range = ">=1.0.0" }} }} }}
files = [{{ path = "apps/api/deployment.yaml", setter = "flux-system:api" }}]

[[bindings]]
app = "web"
policy = {{ name = "web-builds", repository = "{web}", policy = {{ numerical = {{ order = "asc" }} }}, filter_tags = {{ pattern = '^build-(?P<n>[0-9]+)$', extract = '$n' }} }}
files = [{{ path = "apps/web/deployment.yaml", setter = "flux-system:web" }}]
"#
        ),
    )
    .expect("write policies");
    let cache = fleet.dir.path().join("example-cache");
    let common = |cmd: &mut Command| {
        cmd.arg("--repository")
            .arg(&fleet.bare)
            .arg("--policies")
            .arg(&policies)
            .arg("--cache-dir")
            .arg(&cache)
            .stdin(Stdio::null())
            .env("RUST_LOG", "warn");
    };

    let mut once = Command::new(&binary);
    common(&mut once);
    let out = once.arg("--once").output().expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("api: write {api}:1.0.0@{api1} over nothing"))
            && stdout.contains("web: write")
            && stdout.contains(
                "policy web-builds chose tag build-10 of 2 tags by numerical order (highest)"
            )
            && stdout.contains("committed "),
        "{stdout}"
    );
    assert_eq!(fleet.commits(), 2, "one commit for both apps");
    assert!(
        fleet
            .show(&deployment_path("web"))
            .contains(&format!("{web}:build-10@{web10}"))
    );

    // The loop: a notification brings the next push in, SIGINT stops it.
    let port = free_port();
    let mut looping = Command::new(&binary);
    common(&mut looping);
    let child = looping
        .args(["--interval", "1h", "--debounce", "50ms"])
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-env",
            "NOTIFY_TOKEN",
        ])
        .env("NOTIFY_TOKEN", "t0ken")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("the example starts");
    let pid = child.id().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the endpoint never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let api2 = push(&client, &api, "1.1.0", "api-1.1.0").await;
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .args(["-H", "Authorization: Bearer t0ken", "--data-binary"])
        .arg(r#"{"events":[{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","repository":"team/api","tag":"1.1.0"}}]}"#)
        .arg(format!("http://127.0.0.1:{port}/events"))
        .output()
        .expect("curl runs (apt-get install -y curl)");
    assert_eq!(String::from_utf8_lossy(&status.stdout), "200");
    fleet
        .wait_for_commits(3, Duration::from_secs(15))
        .await
        .expect("the notified push is committed");
    assert!(
        fleet
            .show(&deployment_path("api"))
            .contains(&format!("{api}:1.1.0@{api2}"))
    );

    let kill = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("stops within 15 s of SIGINT")
    .expect("joins")
    .expect("waits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}: {stdout}", out.status);
    assert!(
        stdout.contains(&format!(
            "listening for registry notifications on http://127.0.0.1:{port}/events"
        )) && stdout.contains("committed ")
            && stdout.trim_end().ends_with("stopped"),
        "{stdout}"
    );
    assert_eq!(fleet.commits(), 3);
}
