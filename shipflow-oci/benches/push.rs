//! Push cost against a real docker-registry on loopback: a cold push of a
//! 3 × 8 MiB image into a fresh repository, and a no-op re-push (HEADs only).
//!
//! Run with `cargo bench -p shipflow-oci --bench push` (needs `docker-registry`).

#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shipflow_core::{Context, Registry};
use shipflow_oci::RegistryClient;

fn push(c: &mut Criterion) {
    let registry = common::TestRegistry::start();
    let (_dir, layout) = common::temp_layout();
    let layers: Vec<Vec<u8>> = (0..3)
        .map(|i| common::noise(&format!("bench-{i}"), 8 * 1024 * 1024))
        .collect();
    let image = common::write_image(&layout, "bench", "v1", &layers);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = RegistryClient::builder().build().expect("client");

    let mut group = c.benchmark_group("push");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(image.size()));
    let fresh = AtomicU32::new(0);
    group.bench_function("cold_3x8MiB", |b| {
        b.iter(|| {
            let n = fresh.fetch_add(1, Ordering::Relaxed);
            let target = registry.reference(&format!("bench/cold-{n}:v1"));
            let report = runtime
                .block_on(client.push(&image, &target, &Context::new()))
                .expect("push");
            assert_eq!(report.blobs_uploaded, 4);
        });
    });
    let target = registry.reference("bench/warm:v1");
    runtime
        .block_on(client.push(&image, &target, &Context::new()))
        .expect("first push");
    group.throughput(Throughput::Elements(1));
    group.bench_function("noop_repush", |b| {
        b.iter(|| {
            let report = runtime
                .block_on(client.push(&image, &target, &Context::new()))
                .expect("re-push");
            assert_eq!(report.blobs_uploaded, 0);
        });
    });
    group.finish();
}

criterion_group!(benches, push);
criterion_main!(benches);
