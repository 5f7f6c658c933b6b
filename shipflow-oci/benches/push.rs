//! Push cost against real `docker-registry` instances on loopback, in one run:
//!
//! - cold push of a 3-layer ~100 MB image (built by `NativeBuilder` from random
//!   files, so gzip cannot shrink it): shipflow against
//!   `skopeo copy --dest-tls-verify=false oci:DIR:TAG docker://…`, each run into a
//!   registry of its own started for it, so both sides upload every byte and nothing
//!   can be mounted or remembered from an earlier run;
//! - a no-op re-push (requests counted: one `HEAD` of the tag);
//! - a push after one file of one layer changed: bytes on the wire (counted by a
//!   TCP proxy in front of the registry) = that layer + config + manifest + the
//!   requests' HTTP headers, asserted;
//! - peak RSS of a process pushing one 1 GB layer (target <= 64 MB);
//! - where the cold push's time goes: wall time against the CPU time of the
//!   pushing process and of the registry.
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

/// Set in the environment of a child run of this binary: push `<layout>\t<tag>\t<host>`
/// and print the process's peak RSS and CPU time.
const CHILD: &str = "SHIPFLOW_PUSH_BENCH_CHILD";

fn main() {
    if let Some(job) = std::env::var_os(CHILD) {
        return child_push(&job.to_string_lossy());
    }
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
    let ratio = m_ours.as_secs_f64() / m_theirs.as_secs_f64();
    println!(
        "  ratio shipflow / skopeo: {ratio:.2} (target <= 0.5: {})",
        if ratio <= 0.5 { "met" } else { "NOT met" }
    );

    // Where the time goes: the same cold push in a child process, its CPU time and
    // the registry's beside the wall time.
    let mut profiles = Vec::new();
    for _ in 0..RUNS {
        let registry = common::TestRegistry::start();
        let registry_cpu = cpu_of(registry.pid());
        let started = Instant::now();
        let child = run_child(&layout, "v1", &registry.host());
        let wall = started.elapsed();
        profiles.push((wall, child.cpu, cpu_of(registry.pid()) - registry_cpu));
    }
    profiles.sort();
    let (wall, client_cpu, registry_cpu) = profiles[profiles.len() / 2];
    println!(
        "cold push profile (median of {RUNS}, whole child process): wall {:.0} ms, shipflow CPU {:.0} ms ({:.0} %), docker-registry CPU {:.0} ms ({:.0} %) on 2 cores",
        ms(wall),
        ms(client_cpu),
        100.0 * client_cpu.as_secs_f64() / wall.as_secs_f64(),
        ms(registry_cpu),
        100.0 * registry_cpu.as_secs_f64() / wall.as_secs_f64(),
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
    let proxy = CountingProxy::start(registry.port());
    let started = Instant::now();
    let changed = runtime
        .block_on(client.push(&v2, &proxy.reference("bench/app:v2"), &Context::new()))
        .expect("push v2");
    let took = started.elapsed();
    let expected = v2.layers[2].size + v2.config.size + v2.manifest_size;
    let wire = proxy.sent();
    let headers = wire.saturating_sub(expected);
    println!(
        "one-layer change: {} bytes uploaded = layer {} + config {} + manifest {} = {expected}; on the wire {wire} bytes ({headers} of them headers of {} requests); {} blobs uploaded, {} skipped, {:.0} ms",
        changed.bytes_uploaded,
        v2.layers[2].size,
        v2.config.size,
        v2.manifest_size,
        changed.requests,
        changed.blobs_uploaded,
        changed.blobs_skipped,
        ms(took)
    );
    assert_eq!(changed.bytes_uploaded, expected);
    // What went over the wire is those bytes and HTTP headers only (about 0.5 KB a
    // request): no other blob's byte.
    assert!(wire >= expected, "{wire} < {expected}");
    assert!(
        headers <= u64::from(changed.requests) * 1024,
        "{headers} bytes beyond the content for {} requests",
        changed.requests
    );

    // Peak memory of a process pushing one 1 GB layer (streamed in chunks).
    let big = dir.path().join("big");
    let big_layout = shipflow_oci::OciLayout::create(&big).expect("layout");
    one_layer_image(&big_layout, 1_000 * MB);
    let registry = common::TestRegistry::start();
    let started = Instant::now();
    let child = run_child(&big, "big", &registry.host());
    println!(
        "one 1 GB layer: peak RSS {:.1} MB (target <= 64 MB: {}), {:.0} ms ({:.0} MB/s)",
        child.peak_rss_kb as f64 / 1024.0,
        if child.peak_rss_kb <= 64 * 1024 {
            "met"
        } else {
            "NOT met"
        },
        ms(started.elapsed()),
        1_000.0 / started.elapsed().as_secs_f64()
    );
}

/// Writes an image of one `size`-byte layer of noise (streamed, never in memory
/// whole) under tag `big`.
fn one_layer_image(layout: &shipflow_oci::OciLayout, size: usize) {
    struct Noise {
        left: usize,
        counter: u64,
        block: Vec<u8>,
        at: usize,
    }
    impl std::io::Read for Noise {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                return Ok(0);
            }
            if self.at == self.block.len() {
                self.block = common::noise(&format!("big-{}", self.counter), 64 * 1024);
                self.counter += 1;
                self.at = 0;
            }
            let n = buf.len().min(self.block.len() - self.at).min(self.left);
            buf[..n].copy_from_slice(&self.block[self.at..self.at + n]);
            self.at += n;
            self.left -= n;
            Ok(n)
        }
    }
    let layer = layout
        .write_blob_from(
            Noise {
                left: size,
                counter: 0,
                block: Vec::new(),
                at: 0,
            },
            common::LAYER_MEDIA_TYPE,
        )
        .expect("write the layer");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest.to_string()]},
    });
    let config = layout
        .write_blob(
            &serde_json::to_vec(&config).expect("json"),
            common::CONFIG_MEDIA_TYPE,
        )
        .expect("config");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": shipflow_oci::OCI_MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": common::CONFIG_MEDIA_TYPE, "digest": config.digest.to_string(), "size": config.size},
        "layers": [{"mediaType": common::LAYER_MEDIA_TYPE, "digest": layer.digest.to_string(), "size": layer.size}],
    });
    layout
        .put_manifest(&serde_json::to_vec(&manifest).expect("json"), "big")
        .expect("manifest");
}

struct ChildRun {
    peak_rss_kb: u64,
    cpu: Duration,
}

/// Runs this binary again to push `layout:tag` to `host`, alone in its process.
fn run_child(layout: &Path, tag: &str, host: &str) -> ChildRun {
    let out = Command::new(std::env::current_exe().expect("this binary"))
        .env(CHILD, format!("{}\t{tag}\t{host}", layout.display()))
        .output()
        .expect("run the push child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "push child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
    };
    ChildRun {
        peak_rss_kb: field("peak_rss_kb="),
        cpu: Duration::from_micros(field("cpu_us=")),
    }
}

fn child_push(job: &str) {
    let mut parts = job.split('\t');
    let (Some(layout), Some(tag), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{CHILD}: expected <layout>\\t<tag>\\t<host>");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let image = shipflow_oci::OciLayout::open(layout)
        .and_then(|l| l.local_image("app", tag))
        .expect("the image");
    let target: shipflow_core::ImageRef = format!("{host}/bench/app:{tag}").parse().expect("ref");
    let client = RegistryClient::builder()
        .without_docker_config()
        .build()
        .expect("client");
    runtime
        .block_on(client.push(&image, &target, &Context::new()))
        .expect("push");
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmHWM");
    println!(
        "peak_rss_kb={peak} cpu_us={}",
        cpu_of(std::process::id()).as_micros()
    );
}

/// User + system CPU time of process `pid` so far (from /proc/<pid>/stat).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) close with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// A loopback TCP proxy in front of a registry that counts the bytes clients send.
struct CountingProxy {
    port: u16,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingProxy {
    fn start(upstream: u16) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let port = listener.local_addr().expect("addr").port();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (Ok(mut client_back), Ok(mut server_back)) =
                    (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    // A connection opening with a TLS hello (HTTPS is tried first
                    // on loopback) carries no HTTP request: not counted.
                    let mut tls_hello = None;
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if !*tls_hello.get_or_insert(buf[0] == 0x16) {
                            counter.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                        }
                        if server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server_back, &mut client_back);
                    let _ = client_back.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Self { port, sent }
    }

    fn reference(&self, repo_and_tag: &str) -> shipflow_core::ImageRef {
        format!("127.0.0.1:{}/{repo_and_tag}", self.port)
            .parse()
            .expect("ref")
    }

    fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }
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
