//! Kubernetes rollouts for shipflow: [`KubeDeployer`] patches an app's Deployment to a
//! digest-pinned image and waits until `kubectl rollout status` would call the rollout
//! complete, with one watch on the Deployment. It fails early when a new pod cannot
//! pull its image (the registry refused it), crash-loops beyond the restart budget, or
//! cannot start for longer than the failure window, with the pod's reason and the last
//! lines of its log; it fails at once on a paused Deployment and when someone else
//! changes the pod template mid-rollout. It rolls back the way `kubectl rollout undo`
//! does and lists the revision history.
//!
//! An app whose `deploy.kubernetes` has workload settings (replicas, resources, env,
//! ports, probes, strategy, labels, generated ConfigMaps, an image pull Secret: see
//! [`KubernetesTarget`]) has its Deployment, and a Service for its exposed ports,
//! created or updated from them by server-side apply at each deploy, then watched the
//! same way. With `strategy = "blue-green"` the app runs as two such Deployments
//! behind an active and a preview Service: a deploy rolls the idle colour and
//! switches the active Service's selector once the preview Service's
//! EndpointSlices hold only the new, ready pods (with optional HTTP promotion
//! checks); a rollback switches it back.
//!
//! [`MultiClusterDeployer`] rolls each app to the same digest on several clusters at
//! once, one [`KubeDeployer`] per cluster (the `clusters` of `[workspace]` or an
//! environment, read as [`Clusters`]): one cluster's failure does not stop the
//! others, the result lists every cluster's (in the report, per app), and a rollback
//! undoes only the failed clusters unless [`ClusterRollback::All`] is asked for:
//!
//! ```toml
//! [environments.production]
//! clusters = ["eu-west", { name = "us-east", context = "gke_acme_us-east1_prod", namespace = "prod-us" }]
//! ```
//!
//! Beyond [`Deployer`](shipflow_core::Deployer)'s `current`, `deploy`, `rollback` and
//! `history`, a [`KubeDeployer`] also
//! - holds a deploy lock per app, a `coordination.k8s.io` Lease, while it deploys or
//!   rolls back ([`KubeDeployer::deploy_lock`]), or for as long as a caller wants
//!   ([`KubeDeployer::lock`]); a second pipeline waits, then fails naming the holder; a
//!   lock lost while held stops the deploy before its next change;
//! - generates ConfigMaps from env files under a content-hash name ([`EnvConfigMap`])
//!   and rolls exactly the Deployments that use them
//!   ([`KubeDeployer::deploy_config_map`]);
//! - applies a directory of manifests with server-side apply ([`KubeDeployer::apply_dir`]);
//! - retries requests that failed for a passing reason ([`RetryPolicy`]).
//!
//! With the `job-builder` feature, `KubeJobBuilder` is an
//! [`ImageBuilder`](shipflow_core::ImageBuilder) that builds native apps as
//! Kubernetes Jobs (`[workspace.build-jobs]`, `BuildJobs`): the build context goes
//! to the registry as content-addressed chunks, one Job per app and inputs (a rerun
//! or a concurrent pipeline attaches to it), a restricted pod that runs `shipflow
//! build-context`, its log lines as the pipeline's events.
//!
//! Its tests meet Kubernetes only through `testing::SimCluster` (feature `testing`),
//! a simulated API server and control plane that the real `kube` client and the real
//! `kubectl` both use; its docs list what it models and what not.
//!
//! This example rolls an app on the simulated API server of `testing` (feature
//! `testing`), through the real [`kube::Client`]; with a real cluster, use
//! [`KubeDeployer::try_default`] instead.
//!
//! ```
//! use shipflow_core::{Context, DeployMeta, Deployer, Workspace};
//! use shipflow_k8s::KubeDeployer;
//! use shipflow_k8s::testing::SimCluster;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), shipflow_core::BoxError> {
//! let sim = SimCluster::start().await?;
//! sim.seed_deployment("default", "api", "api", "registry.local/api:v1", 2);
//!
//! let workspace = Workspace::from_toml(
//!     "[workspace]\nregistry = \"registry.local\"\n[apps.api]\ndeploy.kubernetes = {}\n",
//!     "."
//! )?;
//! let app = workspace.app("api").expect("declared above");
//! let image = format!("registry.local/api@sha256:{}", "ab".repeat(32)).parse()?;
//!
//! let deployer = KubeDeployer::new(sim.client());
//! let rollout = deployer.deploy(app, &image, &DeployMeta::default(), &Context::new()).await?;
//! assert!(rollout.changed);
//! assert_eq!(rollout.revision, Some(2));
//! assert_eq!(deployer.current(app, &Context::new()).await?.expect("deployed").image, image.to_string());
//! # Ok(())
//! # }
//! ```

mod apply;
mod bluegreen;
#[cfg(feature = "job-builder")]
mod build_job;
mod check;
mod clusters;
mod compat;
mod configmap;
mod deployer;
mod endpoints;
mod error;
mod from_config;
mod lock;
mod ownership;
mod pods;
mod retry;
mod rollout;
mod spec;
mod status;
#[cfg(feature = "testing")]
pub mod testing;
mod workload;

pub use apply::{APPLY_KINDS, Applied, ApplyOptions};
pub use bluegreen::{RELEASE_NUMBER_ANNOTATION, SWITCHED_AT_ANNOTATION};
#[cfg(feature = "job-builder")]
pub use build_job::{
    BUILD_APP_LABEL, BUILD_DIGEST_ANNOTATION, BUILD_JOBS_KEY, BuildJobError, BuildJobs,
    KubeJobBuilder,
};
pub use clusters::{Cluster, ClusterRollback, ClustersError, MultiClusterDeployer};
pub use configmap::{CONFIG_MAP_LABEL, ConfigRollout, EnvConfigMap, EnvLookup};
pub use deployer::{
    CHANGE_CAUSE_ANNOTATION, FINGERPRINT_ANNOTATION, GIT_SHA_ANNOTATION, KubeDeployer,
};
pub use error::{FailedPod, KubeError};
pub use from_config::PullCredentials;
pub use lock::{DeployLock, LOCK_PREFIX, LockOptions};
pub use retry::RetryPolicy;
pub use spec::{
    CLUSTERS_KEY, ClusterSpec, Clusters, KUBERNETES_TARGET, KubernetesTarget, NAMESPACE_KEY,
    Namespace, schema,
};
pub use workload::{
    APP_LABEL, BlueGreen, COLOUR_LABEL, ConfigMapFile, EnvSource, IntOrPercent, Port, Probe,
    Quantities, RELEASE_LABEL, Resources, Strategy,
};
