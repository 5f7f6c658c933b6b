//! End to end, blue-green on Kubernetes: a real git monorepo → native builds → a
//! real registry (`docker-registry`) → a deploy to `staging` that creates the app
//! from its config → `promote` to `production` by digest → a blue-green switch and
//! a rollback by switch, each checked through the real `kubectl` against the
//! simulated API server.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use common::{Monorepo, outcome};
use shipflow_kit::git::GitChangeDetector;
use shipflow_kit::k8s::testing::{Outcome as SimOutcome, SimCluster};
use shipflow_kit::k8s::{COLOUR_LABEL, KubeDeployer};
use shipflow_kit::oci::testing::TestRegistry;
use shipflow_kit::oci::{NativeBuilder, RegistryClient};
use shipflow_kit::{
    BuilderByType, Context, Deployer, Outcome, Pipeline, Registry as _, RollbackTarget, Selection,
    Stop, Workspace, promote,
};

const DEPLOY: &str = "deploy.kubernetes = { replicas = 2, ports = [{ name = \"http\", port = 8080, service_port = 80 }], \
     strategy = \"blue-green\", blue_green = { scale_down_delay = 0 } }";

const ENVIRONMENTS: &str = "\n[environments.staging]\nbranches = [\"main\"]\nnamespace = \"staging\"\n\
     \n[environments.production]\ntags = [\"v*\"]\nnamespace = \"prod\"\n\
     [environments.production.apps.web.deploy.kubernetes]\nreplicas = 3\n";

/// The colour Service `web` selects in `ns`, as kubectl shows it.
async fn selected(sim: &SimCluster, ns: &'static str) -> String {
    let selector = run_kubectl(
        sim,
        ns,
        &["get", "svc", "web", "-o", "jsonpath={.spec.selector}"],
    )
    .await;
    let selector: serde_json::Value = serde_json::from_str(&selector).expect("a JSON selector");
    selector[COLOUR_LABEL]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The image of `web-<colour>` in `ns`, as kubectl shows it.
async fn image(sim: &SimCluster, ns: &'static str, colour: &str) -> String {
    let name = format!("deploy/web-{colour}");
    run_kubectl(
        sim,
        ns,
        &[
            "get",
            &name,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .await
}

/// `kubectl -n <ns> <args>` against the simulator, off the runtime it serves from;
/// it must succeed.
async fn run_kubectl(sim: &SimCluster, ns: &'static str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let config = sim.kubeconfig();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubectl_with(&config, ns, &args)
    })
    .await
    .expect("kubectl task")
}

fn kubectl_with(config: &str, ns: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config"), config).expect("kubeconfig");
    let out = Command::new("kubectl")
        .env_clear()
        .env("HOME", dir.path())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("--kubeconfig")
        .arg(dir.path().join("config"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["-n", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (install Debian's kubectl package): {e}"));
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pipeline(
    repo: &Monorepo,
    workspace: Workspace,
    cluster: &SimCluster,
    builds: &std::path::Path,
) -> Pipeline {
    Pipeline::builder(workspace)
        .detector(Arc::new(
            GitChangeDetector::open(repo.path()).expect("repository"),
        ))
        .builder(Arc::new(BuilderByType::new().route(
            shipflow_kit::oci::NATIVE_BUILD_TYPE,
            Arc::new(NativeBuilder::new(builds)),
        )))
        .registry(Arc::new(RegistryClient::builder().build().expect("client")))
        .deployer(Arc::new(KubeDeployer::new(cluster.client())))
        .build()
        .expect("pipeline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staging_to_production_by_digest_then_a_switch_and_a_rollback_by_switch() {
    let registry = TestRegistry::start().expect("docker-registry starts");
    let repo = Monorepo::create(&registry.host(), &["web"], |_, _| DEPLOY.into());
    let config = std::fs::read_to_string(repo.config()).expect("config");
    repo.edit("shipflow.toml", &format!("{config}{ENVIRONMENTS}"));
    let cluster = SimCluster::start().await.expect("simulated API server");
    let builds = tempfile::tempdir().expect("build dir");
    let ctx = Context::new();
    let load = |env: &str| {
        Workspace::loader()
            .environment(Some(env.to_owned()))
            .load(repo.config())
            .expect("workspace")
    };
    let deployer = KubeDeployer::new(cluster.client());
    let registry_client = RegistryClient::builder().build().expect("client");

    // 1. A deploy to staging creates web from its config: blue takes the traffic.
    let report = pipeline(&repo, load("staging"), &cluster, builds.path())
        .run(None, "HEAD", &Selection::default())
        .await
        .expect("staging run");
    assert_eq!(outcome(&report, "web"), &Outcome::Deployed, "{report:#?}");
    assert_eq!(selected(&cluster, "staging").await, "blue");
    let v1 = image(&cluster, "staging", "blue").await;
    assert!(
        v1.starts_with(&format!("{}/e2e/web@sha256:", registry.host())),
        "{v1}"
    );
    assert!(
        registry_client
            .resolve(&v1.parse().expect("pinned"), &ctx)
            .await
            .expect("resolve")
            .is_some(),
        "{v1} is in the registry"
    );

    // 2. Promoted to production by digest: no build, the same image, 3 replicas there.
    let (staging, production) = (load("staging"), load("production"));
    let promote_web = || async {
        promote(
            Stop {
                environment: "staging",
                app: staging.app("web").expect("web"),
                deployer: &deployer,
            },
            Stop {
                environment: "production",
                app: production.app("web").expect("web"),
                deployer: &deployer,
            },
            Some(&registry_client),
            &ctx,
        )
        .await
        .expect("promote")
    };
    let promoted = promote_web().await;
    assert!(!promoted.copied);
    assert_eq!(promoted.image.to_string(), v1);
    assert_eq!(selected(&cluster, "prod").await, "blue");
    assert_eq!(image(&cluster, "prod", "blue").await, v1);
    let replicas = run_kubectl(
        &cluster,
        "prod",
        &["get", "deploy/web-blue", "-o", "jsonpath={.spec.replicas}"],
    )
    .await;
    assert_eq!(replicas, "3");

    // 3. A change ships to staging, then to production: green takes the traffic.
    repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let report = pipeline(&repo, load("staging"), &cluster, builds.path())
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("second staging run");
    assert_eq!(outcome(&report, "web"), &Outcome::Deployed, "{report:#?}");
    assert_eq!(selected(&cluster, "staging").await, "green");
    let v2 = image(&cluster, "staging", "green").await;
    assert_ne!(v2, v1);
    let promoted = promote_web().await;
    assert_eq!(promoted.image.to_string(), v2);
    assert_eq!(selected(&cluster, "prod").await, "green");
    assert_eq!(image(&cluster, "prod", "green").await, v2);
    let blue = run_kubectl(
        &cluster,
        "prod",
        &["get", "deploy/web-blue", "-o", "jsonpath={.spec.replicas}"],
    )
    .await;
    assert_eq!(blue, "0", "the old colour is scaled down");

    // 4. A rollback in production is a switch back to blue (scaled up first).
    let started = Instant::now();
    let back = deployer
        .rollback(
            production.app("web").expect("web"),
            RollbackTarget::Previous,
            &ctx,
        )
        .await
        .expect("rollback");
    println!(
        "production rollback by switch (with scale-up) took {:?}",
        started.elapsed()
    );
    assert_eq!(back.image, v1);
    assert_eq!(selected(&cluster, "prod").await, "blue");
    let endpoints = run_kubectl(
        &cluster,
        "prod",
        &[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[0].addresses[*].targetRef.name}",
        ],
    )
    .await;
    let pods: Vec<&str> = endpoints.split_whitespace().collect();
    assert_eq!(pods.len(), 3, "{endpoints}");
    assert!(
        pods.iter().all(|p| p.starts_with("web-blue-")),
        "{endpoints}"
    );
    let current = deployer
        .current(production.app("web").expect("web"), &ctx)
        .await
        .expect("current")
        .expect("runs");
    assert_eq!(current.image, v1);
    // Staging was not touched by production's rollback.
    assert_eq!(selected(&cluster, "staging").await, "green");

    // 5. A release that crash-loops in staging never takes traffic there: the
    // pipeline reports the pod's reason and green still serves what it served.
    cluster.set_outcome("staging", "web-blue", SimOutcome::CrashLoop);
    repo.edit("apps/web/index.html", "<h1>web v3</h1>\n");
    let report = pipeline(&repo, load("staging"), &cluster, builds.path())
        .run(Some("HEAD~1"), "HEAD", &Selection::default())
        .await
        .expect("third staging run");
    assert_ne!(outcome(&report, "web"), &Outcome::Deployed, "{report:#?}");
    let web = report.apps.iter().find(|a| a.app == "web").expect("web");
    let error = web.error.as_deref().unwrap_or_default();
    assert!(error.contains("CrashLoopBackOff"), "{report:#?}");
    assert_eq!(selected(&cluster, "staging").await, "green");
    assert_eq!(image(&cluster, "staging", "green").await, v2);
}
