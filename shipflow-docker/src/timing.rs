//! How long each step of a deploy takes: every engine call, lock and probe of the
//! deploy path is logged at debug level under the target `shipflow_docker::timing`
//! with the app, the step and the elapsed microseconds, so a slow deploy can be
//! read step by step (`RUST_LOG=shipflow_docker::timing=debug`).

use std::future::Future;
use std::time::Instant;

/// Logs that `step` of `app`'s deploy took the time since `started`.
pub(crate) fn log(app: &str, step: &str, started: Instant) {
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    tracing::debug!(target: "shipflow_docker::timing", app, step, us, "deploy step");
}

/// Runs `step` of `app`'s deploy and logs how long it took.
pub(crate) async fn timed<T>(app: &str, step: &str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = work.await;
    log(app, step, started);
    out
}
