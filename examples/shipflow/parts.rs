//! Picks and configures the pipeline's parts from the command line and the workspace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use shipflow_kit::docker::{
    Endpoint, Engine, EngineBuilder, EngineDeployer, EngineRegistry, RegistryCredentials,
};
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::k8s::{
    BuildJobs, ClusterRollback, Clusters, KubeDeployer, KubeJobBuilder, MultiClusterDeployer,
};
use shipflow_kit::oci::{Credentials, LayoutRegistry, NativeBuilder, RegistryClient};
use shipflow_kit::{
    App, BuilderByType, CONFIG_FILE, Deployer, ImageBuilder, Registry, RegistryByLocation, Schema,
    Workspace,
};

use crate::exit::UsageError;
use crate::progress::Progress;

/// Where apps are deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Target {
    /// Kubernetes Deployments, with kube's inferred config (kubeconfig or in-cluster).
    #[value(alias = "kubernetes")]
    K8s,
    /// Containers on one Docker or Podman host (`DOCKER_HOST`).
    Docker,
}

impl Target {
    /// The target of an app's `deploy.<section>` table, if the CLI knows it.
    fn of_section(section: &str) -> Option<Self> {
        match section {
            shipflow_kit::k8s::KUBERNETES_TARGET => Some(Target::K8s),
            shipflow_kit::docker::DOCKER_TARGET => Some(Target::Docker),
            _ => None,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Target::K8s => "--target k8s",
            Target::Docker => "--target docker",
        }
    }
}

/// `--target` as given, else the one deploy target `apps` configure; a usage error
/// naming the targets (and their apps) when they configure several, or none.
pub(crate) fn infer_target(given: Option<Target>, apps: &[&App]) -> Result<Target, UsageError> {
    if let Some(target) = given {
        return Ok(target);
    }
    let mut found: BTreeMap<Target, Vec<&str>> = BTreeMap::new();
    for app in apps {
        for target in app.deploy_targets().filter_map(Target::of_section) {
            found.entry(target).or_default().push(&app.name);
        }
    }
    let mut targets = found.iter();
    match (targets.next(), targets.next()) {
        (Some((target, _)), None) => Ok(*target),
        (None, _) => {
            let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            Err(UsageError(format!(
                "no deploy target configured for {}: pass --target docker or --target k8s, or add [apps.<app>.deploy.docker] or [apps.<app>.deploy.kubernetes] to {CONFIG_FILE}",
                crate::names::cut(&names)
            )))
        }
        _ => {
            let each: Vec<String> = found
                .iter()
                .map(|(target, apps)| format!("{} ({})", target.flag(), crate::names::cut(apps)))
                .collect();
            Err(UsageError(format!(
                "the apps configure several deploy targets: pass one of {}; or pick apps with --apps",
                each.join(", ")
            )))
        }
    }
}

/// Every section the CLI's adapters read, so a bad setting fails before any work.
pub(crate) fn schema() -> Schema {
    shipflow_kit::oci::schema()
        .merge(shipflow_kit::docker::schema())
        .merge(shipflow_kit::k8s::schema())
}

/// Reads the workspace at `config` as it is in `environment`, with `--registry` over
/// `SHIPFLOW_REGISTRY` (or `PRIVATE_REGISTRY`), and `GIT_SHA` as the commit in tags.
pub(crate) fn workspace(
    config: &Path,
    environment: Option<&str>,
    registry: Option<String>,
) -> anyhow::Result<Workspace> {
    if !config.exists() {
        bail!(
            "no {} here: run shipflow from the repository root, or pass --config PATH",
            config.display()
        );
    }
    let env = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
    let registry = registry
        .or_else(|| env("SHIPFLOW_REGISTRY"))
        .or_else(|| env("PRIVATE_REGISTRY"));
    Ok(Workspace::loader()
        .schema(schema())
        .registry(registry)
        .git_sha(env("GIT_SHA"))
        .environment(environment.map(str::to_owned))
        .load(config)?)
}

/// The CI variables that name the branch of a detached `HEAD`, first set first:
/// GitHub (a pull request's source branch, else the ref), GitLab (a merge
/// request's source branch, else the ref), Buildkite, CircleCI, Jenkins.
pub(crate) const BRANCH_VARIABLES: [&str; 7] = [
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME",
    "CI_COMMIT_REF_NAME",
    "BUILDKITE_BRANCH",
    "CIRCLE_BRANCH",
    "BRANCH_NAME",
];

/// The branch CI checked out, from the first of [`BRANCH_VARIABLES`] set.
fn ci_branch() -> Option<String> {
    BRANCH_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// Opens the git repository the workspace lives in, which must have the workspace
/// file at its root (app paths are relative to it).
pub(crate) fn detector(workspace: &Workspace, worktree: bool) -> anyhow::Result<GitChangeDetector> {
    let detector = GitChangeDetector::open(workspace.root())?
        .include_worktree(worktree)
        .detached_head_branch(ci_branch());
    let root = canonical(workspace.root())?;
    match detector.workdir().map(canonical).transpose()? {
        Some(workdir) if workdir == root => Ok(detector),
        Some(workdir) => bail!(
            "{CONFIG_FILE} is in {} but the repository root is {}: put {CONFIG_FILE} at the root",
            root.display(),
            workdir.display()
        ),
        None => bail!(
            "{} is a bare repository: run shipflow in a work tree",
            root.display()
        ),
    }
}

fn canonical(path: &Path) -> anyhow::Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))
}

/// Registry credentials from `SHIPFLOW_REGISTRY_USER` and `SHIPFLOW_REGISTRY_PASSWORD`
/// (never printed); without them, docker's `config.json` and credential helpers.
fn credentials() -> Option<(String, String)> {
    match (
        std::env::var("SHIPFLOW_REGISTRY_USER"),
        std::env::var("SHIPFLOW_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) => Some((user, password)),
        _ => None,
    }
}

/// The registry: the native client, and for images built by an engine, a push
/// through that engine.
pub(crate) fn registry(
    workspace: &Workspace,
    insecure: bool,
    engine: Option<&Engine>,
) -> anyhow::Result<Arc<dyn Registry>> {
    let mut registry = RegistryByLocation::new(Arc::new(registry_client(workspace, insecure)?));
    if let Some(engine) = engine {
        let mut through_engine = EngineRegistry::new(engine.clone());
        if let Some((username, password)) = credentials() {
            through_engine =
                through_engine.with_credentials(RegistryCredentials { username, password });
        }
        registry = registry.engine(Arc::new(through_engine));
    }
    Ok(Arc::new(registry))
}

/// The native registry client, with SHIPFLOW_REGISTRY_USER/PASSWORD bound to the
/// apps' one registry.
pub(crate) fn registry_client(
    workspace: &Workspace,
    insecure: bool,
) -> anyhow::Result<RegistryClient> {
    let mut client = RegistryClient::builder().insecure(insecure);
    if let Some((user, password)) = credentials() {
        // The credentials belong to one registry: the one the apps' images name.
        let registries: std::collections::BTreeSet<&str> =
            workspace.apps().map(|a| a.image.registry()).collect();
        let mut registries = registries.into_iter();
        match (registries.next(), registries.next()) {
            (Some(registry), None) => {
                client = client.credentials(registry, Credentials::basic(user, password));
            }
            (Some(first), Some(second)) => anyhow::bail!(
                "SHIPFLOW_REGISTRY_USER/PASSWORD are set, but the apps' images are on several registries ({first}, {second}, …): log in to each with `docker login <registry>` instead"
            ),
            (None, _) => {}
        }
    }
    Ok(client.build()?)
}

/// The engine that builds the Dockerfile apps among `apps` (those a run builds),
/// when there are any (`DOCKER_HOST`, or the default socket).
pub(crate) async fn dockerfile_engine(apps: &[&App]) -> anyhow::Result<Option<Engine>> {
    let dockerfiles: Vec<&str> = apps
        .iter()
        .filter(|a| a.build_type() == shipflow_kit::docker::DOCKERFILE_BUILD_TYPE)
        .map(|a| a.name.as_str())
        .collect();
    if dockerfiles.is_empty() {
        return Ok(None);
    }
    let engine = Engine::from_env().await.with_context(|| {
        format!(
            "{} build from a Dockerfile, through a Docker or Podman engine: set DOCKER_HOST, or make them `type = \"native\"`",
            crate::names::cut(&dockerfiles)
        )
    })?;
    Ok(Some(engine))
}

/// `.shipflow/` at the repository root, where builds and the local store live;
/// it ignores itself so git never sees it.
pub(crate) fn state_dir(workspace: &Workspace) -> anyhow::Result<PathBuf> {
    let dir = workspace.root().join(".shipflow");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(&ignore, "*\n")
            .with_context(|| format!("cannot write {}", ignore.display()))?;
    }
    Ok(dir)
}

/// The image builder for the workspace's apps: native apps are built daemonless
/// into OCI layouts under `.shipflow/build`, Dockerfile apps by `engine`.
pub(crate) fn builder(
    workspace: &Workspace,
    engine: Option<&Engine>,
    jobs: Option<KubeJobBuilder>,
) -> anyhow::Result<Arc<dyn ImageBuilder>> {
    let native: Arc<dyn ImageBuilder> = match jobs {
        Some(jobs) => Arc::new(jobs),
        None => Arc::new(NativeBuilder::new(state_dir(workspace)?.join("build"))),
    };
    let mut builder = BuilderByType::new().route(shipflow_kit::oci::NATIVE_BUILD_TYPE, native);
    if let Some(engine) = engine {
        builder = builder.route(
            shipflow_kit::docker::DOCKERFILE_BUILD_TYPE,
            Arc::new(EngineBuilder::new(engine.clone())),
        );
    }
    Ok(Arc::new(builder))
}

/// The builder of native apps as Kubernetes Jobs, as `[workspace.build-jobs]`
/// says, in the cluster of the kubeconfig's current context.
pub(crate) async fn job_builder(
    workspace: &Workspace,
    insecure: bool,
) -> anyhow::Result<KubeJobBuilder> {
    let settings = workspace
        .section::<BuildJobs>(shipflow_kit::k8s::BUILD_JOBS_KEY)?
        .ok_or_else(|| {
            UsageError(format!(
                "--build-in-cluster needs [workspace.{}] in {} (at least its `builder` image)",
                shipflow_kit::k8s::BUILD_JOBS_KEY,
                shipflow_kit::CONFIG_FILE
            ))
        })?;
    Ok(KubeJobBuilder::new(
        kube_client(None, None).await?,
        registry_client(workspace, insecure)?,
        state_dir(workspace)?.join("contexts"),
        (*settings).clone(),
    )?)
}

/// Where Kubernetes apps go: the kubeconfig, a context, the namespace flag, and
/// the workspace's `clusters` with what a multi-cluster deploy does on a failure.
pub(crate) struct KubeOptions<'a> {
    pub(crate) kubeconfig: Option<&'a Path>,
    pub(crate) context: Option<&'a str>,
    pub(crate) namespace: Option<String>,
    pub(crate) clusters: Option<Arc<Clusters>>,
    pub(crate) fail_fast: bool,
    pub(crate) rollback: ClusterRollback,
}

/// The workspace's `clusters` (as its environment has them), if it lists any.
pub(crate) fn clusters(workspace: &Workspace) -> anyhow::Result<Option<Arc<Clusters>>> {
    Ok(workspace.section::<Clusters>(shipflow_kit::k8s::CLUSTERS_KEY)?)
}

/// A Kubernetes deployer for one context: `namespace` for apps that name none, a
/// Lease per app so that one pipeline rolls an app at a time, and the registry
/// credentials for apps that ask for an image pull secret.
async fn kube_deployer(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    namespace: Option<String>,
) -> anyhow::Result<KubeDeployer> {
    let mut deployer = KubeDeployer::new(kube_client(kubeconfig, context).await?)
        .namespace(namespace)
        .deploy_lock(shipflow_kit::k8s::LockOptions::default());
    if let Some((username, password)) = credentials() {
        deployer =
            deployer.pull_credentials(shipflow_kit::k8s::PullCredentials { username, password });
    }
    Ok(deployer)
}

/// One deployer per cluster of `clusters`, by name: each through its kubeconfig
/// context, with `--namespace` over the cluster's own namespace.
pub(crate) async fn cluster_deployers(
    clusters: &Clusters,
    kubeconfig: Option<&Path>,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<(String, KubeDeployer)>> {
    let mut deployers = Vec::new();
    for cluster in clusters.iter() {
        let namespace = namespace
            .map(str::to_owned)
            .or_else(|| cluster.namespace.clone());
        let deployer = kube_deployer(kubeconfig, Some(cluster.context()), namespace)
            .await
            .with_context(|| {
                format!(
                    "cluster {} (kubeconfig context {})",
                    cluster.name,
                    cluster.context()
                )
            })?;
        deployers.push((cluster.name.clone(), deployer));
    }
    Ok(deployers)
}

/// The deployer for `target`. For Kubernetes: the client of [`kube_client`], or one
/// per cluster when the workspace lists `clusters` and no `--context` picks one.
/// For Docker or Podman: the API at `docker_host`, else the default socket.
pub(crate) async fn deployer(
    target: Target,
    kube: KubeOptions<'_>,
    docker_host: Option<&str>,
    progress: &Progress,
) -> anyhow::Result<Arc<dyn Deployer>> {
    match target {
        Target::K8s => match (&kube.clusters, kube.context) {
            (Some(clusters), None) => {
                let deployers =
                    cluster_deployers(clusters, kube.kubeconfig, kube.namespace.as_deref()).await?;
                let names: Vec<String> = deployers.iter().map(|(n, _)| n.clone()).collect();
                progress.note(&format!("clusters: {}", names.join(", ")));
                Ok(Arc::new(
                    MultiClusterDeployer::new(deployers)?
                        .fail_fast(kube.fail_fast)
                        .rollback_scope(kube.rollback),
                ))
            }
            _ => Ok(Arc::new(
                kube_deployer(kube.kubeconfig, kube.context, kube.namespace).await?,
            )),
        },
        Target::Docker => {
            let engine = match docker_host {
                Some(host) => Engine::connect(Endpoint::parse(host)?).await?,
                None => Engine::from_env().await?,
            };
            progress.note(&format!(
                "engine: {} {} at {}",
                engine.kind(),
                engine.version(),
                engine.endpoint()
            ));
            let mut deployer = EngineDeployer::builder(engine);
            if let Some((username, password)) = credentials() {
                deployer = deployer.credentials(RegistryCredentials { username, password });
            }
            Ok(Arc::new(deployer.build()))
        }
    }
}

/// A Kubernetes client: `kubeconfig` (else KUBECONFIG, `~/.kube/config` or
/// in-cluster) and its `context` (else the current one).
pub(crate) async fn kube_client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("kubeconfig context {context}"))?,
        (None, None) => kube::Config::infer().await.context(
            "no Kubernetes configuration: set KUBECONFIG, write ~/.kube/config, or run in a cluster",
        )?,
    };
    Ok(kube::Client::try_from(config)?)
}

/// The local OCI layout store, used as the registry by `build`.
pub(crate) fn store(dir: &Path) -> anyhow::Result<Arc<dyn Registry>> {
    Ok(Arc::new(LayoutRegistry::new(dir)))
}
