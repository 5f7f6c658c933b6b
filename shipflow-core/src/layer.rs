//! Layers: behaviour put around any [`ImageBuilder`], [`Registry`] or [`Deployer`]
//! without the inner one knowing, in the spirit of tower's `Layer`.
//!
//! - [`Hooked`] runs a [`Hook`] before and after builds and deploys (the pipeline
//!   wraps its parts in one for the `hooks` of `shipflow.toml`).
//! - [`Retry`] tries a call again when its error is marked [`Transient`].
//!
//! They compose: `Retry::new(Hooked::new(deployer, hook), Backoff::default())`.
//!
//! ```
//! use std::sync::Arc;
//! use shipflow_core::testing::FakeDeployer;
//! use shipflow_core::{async_trait, Backoff, BoxError, Context, Deployer, Hook, HookEvent, Hooked, Retry};
//!
//! /// Says what happens, and stops deploys of `legacy`.
//! struct Freeze;
//!
//! #[async_trait]
//! impl Hook for Freeze {
//!     async fn run(&self, event: &HookEvent<'_>, _ctx: &Context) -> Result<(), BoxError> {
//!         println!("{} {}", event.point, event.app.name);
//!         if event.app.name == "legacy" && event.point.gates() {
//!             return Err("legacy is frozen".into());
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let deployer: Arc<dyn Deployer> =
//!     Arc::new(Retry::new(Hooked::new(FakeDeployer::new(), Freeze), Backoff::default()));
//! # let _ = deployer;
//! ```

use std::sync::Arc;

use async_trait::async_trait;

use crate::hooks::{HookEvent, HookPoint};
use crate::{
    App, Backoff, BoxError, BuildRequest, Context, DeployItem, DeployMeta, Deployed, Deployer,
    Digest, ImageBuilder, ImageRef, LocalImage, PushReport, Registry, Restored, Revision,
    RollbackTarget, Rollout, Transient, caused_by,
};

/// Behaviour run at the [`HookPoint`]s of an app's run. An error at a `pre_` point
/// stops the app; at a `post_` point it fails that stage; at `on_failure` or
/// `on_rollback` it is reported beside what failed, never instead of it.
#[async_trait]
pub trait Hook: Send + Sync {
    /// Runs at `event.point`.
    async fn run(&self, event: &HookEvent<'_>, ctx: &Context) -> Result<(), BoxError>;
}

#[async_trait]
impl<H: Hook + ?Sized> Hook for Arc<H> {
    async fn run(&self, event: &HookEvent<'_>, ctx: &Context) -> Result<(), BoxError> {
        (**self).run(event, ctx).await
    }
}

/// A stage failed, and so did its `on_failure` hook: both are kept, the stage's
/// error as the source (so its markers, such as [`Restored`], still count).
#[derive(Debug, thiserror::Error)]
#[error("{error}; and the on_failure hook failed too: {hook}")]
pub struct HookAlsoFailed {
    /// What the stage failed with.
    #[source]
    pub error: BoxError,
    /// What the hook failed with.
    pub hook: String,
}

/// An [`ImageBuilder`] or [`Deployer`] with a [`Hook`] around it.
#[derive(Debug, Clone)]
pub struct Hooked<T, H> {
    inner: T,
    hook: H,
}

impl<T, H> Hooked<T, H> {
    /// `inner`, with `hook` run around its builds and deploys.
    pub fn new(inner: T, hook: H) -> Self {
        Self { inner, hook }
    }

    /// The wrapped part.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T, H: Hook> Hooked<T, H> {
    /// Runs `on_failure` (and `on_rollback` when the adapter restored what ran
    /// before), keeping `error` whatever the hooks do.
    async fn failed(&self, error: BoxError, event: HookEvent<'_>, ctx: &Context) -> BoxError {
        let mut hook_errors = Vec::new();
        let mut points = vec![HookPoint::OnFailure];
        if caused_by::<Restored>(error.as_ref()) {
            points.push(HookPoint::OnRollback);
        }
        for point in points {
            let event = HookEvent {
                point,
                error: Some(error.as_ref()),
                ..event
            };
            if let Err(e) = self.hook.run(&event, ctx).await {
                hook_errors.push(crate::error_chain(e.as_ref()));
            }
        }
        if hook_errors.is_empty() {
            error
        } else {
            Box::new(HookAlsoFailed {
                error,
                hook: hook_errors.join("; "),
            })
        }
    }
}

#[async_trait]
impl<T: ImageBuilder, H: Hook> ImageBuilder for Hooked<T, H> {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        let event = HookEvent {
            revision: (!request.revision.sha.is_empty()).then_some(request.revision.sha.as_str()),
            reasons: &request.reasons,
            ..HookEvent::new(HookPoint::PreBuild, app)
        };
        self.hook.run(&event, ctx).await?;
        match self.inner.build(app, request, ctx).await {
            Ok(image) => {
                let pinned = app.image.pinned(image.digest.clone());
                let event = HookEvent {
                    point: HookPoint::PostBuild,
                    image: Some(&pinned),
                    ..event
                };
                self.hook.run(&event, ctx).await?;
                Ok(image)
            }
            Err(e) => Err(self.failed(e, event, ctx).await),
        }
    }
}

impl<T: Deployer, H: Hook> Hooked<T, H> {
    /// The pre-deploy hook's event for `item`.
    fn pre_deploy<'a>(&'a self, item: &DeployItem<'a>) -> HookEvent<'a> {
        HookEvent {
            image: Some(item.image),
            revision: item.meta.git_sha.as_deref(),
            reasons: &item.meta.reasons,
            target: self.inner.target(),
            ..HookEvent::new(HookPoint::PreDeploy, item.app)
        }
    }

    /// Runs the post-deploy hook after a deploy that succeeded, the failure hooks
    /// after one that failed.
    async fn after_deploy(
        &self,
        item: &DeployItem<'_>,
        result: Result<Rollout, BoxError>,
    ) -> Result<Rollout, BoxError> {
        let event = self.pre_deploy(item);
        match result {
            Ok(rollout) => {
                let event = HookEvent {
                    point: HookPoint::PostDeploy,
                    ..event
                };
                self.hook.run(&event, item.ctx).await?;
                Ok(rollout)
            }
            Err(e) => Err(self.failed(e, event, item.ctx).await),
        }
    }
}

/// The error of a batch item a deployer returned no result for (a broken adapter).
fn no_result(item: &DeployItem<'_>) -> BoxError {
    format!(
        "{}: deploy: the deployer's batch returned no result for this app",
        item.app.name
    )
    .into()
}

#[async_trait]
impl<T: Deployer, H: Hook> Deployer for Hooked<T, H> {
    async fn current(&self, app: &App, ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        self.inner.current(app, ctx).await
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let item = DeployItem::new(app, image, meta, ctx);
        self.hook.run(&self.pre_deploy(&item), ctx).await?;
        let result = self.inner.deploy(app, image, meta, ctx).await;
        self.after_deploy(&item, result).await
    }

    fn batches(&self) -> bool {
        self.inner.batches()
    }

    /// Each app's pre-deploy hook runs first (an app whose hook fails drops out of
    /// the batch alone), then the batch, then each app's post-deploy or failure hooks.
    async fn deploy_batch(&self, items: &[DeployItem<'_>]) -> Vec<Result<Rollout, BoxError>> {
        let mut refused = Vec::with_capacity(items.len());
        let mut ready = Vec::with_capacity(items.len());
        for item in items {
            match self.hook.run(&self.pre_deploy(item), item.ctx).await {
                Ok(()) => {
                    ready.push(*item);
                    refused.push(None);
                }
                Err(e) => refused.push(Some(e)),
            }
        }
        let mut deployed = if ready.is_empty() {
            Vec::new()
        } else {
            self.inner.deploy_batch(&ready).await
        }
        .into_iter();
        let mut results = Vec::with_capacity(items.len());
        for (item, refusal) in items.iter().zip(refused) {
            results.push(match refusal {
                Some(e) => Err(e),
                None => {
                    let result = deployed.next().unwrap_or_else(|| Err(no_result(item)));
                    self.after_deploy(item, result).await
                }
            });
        }
        results
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        let rollout = self.inner.rollback(app, to, ctx).await?;
        let event = HookEvent {
            target: self.inner.target(),
            ..HookEvent::new(HookPoint::OnRollback, app)
        };
        // The rollback happened: a failing hook is told, not turned into a failure.
        if let Err(e) = self.hook.run(&event, ctx).await {
            let text = crate::error_chain(e.as_ref());
            tracing::warn!(app = %app.name, "on_rollback hook failed: {text}");
            ctx.message(format!("on_rollback hook failed: {text}"));
        }
        Ok(rollout)
    }

    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        self.inner.history(app, ctx).await
    }

    fn target(&self) -> Option<&str> {
        self.inner.target()
    }
}

/// An [`ImageBuilder`], [`Registry`] or [`Deployer`] whose calls are tried again,
/// with [`Backoff`], when they fail with an error marked [`Transient`]. Waits end
/// when the run is cancelled.
#[derive(Debug, Clone)]
pub struct Retry<T> {
    inner: T,
    backoff: Backoff,
}

impl<T> Retry<T> {
    /// `inner`, retried as `backoff` says.
    pub fn new(inner: T, backoff: Backoff) -> Self {
        Self { inner, backoff }
    }

    /// The wrapped part.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

fn transient(error: &BoxError) -> bool {
    caused_by::<Transient>(error.as_ref())
}

#[async_trait]
impl<T: ImageBuilder> ImageBuilder for Retry<T> {
    async fn build(
        &self,
        app: &App,
        request: &BuildRequest,
        ctx: &Context,
    ) -> Result<LocalImage, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.build(app, request, ctx))
            .await
    }
}

#[async_trait]
impl<T: Registry> Registry for Retry<T> {
    async fn resolve(
        &self,
        reference: &ImageRef,
        ctx: &Context,
    ) -> Result<Option<Digest>, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.resolve(reference, ctx))
            .await
    }

    async fn push(
        &self,
        image: &LocalImage,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<PushReport, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.push(image, target, ctx))
            .await
    }

    async fn tag(&self, digest: &Digest, target: &ImageRef, ctx: &Context) -> Result<(), BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.tag(digest, target, ctx))
            .await
    }

    async fn copy(
        &self,
        source: &ImageRef,
        target: &ImageRef,
        ctx: &Context,
    ) -> Result<Digest, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.copy(source, target, ctx))
            .await
    }
}

#[async_trait]
impl<T: Deployer> Deployer for Retry<T> {
    async fn current(&self, app: &App, ctx: &Context) -> Result<Option<Deployed>, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.current(app, ctx))
            .await
    }

    async fn deploy(
        &self,
        app: &App,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.deploy(app, image, meta, ctx))
            .await
    }

    fn batches(&self) -> bool {
        self.inner.batches()
    }

    /// The batch, then again the items that failed for a passing reason, together,
    /// until they succeed, fail otherwise, or the tries run out.
    async fn deploy_batch(&self, items: &[DeployItem<'_>]) -> Vec<Result<Rollout, BoxError>> {
        let mut results: Vec<Option<Result<Rollout, BoxError>>> =
            items.iter().map(|_| None).collect();
        let mut pending: Vec<usize> = (0..items.len()).collect();
        let mut attempt = 1;
        while let Some(&first) = pending.first() {
            let batch: Vec<DeployItem<'_>> = pending.iter().map(|&i| items[i]).collect();
            // An item this round gives no result for must not keep the last round's.
            pending.iter().for_each(|&i| results[i] = None);
            let mut again = Vec::new();
            for (i, result) in pending
                .iter()
                .copied()
                .zip(self.inner.deploy_batch(&batch).await)
            {
                if let Err(e) = &result
                    && attempt < self.backoff.attempts
                    && transient(e)
                {
                    again.push(i);
                }
                results[i] = Some(result);
            }
            if again.is_empty() || self.backoff.wait(attempt, items[first].ctx).await.is_err() {
                break;
            }
            tracing::debug!(
                attempt,
                apps = again.len(),
                "retrying a batch's passing failures"
            );
            pending = again;
            attempt += 1;
        }
        results
            .into_iter()
            .zip(items)
            .map(|(result, item)| result.unwrap_or_else(|| Err(no_result(item))))
            .collect()
    }

    async fn rollback(
        &self,
        app: &App,
        to: RollbackTarget,
        ctx: &Context,
    ) -> Result<Rollout, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.rollback(app, to, ctx))
            .await
    }

    async fn history(&self, app: &App, ctx: &Context) -> Result<Vec<Revision>, BoxError> {
        self.backoff
            .retry(ctx, transient, || self.inner.history(app, ctx))
            .await
    }

    fn target(&self) -> Option<&str> {
        self.inner.target()
    }
}
