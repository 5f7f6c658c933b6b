//! [`Backoff`]: how long to wait between tries of something that failed for a
//! passing reason, shared by every adapter that retries.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::{Cancelled, Context};

/// Exponential backoff with jitter: the wait before retry `n` is in `[d/2, d)`,
/// where `d` starts at [`first_delay`](Backoff::first_delay), doubles each retry
/// and is capped at [`max_delay`](Backoff::max_delay). Waits end early when the
/// run is cancelled.
///
/// ```
/// use std::time::Duration;
/// use shipflow_core::Backoff;
///
/// let backoff = Backoff::new(4, Duration::from_millis(200), Duration::from_secs(10));
/// let third = backoff.delay(3);
/// assert!(third >= Duration::from_millis(400) && third < Duration::from_millis(800));
/// assert_eq!(Backoff::none().attempts, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// Tries in all, the first included (1 = no retry).
    pub attempts: u32,
    /// The wait before the first retry (before jitter).
    pub first_delay: Duration,
    /// The longest wait between two tries.
    pub max_delay: Duration,
}

impl Default for Backoff {
    /// 4 tries, waiting about 200 ms, 400 ms and 800 ms in between.
    fn default() -> Self {
        Self::new(4, Duration::from_millis(200), Duration::from_secs(10))
    }
}

impl Backoff {
    /// `attempts` tries in all (at least 1), the first retry after about
    /// `first_delay`, no wait longer than `max_delay`.
    pub fn new(attempts: u32, first_delay: Duration, max_delay: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            first_delay,
            max_delay,
        }
    }

    /// One try, no retries.
    pub fn none() -> Self {
        Self::new(1, Duration::ZERO, Duration::ZERO)
    }

    /// The wait before retry `retry` (1 for the first retry), jitter included.
    pub fn delay(&self, retry: u32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_delay);
        doubled.mul_f64(0.5 + jitter() / 2.0)
    }

    /// Waits before retry `retry`; `Err(Cancelled)` as soon as `ctx` is cancelled.
    pub async fn wait(&self, retry: u32, ctx: &Context) -> Result<(), Cancelled> {
        tokio::select! {
            () = tokio::time::sleep(self.delay(retry)) => Ok(()),
            () = ctx.cancellation().cancelled() => Err(Cancelled),
        }
    }

    /// Runs `op` until it succeeds, fails with an error `retryable` refuses, the
    /// tries run out, or `ctx` is cancelled; the last error is returned.
    pub async fn retry<T, E, F, Fut>(
        &self,
        ctx: &Context,
        retryable: impl Fn(&E) -> bool,
        mut op: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if attempt < self.attempts && retryable(&e) => {
                    tracing::debug!(attempt, "retrying after a passing failure");
                    if self.wait(attempt, ctx).await.is_err() {
                        return Err(e);
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A number in `[0, 1)`, different on every call (a fresh randomly keyed hasher).
fn jitter() -> f64 {
    let bits = RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_are_capped() {
        let backoff = Backoff::new(10, Duration::from_millis(100), Duration::from_secs(1));
        for retry in 1..=4 {
            let full = Duration::from_millis(100 * (1 << (retry - 1)));
            let d = backoff.delay(retry);
            assert!(d >= full / 2 && d < full, "retry {retry}: {d:?}");
        }
        assert!(backoff.delay(30) < Duration::from_secs(1));
        let spread: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| backoff.delay(3)).collect();
        assert!(spread.len() > 1, "jitter varies");
    }

    #[tokio::test]
    async fn retries_only_what_is_retryable_and_stops_on_cancel() {
        let backoff = Backoff::new(3, Duration::from_millis(1), Duration::from_millis(2));
        let ctx = Context::new();
        let mut calls = 0;
        let result: Result<(), &str> = backoff
            .retry(
                &ctx,
                |e| *e == "passing",
                || {
                    calls += 1;
                    async { Err("passing") }
                },
            )
            .await;
        assert_eq!((result, calls), (Err("passing"), 3));

        let mut calls = 0;
        let result: Result<(), &str> = backoff
            .retry(
                &ctx,
                |e| *e == "passing",
                || {
                    calls += 1;
                    async { Err("final") }
                },
            )
            .await;
        assert_eq!((result, calls), (Err("final"), 1));

        let slow = Backoff::new(5, Duration::from_secs(60), Duration::from_secs(60));
        ctx.cancellation().cancel();
        let started = std::time::Instant::now();
        let mut calls = 0;
        let _: Result<(), &str> = slow
            .retry(
                &ctx,
                |_| true,
                || {
                    calls += 1;
                    async { Err("passing") }
                },
            )
            .await;
        assert_eq!(calls, 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the wait ended on cancel"
        );
    }
}
