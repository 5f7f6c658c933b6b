//! Push cost against real `docker-registry` instances on loopback, in one run:
//!
//! - cold push of a 3-layer ~100 MB image (built by `NativeBuilder` from random
//!   files, so gzip cannot shrink it): shipflow against
//!   `skopeo copy --dest-tls-verify=false oci:DIR:TAG docker://…`, each run into a
//!   registry of its own started for it, so both sides upload every byte and nothing
//!   can be mounted or remembered from an earlier run;
//! - a no-op re-push (requests counted: one `HEAD` of the tag);
//! - a push after one file of one layer changed (bytes uploaded = that layer +
//!   config + manifest).
//!
//! Run with `cargo bench -p shipflow-oci --bench push` (needs `docker-registry` and
//! `skopeo`).

#![allow(missing_docs, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shipflow_core::{BuildRequest, Context, ImageBuilder, Registry, Workspace};
use shipflow_oci::{NativeBuilder, RegistryClient};

const RUNS: usize = 5;
const MB: usize = 1_000_000;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repo");
    for (layer, size) in [("deps", 45 * MB), ("lib", 35 * MB), ("app", 20 * MB)] {
        let folder = root.join(layer);
        std::fs::create_dir_all(&folder).expect("mkdir");
        for i in 0..(size / (5 * MB)) {
            let data = common::noise(&format!("{layer}-{i}"), 5 * MB);
            std::fs::write(folder.join(format!("f{i}.bin")), data).expect("write");
        }
    }
    let workspace = Workspace::from_toml(
        r#"
        [workspace]
        registry = "127.0.0.1:5000/bench"
        [apps.app.build]
        type = "native"
        layers = [{ from = "deps", to = "/deps" }, { from = "lib", to = "/lib" }, { from = "app", to = "/app" }]
        "#,
        &root
    )
    .expect("workspace");
    let app = workspace.app("app").expect("app").clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let images = dir.path().join("images");
    let builder = NativeBuilder::new(&images);
    let build = |tag: &str| {
        let request = BuildRequest {
            root: root.clone(),
            tag: tag.into(),
            ..BuildRequest::default()
        };
        runtime
            .block_on(builder.build(&app, &request, &Context::new()))
            .expect("native build")
    };
    let v1 = build("v1");
    let layout = builder.layout_path("app");
    println!(
        "image: {} layers, {:.1} MB",
        v1.layers.len(),
        v1.size() as f64 / 1e6
    );

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let registry = common::TestRegistry::start();
        let client = RegistryClient::builder().build().expect("client");
        let started = Instant::now();
        let report = runtime
            .block_on(client.push(&v1, &registry.reference("bench/app:v1"), &Context::new()))
            .expect("push");
        ours.push(started.elapsed());
        assert_eq!(report.blobs_uploaded, 4);
        drop(registry);

        let registry = common::TestRegistry::start();
        theirs.push(skopeo_copy(&layout, &registry.host()));
    }
    let (m_ours, m_theirs) = (median(ours), median(theirs));
    println!("cold push, median of {RUNS}, each into a fresh registry:");
    println!(
        "  shipflow:    {:>6.0} ms ({:.0} MB/s)",
        ms(m_ours),
        v1.size() as f64 / 1e6 / m_ours.as_secs_f64()
    );
    println!("  skopeo copy: {:>6.0} ms", ms(m_theirs));
    println!(
        "  ratio shipflow / skopeo: {:.2} (target <= 1.0)",
        m_ours.as_secs_f64() / m_theirs.as_secs_f64()
    );

    // No-op re-push and one-layer change, against one registry and client.
    let registry = common::TestRegistry::start();
    let client = RegistryClient::builder().build().expect("client");
    let target = registry.reference("bench/app:v1");
    runtime
        .block_on(client.push(&v1, &target, &Context::new()))
        .expect("first push");
    let started = Instant::now();
    let noop = runtime
        .block_on(client.push(&v1, &target, &Context::new()))
        .expect("re-push");
    println!(
        "no-op re-push: {} request(s), {} bytes uploaded, {:.1} ms (target: 1 request)",
        noop.requests,
        noop.bytes_uploaded,
        ms(started.elapsed())
    );
    assert_eq!(noop.requests, 1);

    std::fs::write(root.join("app/f0.bin"), common::noise("changed", 5 * MB)).expect("change");
    let v2 = build("v2");
    assert_eq!(v1.layers[..2], v2.layers[..2], "only the app layer changed");
    let started = Instant::now();
    let changed = runtime
        .block_on(client.push(&v2, &registry.reference("bench/app:v2"), &Context::new()))
        .expect("push v2");
    let expected = v2.layers[2].size + v2.config.size + v2.manifest_size;
    println!(
        "one-layer change: {} bytes uploaded = layer {} + config {} + manifest {} = {expected}; {} blobs uploaded, {} skipped, {:.0} ms",
        changed.bytes_uploaded,
        v2.layers[2].size,
        v2.config.size,
        v2.manifest_size,
        changed.blobs_uploaded,
        changed.blobs_skipped,
        ms(started.elapsed())
    );
    assert_eq!(changed.bytes_uploaded, expected);
}

fn skopeo_copy(layout: &Path, host: &str) -> Duration {
    let started = Instant::now();
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{host}/bench/app:v1"),
        ])
        .output()
        .expect("run skopeo (apt-get install -y skopeo)");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
