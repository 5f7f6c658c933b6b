//! `batch/v1` Jobs on the simulated cluster, through the real `kube` client: the API
//! server's defaults and checks, the Job controller (completions, back-off limit,
//! deadline, TTL), what the kubelet reports of a container that exits, and deletion
//! with each propagation policy.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{
    DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use shipflow_k8s::testing::{Outcome, SimCluster};

/// How long a Job may take to reach what a test waits for: a few hundred steps.
const PATIENCE: Duration = Duration::from_secs(15);

/// A Job `name` with one container `build` running `image`.
fn job(name: &str, image: &str, restart_policy: &str, spec: Value) -> Job {
    let mut job = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {"spec": {
                "restartPolicy": restart_policy,
                "containers": [{"name": "build", "image": image}],
            }},
        },
    });
    for (k, v) in spec.as_object().into_iter().flatten() {
        job["spec"][k] = v.clone();
    }
    serde_json::from_value(job).expect("a Job")
}

async fn start() -> (SimCluster, Api<Job>, Api<Pod>) {
    let sim = SimCluster::start().await.expect("sim starts");
    let jobs = Api::namespaced(sim.client(), "default");
    let pods = Api::namespaced(sim.client(), "default");
    (sim, jobs, pods)
}

/// Polls the Job `name` until `done` holds for it (or it is gone, for `None`).
async fn until(
    jobs: &Api<Job>,
    name: &str,
    what: &str,
    done: impl Fn(Option<&Job>) -> bool,
) -> Option<Job> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let job = jobs.get_opt(name).await.expect("get job");
        if done(job.as_ref()) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {name} never {what}: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every version of Job `name` a watch (started before it exists) sees, until
/// `done` holds for one: unlike polling, no state is missed.
async fn history(
    jobs: &Api<Job>,
    name: &str,
    create: Job,
    done: impl Fn(&Job) -> bool,
) -> Vec<Job> {
    let mut events = jobs
        .watch(
            &WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(20),
            "0",
        )
        .await
        .expect("watch")
        .boxed();
    jobs.create(&PostParams::default(), &create)
        .await
        .expect("created");
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while let Some(event) = events.try_next().await.expect("watch event") {
            match event {
                WatchEvent::Added(j) | WatchEvent::Modified(j) => {
                    let end = done(&j);
                    seen.push(j);
                    if end {
                        return;
                    }
                }
                WatchEvent::Bookmark(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("the watch ended early: {seen:#?}");
    })
    .await
    .unwrap_or_else(|_| panic!("job {name} never got there"));
    seen
}

fn status_has(job: &Job, f: impl Fn(&k8s_openapi::api::batch::v1::JobStatus) -> bool) -> bool {
    job.status.as_ref().is_some_and(f)
}

/// The types of the Job's conditions that hold, in order.
fn conditions(job: &Job) -> Vec<(String, String)> {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.status == "True")
        .map(|c| (c.type_, c.reason.unwrap_or_default()))
        .collect()
}

fn holds(job: Option<&Job>, ty: &str) -> bool {
    job.is_some_and(|j| conditions(j).iter().any(|(t, _)| t == ty))
}

/// The pods of Job `name`, by the label the API server gave its template.
async fn pods_of(pods: &Api<Pod>, name: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={name}")))
        .await
        .expect("list pods")
        .items
}

/// The reasons of the events about `kind` `name`.
async fn event_reasons(sim: &SimCluster, kind: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(sim.client(), "default");
    events
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some(kind)
                && e.involved_object.name.as_deref() == Some(name)
        })
        .filter_map(|e| e.reason)
        .collect()
}

fn terminated(pod: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .unwrap_or_else(|| panic!("a terminated container: {pod:#?}"))
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn assert_schema(sim: &SimCluster) {
    let violations = sim.schema_violations();
    assert!(violations.is_empty(), "{violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_completes_and_its_pods_termination_message_is_readable() {
    let (sim, jobs, pods) = start().await;
    let image = "registry.local/builder:v1";
    sim.set_image(image, Outcome::Exits { code: 0, after: 3 });
    sim.set_logs(image, &["building", "pushed registry.local/api@sha256:ab"]);
    sim.set_termination_message(image, "registry.local/api@sha256:ab");
    let created = jobs
        .create(
            &PostParams::default(),
            &job("build", image, "Never", json!({})),
        )
        .await
        .expect("created");

    // The API server's defaults and generated selector.
    let uid = created.metadata.uid.clone().expect("uid");
    let spec = created.spec.as_ref().expect("spec");
    assert_eq!(spec.completions, Some(1));
    assert_eq!(spec.parallelism, Some(1));
    assert_eq!(spec.backoff_limit, Some(6));
    assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
    assert_eq!(spec.suspend, Some(false));
    assert_eq!(
        spec.pod_replacement_policy.as_deref(),
        Some("TerminatingOrFailed")
    );
    let selector = spec.selector.as_ref().and_then(|s| s.match_labels.clone());
    assert_eq!(
        selector,
        Some([("batch.kubernetes.io/controller-uid".to_owned(), uid.clone())].into())
    );
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", "build"),
        ("job-name", "build"),
    ] {
        assert_eq!(
            labels.get(key).map(String::as_str),
            Some(value),
            "{labels:?}"
        );
    }
    assert_eq!(
        created.metadata.labels.as_ref(),
        Some(&labels),
        "a Job without labels takes its template's"
    );
    assert_eq!(created.metadata.generation, Some(1));

    let done = tokio::time::timeout(
        PATIENCE,
        kube::runtime::wait::await_condition(
            jobs.clone(),
            "build",
            kube::runtime::wait::conditions::is_job_completed(),
        ),
    )
    .await
    .expect("completes in time")
    .expect("watch")
    .expect("the job");
    let status = done.status.as_ref().expect("status");
    assert_eq!(status.succeeded, Some(1));
    assert_eq!(status.active, None);
    assert_eq!(status.failed, None);
    assert_eq!(status.ready, Some(0));
    assert!(
        status.start_time.is_some() && status.completion_time.is_some(),
        "{status:?}"
    );
    assert_eq!(
        conditions(&done),
        [
            (
                "SuccessCriteriaMet".to_owned(),
                "CompletionsReached".to_owned()
            ),
            ("Complete".to_owned(), "CompletionsReached".to_owned()),
        ]
    );

    let pods_now = pods_of(&pods, "build").await;
    assert_eq!(pods_now.len(), 1);
    let pod = &pods_now[0];
    let name = pod.metadata.name.clone().expect("name");
    assert!(name.starts_with("build-"), "{name}");
    assert_eq!(pod.metadata.generate_name.as_deref(), Some("build-"));
    let owner = &pod.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("Job", uid.as_str(), Some(true))
    );
    assert_eq!(phase(pod), "Succeeded");
    let end = terminated(pod);
    assert_eq!(end.exit_code, 0);
    assert_eq!(end.reason.as_deref(), Some("Completed"));
    assert_eq!(end.message.as_deref(), Some("registry.local/api@sha256:ab"));
    let logs = pods.logs(&name, &LogParams::default()).await.expect("logs");
    assert_eq!(logs, "building\npushed registry.local/api@sha256:ab\n");

    let reasons = event_reasons(&sim, "Job", "build").await;
    assert_eq!(reasons, ["SuccessfulCreate", "Completed"]);
    assert_schema(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_pods_are_replaced_until_the_backoff_limit() {
    let (sim, jobs, pods) = start().await;
    let image = "registry.local/builder:broken";
    sim.set_image(image, Outcome::Exits { code: 1, after: 1 });
    sim.set_logs(image, &["building", "error: no Dockerfile"]);
    let mut spec = job("build", image, "Never", json!({"backoffLimit": 1}));
    spec.spec
        .as_mut()
        .expect("spec")
        .template
        .spec
        .as_mut()
        .expect("pod spec")
        .containers[0]
        .termination_message_policy = Some("FallbackToLogsOnError".into());
    let seen = history(&jobs, "build", spec, |j| holds(Some(j), "Failed")).await;
    // The failed pod is not replaced at once: the controller backs off (10 steps).
    assert!(
        seen.iter()
            .any(|j| status_has(j, |s| s.failed == Some(1) && s.active.is_none())),
        "{seen:#?}"
    );
    let failed = seen.last().expect("the failed job").clone();
    assert_eq!(
        conditions(&failed),
        [
            (
                "FailureTarget".to_owned(),
                "BackoffLimitExceeded".to_owned()
            ),
            ("Failed".to_owned(), "BackoffLimitExceeded".to_owned()),
        ]
    );
    let status = failed.status.as_ref().expect("status");
    assert_eq!(
        status.failed,
        Some(2),
        "the first failure and its replacement's"
    );
    assert_eq!(status.succeeded, None);
    assert_eq!(status.completion_time, None, "only a complete Job has one");
    let all = pods_of(&pods, "build").await;
    assert_eq!(all.len(), 2, "failed pods stay");
    for pod in &all {
        assert_eq!(phase(pod), "Failed");
        let end = terminated(pod);
        assert_eq!((end.exit_code, end.reason.as_deref()), (1, Some("Error")));
        assert_eq!(
            end.message.as_deref(),
            Some("building\nerror: no Dockerfile\n"),
            "no message: the log's tail"
        );
        let restarts = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c[0].restart_count);
        assert_eq!(restarts, Some(0), "Never restarts a container");
    }
    let reasons = event_reasons(&sim, "Job", "build").await;
    assert_eq!(
        reasons,
        [
            "SuccessfulCreate",
            "SuccessfulCreate",
            "BackoffLimitExceeded"
        ]
    );
    assert_schema(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_the_container_in_its_pod_until_the_backoff_limit() {
    let (sim, jobs, pods) = start().await;
    let image = "registry.local/builder:flaky";
    sim.set_image(image, Outcome::Exits { code: 3, after: 1 });
    jobs.create(
        &PostParams::default(),
        &job("build", image, "OnFailure", json!({"backoffLimit": 1})),
    )
    .await
    .expect("created");
    let failed = until(&jobs, "build", "failed", |j| holds(j, "Failed"))
        .await
        .expect("job");
    assert_eq!(
        conditions(&failed)[1],
        ("Failed".to_owned(), "BackoffLimitExceeded".to_owned())
    );
    // One pod, restarted in place, then deleted by the controller and counted failed.
    assert_eq!(
        event_reasons(&sim, "Job", "build").await,
        [
            "SuccessfulCreate",
            "SuccessfulDelete",
            "BackoffLimitExceeded"
        ]
    );
    assert_eq!(failed.status.as_ref().and_then(|s| s.failed), Some(1));
    let gone = async {
        while !pods_of(&pods, "build").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone)
        .await
        .expect("the pod is deleted");
    assert_schema(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_deadline_ends_a_job_and_its_pods() {
    let (sim, jobs, pods) = start().await;
    // An image that is never scripted runs for ever.
    let slow = job(
        "slow",
        "registry.local/slow:v1",
        "Never",
        json!({"activeDeadlineSeconds": 5}),
    );
    let seen = history(&jobs, "slow", slow, |j| holds(Some(j), "Failed")).await;
    assert!(
        seen.iter()
            .any(|j| status_has(j, |s| s.active == Some(1) && s.ready == Some(1))),
        "it ran: {seen:#?}"
    );
    // Failing, not failed, while its pod terminates.
    assert!(
        seen.iter().any(|j| holds(Some(j), "FailureTarget")
            && !holds(Some(j), "Failed")
            && status_has(j, |s| s.terminating == Some(1))),
        "{seen:#?}"
    );
    let failed = seen.last().expect("the failed job").clone();
    assert_eq!(
        conditions(&failed),
        [
            ("FailureTarget".to_owned(), "DeadlineExceeded".to_owned()),
            ("Failed".to_owned(), "DeadlineExceeded".to_owned()),
        ]
    );
    let status = failed.status.as_ref().expect("status");
    assert_eq!(
        (status.active, status.failed, status.terminating),
        (None, Some(1), Some(0))
    );
    assert!(
        pods_of(&pods, "slow").await.is_empty(),
        "the active pod is deleted"
    );
    let reasons = event_reasons(&sim, "Job", "slow").await;
    assert_eq!(
        reasons,
        ["SuccessfulCreate", "SuccessfulDelete", "DeadlineExceeded"]
    );
    assert_schema(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_is_deleted_with_its_pods_after_its_ttl() {
    let (sim, jobs, pods) = start().await;
    let image = "registry.local/builder:v1";
    sim.set_image(image, Outcome::Exits { code: 0, after: 1 });
    jobs.create(
        &PostParams::default(),
        &job(
            "build",
            image,
            "Never",
            json!({"ttlSecondsAfterFinished": 30}),
        ),
    )
    .await
    .expect("created");
    let done = until(&jobs, "build", "completed", |j| holds(j, "Complete")).await;
    assert!(done.is_some());
    assert_eq!(pods_of(&pods, "build").await.len(), 1, "kept until the TTL");
    until(&jobs, "build", "deleted", |j| j.is_none()).await;
    let gone = async {
        while !pods_of(&pods, "build").await.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone)
        .await
        .expect("its pod is deleted");
}

/// Creates Job `name` on a container that runs for ever, and waits for its pod.
async fn running(jobs: &Api<Job>, pods: &Api<Pod>, name: &str) -> Pod {
    jobs.create(
        &PostParams::default(),
        &job(name, "registry.local/server:v1", "Never", json!({})),
    )
    .await
    .expect("created");
    until(jobs, name, "ran", |j| {
        j.and_then(|j| j.status.as_ref())
            .is_some_and(|s| s.active == Some(1))
    })
    .await;
    let mut all = pods_of(pods, name).await;
    assert_eq!(all.len(), 1);
    all.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_job_deletes_or_keeps_its_pods_as_the_propagation_policy_says() {
    let (_sim, jobs, pods) = start().await;
    let background = running(&jobs, &pods, "background").await;
    let foreground = running(&jobs, &pods, "foreground").await;
    let orphan = running(&jobs, &pods, "orphan").await;
    let unsaid = running(&jobs, &pods, "unsaid").await;

    jobs.delete("background", &DeleteParams::background())
        .await
        .expect("deleted");
    assert!(
        jobs.get_opt("background").await.expect("get").is_none(),
        "gone at once"
    );

    // Foreground: the Job stays, being deleted, until its pod is gone.
    let waiting = jobs
        .delete("foreground", &DeleteParams::foreground())
        .await
        .expect("deleted");
    let waiting = waiting.left().expect("the Job, still there");
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        waiting.metadata.finalizers,
        Some(vec!["foregroundDeletion".to_owned()])
    );
    until(&jobs, "foreground", "deleted", |j| j.is_none()).await;
    assert!(
        pods.get_opt(foreground.metadata.name.as_deref().expect("name"))
            .await
            .expect("get")
            .is_none()
    );

    jobs.delete("orphan", &DeleteParams::orphan())
        .await
        .expect("deleted");
    // batch/v1 keeps the pods when no policy is given.
    jobs.delete("unsaid", &DeleteParams::default())
        .await
        .expect("deleted");

    let gone = async {
        while pods
            .get_opt(background.metadata.name.as_deref().expect("name"))
            .await
            .expect("get")
            .is_some()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone)
        .await
        .expect("the background Job's pod is deleted");
    // Give the garbage collector time to act on the orphans too: it must not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for kept in [&orphan, &unsaid] {
        let pod = pods
            .get(kept.metadata.name.as_deref().expect("name"))
            .await
            .expect("kept");
        assert_eq!(pod.metadata.owner_references, None, "no owner any more");
        assert!(pod.metadata.deletion_timestamp.is_none());
        assert_eq!(phase(&pod), "Running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_what_it_refuses_for_jobs() {
    let (sim, jobs, _pods) = start().await;
    let refused = jobs
        .create(
            &PostParams::default(),
            &job("always", "registry.local/x:v1", "Always", json!({})),
        )
        .await
        .expect_err("Always is not a Job's restart policy");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 422
            && s.message.contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\"")),
        "{refused}"
    );
    let mut unset = job("unset", "registry.local/x:v1", "Never", json!({}));
    unset
        .spec
        .as_mut()
        .expect("spec")
        .template
        .spec
        .as_mut()
        .expect("pod spec")
        .restart_policy = None;
    let refused = jobs
        .create(&PostParams::default(), &unset)
        .await
        .expect_err("defaults to Always");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 422),
        "{refused}"
    );

    jobs.create(
        &PostParams::default(),
        &job("build", "registry.local/x:v1", "Never", json!({})),
    )
    .await
    .expect("created");
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "build", "image": "registry.local/x:v2"}]}}}});
    let refused = jobs
        .patch("build", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect_err("the template is immutable");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 422 && s.reason == "Invalid"
            && s.message.contains("spec.template") && s.message.contains("field is immutable")),
        "{refused}"
    );
    // What may change does.
    let labelled = jobs
        .patch(
            "build",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"team": "ci"}}})),
        )
        .await
        .expect("labels change");
    assert_eq!(
        labelled
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("team"))
            .map(String::as_str),
        Some("ci")
    );
    // A typo is refused as unknown.
    let refused = jobs
        .patch(
            "build",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"backofLimit": 2}})),
        )
        .await
        .expect_err("unknown field");
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 400 && s.message.contains("backofLimit")),
        "{refused}"
    );
    assert_schema(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_job_sees_it_complete() {
    let (sim, jobs, _pods) = start().await;
    let image = "registry.local/builder:v1";
    sim.set_image(image, Outcome::Exits { code: 0, after: 2 });
    let build = job("build", image, "Never", json!({}));
    let seen = history(&jobs, "build", build, |j| holds(Some(j), "Complete")).await;
    assert!(conditions(&seen[0]).is_empty(), "added without conditions");
    assert!(
        seen.iter().any(|j| status_has(j, |s| s.active == Some(1))),
        "{seen:#?}"
    );
    let complete = seen.last().expect("the complete job");
    assert_eq!(complete.status.as_ref().and_then(|s| s.succeeded), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_job_runs_nothing_until_resumed() {
    let (sim, jobs, pods) = start().await;
    let image = "registry.local/builder:v1";
    sim.set_image(image, Outcome::Exits { code: 0, after: 1 });
    jobs.create(
        &PostParams::default(),
        &job("later", image, "Never", json!({"suspend": true})),
    )
    .await
    .expect("created");
    let suspended = until(&jobs, "later", "suspended", |j| holds(j, "Suspended"))
        .await
        .expect("job");
    assert_eq!(
        conditions(&suspended),
        [("Suspended".to_owned(), "JobSuspended".to_owned())]
    );
    assert_eq!(
        suspended.status.as_ref().and_then(|s| s.start_time.clone()),
        None
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pods_of(&pods, "later").await.is_empty());

    jobs.patch(
        "later",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"suspend": false}})),
    )
    .await
    .expect("resumed");
    let done = until(&jobs, "later", "completed", |j| holds(j, "Complete"))
        .await
        .expect("job");
    assert_eq!(done.metadata.generation, Some(2), "a spec change");
    assert_eq!(
        event_reasons(&sim, "Job", "later").await,
        ["Suspended", "Resumed", "SuccessfulCreate", "Completed"]
    );
    assert_schema(&sim);
}

/// Under `restartPolicy: Always` (a Deployment's pods) a container that exits is
/// restarted whatever its code, after a back-off, and its pod never finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_always_an_exit_with_0_is_restarted_too() {
    let sim = SimCluster::start().await.expect("sim starts");
    let image = "registry.local/oneshot:v1";
    sim.set_image(image, Outcome::Exits { code: 0, after: 1 });
    sim.seed_deployment("default", "oneshot", "oneshot", image, 1);
    let pods: Api<Pod> = Api::namespaced(sim.client(), "default");
    let restarted = async {
        loop {
            let list = pods
                .list(&ListParams::default().labels("app=oneshot"))
                .await
                .expect("list pods");
            if let Some(status) = list.items.first().and_then(|p| p.status.clone())
                && let Some(c) = status.container_statuses.as_ref().and_then(|c| c.first())
                && c.restart_count > 0
            {
                return (status.phase, c.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (phase, container) = tokio::time::timeout(PATIENCE, restarted)
        .await
        .expect("restarted");
    assert_eq!(phase.as_deref(), Some("Running"));
    let last = container
        .last_state
        .and_then(|s| s.terminated)
        .expect("the last run terminated");
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (0, Some("Completed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_from_under_a_job_counts_as_failed_and_is_replaced() {
    let (sim, jobs, pods) = start().await;
    let first = running(&jobs, &pods, "serve").await;
    let first = first.metadata.name.expect("name");
    pods.delete(&first, &DeleteParams::default())
        .await
        .expect("deleted");
    let replaced = until(&jobs, "serve", "replaced its pod", |j| {
        j.and_then(|j| j.status.as_ref())
            .is_some_and(|s| s.failed == Some(1) && s.active == Some(1))
    })
    .await
    .expect("job");
    assert!(
        conditions(&replaced).is_empty(),
        "one failure is within the limit"
    );
    let now: Vec<String> = pods_of(&pods, "serve")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], first);
    assert_schema(&sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_named_by_the_server_labels_its_pods_with_that_name() {
    let (sim, jobs, pods) = start().await;
    let image = "registry.local/builder:v1";
    sim.set_image(image, Outcome::Exits { code: 0, after: 1 });
    let mut build = job("unused", image, "Never", json!({}));
    build.metadata.name = None;
    build.metadata.generate_name = Some("build-".into());
    let created = jobs
        .create(&PostParams::default(), &build)
        .await
        .expect("created");
    let name = created.metadata.name.expect("a generated name");
    assert!(
        name.starts_with("build-") && name.len() == "build-".len() + 5,
        "{name}"
    );
    until(&jobs, &name, "completed", |j| holds(j, "Complete")).await;
    let all = pods_of(&pods, &name).await;
    assert_eq!(all.len(), 1);
    assert!(
        all[0]
            .metadata
            .name
            .as_deref()
            .is_some_and(|p| p.starts_with(&format!("{name}-"))),
        "{:?}",
        all[0].metadata.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_init_container_fails_a_pod_that_never_restarts() {
    let (sim, jobs, pods) = start().await;
    let init = "registry.local/fetch:v1";
    sim.set_image(init, Outcome::Exits { code: 7, after: 1 });
    let mut build = job(
        "build",
        "registry.local/builder:v1",
        "Never",
        json!({"backoffLimit": 0}),
    );
    build
        .spec
        .as_mut()
        .expect("spec")
        .template
        .spec
        .as_mut()
        .expect("pod spec")
        .init_containers = Some(vec![
        serde_json::from_value(json!({"name": "fetch", "image": init})).expect("container"),
    ]);
    jobs.create(&PostParams::default(), &build)
        .await
        .expect("created");
    let failed = until(&jobs, "build", "failed", |j| holds(j, "Failed"))
        .await
        .expect("job");
    assert_eq!(
        conditions(&failed)[1],
        ("Failed".to_owned(), "BackoffLimitExceeded".to_owned())
    );
    let all = pods_of(&pods, "build").await;
    assert_eq!(all.len(), 1);
    assert_eq!(phase(&all[0]), "Failed");
    let status = all[0].status.as_ref().expect("status");
    let fetch = &status.init_container_statuses.as_ref().expect("init")[0];
    let end = fetch
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("terminated");
    assert_eq!((end.exit_code, end.reason.as_deref()), (7, Some("Error")));
    let build = &status.container_statuses.as_ref().expect("containers")[0];
    assert!(
        build
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .is_some(),
        "the app container never started: {build:?}"
    );
    assert_schema(&sim);
}
