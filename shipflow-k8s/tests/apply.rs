//! Server-side apply of a manifest directory through the real `kube::Client` against
//! the simulated API server.

use std::path::Path;

use shipflow_core::Context;
use shipflow_k8s::testing::SimCluster;
use shipflow_k8s::{ApplyOptions, KubeDeployer, KubeError};

const DEPLOY_AND_SERVICE: &str = r#"# the api and its service
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  labels: {app: api}
spec:
  replicas: 2
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
        - name: api
          image: r.local/api:v1
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: api
spec:
  selector: {app: api}
  ports: [{port: 80, targetPort: 8080}]
---
"#;

const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: api-settings\n  namespace: staging\ndata:\n  MODE: fast\n";

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write manifest");
}

fn options() -> ApplyOptions {
    ApplyOptions {
        namespace: "prod".into(),
        force: true,
    }
}

#[tokio::test]
async fn a_directory_is_applied_and_reapplying_changes_nothing() {
    let sim = SimCluster::start().await.expect("sim starts");
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "api.yaml", DEPLOY_AND_SERVICE);
    write(dir.path(), "config.yml", CONFIG);
    write(dir.path(), "README.md", "not a manifest");
    let deployer = KubeDeployer::new(sim.client());

    let applied = deployer
        .apply_dir(dir.path(), &options(), &Context::new())
        .await
        .expect("applies");
    let summary: Vec<_> = applied
        .iter()
        .map(|a| {
            (
                a.kind.as_str(),
                a.namespace.as_str(),
                a.name.as_str(),
                a.document,
                a.changed,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Deployment", "prod", "api", 0, true),
            ("Service", "prod", "api", 1, true),
            ("ConfigMap", "staging", "api-settings", 0, true),
        ]
    );
    let dep = sim.deployment("prod", "api").expect("created");
    assert_eq!(dep["metadata"]["generation"], 1);
    // The new Deployment was watched until rolled out.
    assert_eq!(dep["status"]["availableReplicas"], 2);
    assert_eq!(
        sim.service("prod", "api").expect("created")["spec"]["ports"][0]["port"],
        80
    );
    assert_eq!(
        sim.config_map("staging", "api-settings").expect("created")["data"]["MODE"],
        "fast"
    );
    let requests = sim.requests();
    assert_eq!(
        requests["PATCH /apis/apps/v1/namespaces/prod/deployments/api"], 1,
        "server-side apply is a PATCH"
    );

    // Again: nothing changes, not even a resourceVersion.
    let rv = dep["metadata"]["resourceVersion"].clone();
    let again = deployer
        .apply_dir(dir.path(), &options(), &Context::new())
        .await
        .expect("applies");
    assert!(again.iter().all(|a| !a.changed), "{again:?}");
    let dep = sim.deployment("prod", "api").expect("exists");
    assert_eq!(dep["metadata"]["generation"], 1);
    assert_eq!(dep["metadata"]["resourceVersion"], rv);

    // A changed image: a new generation, rolled out before apply returns.
    write(
        dir.path(),
        "api.yaml",
        &DEPLOY_AND_SERVICE.replace("api:v1", "api:v2"),
    );
    let changed = deployer
        .apply_dir(dir.path(), &options(), &Context::new())
        .await
        .expect("applies");
    assert_eq!(
        changed.iter().map(|a| a.changed).collect::<Vec<_>>(),
        [true, false, false]
    );
    let dep = sim.deployment("prod", "api").expect("exists");
    assert_eq!(dep["metadata"]["generation"], 2);
    assert_eq!(dep["status"]["observedGeneration"], 2);
    assert_eq!(dep["status"]["updatedReplicas"], 2);
    assert_eq!(dep["status"]["replicas"], 2);
}

#[tokio::test]
async fn a_bad_manifest_names_the_file_and_document_and_applies_nothing() {
    let sim = SimCluster::start().await.expect("sim starts");
    let deployer = KubeDeployer::new(sim.client());
    for (text, says) in [
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: {name: nightly}\n",
            "CronJob (batch/v1) is not supported; shipflow applies Deployment (apps/v1), Service (v1), ConfigMap (v1)",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Service\nmetadata: {labels: {a: b}}\n",
            "Service has no metadata.name",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\nkind: [unclosed\n",
            "invalid YAML",
        ),
        // Aliases that expand to 10^9 nodes ("billion laughs"): refused by the
        // parser's limits, quickly, instead of exhausting memory.
        (&billion_laughs(), "invalid YAML"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), "a-good.yaml", CONFIG);
        write(dir.path(), "b-bad.yaml", text);
        let err = deployer
            .apply_dir(dir.path(), &options(), &Context::new())
            .await
            .expect_err("bad manifest");
        assert!(
            matches!(&err, KubeError::Manifest { document: 1, path, .. } if path.ends_with("b-bad.yaml")),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("b-bad.yaml document 1: "), "{text}");
        assert!(text.contains(says), "{text}");
    }
    assert_eq!(
        sim.request_count("PATCH") + sim.request_count("GET"),
        0,
        "nothing applied"
    );
}

#[tokio::test]
async fn a_dry_run_applies_nothing() {
    let sim = SimCluster::start().await.expect("sim starts");
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "api.yaml", DEPLOY_AND_SERVICE);
    let applied = KubeDeployer::new(sim.client())
        .apply_dir(dir.path(), &options(), &Context::new().with_dry_run(true))
        .await
        .expect("dry run");
    assert_eq!(applied.len(), 2);
    assert!(sim.deployment("prod", "api").is_none());
    assert!(sim.service("prod", "api").is_none());
}

fn no_force() -> ApplyOptions {
    ApplyOptions {
        namespace: "prod".into(),
        force: false,
    }
}

#[tokio::test]
async fn applying_after_a_deploy_conflicts_on_the_image_until_forced() {
    let sim = SimCluster::start().await.expect("sim starts");
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "api.yaml", DEPLOY_AND_SERVICE);
    let deployer = KubeDeployer::new(sim.client());
    deployer
        .apply_dir(dir.path(), &no_force(), &Context::new())
        .await
        .expect("created");
    let ws = shipflow_core::Workspace::from_toml(
        "[workspace]\nregistry = \"r.local\"\n[apps.api]\ndeploy.kubernetes = { namespace = \"prod\" }\n",
        ".")
    .expect("valid workspace");
    let image: shipflow_core::ImageRef = format!("r.local/api@sha256:{}", "d5".repeat(32))
        .parse()
        .expect("pinned");
    shipflow_core::Deployer::deploy(
        &deployer,
        ws.app("api").expect("declared"),
        &image,
        &shipflow_core::DeployMeta::default(),
        &Context::new(),
    )
    .await
    .expect("rolls");

    // The manifest still names r.local/api:v1: the image is the deploy's now.
    let err = deployer
        .apply_dir(dir.path(), &no_force(), &Context::new())
        .await
        .expect_err("a conflict with the deploy's image");
    assert!(matches!(err, KubeError::Apply { document: 0, .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(".spec.template.spec.containers[name=\"api\"].image")
            && text.contains("shipflow-deploy"),
        "names the field and its manager: {text}"
    );
    let applied = deployer
        .apply_dir(dir.path(), &options(), &Context::new())
        .await
        .expect("forced");
    assert!(applied[0].changed);
    let dep = sim.deployment("prod", "api").expect("exists");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "r.local/api:v1"
    );
}

#[tokio::test]
async fn a_field_dropped_from_a_manifest_is_removed() {
    let sim = SimCluster::start().await.expect("sim starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let with_env = DEPLOY_AND_SERVICE.replace(
        "          ports: [{containerPort: 8080}]",
        "          ports: [{containerPort: 8080}]\n          env: [{name: MODE, value: fast}, {name: DEBUG, value: \"1\"}]",
    );
    write(dir.path(), "api.yaml", &with_env);
    let deployer = KubeDeployer::new(sim.client());
    deployer
        .apply_dir(dir.path(), &no_force(), &Context::new())
        .await
        .expect("created");
    let without_debug = with_env.replace(", {name: DEBUG, value: \"1\"}", "");
    write(dir.path(), "api.yaml", &without_debug);
    let applied = deployer
        .apply_dir(dir.path(), &no_force(), &Context::new())
        .await
        .expect("applied");
    assert!(applied[0].changed);
    let dep = sim.deployment("prod", "api").expect("exists");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["env"],
        serde_json::json!([{"name": "MODE", "value": "fast"}]),
        "DEBUG is gone, as on a real cluster"
    );
}

#[tokio::test]
async fn a_replicas_only_apply_rolls_out() {
    let sim = SimCluster::start().await.expect("sim starts");
    let dir = tempfile::tempdir().expect("temp dir");
    write(dir.path(), "api.yaml", DEPLOY_AND_SERVICE);
    let deployer = KubeDeployer::new(sim.client()).timeout(std::time::Duration::from_secs(20));
    deployer
        .apply_dir(dir.path(), &no_force(), &Context::new())
        .await
        .expect("created");
    write(
        dir.path(),
        "api.yaml",
        &DEPLOY_AND_SERVICE.replace("replicas: 2", "replicas: 3"),
    );
    deployer
        .apply_dir(dir.path(), &no_force(), &Context::new())
        .await
        .expect("scaled and waited for");
    let dep = sim.deployment("prod", "api").expect("exists");
    assert_eq!(dep["metadata"]["generation"], 2);
    assert_eq!(dep["status"]["observedGeneration"], 2);
    assert_eq!(dep["status"]["availableReplicas"], 3);
    assert_eq!(dep["status"]["updatedReplicas"], 3);
}

/// A second document whose aliases expand to 10^9 scalars.
fn billion_laughs() -> String {
    let mut text =
        String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\na0: &a0 [lol]\n");
    for i in 1..=9 {
        let prev = format!("*a{}", i - 1);
        let list = [prev.as_str(); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{list}]\n"));
    }
    text
}
