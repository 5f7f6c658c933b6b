//! Reading containers while Podman reports states Docker's API does not name.
//!
//! Podman passes its own container states through its Docker-compatible API:
//! `stopping` while a container stops and `stopped` between its process exiting and
//! the clean-up that makes it `exited`. The API client's models know Docker's states
//! only, so a list or an inspect in those moments fails to decode. These states pass
//! within a moment: the calls here read again until the engine names a state the
//! client knows, and fail (saying why) only if it never does.

use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerInspectResponse, ContainerSummary};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};

/// How long a state the client cannot decode may last before it is an error.
const UNKNOWN_STATE_LIMIT: Duration = Duration::from_secs(15);
/// How long to wait before reading again.
const READ_AGAIN: Duration = Duration::from_millis(100);

/// Whether `error` is an answer the client could not decode (an unknown state).
fn undecodable(error: &EngineError) -> bool {
    matches!(
        error,
        EngineError::JsonDataError { .. } | EngineError::JsonSerdeError { .. }
    )
}

/// Calls `read` until its answer decodes, for at most [`UNKNOWN_STATE_LIMIT`].
async fn read_known<T, F, Fut>(mut read: F) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, EngineError>>,
{
    let deadline = tokio::time::Instant::now() + UNKNOWN_STATE_LIMIT;
    loop {
        match read().await {
            Err(e) if undecodable(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!(
                    "the engine named a state this client does not know ({e}); reading again"
                );
                tokio::time::sleep(READ_AGAIN).await;
            }
            other => return other,
        }
    }
}

/// `GET /containers/{name}/json`, read again while the state is one only Podman names.
pub(crate) async fn inspect(
    docker: &Docker,
    container: &str,
) -> Result<ContainerInspectResponse, EngineError> {
    read_known(|| docker.inspect_container(container, None::<InspectContainerOptions>)).await
}

/// `GET /containers/json`, read again while a state is one only Podman names.
pub(crate) async fn list(
    docker: &Docker,
    options: ListContainersOptions,
) -> Result<Vec<ContainerSummary>, EngineError> {
    read_known(|| docker.list_containers(Some(options.clone()))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_again_while_the_answer_does_not_decode() {
        let mut calls = 0;
        let answer = read_known(|| {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    let err = serde_json::from_str::<u8>("\"stopped\"").expect_err("not a u8");
                    Err(EngineError::from(err))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer.ok(), Some(3));
    }

    #[tokio::test]
    async fn other_errors_are_returned_at_once() {
        let mut calls = 0;
        let answer: Result<(), _> = read_known(|| {
            calls += 1;
            async {
                Err(EngineError::DockerResponseServerError {
                    status_code: 404,
                    message: "no such container".into(),
                })
            }
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(calls, 1);
    }
}
