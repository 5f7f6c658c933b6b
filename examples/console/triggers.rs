//! The triggers that need no request: polling the remote, and cron schedules.

use std::sync::Arc;
use std::time::Duration;

use croner::Cron;

use crate::runner::Service;

/// Fetches every `every` and queues a run for each branch or tag that moved.
pub(crate) async fn poll(service: Arc<Service>, every: Duration) {
    let mut seen = match service.repo.refs().await {
        Ok(refs) => refs,
        Err(e) => {
            tracing::error!("polling stops: cannot list refs: {e:#}");
            return;
        }
    };
    loop {
        tokio::select! {
            () = service.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = service.fetch().await {
            tracing::warn!("poll: {e:#}");
            continue;
        }
        let now = match service.repo.refs().await {
            Ok(refs) => refs,
            Err(e) => {
                tracing::warn!("poll: {e:#}");
                continue;
            }
        };
        for (reference, sha) in &now {
            if seen.get(reference) != Some(sha)
                && let Err(e) = service.trigger(reference, sha, "poll").await
            {
                tracing::error!(reference, "poll: cannot queue a run: {e:#}");
            }
        }
        seen = now;
    }
}

/// Parses a schedule: five fields, or six with seconds first.
pub(crate) fn parse(expression: &str) -> anyhow::Result<Cron> {
    expression
        .parse()
        .map_err(|e| anyhow::anyhow!("schedule {expression:?}: {e}"))
}

/// Runs `reference` at each time `cron` names (UTC).
pub(crate) async fn schedule(service: Arc<Service>, cron: Cron, reference: String) {
    loop {
        let now = chrono::Utc::now();
        let next = match cron.find_next_occurrence(&now, false) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(reference, "schedule stops: {e}");
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            () = service.shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if let Err(e) = run_ref(&service, &reference, "cron").await {
            tracing::error!(reference, "schedule: {e:#}");
        }
    }
}

/// Fetches, then queues a run of what `reference` (a full ref, or a branch or tag
/// name) points at.
pub(crate) async fn run_ref(
    service: &Arc<Service>,
    reference: &str,
    source: &str,
) -> anyhow::Result<crate::runner::Queued> {
    service.fetch().await?;
    let candidates = if reference.starts_with("refs/") {
        vec![reference.to_owned()]
    } else {
        vec![
            format!("refs/heads/{reference}"),
            format!("refs/tags/{reference}"),
        ]
    };
    for full in candidates {
        if let Some(sha) = service.repo.resolve(&full).await? {
            return service.trigger(&full, &sha, source).await;
        }
    }
    anyhow::bail!("no branch or tag {reference:?} in the repository")
}
