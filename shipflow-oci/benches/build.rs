//! Native build of a ~200 MB directory into one gzip layer, against
//! `tar -c DIR | gzip -6 > FILE` on the same data, in the same run (medians of
//! alternating runs, so machine noise hits both sides alike).
//!
//! The tree: 400 files of 512 KiB in 20 directories; three quarters text-like
//! (words from a small vocabulary, compressing about 3:1 like source code and
//! JavaScript bundles), one quarter random bytes (like compiled binaries and images).
//!
//! The build attaches an SBOM (every file hashed on the way) and a provenance
//! statement, as by default; the same build without them is timed too, so the
//! cost of the SBOM shows.
//!
//! Run with `cargo bench -p shipflow-oci --bench build` (needs `tar` and `gzip`).

#![allow(missing_docs, clippy::print_stdout)]

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shipflow_core::{BuildRequest, Context, ImageBuilder, Workspace};
use shipflow_oci::NativeBuilder;

const FILES: usize = 400;
const FILE_SIZE: usize = 512 * 1024;
const RUNS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repo");
    make_tree(&root.join("app"));
    let workspace = Workspace::from_toml(
        "[workspace]\nregistry = \"127.0.0.1:5000/bench\"\n[apps.app]\nbuild = { type = \"native\", layers = [{ from = \"app\", to = \"/app\" }] }\n[apps.plain]\npath = \"app\"\nbuild = { type = \"native\", layers = [{ from = \"app\", to = \"/app\" }], sbom = false, provenance = false }\n",
        &root
    )
    .expect("workspace");
    let app = workspace.app("app").expect("app").clone();
    let plain = workspace.app("plain").expect("plain").clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let request = BuildRequest {
        root: root.clone(),
        tag: "bench".into(),
        ..BuildRequest::default()
    };
    let native_app = |app: &shipflow_core::App, threads: Option<usize>, level: u32, n: usize| {
        let images = dir
            .path()
            .join(format!("images-{n}-{threads:?}-{level}-{}", app.name));
        let mut builder = NativeBuilder::new(&images).compression_level(level);
        if let Some(t) = threads {
            builder = builder.compression_threads(t);
        }
        let started = Instant::now();
        let image = runtime
            .block_on(builder.build(app, &request, &Context::new()))
            .expect("native build");
        let took = started.elapsed();
        fs::remove_dir_all(&images).expect("clean images");
        (took, image.layers[0].size)
    };
    let native = |threads: Option<usize>, level: u32, n: usize| native_app(&app, threads, level, n);
    let reference = |n: usize| {
        let out = dir.path().join(format!("ref-{n}.tar.gz"));
        let started = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -c -C '{}' app | gzip -6 > '{}'",
                root.display(),
                out.display()
            ))
            .status()
            .expect("run tar | gzip");
        assert!(status.success(), "tar | gzip failed");
        let took = started.elapsed();
        let size = fs::metadata(&out).expect("ref output").len();
        fs::remove_file(&out).expect("clean ref");
        (took, size)
    };

    let level = NativeBuilder::DEFAULT_LEVEL;
    if let Ok(levels) = std::env::var("SWEEP_LEVELS") {
        for l in levels.split(',').filter_map(|l| l.parse().ok()) {
            let (t, s) = native(None, l, 1000 + l as usize);
            println!("level {l}: {:.0} ms, {s} bytes", ms(t));
        }
        let (t, s) = reference(1000);
        println!("tar | gzip -6: {:.0} ms, {s} bytes", ms(t));
        return;
    }
    let (mut ours, mut ours_single, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ours_l1, mut l1_size) = (Vec::new(), 0);
    let mut ours_plain = Vec::new();
    let (mut our_size, mut their_size) = (0, 0);
    native(None, level, 99); // warm the page cache
    for n in 0..RUNS {
        let (t, s) = reference(n);
        theirs.push(t);
        their_size = s;
        let (t, s) = native(None, level, n);
        ours.push(t);
        our_size = s;
        ours_single.push(native(Some(1), level, n).0);
        ours_plain.push(native_app(&plain, None, level, n).0);
        let (t, s) = native(None, 6, n);
        ours_l1.push(t);
        l1_size = s;
    }
    let total = (FILES * FILE_SIZE) as f64 / 1e6;
    let (m_ours, m_single, m_theirs) = (median(ours), median(ours_single), median(theirs));
    let m_l1 = median(ours_l1);
    let m_plain = median(ours_plain);
    println!("native build of {total:.0} MB, {FILES} files, median of {RUNS}:");
    println!(
        "  shipflow level {level} (all cores): {:>7.0} ms  ({:.0} MB/s, layer {} bytes)",
        ms(m_ours),
        total / m_ours.as_secs_f64(),
        our_size
    );
    println!(
        "  shipflow level {level} (1 thread):  {:>7.0} ms",
        ms(m_single)
    );
    println!(
        "  shipflow level {level}, no SBOM: {:>7.0} ms  (the SBOM costs {:.2}x)",
        ms(m_plain),
        m_ours.as_secs_f64() / m_plain.as_secs_f64()
    );
    println!(
        "  shipflow level 6 (all cores): {:>7.0} ms  (layer {l1_size} bytes, ratio {:.2})",
        ms(m_l1),
        m_l1.as_secs_f64() / m_theirs.as_secs_f64()
    );
    println!(
        "  tar -c | gzip -6:     {:>7.0} ms  (output {} bytes)",
        ms(m_theirs),
        their_size
    );
    println!(
        "  ratio shipflow / tar|gzip: {:.2} (target <= 0.6); 1 thread: {:.2}",
        m_ours.as_secs_f64() / m_theirs.as_secs_f64(),
        m_single.as_secs_f64() / m_theirs.as_secs_f64()
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Deterministic content: xorshift-driven words (compressible) or raw bytes.
fn make_tree(root: &Path) {
    const WORDS: [&str; 32] = [
        "fn", "let", "mut", "self", "return", "match", "impl", "struct", "const", "import",
        "export", "function", "await", "async", "value", "error", "result", "string", "number",
        "config", "request", "response", "handler", "client", "server", "index", "data", "=>", "{",
        "}", "(", ");\n",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..FILES {
        let dir = root.join(format!("dir{:02}", i % 20));
        fs::create_dir_all(&dir).expect("mkdir");
        let mut content = Vec::with_capacity(FILE_SIZE + 16);
        if i % 4 == 3 {
            while content.len() < FILE_SIZE {
                content.extend_from_slice(&next().to_le_bytes());
            }
        } else {
            while content.len() < FILE_SIZE {
                let r = next();
                content.extend_from_slice(WORDS[(r % 32) as usize].as_bytes());
                content.push(if r >> 60 == 0 { b'\n' } else { b' ' });
            }
        }
        content.truncate(FILE_SIZE);
        fs::write(dir.join(format!("file{i:03}.dat")), content).expect("write file");
    }
}
