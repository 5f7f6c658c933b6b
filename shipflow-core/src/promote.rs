//! [`promote`]: ship to one environment exactly what runs in another, no rebuild.

use serde::{Deserialize, Serialize};

use crate::{App, BoxError, Context, DeployMeta, Deployer, Digest, ImageRef, Registry, Rollout};

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Promotion {
    /// The app.
    pub app: String,
    /// The environment it came from.
    pub from: String,
    /// The environment it went to.
    pub to: String,
    /// The digest-pinned image that ran in `from` and now runs in `to`.
    pub image: ImageRef,
    /// Whether the image had to be copied to the target environment's repository.
    pub copied: bool,
    /// What the deploy in `to` did.
    pub rollout: Rollout,
}

/// Why a promotion could not be done. Each names the app and the environments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PromoteError {
    /// Nothing of the app runs in the source environment.
    #[error("{app}: promote: nothing runs in {from}; deploy it there first")]
    NothingRuns {
        /// The app.
        app: String,
        /// The source environment.
        from: String,
    },
    /// What runs in the source environment is not pinned by digest, so "the same
    /// image" cannot be guaranteed.
    #[error(
        "{app}: promote: {image} runs in {from}, not pinned by digest; deploy it there with shipflow first"
    )]
    NotPinned {
        /// The app.
        app: String,
        /// The source environment.
        from: String,
        /// What runs there.
        image: String,
    },
    /// A step failed: reading what runs, copying the image, or the deploy.
    #[error("{app}: promote from {from} to {to}: {step}: {source}")]
    Step {
        /// The app.
        app: String,
        /// The source environment.
        from: String,
        /// The target environment.
        to: String,
        /// `read what runs`, `copy the image` or `deploy`.
        step: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
}

/// One side of a promotion: an environment's name, the app as that environment
/// configures it, and the deployer that reaches it.
#[derive(Clone, Copy)]
pub struct Stop<'a> {
    /// The environment's name.
    pub environment: &'a str,
    /// The app, loaded for that environment ([`Workspace::for_environment`](crate::Workspace::for_environment)).
    pub app: &'a App,
    /// The deployer for that environment.
    pub deployer: &'a dyn Deployer,
}

/// Deploys to `to` the exact digest that runs in `from`, recorded with where it
/// came from (the change cause names the source environment and revision; the
/// fingerprint and commit travel with it, so a later run sees it as up to date).
/// When the two environments use different image repositories, the image is
/// copied by digest through `registry` first ([`Registry::copy`]).
pub async fn promote(
    from: Stop<'_>,
    to: Stop<'_>,
    registry: Option<&dyn Registry>,
    ctx: &Context,
) -> Result<Promotion, PromoteError> {
    let app = from.app.name.clone();
    let step = |step: &'static str| {
        let (app, from, to) = (
            app.clone(),
            from.environment.to_owned(),
            to.environment.to_owned(),
        );
        move |source: BoxError| PromoteError::Step {
            app,
            from,
            to,
            step,
            source,
        }
    };
    let running = from
        .deployer
        .current(from.app, ctx)
        .await
        .map_err(step("read what runs"))?
        .ok_or_else(|| PromoteError::NothingRuns {
            app: app.clone(),
            from: from.environment.to_owned(),
        })?;
    let not_pinned = || PromoteError::NotPinned {
        app: app.clone(),
        from: from.environment.to_owned(),
        image: running.image.clone(),
    };
    let source: ImageRef = running.image.parse().map_err(|_| not_pinned())?;
    let digest: Digest = source.digest().cloned().ok_or_else(not_pinned)?;
    let target = to.app.image.pinned(digest.clone());
    let copied = target.name() != source.name();
    if copied {
        let registry = registry.ok_or_else(|| {
            step("copy the image")(
                format!(
                    "{} and {} are different repositories: give a registry to copy with",
                    source.name(),
                    target.name()
                )
                .into(),
            )
        })?;
        let copied_digest = registry
            .copy(&source, &target, ctx)
            .await
            .map_err(step("copy the image"))?;
        if copied_digest != digest {
            return Err(step("copy the image")(
                format!("the copy has digest {copied_digest}, not {digest}").into(),
            ));
        }
    }
    let meta = DeployMeta {
        fingerprint: running.fingerprint.clone(),
        git_sha: running.git_sha.clone(),
        change_cause: format!(
            "shipflow: {app} promoted from {}{}",
            from.environment,
            running
                .revision
                .map(|r| format!(" (revision {r})"))
                .unwrap_or_default()
        ),
        reasons: Vec::new(),
        tag: None,
    };
    let rollout = to
        .deployer
        .deploy(to.app, &target, &meta, ctx)
        .await
        .map_err(step("deploy"))?;
    Ok(Promotion {
        app,
        from: from.environment.to_owned(),
        to: to.environment.to_owned(),
        image: target,
        copied,
        rollout,
    })
}
