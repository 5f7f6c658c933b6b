//! The CLI end to end, in-process: a generated git monorepo, a real registry, and
//! the simulated Kubernetes API reached through a kubeconfig, as a user would.

#[path = "../../tests/common/mod.rs"]
mod common;

use clap::Parser;
use shipflow_kit::k8s::testing::{Outcome, SimCluster};
use shipflow_kit::oci::testing::TestRegistry;

use super::progress::{Mode, Progress};
use super::signals::Signals;
use super::{Cli, Exit, run_cli};
use common::Monorepo;

const APPS: [&str; 2] = ["api", "web"];

struct Setup {
    repo: Monorepo,
    registry: TestRegistry,
    cluster: SimCluster,
    kubeconfig: std::path::PathBuf,
}

impl Setup {
    async fn new() -> Self {
        let registry = TestRegistry::start().expect("docker-registry starts");
        let repo = Monorepo::create(&registry.host(), &APPS, |_, _| {
            "deploy.kubernetes = {}".into()
        });
        let cluster = SimCluster::start().await.expect("simulated API server");
        for app in APPS {
            cluster.seed_deployment("default", app, app, "registry.local/placeholder:v0", 1);
        }
        let kubeconfig = repo.path().join(".kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: sim\n\
                 clusters: [{{name: sim, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: sim, user: {{}}}}]\n\
                 contexts: [{{name: sim, context: {{cluster: sim, user: sim, namespace: default}}}}]\n",
                cluster.url()
            ),
        )
        .expect("kubeconfig");
        Self {
            repo,
            registry,
            cluster,
            kubeconfig,
        }
    }

    async fn run(&self, args: &[&str]) -> Exit {
        let config = self.repo.config();
        let mut line = vec!["shipflow", "--config", config.to_str().expect("utf-8 path")];
        line.extend_from_slice(args);
        let k8s = [
            "--target",
            "k8s",
            "--kubeconfig",
            self.path(&self.kubeconfig),
        ];
        match args[0] {
            "deploy" | "rollback" | "history" | "status" => line.extend_from_slice(&k8s),
            "apply" | "configmap" => line.extend_from_slice(&k8s[2..]),
            _ => {}
        }
        let cli = Cli::try_parse_from(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        run_cli(cli, Progress::new(Mode::Quiet), Signals::inert())
            .await
            .unwrap_or_else(|e| panic!("{line:?} failed: {e:#}"))
    }

    fn path<'a>(&self, p: &'a std::path::Path) -> &'a str {
        p.to_str().expect("utf-8 path")
    }

    fn image(&self, app: &str) -> String {
        let d = self.cluster.deployment("default", app).expect("deployment");
        d["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .expect("image")
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_history_rollback_and_status_through_the_cli() {
    let setup = Setup::new().await;
    let registry = format!("{}/e2e", setup.registry.host());

    assert_eq!(setup.run(&["plan", "--all"]).await, Exit::Shipped);
    assert_eq!(
        setup
            .run(&["deploy", "--all", "--registry", &registry])
            .await,
        Exit::Shipped
    );
    let first = setup.image("web");
    assert!(
        first.starts_with(&format!("{registry}/web@sha256:")),
        "{first}"
    );
    assert_eq!(
        setup.run(&["status"]).await,
        Exit::NothingToDo,
        "all up to date"
    );

    // Nothing changed: a deploy from HEAD~0 has nothing to do.
    assert_eq!(
        setup
            .run(&["deploy", "--base", "HEAD", "--registry", &registry])
            .await,
        Exit::NothingToDo
    );

    setup.repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    assert_eq!(setup.run(&["status"]).await, Exit::Shipped, "web is behind");
    assert_eq!(
        setup
            .run(&["deploy", "--base", "HEAD~1", "--registry", &registry])
            .await,
        Exit::Shipped
    );
    let second = setup.image("web");
    assert_ne!(second, first);

    assert_eq!(setup.run(&["history", "web"]).await, Exit::Shipped);
    assert_eq!(setup.run(&["rollback", "web"]).await, Exit::Shipped);
    assert_eq!(
        setup.image("web"),
        first,
        "rolled back to the previous revision"
    );
    assert_eq!(
        setup.run(&["rollback", "web", "--to", "1"]).await,
        Exit::Shipped
    );
    assert_eq!(setup.image("web"), "registry.local/placeholder:v0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_exits_3_when_rolled_back_and_1_when_not() {
    let setup = Setup::new().await;
    let registry = format!("{}/e2e", setup.registry.host());
    setup
        .cluster
        .set_outcome("default", "api", Outcome::ImagePullFailure);
    assert_eq!(
        setup
            .run(&[
                "deploy",
                "--all",
                "--apps",
                "api",
                "--registry",
                &registry,
                "--no-rollback"
            ])
            .await,
        Exit::Failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_configmap_through_the_cli() {
    let setup = Setup::new().await;
    let dir = setup.repo.path().join("deploy");
    std::fs::create_dir_all(&dir).expect("manifest dir");
    std::fs::write(
        dir.join("worker.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: worker}\n\
         spec:\n  replicas: 1\n  selector: {matchLabels: {app: worker}}\n  template:\n    \
         metadata: {labels: {app: worker}}\n    spec:\n      containers:\n      \
         - {name: worker, image: registry.local/worker:v1, envFrom: [{configMapRef: {name: app-config}}]}\n",
    )
    .expect("manifest");
    // Its pods need the ConfigMap before they can start, on a real cluster too.
    setup.cluster.seed_object(
        "ConfigMap",
        "default",
        serde_json::json!({"metadata": {"name": "app-config"}, "data": {"MODE": "slow"}}),
    );
    let dir = setup.path(&dir);
    assert_eq!(setup.run(&["apply", dir]).await, Exit::Shipped);
    assert!(setup.cluster.deployment("default", "worker").is_some());
    assert_eq!(setup.run(&["apply", dir]).await, Exit::NothingToDo);

    let env = setup.repo.path().join("worker.env");
    std::fs::write(&env, "MODE=fast\n").expect("env file");
    let name = shipflow_kit::k8s::EnvConfigMap::from_env_file("app-config", &env)
        .expect("valid")
        .name();
    let env = setup.path(&env);
    let refs = || {
        setup
            .cluster
            .deployment("default", "worker")
            .expect("worker")["spec"]["template"]
            .to_string()
    };
    assert_eq!(
        setup
            .run(&["configmap", "app-config", env, "--dry-run"])
            .await,
        Exit::Shipped,
        "there is work to do"
    );
    assert!(setup.cluster.config_map("default", &name).is_none());
    assert!(!refs().contains(&name), "a dry run writes nothing");
    assert_eq!(
        setup.run(&["configmap", "app-config", env]).await,
        Exit::Shipped
    );
    assert!(setup.cluster.config_map("default", &name).is_some());
    assert!(refs().contains(&name), "worker rolled to the new name");
    assert_eq!(
        setup.run(&["configmap", "app-config", env]).await,
        Exit::NothingToDo
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_history_and_rollback_on_podman_through_the_cli() {
    let registry = TestRegistry::start().expect("docker-registry starts");
    let podman = shipflow_kit::docker::testing::TestPodman::start(&[&registry.host()])
        .expect("podman service starts");
    let port = common::free_port();
    let repo = Monorepo::create(&registry.host(), &["web"], |app, _| {
        format!(
            "[apps.{app}.deploy.docker]\ncontainer = \"cli{port}-{app}\"\n\
             ports = [\"127.0.0.1:{port}:8080\"]\nhealth = {{ http = \"/\", timeout = 10 }}\n"
        )
    });
    let config = repo.config();
    let host = podman.docker_host();
    let registry_prefix = format!("{}/e2e", registry.host());
    let run = |args: &[&str]| {
        let mut line = vec!["shipflow", "--config", config.to_str().expect("utf-8")];
        line.extend_from_slice(args);
        line.extend_from_slice(&["--target", "docker", "--docker-host", &host]);
        let cli = Cli::try_parse_from(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        async move {
            run_cli(cli, Progress::new(Mode::Quiet), Signals::inert())
                .await
                .unwrap_or_else(|e| panic!("failed: {e:#}"))
        }
    };
    let served = || tokio::task::spawn_blocking(move || common::http_get(port).unwrap_or_default());

    let deploy = ["deploy", "--all", "--registry", &registry_prefix];
    assert_eq!(run(&deploy).await, Exit::Shipped);
    assert_eq!(served().await.expect("GET"), "<h1>web v1</h1>\n");

    repo.edit("apps/web/index.html", "<h1>web v2</h1>\n");
    let deploy = ["deploy", "--base", "HEAD~1", "--registry", &registry_prefix];
    assert_eq!(run(&deploy).await, Exit::Shipped);
    assert_eq!(served().await.expect("GET"), "<h1>web v2</h1>\n");
    assert_eq!(run(&["status"]).await, Exit::NothingToDo, "up to date");

    assert_eq!(run(&["history", "web"]).await, Exit::Shipped);
    assert_eq!(run(&["rollback", "web"]).await, Exit::Shipped);
    assert_eq!(served().await.expect("GET"), "<h1>web v1</h1>\n");
    assert_eq!(
        run(&["status"]).await,
        Exit::Shipped,
        "behind after the rollback"
    );
}

/// A kubeconfig with one context per simulated cluster, named as given.
fn kubeconfig(contexts: &[(&str, &SimCluster)]) -> String {
    let mut clusters = String::new();
    let mut named = String::new();
    for (name, sim) in contexts {
        clusters.push_str(&format!(
            "- {{name: {name}, cluster: {{server: \"{}\"}}}}\n",
            sim.url()
        ));
        named.push_str(&format!(
            "- {{name: {name}, context: {{cluster: {name}, user: sim, namespace: default}}}}\n"
        ));
    }
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: {}\nclusters:\n{clusters}\
         users: [{{name: sim, user: {{}}}}]\ncontexts:\n{named}",
        contexts[0].0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_deploys_to_each_of_its_clusters_through_the_cli() {
    let setup = Setup::new().await;
    let registry = format!("{}/e2e", setup.registry.host());
    // The default cluster of Setup stays the workspace's; production lists two more.
    let (eu, us) = (
        SimCluster::start().await.expect("eu"),
        SimCluster::start().await.expect("us"),
    );
    for sim in [&eu, &us] {
        sim.seed_deployment("default", "api", "api", "registry.local/placeholder:v0", 1);
    }
    us.set_outcome("default", "api", Outcome::ImagePullFailure);
    let config = std::fs::read_to_string(setup.repo.config()).expect("config");
    setup.repo.edit(
        "shipflow.toml",
        &format!(
            "{config}\n[environments.production]\ntags = [\"v*\"]\n\
             clusters = [\"eu-west\", {{ name = \"us-east\", context = \"us-east-ctx\" }}]\n"
        ),
    );
    std::fs::write(
        &setup.kubeconfig,
        kubeconfig(&[
            ("sim", &setup.cluster),
            ("eu-west", &eu),
            ("us-east-ctx", &us),
        ]),
    )
    .expect("kubeconfig");
    let image = |sim: &SimCluster| {
        sim.deployment("default", "api").expect("api")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .as_str()
            .expect("image")
            .to_owned()
    };

    let exit = setup
        .run(&[
            "deploy",
            "-e",
            "production",
            "--all",
            "--apps",
            "api",
            "--registry",
            &registry,
        ])
        .await;
    assert_eq!(exit, Exit::RolledBack, "us-east failed and was rolled back");
    let api = format!("{registry}/api@sha256:");
    assert!(image(&eu).starts_with(&api), "eu-west runs the new image");
    assert_eq!(image(&us), "registry.local/placeholder:v0", "rolled back");
    assert_eq!(
        setup.image("api"),
        "registry.local/placeholder:v0",
        "the workspace's own cluster is not production's"
    );

    // History is each cluster's own.
    assert_eq!(
        setup.run(&["history", "api", "-e", "production"]).await,
        Exit::Shipped
    );
}
