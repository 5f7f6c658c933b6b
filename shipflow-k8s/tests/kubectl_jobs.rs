//! Jobs on the simulated cluster through the real `kubectl`: what `kubectl create
//! job`, `get jobs`, `wait`, `logs job/…`, `describe job` and `delete job` show and
//! do (see tests/common/kubectl.rs for how it runs).

mod common;

use std::time::Duration;

use shipflow_k8s::testing::{Outcome, SimCluster};

use common::kubectl::Kubectl;

/// The cells of the rows of a `kubectl get` table, header first.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The Job `kubectl create job` makes for `image` (running `make image`), written to
/// a file; returns its path. kubectl's typed `create job` sends protobuf, which the
/// simulator does not read, so the Job goes through `kubectl create -f` instead.
async fn made_by_kubectl(k: &Kubectl, name: &str, image: &str) -> String {
    let made = k
        .ok(&[
            "create",
            "job",
            name,
            &format!("--image={image}"),
            "--dry-run=client",
            "-o",
            "yaml",
            "--",
            "make",
            "image",
        ])
        .await;
    let file = k.path(&format!("{name}.yaml"));
    std::fs::write(&file, made).expect("manifest");
    file.to_str().expect("utf-8 path").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_waits_for_logs_and_deletes_a_job() {
    let sim = SimCluster::start().await.expect("sim starts");
    let k = Kubectl::new(&sim);
    let image = "registry.local/builder:v1";
    sim.set_image(image, Outcome::Exits { code: 0, after: 5 });
    sim.set_logs(image, &["step 1/2: compile", "step 2/2: push"]);
    sim.set_termination_message(image, "registry.local/api@sha256:ab");

    let build = made_by_kubectl(&k, "build", image).await;
    let created = k.ok(&["create", "-f", &build]).await;
    assert_eq!(created.trim(), "job.batch/build created");
    // A Job whose container never exits stays Running.
    let serve = made_by_kubectl(&k, "serve", "registry.local/server:v1").await;
    k.ok(&["create", "-f", &serve]).await;
    let running = k.ok(&["get", "job", "serve"]).await;
    let table = rows(&running);
    assert_eq!(
        table[0],
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        "{running}"
    );
    assert_eq!(table[1][..3], ["serve", "Running", "0/1"], "{running}");

    let waited = k
        .ok(&[
            "wait",
            "--for=condition=complete",
            "job/build",
            "--timeout=20s",
        ])
        .await;
    assert_eq!(waited.trim(), "job.batch/build condition met");
    let done = k.ok(&["get", "job", "build", "-o", "wide"]).await;
    let table = rows(&done);
    assert_eq!(
        table[0],
        [
            "NAME",
            "STATUS",
            "COMPLETIONS",
            "DURATION",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{done}"
    );
    assert_eq!(table[1][..3], ["build", "Complete", "1/1"], "{done}");
    assert!(table[1][3].ends_with('s'), "a duration: {done}");
    assert_eq!(table[1][5..7], ["build", image], "{done}");
    assert!(
        table[1][7].starts_with("batch.kubernetes.io/controller-uid="),
        "{done}"
    );

    let logs = k.ok(&["logs", "job/build"]).await;
    assert_eq!(logs, "step 1/2: compile\nstep 2/2: push\n");
    let message = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "job-name=build",
            "-o",
            "jsonpath={.items[0].status.containerStatuses[0].state.terminated.message}",
        ])
        .await;
    assert_eq!(message, "registry.local/api@sha256:ab");

    let described = k.ok(&["describe", "job", "build"]).await;
    for want in [
        "Completions:      1",
        "Pods Statuses:    0 Active (0 Ready) / 1 Succeeded / 0 Failed",
        "SuccessfulCreate",
        "Completed",
        "Job completed",
    ] {
        assert!(described.contains(want), "{want:?} in\n{described}");
    }
    let pods = k.ok(&["get", "pods", "-l", "job-name=build"]).await;
    let table = rows(&pods);
    assert_eq!(table[1][1..3], ["0/1", "Completed"], "{pods}");

    let deleted = k.ok(&["delete", "job", "build"]).await;
    assert_eq!(deleted.trim(), "job.batch \"build\" deleted");
    // kubectl deletes in the background: the pods follow the Job.
    let mut left = String::from("?");
    for _ in 0..100 {
        left = k
            .ok(&["get", "pods", "-l", "job-name=build", "-o", "name"])
            .await;
        if left.trim().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left.trim(), "", "the Job's pods are deleted");
    let violations = sim.schema_violations();
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_shows_a_failed_job_and_why() {
    let sim = SimCluster::start().await.expect("sim starts");
    let k = Kubectl::new(&sim);
    let image = "registry.local/builder:broken";
    sim.set_image(image, Outcome::Exits { code: 2, after: 1 });
    sim.set_logs(image, &["error: no Dockerfile"]);
    let manifest = k.path("job.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: build\nspec:\n  backoffLimit: 0\n  \
             template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: build\n        \
             image: {image}\n        terminationMessagePolicy: FallbackToLogsOnError\n"
        ),
    )
    .expect("manifest");
    let applied = k
        .ok(&[
            "apply",
            "--server-side",
            "-f",
            manifest.to_str().expect("utf-8 path"),
        ])
        .await;
    assert_eq!(applied.trim(), "job.batch/build serverside-applied");
    let waited = k
        .ok(&[
            "wait",
            "--for=condition=failed",
            "job/build",
            "--timeout=20s",
        ])
        .await;
    assert_eq!(waited.trim(), "job.batch/build condition met");
    let table = k.ok(&["get", "jobs"]).await;
    assert_eq!(rows(&table)[1][..3], ["build", "Failed", "0/1"], "{table}");
    // Applying the same manifest again changes nothing, generated fields included.
    let again = k
        .ok(&[
            "apply",
            "--server-side",
            "-f",
            manifest.to_str().expect("utf-8 path"),
        ])
        .await;
    assert_eq!(again.trim(), "job.batch/build serverside-applied");
    let job = k.json(&["get", "job", "build"]).await;
    assert_eq!(job["metadata"]["generation"], 1);
    let described = k.ok(&["describe", "job", "build"]).await;
    for want in [
        "Pods Statuses:    0 Active (0 Ready) / 0 Succeeded / 1 Failed",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    ] {
        assert!(described.contains(want), "{want:?} in\n{described}");
    }
    let pod = k.json(&["get", "pods", "-l", "job-name=build"]).await;
    let terminated = &pod["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 2);
    assert_eq!(terminated["message"], "error: no Dockerfile\n");
    let pods = k.ok(&["get", "pods", "-l", "job-name=build"]).await;
    assert_eq!(rows(&pods)[1][1..3], ["0/1", "Error"], "{pods}");
    // Changing the template of a Job is refused, as by a real API server.
    let refused = k
        .run(&[
            "set",
            "image",
            "job/build",
            "build=registry.local/builder:v2",
        ])
        .await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("field is immutable"),
        "{}",
        refused.stderr
    );
}
