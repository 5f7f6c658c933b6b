//! Workloads from app config: an app whose `deploy.kubernetes` has workload settings
//! gets its Deployment (and a Service for its exposed ports, its generated
//! ConfigMaps, its image pull Secret) written by server-side apply from them. What
//! shipflow writes is read back through the real `kubectl` and strictly
//! deserialised into the k8s-openapi types.

mod common;

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use shipflow_core::{Context, DeployMeta, Deployer, Workspace};
use shipflow_k8s::testing::SimCluster;
use shipflow_k8s::{APP_LABEL, KubeError, PullCredentials};

use common::{deployer, kube_error, pinned};

const NS: &str = "shop";

/// A workspace whose app `api` deploys to `shop/api` with `settings` (the inside
/// of `[apps.api.deploy.kubernetes]`), rooted at `root`.
fn workspace(root: &Path, settings: &str) -> Result<Workspace, String> {
    Workspace::loader()
        .schema(shipflow_k8s::schema())
        .from_toml(
            &format!(
                "[workspace]\nregistry = \"registry.local\"\n[apps.api.deploy.kubernetes]\nnamespace = \"{NS}\"\n{settings}\n"
            ),
            root,
        )
        .map_err(|e| e.to_string())
}

const SETTINGS: &str = r#"
replicas = 2
env = { MODE = "fast" }
env_from = { DB_HOST = { config_map = "db", key = "host" }, DB_PASSWORD = { secret = "db", key = "password" } }
ports = [{ name = "http", port = 8080, service_port = 80 }, { name = "metrics", port = 9090 }]
resources = { requests = { cpu = "250m", memory = "128Mi" }, limits = { cpu = "1", memory = "256Mi" } }
readiness = { http = "/ready", period = 2, failure_threshold = 3 }
liveness = { http = "/healthz", port = 8080, initial_delay = 1 }
strategy = "rolling"
max_surge = 1
max_unavailable = "0%"
labels = { team = "shop" }
annotations = { "shop.example.com/owner" = "team-shop" }
"#;

/// The ConfigMap and Secret the app's `env_from` names.
fn seed_db(sim: &SimCluster) {
    sim.seed_object(
        "ConfigMap",
        NS,
        json!({"metadata": {"name": "db"}, "data": {"host": "db.shop"}}),
    );
    sim.seed_object(
        "Secret",
        NS,
        json!({"metadata": {"name": "db"}, "stringData": {"password": "not-a-real-one"}}),
    );
}

fn meta(sha: &str) -> DeployMeta {
    DeployMeta {
        git_sha: Some(sha.into()),
        change_cause: format!("shipflow: api at {sha}"),
        ..DeployMeta::default()
    }
}

/// `value` read into `T` and written back unchanged: every field is one the
/// Kubernetes schema has, with the type it has.
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).expect("deserialises");
    let back = serde_json::to_value(&typed).expect("serialises");
    assert_eq!(&back, value, "fields outside the schema were dropped");
    typed
}

/// Runs `kubectl -n shop <args>` against the simulator; it must succeed.
async fn kubectl(sim: &SimCluster, args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config"), sim.kubeconfig()).expect("kubeconfig");
    let mut all: Vec<String> = vec!["-n".into(), NS.into()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .env_clear()
            .env("HOME", dir.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--kubeconfig")
            .arg(dir.path().join("config"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(&all)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run kubectl (install Debian's kubectl package): {e}")
            })
    })
    .await
    .expect("kubectl task");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl get <what> -o json` against the simulator.
async fn kubectl_get(sim: &SimCluster, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend(what);
    args.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(sim, &args).await).expect("kubectl prints JSON")
}

fn env_of(dep: &Deployment) -> Vec<(String, Value)> {
    let spec = dep.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod spec");
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), serde_json::to_value(e).expect("serialises")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_deployment_is_created_with_its_service_from_the_apps_settings() {
    let sim = SimCluster::start().await.expect("sim starts");
    seed_db(&sim);
    let ws = workspace(Path::new("."), SETTINGS).expect("valid settings");
    let app = ws.app("api").expect("declared");
    let deployer = deployer(&sim);
    let image = pinned("a1");
    let rollout = deployer
        .deploy(app, &image, &meta("a1"), &Context::new())
        .await
        .expect("created and rolled out");
    assert!(rollout.changed);
    assert_eq!(rollout.revision, Some(1));
    // Read, apply the Deployment and the Service, then watch the rollout as an
    // image patch's is watched: one watch, and pod lists as the rollout needs them.
    let requests = sim.requests();
    let writes: Vec<(&String, &u64)> = requests
        .iter()
        .filter(|(k, _)| !k.starts_with("GET ") && !k.starts_with("WATCH "))
        .collect();
    assert_eq!(
        writes,
        [
            (&format!("PATCH /api/v1/namespaces/{NS}/services/api"), &1),
            (
                &format!("PATCH /apis/apps/v1/namespaces/{NS}/deployments/api"),
                &1
            ),
        ],
        "{requests:?}"
    );
    assert_eq!(
        requests[&format!("GET /apis/apps/v1/namespaces/{NS}/deployments/api")],
        1
    );
    assert_eq!(sim.request_count("WATCH"), 1, "{requests:?}");
    let status = kubectl(
        &sim,
        &["rollout", "status", "deployment/api", "--timeout=5s"],
    )
    .await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let history = kubectl(&sim, &["rollout", "history", "deployment/api"]).await;
    assert!(history.contains("shipflow: api at a1"), "{history}");

    let dep: Deployment =
        strict(&kubectl_get(&sim, &["deploy", "api", "--show-managed-fields"]).await);
    let spec = dep.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let selector = spec.selector.match_labels.clone().expect("matchLabels");
    assert_eq!(
        selector.into_iter().collect::<Vec<_>>(),
        [(APP_LABEL.to_owned(), "api".to_owned())]
    );
    let strategy = spec.strategy.as_ref().expect("strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = serde_json::to_value(&strategy.rolling_update).expect("json");
    assert_eq!(rolling, json!({"maxSurge": 1, "maxUnavailable": "0%"}));
    let labels = dep.metadata.labels.clone().expect("labels");
    assert_eq!(labels["team"], "shop");
    let annotations = dep.metadata.annotations.clone().expect("annotations");
    assert_eq!(annotations["shop.example.com/owner"], "team-shop");
    assert_eq!(
        annotations["kubernetes.io/change-cause"],
        "shipflow: api at a1"
    );
    let template = &spec.template;
    assert_eq!(
        template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .map(|l| l["team"].clone()),
        Some("shop".to_owned())
    );
    let pod = template.spec.as_ref().expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(c.name, "api");
    assert_eq!(c.image.as_deref(), Some(image.to_string().as_str()));
    let resources = serde_json::to_value(&c.resources).expect("json");
    assert_eq!(
        resources,
        json!({"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
    );
    assert_eq!(
        env_of(&dep),
        [
            ("MODE".to_owned(), json!({"name": "MODE", "value": "fast"})),
            (
                "DB_HOST".to_owned(),
                json!({"name": "DB_HOST", "valueFrom": {"configMapKeyRef": {"name": "db", "key": "host"}}})
            ),
            (
                "DB_PASSWORD".to_owned(),
                json!({"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}})
            ),
        ]
    );
    let ports: Vec<(Option<String>, i32)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [(Some("http".into()), 8080), (Some("metrics".into()), 9090)]
    );
    let readiness = serde_json::to_value(&c.readiness_probe).expect("json");
    assert_eq!(readiness["httpGet"]["path"], "/ready");
    assert_eq!(readiness["httpGet"]["port"], 8080, "the first port");
    assert_eq!(readiness["periodSeconds"], 2);
    let liveness = serde_json::to_value(&c.liveness_probe).expect("json");
    assert_eq!(liveness["httpGet"]["path"], "/healthz");
    assert_eq!(liveness["initialDelaySeconds"], 1);
    let managers: Vec<(String, String)> = dep
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("shipflow-workload/api".into(), "Apply".into())),
        "{managers:?}"
    );

    // The Service exposes the one port with a service_port, selecting by the
    // selector's label only; its endpoints are the two ready pods.
    let svc: Service = strict(&kubectl_get(&sim, &["svc", "api"]).await);
    let svc_spec = svc.spec.as_ref().expect("spec");
    assert_eq!(
        svc_spec
            .selector
            .clone()
            .map(|s| s.into_iter().collect::<Vec<_>>()),
        Some(vec![(APP_LABEL.to_owned(), "api".to_owned())])
    );
    let svc_ports = serde_json::to_value(&svc_spec.ports).expect("json");
    assert_eq!(
        svc_ports,
        json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}])
    );
    let slices = kubectl_get(
        &sim,
        &["endpointslices", "-l", "kubernetes.io/service-name=api"],
    )
    .await;
    let ready = slices["items"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter(|e| e["conditions"]["ready"] == true)
        .count();
    assert_eq!(ready, 2, "{slices}");
    assert!(
        sim.schema_violations().is_empty(),
        "{:?}",
        sim.schema_violations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_setting_updates_the_deployment_by_server_side_apply() {
    let sim = SimCluster::start().await.expect("sim starts");
    seed_db(&sim);
    let deployer = deployer(&sim);
    let image = pinned("b1");
    let ws = workspace(Path::new("."), SETTINGS).expect("valid settings");
    deployer
        .deploy(
            ws.app("api").expect("declared"),
            &image,
            &meta("b1"),
            &Context::new(),
        )
        .await
        .expect("created");
    let before = sim.deployment(NS, "api").expect("created");

    // Same image, three replicas and another env value: a new revision.
    let changed = SETTINGS
        .replace("replicas = 2", "replicas = 3")
        .replace("MODE = \"fast\"", "MODE = \"safe\", EXTRA = \"1\"");
    let ws = workspace(Path::new("."), &changed).expect("valid settings");
    let app = ws.app("api").expect("declared");
    let rollout = deployer
        .deploy(app, &image, &meta("b1"), &Context::new())
        .await
        .expect("updated");
    assert!(rollout.changed);
    assert_eq!(rollout.revision, Some(2));
    let dep: Deployment = strict(&kubectl_get(&sim, &["deploy", "api"]).await);
    let spec = dep.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(
        serde_json::to_value(&spec.selector).expect("json"),
        before["spec"]["selector"],
        "the selector never changes"
    );
    let mut env: Vec<String> = env_of(&dep)
        .into_iter()
        .map(|(name, v)| format!("{name}={}", v["value"].as_str().unwrap_or("<ref>")))
        .collect();
    env.sort();
    assert_eq!(
        env,
        ["DB_HOST=<ref>", "DB_PASSWORD=<ref>", "EXTRA=1", "MODE=safe"]
    );
    let status = dep.status.as_ref().expect("status");
    assert_eq!(status.available_replicas, Some(3));
    assert_eq!(status.updated_replicas, Some(3));

    // Deploying it again changes nothing.
    let again = deployer
        .deploy(app, &image, &meta("b1"), &Context::new())
        .await
        .expect("unchanged");
    assert!(!again.changed);
    assert_eq!(again.revision, Some(2));
    assert_eq!(
        sim.deployment(NS, "api").expect("there")["metadata"]["generation"],
        dep.metadata.generation.expect("generation")
    );

    // A setting dropped from the config is dropped from the Deployment: shipflow's
    // field manager no longer applies it.
    let fewer = changed.replace(", EXTRA = \"1\"", "");
    let ws = workspace(Path::new("."), &fewer).expect("valid settings");
    deployer
        .deploy(
            ws.app("api").expect("declared"),
            &image,
            &meta("b1"),
            &Context::new(),
        )
        .await
        .expect("updated");
    let dep: Deployment = strict(&kubectl_get(&sim, &["deploy", "api"]).await);
    assert!(
        !env_of(&dep).iter().any(|(name, _)| name == "EXTRA"),
        "{:?}",
        env_of(&dep)
    );
    assert!(sim.schema_violations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_on_an_existing_deployment_keep_its_selector_and_take_over_the_image() {
    let sim = SimCluster::start().await.expect("sim starts");
    sim.seed_deployment(NS, "api", "api", "registry.local/api:v1", 1);
    let deployer = deployer(&sim);
    // A plain deploy first: the image field belongs to the image patch's manager.
    let plain = workspace(Path::new("."), "").expect("valid");
    deployer
        .deploy(
            plain.app("api").expect("declared"),
            &pinned("c1"),
            &meta("c1"),
            &Context::new(),
        )
        .await
        .expect("patched");
    let ws = workspace(
        Path::new("."),
        "replicas = 2\nports = [{ port = 8080, service_port = 8080 }]",
    )
    .expect("valid");
    let rollout = deployer
        .deploy(
            ws.app("api").expect("declared"),
            &pinned("c2"),
            &meta("c2"),
            &Context::new(),
        )
        .await
        .expect("applied over the existing Deployment");
    assert!(rollout.changed);
    let dep: Deployment = strict(&sim.deployment(NS, "api").expect("there"));
    let spec = dep.spec.as_ref().expect("spec");
    assert_eq!(
        serde_json::to_value(&spec.selector).expect("json"),
        json!({"matchLabels": {"app": "api"}}),
        "the selector it was created with"
    );
    assert_eq!(spec.replicas, Some(2));
    let svc: Service = strict(&sim.service(NS, "api").expect("service"));
    assert_eq!(
        serde_json::to_value(&svc.spec.as_ref().expect("spec").selector).expect("json"),
        json!({"app": "api"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_settings_a_missing_deployment_is_still_an_error() {
    let sim = SimCluster::start().await.expect("sim starts");
    let ws = workspace(Path::new("."), "").expect("valid");
    let err = deployer(&sim)
        .deploy(
            ws.app("api").expect("declared"),
            &pinned("d1"),
            &meta("d1"),
            &Context::new(),
        )
        .await
        .expect_err("nothing to patch");
    assert!(
        matches!(kube_error(&err), KubeError::NotFound { workload, .. } if workload == "shop/api"),
        "{err}"
    );
    assert!(sim.deployment(NS, "api").is_none());
    assert_eq!(sim.request_count("PATCH"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_config_maps_are_generated_hash_named_and_rolled_with_the_app() {
    let sim = SimCluster::start().await.expect("sim starts");
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(root.path().join("conf")).expect("dir");
    let env_file = root.path().join("conf/api.env");
    std::fs::write(&env_file, "MODE=fast\n").expect("env file");
    let settings = "replicas = 1\nconfig_maps = [{ name = \"api-config\", env_file = \"conf/api.env\" }]\nenv_from = { THE_MODE = { config_map = \"api-config\", key = \"MODE\" } }";
    let deployer = deployer(&sim);
    let image = pinned("e1");

    let ws = workspace(root.path(), settings).expect("valid");
    let first_name = shipflow_k8s::EnvConfigMap::from_env_file("api-config", &env_file)
        .expect("env")
        .name();
    let rollout = deployer
        .deploy(
            ws.app("api").expect("declared"),
            &image,
            &meta("e1"),
            &Context::new(),
        )
        .await
        .expect("created");
    assert_eq!(rollout.revision, Some(1));
    let refs = |dep: &Value| {
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        (
            c["envFrom"][0]["configMapRef"]["name"].clone(),
            c["env"][0]["valueFrom"]["configMapKeyRef"]["name"].clone(),
        )
    };
    let dep = sim.deployment(NS, "api").expect("created");
    assert_eq!(refs(&dep), (json!(first_name), json!(first_name)));
    let map = sim.config_map(NS, &first_name).expect("generated");
    assert_eq!(map["data"], json!({"MODE": "fast"}));
    assert_eq!(map["immutable"], true);

    // A changed file: a new name, and the pods roll to it with the same image.
    std::fs::write(&env_file, "MODE=safe\n").expect("env file");
    let ws = workspace(root.path(), settings).expect("valid");
    let rollout = deployer
        .deploy(
            ws.app("api").expect("declared"),
            &image,
            &meta("e1"),
            &Context::new(),
        )
        .await
        .expect("rolled");
    assert!(rollout.changed);
    assert_eq!(rollout.revision, Some(2));
    let second = sim.deployment(NS, "api").expect("there");
    let (from, _) = refs(&second);
    let second_name = from.as_str().expect("name").to_owned();
    assert_ne!(second_name, first_name);
    assert_eq!(
        sim.config_map(NS, &second_name).expect("generated")["data"],
        json!({"MODE": "safe"})
    );
    assert!(
        sim.config_map(NS, &first_name).is_some(),
        "the old version stays for a rollback"
    );
    assert!(sim.schema_violations().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pull_secret_is_written_from_the_registry_credentials_when_asked() {
    let sim = SimCluster::start().await.expect("sim starts");
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::write(root.path().join("api.env"), "A=1\n").expect("env file");
    let ws = workspace(
        root.path(),
        "image_pull_secret = \"api-pull\"\nconfig_maps = [{ name = \"api-config\", env_file = \"api.env\" }]",
    )
    .expect("valid");
    let app = ws.app("api").expect("declared");
    let image = pinned("f1");

    let err = deployer(&sim)
        .deploy(app, &image, &meta("f1"), &Context::new())
        .await
        .expect_err("no credentials");
    assert!(
        matches!(kube_error(&err), KubeError::NoPullCredentials { registry, .. } if registry == "registry.local"),
        "{err}"
    );
    assert!(sim.deployment(NS, "api").is_none(), "nothing was written");
    assert!(sim.list("ConfigMap", NS).is_empty(), "nothing was written");
    assert_eq!(sim.request_count("POST") + sim.request_count("PATCH"), 0);

    let credentials = PullCredentials {
        username: "ci".into(),
        password: "s3cret-pass".into(),
    };
    assert!(!format!("{credentials:?}").contains("s3cret"));
    let deployer = deployer(&sim).pull_credentials(credentials);
    assert!(!format!("{deployer:?}").contains("s3cret"));
    deployer
        .deploy(app, &image, &meta("f1"), &Context::new())
        .await
        .expect("created");
    let secret: Secret = strict(&kubectl_get(&sim, &["secret", "api-pull"]).await);
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let config: Value =
        serde_json::from_slice(&secret.data.as_ref().expect("data")[".dockerconfigjson"].0)
            .expect("docker config JSON");
    let auth = &config["auths"]["registry.local"];
    assert_eq!(auth["username"], "ci");
    assert_eq!(auth["password"], "s3cret-pass");
    assert_eq!(
        auth["auth"], "Y2k6czNjcmV0LXBhc3M=",
        "base64 of ci:s3cret-pass"
    );
    let dep = sim.deployment(NS, "api").expect("created");
    assert_eq!(
        dep["spec"]["template"]["spec"]["imagePullSecrets"],
        json!([{"name": "api-pull"}])
    );
    assert!(sim.schema_violations().is_empty());
}

#[test]
fn bad_settings_are_refused_at_load_naming_the_field() {
    let key = "apps.api.deploy.kubernetes";
    for (settings, field, says) in [
        (
            "resources = { limits = { memory = \"lots\" } }",
            "resources.limits.memory",
            "\"lots\" is not a quantity",
        ),
        (
            "resources = { requests = { cpu = \"-1\" } }",
            "resources.requests.cpu",
            "is not a quantity",
        ),
        ("ports = [{ port = 0 }]", "ports[0].port", "1 to 65535"),
        (
            "ports = [{ port = 80, service_port = 80 }, { port = 81, service_port = 81 }]",
            "ports",
            "needs every exposed port named",
        ),
        (
            "readiness = { http = \"/ready\" }",
            "readiness.port",
            "declare the container's ports",
        ),
        (
            "readiness = { http = \"ready\", port = 80 }",
            "readiness.http",
            "not an HTTP path",
        ),
        (
            "strategy = \"recreate\"\nmax_surge = 1",
            "strategy",
            "max_surge and max_unavailable are for strategy \"rolling\"",
        ),
        (
            "max_surge = 0\nmax_unavailable = \"0%\"",
            "max_unavailable",
            "cannot both be 0",
        ),
        ("max_surge = \"150%\"", "max_surge", "percentage"),
        (
            "env_from = { X = { config_map = \"a\", secret = \"b\", key = \"k\" } }",
            "env_from.X",
            "give config_map or secret",
        ),
        (
            "env = { \"1X\" = \"v\" }",
            "env.1X",
            "not a valid variable name",
        ),
        (
            "labels = { \"shipflow.dev/app\" = \"other\" }",
            "labels.shipflow.dev/app",
            "selector label",
        ),
        (
            "labels = { team = \"a b\" }",
            "labels.team",
            "not a valid label value",
        ),
        (
            "image_pull_secret = \"Bad_Name\"",
            "image_pull_secret",
            "not a valid name",
        ),
        (
            "resources = { requests = { memory = \"128m\" } }",
            "resources.requests.memory",
            "write \"128Mi\" (mebibytes)",
        ),
        (
            "resources = { requests = { cpu = \"2\" }, limits = { cpu = \"500m\" } }",
            "resources.requests.cpu",
            "\"2\" is more than the limit \"500m\"",
        ),
        (
            "resources = { requests = { memory = \"1Gi\" }, limits = { memory = \"512Mi\" } }",
            "resources.requests.memory",
            "more than the limit",
        ),
        (
            "ports = [{ name = \"http\", port = 80 }, { name = \"http\", port = 81 }]",
            "ports[1].name",
            "names another port too",
        ),
        ("max_surge = 3000000000", "max_surge", "2147483647"),
        (
            "max_unavailable = 2147483648",
            "max_unavailable",
            "2147483647",
        ),
        (
            "deployment = \"api.v2\"\nports = [{ port = 80, service_port = 80 }]",
            "deployment",
            "also names the Service",
        ),
        (
            "config_maps = [{ name = \"c\", env_file = \"../outside.env\" }]",
            "config_maps[0].env_file",
            "",
        ),
    ] {
        let err = workspace(Path::new("."), settings).expect_err(settings);
        assert!(
            err.starts_with(&format!("{key}.{field}: ")) && err.contains(says),
            "{settings}: {err}"
        );
    }
    // Unknown keys are typos.
    let err = workspace(Path::new("."), "replica = 2").expect_err("typo");
    assert!(err.contains("replica"), "{err}");
    // And what existing configs say still loads, meaning no workload.
    let ws = workspace(
        Path::new("."),
        "deployment = \"api-v2\"\ncontainer = \"web\"",
    )
    .expect("valid");
    let target = ws
        .app("api")
        .expect("declared")
        .deploy_target::<shipflow_k8s::KubernetesTarget>(shipflow_k8s::KUBERNETES_TARGET)
        .expect("valid")
        .expect("present");
    assert!(!target.has_workload());
}

#[test]
fn names_made_from_the_app_and_the_deployment_are_checked_at_load() {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::write(root.path().join("a.env"), "A=1\n").expect("env file");
    let load = |app: &str, settings: &str| {
        Workspace::loader()
            .schema(shipflow_k8s::schema())
            .from_toml(
                &format!(
                    "[workspace]\nregistry = \"registry.local\"\n[apps.{app}.deploy.kubernetes]\n{settings}\n"
                ),
                root.path(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let exposed = "ports = [{ port = 8080, service_port = 80 }]";
    let blue_green = format!("{exposed}\nstrategy = \"blue-green\"");
    let long = "a".repeat(64);
    // A valid object name (two DNS labels) but too long for a label value.
    let long_map = format!(
        "config_maps = [{{ name = \"{}.{}\", env_file = \"a.env\" }}]",
        "a".repeat(40),
        "b".repeat(30)
    );
    for (app, settings, starts, says) in [
        (
            "api_v2",
            "replicas = 1",
            "deployment",
            "not a valid Deployment name; set deployment",
        ),
        (
            "1api",
            exposed,
            "deployment",
            "(not given: the app's name \"1api\") also names the Service",
        ),
        (long.as_str(), "replicas = 1", "", "label shipflow.dev/app"),
        (
            &long[..56],
            &blue_green,
            "deployment",
            "<deployment>-preview needs at most 63",
        ),
        (
            "api",
            &long_map,
            "config_maps[0].name",
            "label shipflow.dev/config-map",
        ),
    ] {
        let err = load(app, settings).expect_err(settings);
        let key = format!("apps.{app}.deploy.kubernetes");
        let prefix = if starts.is_empty() {
            format!("{key}: ")
        } else {
            format!("{key}.{starts}: ")
        };
        assert!(
            err.starts_with(&prefix) && err.contains(says),
            "{app}: {err}"
        );
    }
    // What fits loads; without workload settings shipflow names nothing after the app.
    load(&long[..55], &blue_green).expect("55 characters fit");
    load("1api", "replicas = 1").expect("a Deployment name may start with a digit");
    load("api_v2", "deployment = \"api-v2\"\nreplicas = 1").expect("named");
    load("api_v2", "").expect("no workload settings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strategy_switches_between_rolling_and_recreate() {
    let sim = SimCluster::start().await.expect("sim starts");
    let deployer = deployer(&sim);
    let strategy = |d: &Value| d["spec"]["strategy"].clone();
    for (i, (settings, want)) in [
        (
            "strategy = \"rolling\"",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
        ),
        ("strategy = \"recreate\"", json!({"type": "Recreate"})),
        (
            "max_surge = 2",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": "25%"}}),
        ),
        ("strategy = \"recreate\"", json!({"type": "Recreate"})),
    ]
    .into_iter()
    .enumerate()
    {
        let ws = workspace(Path::new("."), &format!("replicas = 2\n{settings}")).expect("valid");
        let image = pinned(&format!("{i}{i}"));
        deployer
            .deploy(ws.app("api").expect("declared"), &image, &meta("g"), &Context::new())
            .await
            .unwrap_or_else(|e| panic!("{settings}: {e}"));
        let dep = sim.deployment(NS, "api").expect("there");
        assert_eq!(strategy(&dep), want, "{settings}");
        let _: Deployment = strict(&dep);
    }
}

/// The README's example of the section loads as it is.
#[test]
fn the_readme_example_loads() {
    let readme = include_str!("../README.md");
    let start = readme
        .find("[apps.api.deploy.kubernetes]\n")
        .expect("the example");
    let end = start + readme[start..].find("```").expect("its end");
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join("apps/api")).expect("dir");
    std::fs::write(root.path().join("apps/api/api.env"), "A=1\n").expect("env file");
    let ws = Workspace::loader()
        .schema(shipflow_k8s::schema())
        .from_toml(
            &format!(
                "[workspace]\nregistry = \"registry.local\"\n{}",
                &readme[start..end]
            ),
            root.path(),
        )
        .expect("the README's example is valid");
    let target = ws
        .app("api")
        .expect("declared")
        .deploy_target::<shipflow_k8s::KubernetesTarget>(shipflow_k8s::KUBERNETES_TARGET)
        .expect("valid")
        .expect("present");
    assert!(target.has_workload());
    assert_eq!(target.replicas, Some(3));
}
