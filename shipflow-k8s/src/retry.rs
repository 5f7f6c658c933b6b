//! [`RetryPolicy`]: API requests that failed for a passing reason (a 5xx, a 429, a broken
//! connection, and for some requests a 409) are tried again with bounded exponential backoff.

use std::future::Future;
use std::time::Duration;

/// How [`KubeDeployer`](crate::KubeDeployer) retries API requests that failed for a
/// passing reason: a 5xx or 429 status, a broken connection, and a 409 conflict on
/// requests that carry no resourceVersion precondition (the server's own update race).
/// A 409 on a guarded request means someone else changed the object: never retried.
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
    /// 5 tries, waiting 50 ms, 100 ms, 200 ms, 400 ms in between (at most 2 s each).
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
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

    /// Runs `request` until it succeeds, fails for good, or the tries run out.
    /// `conflicts`: whether a 409 is worth another try (requests without a
    /// resourceVersion precondition).
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &str,
        conflicts: bool,
        mut request: F,
    ) -> kube::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = kube::Result<T>>,
    {
        let mut delay = self.first_delay;
        let mut attempt = 1;
        loop {
            match request().await {
                Err(e) if attempt < self.attempts && transient(&e, conflicts) => {
                    tracing::debug!(%what, attempt, error = %e, ?delay, "retrying API request");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_delay);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_the_cap_and_stops_after_the_attempts() {
        let policy = RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(250),
        };
        let start = tokio::time::Instant::now();
        let mut tries = 0;
        let result: kube::Result<()> = policy
            .run("test", false, || {
                tries += 1;
                async { Err(status(500)) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(tries, 4);
        // 100 + 200 + 250 (capped)
        assert_eq!(start.elapsed(), Duration::from_millis(550));
    }
}
