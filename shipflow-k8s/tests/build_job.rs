//! `KubeJobBuilder` on the simulated cluster, with a real `docker-registry`: the
//! builder pod is scripted here (what it prints, how it exits, the digest it
//! leaves); the end-to-end test at the repository root runs the real builder in
//! real containers.

use std::sync::Arc;
use std::time::Duration;

use shipflow_core::{
    BuildRequest, CancellationToken, Context, Digest, ImageBuilder, ImageLocation, Registry,
    Workspace,
};
use shipflow_k8s::testing::{Outcome, SimCluster};
use shipflow_k8s::{BUILD_DIGEST_ANNOTATION, BuildJobError, BuildJobs, KubeJobBuilder};
use shipflow_oci::testing::TestRegistry;
use shipflow_oci::{NativeBuilder, RegistryClient};

const BUILDER: &str = "registry.local/tools/shipflow:test";
const NS: &str = "builds";

/// A repository with native apps whose pages say `version`, built for real once
/// so the scripted builder can name a digest that is in the registry.
struct Setup {
    repo: tempfile::TempDir,
    _registry: TestRegistry,
    sim: SimCluster,
    contexts: tempfile::TempDir,
    images: tempfile::TempDir,
    workspace: Workspace,
}

impl Setup {
    async fn new(apps: &[&str]) -> Self {
        let registry = TestRegistry::start().expect("docker-registry starts");
        let repo = tempfile::tempdir().expect("repo");
        let mut toml = format!("[workspace]\nregistry = \"{}/acme\"\n", registry.host());
        for app in apps {
            let dir = repo.path().join(format!("apps/{app}"));
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("index.html"), format!("{app} v1\n")).expect("page");
            toml.push_str(&format!(
                "\n[apps.{app}]\npath = \"apps/{app}\"\nbuild = {{ type = \"native\", \
                 layers = [{{ from = \"apps/{app}\", to = \"/www\" }}], sbom = false, provenance = false }}\n"
            ));
        }
        std::fs::write(repo.path().join("shipflow.toml"), toml).expect("config");
        let workspace = Workspace::loader()
            .schema(shipflow_k8s::schema().merge(shipflow_oci::schema()))
            .load(repo.path().join("shipflow.toml"))
            .expect("workspace");
        let sim = SimCluster::start().await.expect("simulated API server");
        Self {
            repo,
            _registry: registry,
            sim,
            contexts: tempfile::tempdir().expect("contexts"),
            images: tempfile::tempdir().expect("images"),
            workspace,
        }
    }

    fn request(&self) -> BuildRequest {
        BuildRequest {
            root: self.repo.path().to_owned(),
            tag: "v1".into(),
            ..Default::default()
        }
    }

    /// Builds `app` locally and pushes it by digest, as the real builder would.
    async fn built(&self, app: &str) -> Digest {
        self.built_image(app).await.digest
    }

    async fn built_image(&self, app: &str) -> shipflow_core::LocalImage {
        let app = self.workspace.app(app).expect("app");
        let image = NativeBuilder::new(self.images.path())
            .build(app, &self.request(), &Context::new())
            .await
            .expect("local build");
        client()
            .push(
                &image,
                &app.image.pinned(image.digest.clone()),
                &Context::new(),
            )
            .await
            .expect("push");
        image
    }

    fn builder(&self, settings: BuildJobs) -> KubeJobBuilder {
        KubeJobBuilder::new(self.sim.client(), client(), self.contexts.path(), settings)
            .expect("builder")
            .poll_interval(Duration::from_millis(20))
    }

    fn jobs(&self) -> Vec<serde_json::Value> {
        self.sim.list("Job", NS)
    }

    /// The uid of the one build Job.
    fn job_uid(&self) -> String {
        let jobs = self.jobs();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        jobs[0]["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

fn client() -> RegistryClient {
    RegistryClient::builder()
        .without_docker_config()
        .build()
        .expect("client")
}

fn settings() -> BuildJobs {
    BuildJobs::new(BUILDER).namespace(NS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_runs_as_a_restricted_job_and_a_rerun_reuses_its_result() {
    let setup = Setup::new(&["web"]).await;
    let local = setup.built_image("web").await;
    let digest = local.digest.clone();
    setup
        .sim
        .set_image(BUILDER, Outcome::Exits { code: 0, after: 3 });
    setup
        .sim
        .set_termination_message(BUILDER, &digest.to_string());
    let app = setup.workspace.app("web").expect("app");
    let builder = setup.builder(settings());

    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let ctx = Context::new().with_events(shipflow_core::EventSink::new(move |e| {
        sink.lock().expect("events").push(format!("{e:?}"));
    }));
    let image = builder
        .build(app, &setup.request(), &ctx)
        .await
        .expect("build in the cluster");
    assert_eq!(image.digest, digest);
    assert!(
        matches!(&image.location, ImageLocation::Registry { reference } if reference.ends_with(&digest.to_string())),
        "{:?}",
        image.location
    );
    assert_eq!(
        (&image.config, &image.layers),
        (&local.config, &local.layers)
    );

    let jobs = setup.jobs();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    let name = job["metadata"]["name"].as_str().expect("name");
    assert!(name.starts_with("shipflow-build-web-"), "{name}");
    assert_eq!(
        job["metadata"]["annotations"][BUILD_DIGEST_ANNOTATION],
        digest.to_string()
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args[0], "build-context");
    let context = args[2];
    assert!(context.contains("/acme/web-context@sha256:"), "{context}");
    // The context is in the registry, readable by its digest.
    let context_ref = context.parse().expect("context reference");
    assert!(
        client()
            .resolve(&context_ref, &Context::new())
            .await
            .expect("resolve")
            .is_some()
    );
    assert!(
        setup.sim.schema_violations().is_empty(),
        "{:?}",
        setup.sim.schema_violations()
    );

    // The same inputs again: the finished Job's result, no new Job, no new pod,
    // and the context is not pushed again.
    let pods = setup.sim.list("Pod", NS).len();
    let uid = setup.job_uid();
    let said = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = said.clone();
    let quiet = Context::new().with_events(shipflow_core::EventSink::new(move |e| {
        sink.lock().expect("events").push(format!("{e:?}"));
    }));
    let again = builder
        .build(app, &setup.request(), &quiet)
        .await
        .expect("rerun");
    let said = said.lock().expect("events").join("\n");
    assert!(!said.contains("build context"), "{said}");
    assert!(
        seen.lock()
            .expect("events")
            .join("\n")
            .contains("build context")
    );
    assert_eq!(again.digest, digest);
    assert_eq!(setup.job_uid(), uid);
    assert_eq!(setup.sim.list("Pod", NS).len(), pods);

    // The pipeline's push of a remotely built image only tags it.
    let tagged = app.image.with_tag("v1").expect("tag");
    let report = client()
        .push(&image, &tagged, &Context::new())
        .await
        .expect("push tags");
    assert_eq!(report.blobs_uploaded, 0, "{report:?}");
    assert_eq!(
        client()
            .resolve(&tagged, &Context::new())
            .await
            .expect("resolve"),
        Some(digest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pipelines_building_the_same_inputs_share_one_job() {
    let setup = Setup::new(&["web"]).await;
    let digest = setup.built("web").await;
    setup
        .sim
        .set_image(BUILDER, Outcome::Exits { code: 0, after: 10 });
    setup
        .sim
        .set_termination_message(BUILDER, &digest.to_string());
    let setup = Arc::new(setup);
    let mut runs = Vec::new();
    for _ in 0..20 {
        let setup = setup.clone();
        runs.push(tokio::spawn(async move {
            let app = setup.workspace.app("web").expect("app");
            setup
                .builder(settings())
                .build(app, &setup.request(), &Context::new())
                .await
                .map(|image| image.digest)
                .map_err(|e| e.to_string())
        }));
    }
    for run in runs {
        assert_eq!(run.await.expect("task"), Ok(digest.clone()));
    }
    assert_eq!(setup.jobs().len(), 1);
    assert_eq!(setup.sim.list("Pod", NS).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_carries_its_reason_and_the_last_fifty_log_lines() {
    let setup = Setup::new(&["web"]).await;
    let lines: Vec<String> = (1..=60).map(|i| format!("step {i}")).collect();
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    setup
        .sim
        .set_image(BUILDER, Outcome::Exits { code: 1, after: 2 });
    setup.sim.set_logs(BUILDER, &lines);
    let app = setup.workspace.app("web").expect("app");
    let error = setup
        .builder(settings())
        .build(app, &setup.request(), &Context::new())
        .await
        .expect_err("the build fails");
    let Some(BuildJobError::Failed { reason, logs, .. }) = error.downcast_ref() else {
        panic!("{error}");
    };
    assert_eq!(reason, "BackoffLimitExceeded");
    assert_eq!(logs.len(), 50, "{logs:?}");
    assert_eq!(logs.first().map(String::as_str), Some("step 11"));
    assert_eq!(logs.last().map(String::as_str), Some("step 60"));
    let text = error.to_string();
    assert!(
        text.contains("app web") && text.contains("step 60"),
        "{text}"
    );

    // A rerun of failed inputs builds again (a new Job of the same name).
    let uid = setup.job_uid();
    let again = setup
        .builder(settings())
        .build(app, &setup.request(), &Context::new())
        .await;
    assert!(again.is_err());
    assert_ne!(setup.job_uid(), uid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_image_that_cannot_be_pulled_fails_the_build_at_once() {
    let setup = Setup::new(&["web"]).await;
    setup.sim.set_image(BUILDER, Outcome::ImagePullFailure);
    let app = setup.workspace.app("web").expect("app");
    let started = std::time::Instant::now();
    let error = setup
        .builder(settings())
        .build(app, &setup.request(), &Context::new())
        .await
        .expect_err("the build fails");
    let Some(BuildJobError::Failed {
        reason, message, ..
    }) = error.downcast_ref()
    else {
        panic!("{error}");
    };
    assert!(
        reason == "ErrImagePull" || reason == "ImagePullBackOff",
        "{reason}"
    );
    assert!(message.contains(BUILDER), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing is left running.
    assert!(setup.jobs().is_empty(), "{:?}", setup.jobs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_build_deletes_its_job() {
    let setup = Setup::new(&["web"]).await;
    setup.sim.set_image(
        BUILDER,
        Outcome::Exits {
            code: 0,
            after: 100_000,
        },
    );
    let app = setup.workspace.app("web").expect("app").clone();
    let cancel = CancellationToken::new();
    let ctx = Context::new().with_cancellation(cancel.clone());
    let builder = setup.builder(settings());
    let request = setup.request();
    let run = tokio::spawn(async move { builder.build(&app, &request, &ctx).await });
    for _ in 0..200 {
        if !setup.jobs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(setup.jobs().len(), 1);
    cancel.cancel();
    let error = run.await.expect("task").expect_err("cancelled");
    assert!(
        matches!(error.downcast_ref(), Some(BuildJobError::Cancelled { .. })),
        "{error}"
    );
    for _ in 0..200 {
        if setup.jobs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(setup.jobs().is_empty(), "the Job is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_jobs_builds_run_at_once() {
    let apps = ["a1", "a2", "a3", "a4", "a5"];
    let setup = Setup::new(&apps).await;
    // One image in every app's repository, so the scripted builder's one digest
    // is every app's result.
    let image = setup.built_image("a1").await;
    for app in apps {
        let repository = &setup.workspace.app(app).expect("app").image;
        client()
            .push(
                &image,
                &repository.pinned(image.digest.clone()),
                &Context::new(),
            )
            .await
            .expect("push");
    }
    setup
        .sim
        .set_image(BUILDER, Outcome::Exits { code: 0, after: 15 });
    setup
        .sim
        .set_termination_message(BUILDER, &image.digest.to_string());
    let setup = Arc::new(setup);
    let builder = setup.builder(settings().max_jobs(2));
    let mut runs = Vec::new();
    for app in apps {
        let (setup, builder) = (setup.clone(), builder.clone());
        runs.push(tokio::spawn(async move {
            let app = setup.workspace.app(app).expect("app");
            builder
                .build(app, &setup.request(), &Context::new())
                .await
                .map(|_| ())
        }));
    }
    let mut most = 0;
    while runs.iter().any(|r| !r.is_finished()) {
        let running = setup
            .jobs()
            .iter()
            .filter(|j| j["status"]["succeeded"].as_i64().unwrap_or(0) == 0)
            .count();
        most = most.max(running);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for run in runs {
        run.await.expect("task").expect("build");
    }
    assert_eq!(setup.jobs().len(), 5);
    assert_eq!(most, 2, "Jobs that ran at once");
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    let toml = "[workspace]\nregistry = \"r.local\"\n[workspace.build-jobs]\nbuilder = \"b\"\nmax_jobs = 0\n\
                [apps.web]\npath = \".\"\n";
    let error = Workspace::loader()
        .schema(shipflow_k8s::schema())
        .from_toml(toml, ".")
        .expect_err("refused");
    assert!(error.to_string().contains("max_jobs"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_the_same_name_that_runs_another_builder_is_not_trusted() {
    let setup = Setup::new(&["web"]).await;
    let digest = setup.built("web").await;
    setup
        .sim
        .set_image(BUILDER, Outcome::Exits { code: 0, after: 2 });
    setup
        .sim
        .set_termination_message(BUILDER, &digest.to_string());
    let app = setup.workspace.app("web").expect("app");
    let builder = setup.builder(settings());
    builder
        .build(app, &setup.request(), &Context::new())
        .await
        .expect("the first build");
    let name = setup.jobs()[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
        kube::Api::namespaced(setup.sim.client(), NS);
    jobs.delete(&name, &kube::api::DeleteParams::background())
        .await
        .expect("delete");
    for _ in 0..200 {
        if setup.jobs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Someone else's Job under that name, with a result of their choosing.
    let planted = serde_json::json!({
        "metadata": {"name": name, "annotations": {BUILD_DIGEST_ANNOTATION: format!("sha256:{}", "ab".repeat(32))}},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "build", "image": "registry.local/evil/builder:1"}]}}},
    });
    jobs.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(planted).expect("a Job"),
    )
    .await
    .expect("create the planted Job");
    let error = builder
        .build(app, &setup.request(), &Context::new())
        .await
        .expect_err("the planted result is refused");
    let Some(BuildJobError::Failed { reason, .. }) = error.downcast_ref() else {
        panic!("{error}");
    };
    assert_eq!(reason, "Conflict", "{error}");
}
