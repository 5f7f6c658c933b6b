//! The library's parts for one environment: its workspace (`shipflow.toml` with
//! `[environments.<name>]` laid over it), builder, registry and deployer.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use shipflow_kit::docker::{
    DOCKER_TARGET, DOCKERFILE_BUILD_TYPE, Engine, EngineBuilder, EngineDeployer,
};
use shipflow_kit::git::gitops::{self, GITOPS_TARGET, GitOpsDeployer};
use shipflow_kit::k8s::{KUBERNETES_TARGET, KubeDeployer};
use shipflow_kit::oci::{LayoutRegistry, NATIVE_BUILD_TYPE, NativeBuilder, RegistryClient};
use shipflow_kit::{
    BuilderByType, CONFIG_FILE, Deployer, ImageBuilder, Registry, RegistryByLocation, RevisionInfo,
    Schema, Workspace,
};

use crate::config::RegistrySettings;

/// Every section the console's adapters read.
pub(crate) fn schema() -> Schema {
    shipflow_kit::oci::schema()
        .merge(shipflow_kit::docker::schema())
        .merge(shipflow_kit::k8s::schema())
        .merge(gitops::schema())
}

/// `shipflow.toml` as `text`, for its apps and its environment rules.
pub(crate) fn rules(text: &str, root: &Path) -> anyhow::Result<Workspace> {
    Workspace::loader()
        .schema(schema())
        .from_toml(text, root)
        .with_context(|| format!("{CONFIG_FILE} of the default branch"))
}

/// The environment a ref ships to by the workspace's rules, if any.
pub(crate) fn environment_for(
    rules: &Workspace,
    reference: &str,
) -> anyhow::Result<Option<String>> {
    let revision = RevisionInfo {
        branch: reference.strip_prefix("refs/heads/").map(str::to_owned),
        tag: reference.strip_prefix("refs/tags/").map(str::to_owned),
        ..RevisionInfo::default()
    };
    Ok(rules
        .environment_for(&revision)?
        .map(|e| e.name().to_owned()))
}

/// `shipflow.toml` of the work tree at `root`, as it is in `environment`.
pub(crate) fn workspace(root: &Path, environment: &str) -> anyhow::Result<Workspace> {
    Ok(Workspace::loader()
        .schema(schema())
        .environment(Some(environment.to_owned()))
        .load(root.join(CONFIG_FILE))?)
}

/// Native builds under `build_dir`; Dockerfile builds through the engine of `DOCKER_HOST`.
pub(crate) async fn builder(
    workspace: &Workspace,
    build_dir: &Path,
) -> anyhow::Result<Arc<dyn ImageBuilder>> {
    let mut builder =
        BuilderByType::new().route(NATIVE_BUILD_TYPE, Arc::new(NativeBuilder::new(build_dir)));
    if workspace
        .apps()
        .any(|a| a.build_type() == DOCKERFILE_BUILD_TYPE)
    {
        let engine = Engine::from_env()
            .await
            .context("Dockerfile apps need a Docker or Podman engine (DOCKER_HOST)")?;
        builder = builder.route(DOCKERFILE_BUILD_TYPE, Arc::new(EngineBuilder::new(engine)));
    }
    Ok(Arc::new(builder))
}

/// A directory of OCI layouts, or the registries the images name.
pub(crate) fn registry(settings: &RegistrySettings) -> anyhow::Result<Arc<dyn Registry>> {
    if let Some(store) = &settings.store {
        return Ok(Arc::new(LayoutRegistry::new(store)));
    }
    let client = RegistryClient::builder()
        .insecure(settings.insecure)
        .build()?;
    Ok(Arc::new(RegistryByLocation::new(Arc::new(client))))
}

/// The deployer of the one target the apps configure: a GitOps config repository,
/// Docker or Podman (`DOCKER_HOST`), or Kubernetes (kube's inferred config).
pub(crate) async fn deployer(workspace: &Workspace) -> anyhow::Result<Arc<dyn Deployer>> {
    let targets: BTreeSet<&str> = workspace.apps().flat_map(|a| a.deploy_targets()).collect();
    let mut targets = targets.into_iter();
    match (targets.next(), targets.next()) {
        (Some(GITOPS_TARGET), None) => {
            Ok(Arc::new(GitOpsDeployer::from_workspace(workspace)?.build()))
        }
        (Some(DOCKER_TARGET), None) => Ok(Arc::new(
            EngineDeployer::builder(Engine::from_env().await?).build(),
        )),
        (Some(KUBERNETES_TARGET), None) => {
            let client = kube::Client::try_default()
                .await
                .context("no Kubernetes configuration")?;
            Ok(Arc::new(KubeDeployer::new(client)))
        }
        (Some(other), None) => bail!("the console cannot deploy to {other:?}"),
        (Some(a), Some(b)) => bail!(
            "the apps configure several deploy targets ({a}, {b}); the console deploys an environment to one"
        ),
        (None, _) => bail!("no app configures a deploy target"),
    }
}

/// The apps and environments of the workspace, by name.
pub(crate) fn names(rules: &Workspace) -> (Vec<String>, Vec<String>) {
    (
        rules.apps().map(|a| a.name.clone()).collect(),
        rules.environments().map(|e| e.name().to_owned()).collect(),
    )
}
