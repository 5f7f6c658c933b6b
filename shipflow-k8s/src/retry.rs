//! [`RetryPolicy`]: API requests that failed for a passing reason (a 5xx, a 429, a broken
//! connection, and for some requests a 409) are tried again with bounded, jittered
//! exponential backoff; the same backoff paces the watches' re-lists.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use shipflow_core::CancellationToken;

/// How [`KubeDeployer`](crate::KubeDeployer) retries API requests that failed for a
/// passing reason: a 5xx or 429 status, a broken connection, and a 409 conflict on
/// requests that carry no resourceVersion precondition (the server's own update race).
/// A 409 on a guarded request means someone else changed the object: never retried.
///
/// Each wait is drawn between half and all of the current delay (so that many
/// clients failing at once do not retry in step), the delay doubling from
/// `first_delay` up to `max_delay`; a cancelled run stops waiting at once.
///
/// ```
/// use std::time::Duration;
/// use shipflow_k8s::RetryPolicy;
///
/// let policy = RetryPolicy {
///     attempts: 3,
///     first_delay: Duration::from_millis(100),
///     max_delay: Duration::from_secs(1),
/// };
/// assert_eq!(RetryPolicy::none().attempts, 1);
/// assert!(policy.attempts > RetryPolicy::none().attempts);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retry).
    pub attempts: u32,
    /// The wait before the first retry; it doubles for each next one.
    pub first_delay: Duration,
    /// The longest wait between two tries.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 tries, waiting up to 50 ms, 100 ms, 200 ms, 400 ms in between (at most 2 s each).
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

/// Why a retried request gave up.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The last try's error.
    Api(kube::Error),
    /// The run was cancelled while waiting to try again.
    Cancelled,
}

impl Failure {
    /// The error for a failed request about `object` (not the app's Deployment).
    pub(crate) fn about(self, app: &str, object: &str, step: &'static str) -> crate::KubeError {
        match self {
            Self::Api(e) => crate::KubeError::Request {
                app: app.to_owned(),
                object: object.to_owned(),
                step,
                source: Box::new(e),
            },
            Self::Cancelled => crate::KubeError::Cancelled {
                app: app.to_owned(),
                workload: object.to_owned(),
                step,
                source: shipflow_core::Cancelled,
            },
        }
    }
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        Self::Api(e)
    }
}

impl RetryPolicy {
    /// One try, no retries.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    /// The waits between tries: jittered, doubling, capped; without end.
    pub(crate) fn delays(&self) -> Delays {
        Delays {
            next: self.first_delay,
            max: self.max_delay.max(self.first_delay),
            first: self.first_delay,
        }
    }

    /// Runs `request` until it succeeds, fails for good, the tries run out, or
    /// `cancel` fires while waiting. `conflicts`: whether a 409 is worth another
    /// try (requests without a resourceVersion precondition).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &str,
        conflicts: bool,
        cancel: &CancellationToken,
        mut request: F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = kube::Result<T>>,
    {
        let mut delays = self.delays();
        let mut attempt = 1;
        loop {
            match request().await {
                Err(e) if attempt < self.attempts && transient(&e, conflicts) => {
                    let delay = delays.next().unwrap_or(self.max_delay);
                    tracing::debug!(%what, attempt, error = %e, ?delay, "retrying API request");
                    tokio::select! {
                        () = cancel.cancelled() => return Err(Failure::Cancelled),
                        () = tokio::time::sleep(delay) => {}
                    }
                    attempt += 1;
                }
                other => return other.map_err(Failure::Api),
            }
        }
    }
}

/// The waits of a [`RetryPolicy`]; also the backoff of the watches
/// (`kube::runtime`'s [`Backoff`](kube::runtime::utils::Backoff)).
#[derive(Debug, Clone)]
pub(crate) struct Delays {
    next: Duration,
    max: Duration,
    first: Duration,
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(jitter(base))
    }
}

impl kube::runtime::utils::Backoff for Delays {
    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A random duration between half of `base` and `base`.
fn jitter(base: Duration) -> Duration {
    // A fresh randomly seeded hasher is a random number, without a dependency.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = base / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random.checked_rem(nanos.saturating_add(1)).unwrap_or(0))
}

/// Whether `e` may go away by trying again.
pub(crate) fn transient(e: &kube::Error, conflicts: bool) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429 || (conflicts && s.code == 409),
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn which_errors_are_transient() {
        assert!(transient(&status(500), false));
        assert!(transient(&status(503), false));
        assert!(transient(&status(429), false));
        assert!(!transient(&status(409), false));
        assert!(transient(&status(409), true));
        assert!(!transient(&status(404), true));
        assert!(!transient(&status(422), true));
    }

    #[test]
    fn delays_are_jittered_doubling_and_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
        };
        let bases = [100, 200, 250, 250];
        for (delay, base) in policy.delays().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                delay >= base / 2 && delay <= base,
                "{delay:?} within {base:?}"
            );
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..20).filter_map(|_| policy.delays().next()).collect();
        assert!(spread.len() > 1, "jittered: {spread:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_attempts() {
        let policy = RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
        };
        let start = tokio::time::Instant::now();
        let mut tries = 0;
        let result: Result<(), Failure> = policy
            .run("test", false, &CancellationToken::new(), || {
                tries += 1;
                async { Err(status(500)) }
            })
            .await;
        assert!(matches!(result, Err(Failure::Api(_))));
        assert_eq!(tries, 4);
        // Waits of at most 100 + 200 + 250 ms, at least half of that.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(275) && waited <= Duration::from_millis(550),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_cancelled_run_stops_waiting() {
        let policy = RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(60),
        };
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = std::time::Instant::now();
        let result: Result<(), Failure> = policy
            .run("test", false, &cancel, || async { Err(status(503)) })
            .await;
        assert!(matches!(result, Err(Failure::Cancelled)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
