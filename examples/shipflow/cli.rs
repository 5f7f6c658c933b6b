//! The command line: subcommands, flags, and the help's exit codes, examples and
//! environment.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use shipflow_kit::CONFIG_FILE;

use crate::parts::Target;

/// What `-h` adds below the options.
const AFTER_HELP: &str = "\
Exit codes: 0 success (shipped, or nothing to do), 1 failed, 2 bad usage,
130 interrupted (SIGINT), 143 terminated (SIGTERM); --detailed-exitcode adds
3 failed and rolled back, 4 nothing to do. `--help` shows examples and the
environment variables read.";

/// What `--help` adds below the options.
const AFTER_LONG_HELP: &str = "\
Exit codes:
  0    success: shipped, or nothing to do
  1    failed (or an error before any app started)
  2    bad usage (an unknown flag, app or target)
  130  interrupted by SIGINT (Ctrl-C); 143 terminated by SIGTERM: the run was
       cancelled, in-flight deploys restored what ran before
  With --detailed-exitcode (as terraform's):
  0    shipped; for plan, status and dry runs: there is work to ship
  1    failed, and not rolled back
  3    failed, and every failed rollout was rolled back
  4    nothing to do; for apply and configmap: all was already in place

Examples:
  shipflow plan                              what changed since the default base, and why
  shipflow plan --base origin/main...HEAD -o json
  shipflow build --apps web                  into the local store .shipflow/images
  shipflow push --registry 127.0.0.1:5000/acme
  shipflow deploy -n prod                    the target is the apps' one in shipflow.toml
  shipflow deploy -e production              to every cluster the environment lists
  shipflow deploy --target docker --docker-host unix:///run/podman/podman.sock
  shipflow rollback web --to 3
  shipflow status -q --detailed-exitcode     exit 4 when everything is up to date
  shipflow configmap api-config apps/api/prod.env --dry-run
  shipflow completions bash > ~/.local/share/bash-completion/completions/shipflow

Environment (a flag wins over its variable):
  SHIPFLOW_REGISTRY, PRIVATE_REGISTRY   registry and path prefix of images (--registry)
  SHIPFLOW_REGISTRY_USER, SHIPFLOW_REGISTRY_PASSWORD
                                        basic-auth login to that registry (else
                                        docker/podman login: DOCKER_CONFIG, REGISTRY_AUTH_FILE);
                                        also what a Kubernetes app's image_pull_secret holds
  GIT_SHA                               the commit tags name, over git's HEAD
  GITHUB_HEAD_REF, GITHUB_REF_NAME, CI_MERGE_REQUEST_SOURCE_BRANCH_NAME,
  CI_COMMIT_REF_NAME, BUILDKITE_BRANCH, CIRCLE_BRANCH, BRANCH_NAME
                                        ${BRANCH} of a detached HEAD (first one set)
  BUILD_NUMBER                          ${BUILD_NUMBER} of tags (--build-number)
  SHIPFLOW_ENVIRONMENT                  the environment of shipflow.toml (-e/--environment)
  K8S_NAMESPACE                         Kubernetes namespace (-n/--namespace)
  KUBECONFIG                            kubeconfig file (--kubeconfig)
  DOCKER_HOST                           Docker or Podman API (--docker-host)
  SOURCE_DATE_EPOCH                     time stamp of native builds' files
  XDG_STATE_HOME                        where the docker target keeps its locks
  RUST_LOG                              log filter; -v adds shipflow=debug, -vv shipflow=trace";

/// The reference CLI of shipflow.
#[derive(Parser)]
#[command(
    name = "shipflow",
    version,
    about = "Incremental build and deploy of monorepo apps",
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// The workspace file; its directory must be the repository root.
    #[arg(long, global = true, default_value = CONFIG_FILE)]
    pub(crate) config: PathBuf,
    /// Load the workspace as it is in this environment (`[environments.<name>]`
    /// laid over the file): its registry, namespace, clusters and app settings.
    #[arg(short = 'e', long, global = true, env = "SHIPFLOW_ENVIRONMENT")]
    pub(crate) environment: Option<String>,
    /// Output: text for people, json for CI (progress is then not shown).
    #[arg(short = 'o', long = "output", visible_alias = "format", global = true,
          value_enum, default_value_t = Format::Text)]
    pub(crate) output: Format,
    /// No progress and no notes on stderr: only the result, and errors.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,
    /// Log shipflow's decisions on stderr: -v at debug, -vv at trace.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Distinct exit codes: 3 failed and rolled back, 4 nothing to do (see --help).
    #[arg(long, global = true)]
    pub(crate) detailed_exitcode: bool,
}

/// How results are printed on stdout.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Text,
    /// For CI: one JSON document with a `schema_version`.
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Show which apps changed, why, and what a run would do. Changes nothing.
    Plan(Changes),
    /// Build the changed apps into the local OCI layout store (no registry, no deploy).
    Build(BuildArgs),
    /// Build the changed apps and push them, uploading only the layers the registry lacks.
    Push(RunArgs),
    /// Build, push and roll the changed apps' workloads, watching each rollout and
    /// rolling back a failed one.
    Deploy(DeployArgs),
    /// Roll an app back to its previous revision, or to `--to N`.
    Rollback(RollbackArgs),
    /// An app's revisions, oldest first.
    History(HistoryArgs),
    /// What runs now for each app, and whether its inputs changed since.
    Status(StatusArgs),
    /// Kubernetes: server-side apply a directory of manifests, watching the rollouts
    /// of the Deployments that changed.
    Apply(ApplyArgs),
    /// Kubernetes: make a ConfigMap from an env file, named by its content's hash,
    /// and roll the Deployments that use it; versions no rollback needs are deleted.
    Configmap(ConfigMapArgs),
    /// Build one app from a build context in a registry and push the image by
    /// digest, printing the digest: what a Kubernetes build Job runs.
    BuildContext(BuildContextArgs),
    /// Print a completion script for a shell: `shipflow completions bash`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Which apps: what changed between two revisions, filtered.
#[derive(Args)]
pub(crate) struct Changes {
    /// The base revision; `A...B` means merge-base(A, B). Default: origin/HEAD,
    /// origin/main, main… (merge-base with HEAD), else HEAD~1.
    #[arg(long)]
    pub(crate) base: Option<String>,
    /// The head revision.
    #[arg(long, default_value = "HEAD")]
    pub(crate) head: String,
    /// Only these apps (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) apps: Vec<String>,
    /// Every app, changed or not.
    #[arg(long)]
    pub(crate) all: bool,
    /// Also count uncommitted and untracked changes in the work tree (local runs).
    #[arg(long)]
    pub(crate) worktree: bool,
}

#[derive(Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) changes: Changes,
    /// The registry and path prefix images go under (overrides SHIPFLOW_REGISTRY
    /// and the workspace's `registry`).
    #[arg(long)]
    pub(crate) registry: Option<String>,
    /// Talk plain HTTP to a registry that is not on loopback.
    #[arg(long, visible_alias = "insecure")]
    pub(crate) insecure_registry: bool,
    /// How many apps are worked on at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
    /// Build native apps as Kubernetes Jobs, as [workspace.build-jobs] says, in the
    /// cluster of the kubeconfig's current context.
    #[arg(long)]
    pub(crate) build_in_cluster: bool,
    /// Show what would happen; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Carry on with the other apps when one fails (default: start no new app).
    #[arg(long)]
    pub(crate) keep_going: bool,
    /// The `${BUILD_NUMBER}` of tag templates.
    #[arg(long, env = "BUILD_NUMBER", hide_env_values = true)]
    pub(crate) build_number: Option<String>,
}

#[derive(Args)]
pub(crate) struct BuildArgs {
    #[command(flatten)]
    pub(crate) changes: Changes,
    /// The local OCI layout store (default `.shipflow/images`);
    /// `skopeo inspect oci:STORE/<repository>:<tag>` reads it.
    #[arg(long)]
    pub(crate) store: Option<PathBuf>,
    /// How many apps are built at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) concurrency: usize,
}

#[derive(Args)]
pub(crate) struct BuildContextArgs {
    /// The build context, pinned by digest: `registry/repository@sha256:…`.
    #[arg(long)]
    pub(crate) context: String,
    /// The app to build.
    #[arg(long)]
    pub(crate) app: String,
    /// The app as the pipeline resolved it: `{"name", "path", "build"}` (its native
    /// build settings), as JSON.
    #[arg(long, env = "SHIPFLOW_BUILD_APP", hide_env_values = true)]
    pub(crate) app_spec: String,
    /// The repository the image is pushed to (by digest).
    #[arg(long)]
    pub(crate) target: String,
    /// The build request (revision, fingerprint, tag, labels) as JSON.
    #[arg(long, env = "SHIPFLOW_BUILD_REQUEST", default_value = "{}")]
    pub(crate) request: String,
    /// Where the context is unpacked and the image built (must be empty).
    #[arg(long, default_value = "/workspace")]
    pub(crate) workdir: PathBuf,
    /// Where the digest is also written, as Kubernetes reads a container's result.
    #[arg(long, default_value = "/dev/termination-log")]
    pub(crate) termination_log: PathBuf,
    /// Talk plain HTTP to registries that are not on loopback.
    #[arg(long, visible_alias = "insecure")]
    pub(crate) insecure_registry: bool,
}

/// Which Kubernetes cluster and namespace.
#[derive(Args)]
pub(crate) struct ClusterArgs {
    /// The Kubernetes namespace of apps whose deploy.kubernetes names none (overrides
    /// K8S_NAMESPACE, a cluster's namespace in `clusters`, and the workspace's).
    #[arg(short, long)]
    pub(crate) namespace: Option<String>,
    /// The kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context). With `clusters` in
    /// the workspace (or its environment), this one context instead of them all.
    #[arg(long)]
    pub(crate) context: Option<String>,
}

/// Where workloads run.
#[derive(Args)]
pub(crate) struct TargetArgs {
    /// The deploy target; default: the one the apps configure in shipflow.toml
    /// (`[apps.<app>.deploy.docker]` or `.kubernetes`), when they configure one.
    #[arg(long, value_enum)]
    pub(crate) target: Option<Target>,
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// The Docker or Podman API (`unix:///run/podman/podman.sock`, `tcp://host:2375`).
    #[arg(long, env = "DOCKER_HOST", hide_env_values = true)]
    pub(crate) docker_host: Option<String>,
}

#[derive(Args)]
pub(crate) struct ApplyArgs {
    /// The directory of manifests (`*.yaml`, `*.yml`).
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// Take over fields another field manager owns (`kubectl apply --force-conflicts`).
    #[arg(long)]
    pub(crate) force_conflicts: bool,
    /// Ask the API server to check everything; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Args)]
pub(crate) struct ConfigMapArgs {
    /// The ConfigMap's name as the Deployments refer to it (before the hash suffix).
    pub(crate) name: String,
    /// The env file: `KEY=VALUE` lines, `#` comments.
    pub(crate) env_file: PathBuf,
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// Say what would be created and rolled; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Args)]
pub(crate) struct DeployArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Deploy images already in the registry; build and push nothing.
    #[arg(long)]
    pub(crate) skip_build: bool,
    /// Build and push only.
    #[arg(long)]
    pub(crate) skip_deploy: bool,
    /// Leave a failed rollout as it is instead of rolling it back.
    #[arg(long)]
    pub(crate) no_rollback: bool,
    /// With several clusters: when an app's deploy fails on one, cancel its deploys
    /// still under way on the others (default: they finish).
    #[arg(long)]
    pub(crate) cluster_fail_fast: bool,
    /// With several clusters: which ones a failed deploy rolls back.
    #[arg(long, value_enum, default_value_t = RollbackClusters::Failed)]
    pub(crate) rollback_clusters: RollbackClusters,
}

/// Which clusters a failed multi-cluster deploy rolls back.
#[derive(Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum RollbackClusters {
    /// Only those where it failed or was stopped; the others keep the new image.
    #[default]
    Failed,
    /// Every cluster it changed, so that all run what ran before.
    All,
}

#[derive(Args)]
pub(crate) struct RollbackArgs {
    /// The app.
    pub(crate) app: String,
    /// The revision to go back to (see `history`); default the previous one.
    #[arg(long)]
    pub(crate) to: Option<u64>,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
}

#[derive(Args)]
pub(crate) struct HistoryArgs {
    /// The app.
    pub(crate) app: String,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// Only these apps (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) apps: Vec<String>,
    /// The revision whose inputs are compared with what runs.
    #[arg(long, default_value = "HEAD")]
    pub(crate) head: String,
    #[command(flatten)]
    pub(crate) target: TargetArgs,
}
