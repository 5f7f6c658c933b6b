//! ConfigMaps from env files through the real `kube::Client` against the simulated API
//! server: a change rolls exactly the Deployments that use the ConfigMap.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use shipflow_core::{Context, EventKind, EventSink};
use shipflow_k8s::testing::SimCluster;
use shipflow_k8s::{EnvConfigMap, KubeDeployer, KubeError};

const NS: &str = "prod";

fn deployment(name: &str, spec: Value) -> Value {
    let mut container = json!({"name": name, "image": format!("r.local/{name}:v1")});
    if let Some(extra) = spec.get("container").and_then(Value::as_object) {
        for (k, v) in extra {
            container[k] = v.clone();
        }
    }
    json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [container], "volumes": spec.get("volumes").cloned().unwrap_or(json!([]))},
            },
        },
    })
}

async fn sim() -> SimCluster {
    let sim = SimCluster::start().await.expect("sim starts");
    // web reads it as environment, worker mounts it and reads one key; cron does not use it.
    sim.seed_deployment_json(
        NS,
        deployment(
            "web",
            json!({"container": {"envFrom": [{"configMapRef": {"name": "app-config"}}]}}),
        ),
    );
    sim.seed_deployment_json(
        NS,
        deployment(
            "worker",
            json!({
                "container": {"env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": "MODE"}}}]},
                "volumes": [{"name": "conf", "configMap": {"name": "app-config"}}],
            }),
        ),
    );
    sim.seed_deployment_json(
        NS,
        deployment(
            "cron",
            json!({"container": {"envFrom": [{"configMapRef": {"name": "cron-config"}}]}}),
        ),
    );
    sim
}

fn write(dir: &Path, text: &str) -> EnvConfigMap {
    let path = dir.join("app.env");
    std::fs::write(&path, text).expect("write env file");
    EnvConfigMap::from_env_file("app-config", &path).expect("valid env file")
}

fn generation(sim: &SimCluster, name: &str) -> u64 {
    sim.deployment(NS, name).expect("exists")["metadata"]["generation"]
        .as_u64()
        .expect("generation")
}

fn template_refs(sim: &SimCluster, name: &str) -> String {
    sim.deployment(NS, name).expect("exists")["spec"]["template"].to_string()
}

#[tokio::test]
async fn a_config_change_rolls_exactly_the_deployments_that_use_it() {
    let sim = sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let deployer = KubeDeployer::new(sim.client());

    // First deploy: the generated name replaces the base name in web and worker.
    let first = write(dir.path(), "# app settings\nMODE=fast\nDB_HOST=db.prod\n");
    let out = deployer
        .deploy_config_map(NS, &first, &Context::new())
        .await
        .expect("deploys");
    assert!(out.created);
    assert_eq!(out.name, first.name());
    assert_eq!(out.rolled, ["web", "worker"]);
    let stored = sim.config_map(NS, &first.name()).expect("created");
    assert_eq!(
        stored["data"],
        json!({"MODE": "fast", "DB_HOST": "db.prod"})
    );
    assert_eq!(stored["immutable"], true);
    for name in ["web", "worker"] {
        assert_eq!(generation(&sim, name), 2, "{name} rolled");
        let dep = sim.deployment(NS, name).expect("exists");
        assert_eq!(dep["status"]["updatedReplicas"], 2, "{name} rolled out");
        assert_eq!(
            dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "2"
        );
        assert!(template_refs(&sim, name).contains(&first.name()));
        assert!(!template_refs(&sim, name).contains("\"app-config\""));
    }
    assert_eq!(generation(&sim, "cron"), 1, "cron does not use it");

    // The same file again: nothing is written.
    let writes = |sim: &SimCluster| {
        sim.request_count("PUT") + sim.request_count("PATCH") + sim.request_count("DELETE")
    };
    let before = writes(&sim);
    let same = write(dir.path(), "MODE=fast\n\nDB_HOST=db.prod\n");
    let out = deployer
        .deploy_config_map(NS, &same, &Context::new())
        .await
        .expect("no-op");
    assert!(!out.created);
    assert!(out.rolled.is_empty());
    assert_eq!(writes(&sim), before);
    assert_eq!(
        (generation(&sim, "web"), generation(&sim, "worker")),
        (2, 2)
    );

    // A change: a new ConfigMap, and both users roll again from the old hashed name.
    let second = write(dir.path(), "MODE=slow\nDB_HOST=db.prod\n");
    assert_ne!(second.name(), first.name());
    let out = deployer
        .deploy_config_map(NS, &second, &Context::new())
        .await
        .expect("deploys");
    assert!(out.created);
    assert_eq!(out.rolled, ["web", "worker"]);
    for name in ["web", "worker"] {
        assert_eq!(generation(&sim, name), 3, "{name} rolled again");
        assert!(template_refs(&sim, name).contains(&second.name()));
    }
    assert_eq!(generation(&sim, "cron"), 1);
    assert!(
        sim.config_map(NS, &first.name()).is_some(),
        "kept for rollbacks"
    );
}

#[tokio::test]
async fn versions_go_once_no_replica_set_can_roll_back_to_them() {
    let sim = SimCluster::start().await.expect("sim starts");
    // web keeps one old ReplicaSet, so one earlier config version stays in use.
    let mut web = deployment(
        "web",
        json!({"container": {"envFrom": [{"configMapRef": {"name": "app-config"}}]}}),
    );
    web["spec"]["revisionHistoryLimit"] = 1.into();
    sim.seed_deployment_json(NS, web);
    // Another config's version, and a ConfigMap the user made: never shipflow's to delete.
    let other = EnvConfigMap::parse("cron-config", Path::new("cron.env"), "A=1\n").expect("valid");
    for (name, labels) in [
        (
            other.name(),
            json!({shipflow_k8s::CONFIG_MAP_LABEL: "cron-config"}),
        ),
        ("app-config".to_owned(), json!({})),
    ] {
        sim.seed_object(
            "ConfigMap",
            NS,
            json!({"metadata": {"name": name, "labels": labels}, "data": {}}),
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // Keep no spare version: ties in creation times (whole seconds) would make which
    // is "newest" a matter of names.
    let deployer = KubeDeployer::new(sim.client()).keep_config_maps(0);
    let replica_sets = || {
        sim.replica_set_names(NS)
            .into_iter()
            .filter(|n| n.starts_with("web-"))
            .count()
    };

    let said = Arc::new(Mutex::new(Vec::new()));
    let messages = said.clone();
    let ctx = Context::new().with_events(EventSink::new(move |e| {
        if let EventKind::Message { text } = &e.kind {
            messages.lock().expect("not poisoned").push(text.clone());
        }
    }));

    // The config versions any Deployment or ReplicaSet refers to now.
    let in_use = || -> Vec<String> {
        let mut names: Vec<String> = ["Deployment", "ReplicaSet"]
            .iter()
            .flat_map(|k| sim.list(k, NS))
            .filter_map(|o| {
                let template = o["spec"]["template"].clone();
                let refs =
                    template["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"].clone();
                refs.as_str().map(str::to_owned)
            })
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let exists = |name: &str| sim.config_map(NS, name).is_some();
    // The controller deletes what revisionHistoryLimit does not keep once a rollout
    // completed: between two CI runs, it has.
    let settle = || async {
        let settled = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while replica_sets() != 2 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        settled.await.expect("the new ReplicaSet and 1 old one");
    };

    let mut versions: Vec<String> = Vec::new();
    for mode in ["a", "b", "c", "d", "e"] {
        let config = write(dir.path(), &format!("MODE={mode}\n"));
        // d finds a version another pipeline left (nothing uses it) and may not
        // delete it.
        let refused = "app-config-00000000d0";
        if mode == "d" {
            sim.seed_object(
                "ConfigMap",
                NS,
                json!({"metadata": {"name": refused,
                    "labels": {shipflow_k8s::CONFIG_MAP_LABEL: "app-config"}}, "data": {}}),
            );
            versions.push(refused.to_owned());
            let path = format!("/api/v1/namespaces/{NS}/configmaps/{refused}");
            sim.fail_next("DELETE", &path, 403);
        }
        // What nothing refers to any more before this deploy.
        let unused: Vec<String> = versions
            .iter()
            .filter(|v| exists(v) && !in_use().contains(v))
            .cloned()
            .collect();
        let out = deployer
            .deploy_config_map(NS, &config, &ctx)
            .await
            .expect("a failed clean-up does not fail the rollout");
        assert_eq!(out.rolled, ["web"]);
        // Never a version something may roll back to.
        for name in in_use() {
            assert!(
                name == "app-config" || exists(&name),
                "deploy {mode}: {name} is in use"
            );
        }
        for name in &out.pruned {
            assert!(
                !exists(name) && !in_use().contains(name),
                "deploy {mode}: {name}"
            );
        }
        // Every version unused before the deploy went, but the refused one.
        for name in &unused {
            assert_eq!(
                exists(name),
                mode == "d" && name == refused,
                "deploy {mode}: {name}"
            );
        }
        settle().await;
        versions.push(config.name());
    }
    let said = said.lock().expect("not poisoned").join("\n");
    assert!(
        said.contains("left unused versions of app-config in place: "),
        "{said}"
    );
    assert!(said.contains("deleted unused configmap"), "{said}");
    for name in &versions[..2] {
        assert!(
            !exists(name),
            "{name}: long unused, deleted by the last deploy at the latest"
        );
    }
    assert!(exists(&versions[4]), "the current version");
    assert!(sim.config_map(NS, &other.name()).is_some());
    assert!(sim.config_map(NS, "app-config").is_some());
}

#[tokio::test]
async fn a_bad_env_file_names_the_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.env");
    // kubectl's dialect: no `export`, and a bare key needs an environment.
    std::fs::write(&path, "A=1\n# ok\nB=2\nthis is wrong\n").expect("write");
    let err = EnvConfigMap::from_env_file("app-config", &path).expect_err("bad line 4");
    assert!(
        matches!(err, KubeError::EnvFile { line: Some(4), .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("{} line 4", path.display())),
        "{text}"
    );
    assert!(text.contains("expected KEY=VALUE"), "{text}");

    let missing = EnvConfigMap::from_env_file("app-config", &dir.path().join("nope.env"))
        .expect_err("missing file");
    assert!(missing.to_string().contains("nope.env"), "{missing}");
}
