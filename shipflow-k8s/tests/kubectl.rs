//! The real `kubectl` next to shipflow against the simulated API server: what one
//! writes the other reads the same way. `kubectl` runs as a child process with its
//! own kubeconfig, cache and home in a temporary directory; it must be on `PATH`
//! (Debian's `kubectl` package), or these tests fail.

mod common;

use serde_json::{Value, json};
use shipflow_core::{Context, DeployMeta, Deployer, Fingerprint, RollbackTarget};
use shipflow_k8s::testing::{Outcome, SimCluster};

use common::kubectl::Kubectl;
use common::{V1, app, deployer, pinned, sim, workspace};

fn meta(sha: &str) -> DeployMeta {
    DeployMeta {
        fingerprint: Some(Fingerprint(format!("fp-{sha}"))),
        git_sha: Some(sha.into()),
        change_cause: format!("shipflow: api at {sha}"),
        ..DeployMeta::default()
    }
}

/// The `REVISION  CHANGE-CAUSE` rows of `kubectl rollout history`.
fn history_rows(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .filter_map(|l| {
            let (rev, cause) = l.trim().split_once(char::is_whitespace)?;
            Some((rev.parse().ok()?, cause.trim().to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_discovers_every_simulated_kind() {
    let sim = sim(1).await;
    let k = Kubectl::new(&sim);
    let resources = k.ok(&["api-resources", "--no-headers"]).await;
    for kind in [
        "Deployment",
        "ReplicaSet",
        "Pod",
        "ConfigMap",
        "Secret",
        "Service",
        "Endpoints",
        "EndpointSlice",
        "Event",
        "Lease",
        "Job",
    ] {
        assert!(
            resources
                .lines()
                .any(|l| l.split_whitespace().last() == Some(kind)),
            "{kind} in\n{resources}"
        );
    }
    let version = k.json(&["version"]).await;
    assert_eq!(version["serverVersion"]["major"], "1");
    let table = k.ok(&["get", "deployments"]).await;
    let row = table.lines().nth(1).expect("a row");
    assert_eq!(
        row.split_whitespace().take(4).collect::<Vec<_>>(),
        ["api", "1/1", "1", "1"],
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_shipflow_reports_complete_is_complete_for_kubectl() {
    let sim = sim(3).await;
    let k = Kubectl::new(&sim);
    let ws = workspace();
    let image = pinned("ab");
    deployer(&sim)
        .deploy(app(&ws), &image, &meta("ab"), &Context::new())
        .await
        .expect("rolls");

    // At once, without waiting: kubectl agrees that it is done.
    let status = k
        .ok(&["rollout", "status", "deployment/api", "--watch=false"])
        .await;
    assert_eq!(status.trim(), "deployment \"api\" successfully rolled out");
    let dep = k.json(&["get", "deployment", "api"]).await;
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        image.to_string()
    );
    let pods = k.json(&["get", "pods", "-l", "app=api"]).await;
    let images: Vec<&Value> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| &p["spec"]["containers"][0]["image"])
        .collect();
    assert_eq!(images.len(), 3, "no old pod is left: {images:?}");
    assert!(
        images.iter().all(|i| **i == image.to_string()),
        "{images:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_history_shows_shipflows_change_cause() {
    let sim = sim(1).await;
    let k = Kubectl::new(&sim);
    let ws = workspace();
    let deployer = deployer(&sim);
    for sha in ["aa", "bb"] {
        deployer
            .deploy(app(&ws), &pinned(sha), &meta(sha), &Context::new())
            .await
            .expect("rolls");
    }
    let out = k.ok(&["rollout", "history", "deployment/api"]).await;
    assert_eq!(
        history_rows(&out),
        [
            (1, format!("seeded with {V1}")),
            (2, "shipflow: api at aa".to_owned()),
            (3, "shipflow: api at bb".to_owned()),
        ],
        "{out}"
    );
    let revision = k
        .ok(&["rollout", "history", "deployment/api", "--revision=2"])
        .await;
    assert!(revision.contains(&pinned("aa").to_string()), "{revision}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubectl_undo_is_seen_by_shipflow() {
    let sim = sim(2).await;
    let k = Kubectl::new(&sim);
    let ws = workspace();
    let deployer = deployer(&sim);
    for sha in ["aa", "bb"] {
        deployer
            .deploy(app(&ws), &pinned(sha), &meta(sha), &Context::new())
            .await
            .expect("rolls");
    }
    let undo = k
        .ok(&["rollout", "undo", "deployment/api", "--to-revision=2"])
        .await;
    assert!(undo.contains("rolled back"), "{undo}");
    k.ok(&["rollout", "status", "deployment/api", "--timeout=20s"])
        .await;

    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(now.image, pinned("aa").to_string());
    assert_eq!(now.revision, Some(4), "an undo is a new revision");
    assert_eq!(
        now.fingerprint,
        Some(Fingerprint("fp-aa".into())),
        "kubectl restored the annotations"
    );
    let history = deployer
        .history(app(&ws), &Context::new())
        .await
        .expect("history");
    let rows: Vec<(u64, bool)> = history.iter().map(|r| (r.number, r.current)).collect();
    assert_eq!(
        rows,
        [(1, false), (3, false), (4, true)],
        "revision 2 became 4"
    );
    // And shipflow rolls on from there.
    let rollout = deployer
        .deploy(app(&ws), &pinned("cc"), &meta("cc"), &Context::new())
        .await
        .expect("rolls after an undo");
    assert_eq!(rollout.revision, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipflows_rollback_is_seen_by_kubectl() {
    let sim = sim(2).await;
    let k = Kubectl::new(&sim);
    let ws = workspace();
    let deployer = deployer(&sim);
    for sha in ["aa", "bb"] {
        deployer
            .deploy(app(&ws), &pinned(sha), &meta(sha), &Context::new())
            .await
            .expect("rolls");
    }
    deployer
        .rollback(app(&ws), RollbackTarget::Revision(2), &Context::new())
        .await
        .expect("rolls back");

    let status = k
        .ok(&["rollout", "status", "deployment/api", "--watch=false"])
        .await;
    assert_eq!(status.trim(), "deployment \"api\" successfully rolled out");
    let out = k.ok(&["rollout", "history", "deployment/api"]).await;
    assert_eq!(
        history_rows(&out),
        [
            (1, format!("seeded with {V1}")),
            (3, "shipflow: api at bb".to_owned()),
            (4, "shipflow: api at aa".to_owned()),
        ],
        "{out}"
    );
    // As after `kubectl rollout undo`: the Deployment's annotations are the
    // revision's, and kubectl has nothing left to undo to revision 4.
    let dep = k.json(&["get", "deployment", "api"]).await;
    let annotations = &dep["metadata"]["annotations"];
    assert_eq!(annotations["shipflow.dev/git-sha"], "aa");
    assert_eq!(annotations["deployment.kubernetes.io/revision"], "4");
    let again = k
        .ok(&["rollout", "undo", "deployment/api", "--to-revision=4"])
        .await;
    assert!(
        again.contains("skipped rollback (current template already matches revision 4)"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_set_image_and_scale_are_seen_by_shipflow() {
    let sim = sim(1).await;
    let k = Kubectl::new(&sim);
    let ws = workspace();
    let deployer = deployer(&sim);
    let image = pinned("d1").to_string();
    k.ok(&["set", "image", "deployment/api", &format!("api={image}")])
        .await;
    k.ok(&["rollout", "status", "deployment/api", "--timeout=20s"])
        .await;
    let now = deployer
        .current(app(&ws), &Context::new())
        .await
        .expect("current")
        .expect("deployed");
    assert_eq!(now.image, image);
    assert_eq!(now.revision, Some(2));

    let scaled = k.ok(&["scale", "deployment/api", "--replicas=3"]).await;
    assert!(scaled.contains("scaled"), "{scaled}");
    k.ok(&["rollout", "status", "deployment/api", "--timeout=20s"])
        .await;
    // Redeploying the running digest changes nothing; a new one rolls all three.
    let same = deployer
        .deploy(app(&ws), &pinned("d1"), &meta("d1"), &Context::new())
        .await
        .expect("nothing to do");
    assert!(!same.changed);
    deployer
        .deploy(app(&ws), &pinned("d2"), &meta("d2"), &Context::new())
        .await
        .expect("rolls");
    let status = k
        .ok(&["rollout", "status", "deployment/api", "--watch=false"])
        .await;
    assert_eq!(status.trim(), "deployment \"api\" successfully rolled out");
    let dep = k.json(&["get", "deployment", "api"]).await;
    assert_eq!(dep["status"]["availableReplicas"], 3);
}

const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: registry.local/web:v1
          ports: [{name: http, containerPort: 8080}]
          envFrom: [{secretRef: {name: web-secret}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: v1
kind: Secret
metadata:
  name: web-secret
stringData:
  TOKEN: not-a-real-token
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_services_and_secrets_through_kubectl() {
    let sim = SimCluster::start().await.expect("sim starts");
    let k = Kubectl::new(&sim);
    let file = k.path("web.yaml");
    std::fs::write(&file, MANIFEST).expect("manifest");
    let file = file.to_str().expect("utf-8 path");
    let applied = k.ok(&["apply", "--server-side", "-f", file]).await;
    assert!(
        applied.contains("deployment.apps/web serverside-applied"),
        "{applied}"
    );
    k.ok(&["rollout", "status", "deployment/web", "--timeout=20s"])
        .await;

    // The Service's endpoints are the two ready pods, on the named port.
    let slices = k
        .json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ])
        .await;
    let slice = &slices["items"][0];
    assert_eq!(slice["ports"][0]["port"], 8080);
    let ready: Vec<&Value> = slice["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .filter(|e| e["conditions"]["ready"] == true)
        .collect();
    assert_eq!(ready.len(), 2, "{slice}");
    let endpoints = k.json(&["get", "endpoints", "web"]).await;
    assert_eq!(
        endpoints["subsets"][0]["addresses"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let secret = k.json(&["get", "secret", "web-secret"]).await;
    assert_eq!(
        secret["data"]["TOKEN"], "bm90LWEtcmVhbC10b2tlbg==",
        "stringData is stored as data"
    );

    // shipflow rolls the applied Deployment; a second apply of the manifest's image
    // conflicts with shipflow's, as on a real cluster, until forced.
    let ws = shipflow_core::Workspace::from_toml(
        "[workspace]\nregistry = \"registry.local\"\n[apps.web]\ndeploy.kubernetes = {}\n",
        ".",
    )
    .expect("valid workspace");
    let web = ws.app("web").expect("declared");
    let image = format!("registry.local/web@sha256:{}", "0e".repeat(32))
        .parse()
        .expect("pinned");
    deployer(&sim)
        .deploy(web, &image, &DeployMeta::default(), &Context::new())
        .await
        .expect("rolls");
    let conflict = k.run(&["apply", "--server-side", "-f", file]).await;
    assert!(!conflict.ok);
    assert!(
        conflict
            .stderr
            .contains(".spec.template.spec.containers[name=\"web\"].image"),
        "{}",
        conflict.stderr
    );
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", file])
        .await;
    k.ok(&["rollout", "status", "deployment/web", "--timeout=20s"])
        .await;
    assert!(
        sim.schema_violations().is_empty(),
        "{:?}",
        sim.schema_violations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_and_describe_show_what_failed() {
    let sim = sim(1).await;
    let k = Kubectl::new(&sim);
    let ws = workspace();
    let image = pinned("cc");
    sim.set_image(&image.to_string(), Outcome::CrashLoop);
    sim.set_logs(
        &image.to_string(),
        &["starting", "config: DATABASE_URL is not set", "panic: boom"],
    );
    let err = deployer(&sim)
        .restart_budget(1)
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("crash loop");
    let pods = k.json(&["get", "pods", "-l", "app=api"]).await;
    let failing = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["spec"]["containers"][0]["image"] == image.to_string())
        .expect("the new pod");
    let name = failing["metadata"]["name"].as_str().expect("name");
    assert!(err.to_string().contains(name), "{err}");
    let logs = k.ok(&["logs", name, "--previous"]).await;
    assert_eq!(
        logs,
        "starting\nconfig: DATABASE_URL is not set\npanic: boom\n"
    );
    // Between two crashes the container runs again, as on a real kubelet: the
    // table shows the crash loop's state, or the restarts it has counted.
    let table = k.ok(&["get", "pod", name]).await;
    let restarts = table
        .lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(
        table.contains("CrashLoopBackOff") || table.contains("Error") || restarts > 0,
        "{table}"
    );
    let described = k.ok(&["describe", "deployment", "api"]).await;
    assert!(described.contains("ScalingReplicaSet"), "{described}");
    let pod = k.ok(&["describe", "pod", name]).await;
    assert!(
        pod.contains("Back-off restarting failed container"),
        "{pod}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_stays_within_the_schema() {
    let sim = sim(2).await;
    let ws = workspace();
    let deployer = deployer(&sim);
    deployer
        .deploy(app(&ws), &pinned("aa"), &meta("aa"), &Context::new())
        .await
        .expect("rolls");
    deployer
        .rollback(app(&ws), RollbackTarget::Previous, &Context::new())
        .await
        .expect("rolls back");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("app.env"), "MODE=fast\n").expect("env file");
    let config =
        shipflow_k8s::EnvConfigMap::from_env_file("app-config", &dir.path().join("app.env"))
            .expect("env");
    deployer
        .deploy_config_map("default", &config, &Context::new())
        .await
        .expect("config");
    let violations = sim.schema_violations();
    assert!(violations.is_empty(), "{violations:?}");
    // And the server refuses what the schema does not have.
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(sim.client(), "default");
    let typo = json!({"dat": {"A": "1"}});
    let err = api
        .patch(
            "app-config-x",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&typo),
        )
        .await
        .expect_err("no such object");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
    let err = api
        .patch(
            &config.name(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&typo),
        )
        .await
        .expect_err("unknown field");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("unknown field \"dat\"")),
        "{err}"
    );
}

/// The env-file dialect is kubectl's: the same file gives the same data to
/// `kubectl create configmap --from-env-file` and to `EnvConfigMap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_files_read_as_kubectl_reads_them() {
    let sim = sim(1).await;
    let k = Kubectl::new(&sim);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.env");
    std::fs::write(
        &path,
        "\u{feff}# comment\n\n   MODE=fast\r\nQUOTED=\"two words\" \nSINGLE='x=y'\nEMPTY=\n.dotted-key_9=#not a comment\nSHIPFLOW_SURELY_UNSET_VAR\n",
    )
    .expect("env file");
    let path_arg = format!("--from-env-file={}", path.display());
    let json = k
        .ok(&[
            "create",
            "configmap",
            "x",
            &path_arg,
            "--dry-run=client",
            "-o",
            "json",
        ])
        .await;
    let theirs: serde_json::Value = serde_json::from_str(&json).expect("kubectl's JSON");
    let ours =
        shipflow_k8s::EnvConfigMap::from_env_file_with_env("x", &path, |_| None).expect("env file");
    assert_eq!(theirs["data"], json!(ours.data), "{json}");
    assert_eq!(ours.data["QUOTED"], "\"two words\" ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_of_a_pod_that_cannot_pull_says_why() {
    let sim = sim(1).await;
    let k = Kubectl::new(&sim);
    let ws = workspace();
    let image = pinned("e4");
    sim.set_image(&image.to_string(), Outcome::ImagePullFailure);
    let err = deployer(&sim)
        .deploy(app(&ws), &image, &DeployMeta::default(), &Context::new())
        .await
        .expect_err("cannot pull");
    assert!(
        err.to_string().contains("not found"),
        "the kubelet's reason: {err}"
    );
    let pods = k.json(&["get", "pods", "-l", "app=api"]).await;
    let name = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| p["spec"]["containers"][0]["image"] == image.to_string())
        .and_then(|p| p["metadata"]["name"].as_str())
        .expect("the new pod")
        .to_owned();
    let logs = k.run(&["logs", &name]).await;
    assert!(!logs.ok);
    assert!(
        logs.stderr.contains("is waiting to start"),
        "{}",
        logs.stderr
    );
    let table = k.ok(&["get", "pod", &name]).await;
    assert!(
        table.contains("ErrImagePull") || table.contains("ImagePullBackOff"),
        "{table}"
    );
}
