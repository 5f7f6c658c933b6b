//! The simulated cluster with pods run as real Podman containers: images pulled for
//! real from a real `docker-registry`, served on each pod's own address, real exits
//! (crash loops, Jobs), logs (through the kube client and the real `kubectl`) and
//! termination messages. These tests need `podman`, `runc`, `slirp4netns`,
//! `docker-registry`, `busybox-static` and `kubectl`, and fail without them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use serde_json::{Value, json};
use shipflow_k8s::testing::{PodmanPods, SimCluster};
use shipflow_oci::testing::TestRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::kubectl::Kubectl;

/// How long a real rollout (pull, start, first probes) may take on a slow machine.
const PATIENCE: Duration = Duration::from_secs(90);

/// A Podman-backed cluster and a registry of the test's own.
struct Fixture {
    sim: SimCluster,
    registry: TestRegistry,
    dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Self {
        assert!(
            Path::new("/bin/busybox").is_file(),
            "/bin/busybox is missing: apt-get install -y busybox-static"
        );
        let registry = TestRegistry::start()
            .unwrap_or_else(|e| panic!("these tests need docker-registry: {e}"));
        let sim = SimCluster::start_with_podman(PodmanPods::new())
            .await
            .unwrap_or_else(|e| panic!("these tests need podman: {e}"));
        let dir = tempfile::tempdir().expect("temp dir");
        Self { sim, registry, dir }
    }

    /// `podman` pointed at the cluster's storage, run to success: its stdout.
    fn podman(&self, args: &[&str]) -> String {
        let mut command = self.sim.podman_command().expect("a Podman-backed cluster");
        let out = command
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("podman {args:?}: {e}"));
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Builds `FROM scratch` an image of busybox serving `body` at `/` on port 8080,
    /// pushes it to the registry as `repo:v1` and removes it locally (so pods pull
    /// it for real): its reference.
    fn web_image(&self, repo: &str, body: &str) -> String {
        let ctx = self.dir.path().join(repo);
        std::fs::create_dir_all(ctx.join("www")).expect("context dir");
        std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("copy busybox");
        std::fs::write(ctx.join("www/index.html"), body).expect("index");
        std::fs::write(
            ctx.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n\
             CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
        )
        .expect("Dockerfile");
        let reference = format!("{}/{repo}:v1", self.registry.host());
        let ctx = ctx.to_string_lossy().into_owned();
        self.podman(&["build", "-q", "-t", &reference, &ctx]);
        self.podman(&["push", "-q", "--tls-verify=false", &reference]);
        self.podman(&["rmi", &reference]);
        reference
    }

    async fn create_deployment(&self, name: &str, replicas: i32, container: Value) {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [container]},
                },
            },
        }))
        .expect("a valid Deployment");
        Api::<Deployment>::default_namespaced(self.sim.client())
            .create(&PostParams::default(), &deployment)
            .await
            .expect("create the Deployment");
    }

    /// The pods with the labels of `selector`.
    async fn pods(&self, selector: &str) -> Vec<Pod> {
        Api::<Pod>::default_namespaced(self.sim.client())
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
    }

    /// Polls the pods with the labels of `selector` until `done` holds for them.
    async fn wait_pods(
        &self,
        selector: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pods: Vec<Value> = self
                .pods(selector)
                .await
                .into_iter()
                .map(|p| serde_json::to_value(p).expect("pod as JSON"))
                .collect();
            if done(&pods) {
                return pods;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {PATIENCE:?}; pods: {pods:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The names of the containers in the cluster's Podman storage, running or not.
    fn containers(&self) -> Vec<String> {
        self.podman(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// The first container's status of `pod`.
fn status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

/// GET `http://<ip>:<port>/` over plain HTTP/1.0: the body.
async fn get(ip: &str, port: u16) -> Result<String, String> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(format!("GET / HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(1 << 20)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer: {answer}"))?;
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            Ok(body.to_owned())
        } else {
            Err(head.to_owned())
        }
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_the_real_image_on_their_own_pod_ips() {
    let f = Fixture::start().await;
    let image = f.web_image("web", "hello from a real pod\n");
    let started = Instant::now();
    f.create_deployment(
        "web",
        2,
        json!({"name": "web", "image": image,
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    let deployments = Api::<Deployment>::default_namespaced(f.sim.client());
    loop {
        let d = deployments.get("web").await.expect("get the Deployment");
        let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
        if available == 2 {
            println!(
                "2 replicas pulled, started and ready in {:?}",
                started.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "2 available replicas within {PATIENCE:?}; pods: {:#?}",
            f.pods("app=web").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods = f
        .wait_pods("app=web", "two ready pods", |p| p.len() == 2)
        .await;
    let ips: Vec<String> = pods
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_ne!(ips[0], ips[1], "each pod has an address of its own");
    for ip in &ips {
        assert_eq!(
            get(ip, 8080).await.as_deref(),
            Ok("hello from a real pod\n"),
            "pod at {ip}"
        );
    }
    for pod in &pods {
        let s = status(pod);
        assert_eq!(s["ready"], true);
        assert_eq!(s["restartCount"], 0);
        assert!(s["state"]["running"]["startedAt"].is_string(), "{s}");
    }
    assert_eq!(f.containers().len(), 2, "one container per pod");
    let name = pods[0]["metadata"]["name"].as_str().unwrap_or_default();
    let mut events = f.sim.list("Event", "default");
    events.retain(|e| e["involvedObject"]["name"] == name);
    events.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
    });
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(
        reasons,
        ["Scheduled", "Pulling", "Pulled", "Created", "Started"],
        "{events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_err_image_pull_with_podmans_message() {
    let f = Fixture::start().await;
    let image = format!("{}/nowhere:v1", f.registry.host());
    f.create_deployment("ghost", 1, json!({"name": "ghost", "image": image}))
        .await;
    // ErrImagePull lasts until the kubelet's next look, which turns it into the
    // back-off: watch for it.
    let pods = Api::<Pod>::default_namespaced(f.sim.client());
    let mut changes = pods
        .watch(&WatchParams::default().labels("app=ghost"), "0")
        .await
        .expect("watch the pods")
        .boxed();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let message = loop {
        let change = tokio::time::timeout_at(deadline, changes.next())
            .await
            .expect("ErrImagePull within the patience")
            .expect("the watch goes on")
            .expect("a watch event");
        if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) = change {
            let pod = serde_json::to_value(pod).expect("pod as JSON");
            if status(&pod)["state"]["waiting"]["reason"] == "ErrImagePull" {
                break status(&pod)["state"]["waiting"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
    };
    assert!(
        message.contains("manifest unknown") && message.contains("nowhere"),
        "Podman's own message: {message}"
    );
    // Retried after a back-off, failing the same way.
    f.wait_pods("app=ghost", "ImagePullBackOff", |p| {
        p.first()
            .is_some_and(|p| status(p)["state"]["waiting"]["reason"] == "ImagePullBackOff")
    })
    .await;
    let events = f.sim.list("Event", "default");
    assert!(
        events.iter().any(|e| e["reason"] == "Failed"
            && e["message"].as_str().is_some_and(|m| m
                .starts_with(&format!("Failed to pull image \"{image}\": "))
                && m.contains("manifest unknown"))),
        "a Failed event with Podman's message: {events:#?}"
    );
    assert!(f.containers().is_empty(), "nothing ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_1_crash_loops_with_its_real_logs() {
    let f = Fixture::start().await;
    let image = f.web_image("crash", "unused\n");
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "settings"},
        "data": {"greeting": "hello from a ConfigMap"},
    }))
    .expect("a valid ConfigMap");
    Api::<ConfigMap>::default_namespaced(f.sim.client())
        .create(&PostParams::default(), &config)
        .await
        .expect("create the ConfigMap");
    f.create_deployment(
        "crash",
        1,
        json!({"name": "app", "image": image,
            "command": ["/bin/busybox", "sh", "-c"],
            "args": ["echo \"$GREETING, run as $(POD)\"; echo 'fatal: no database' >&2; exit 1"],
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            ]}),
    )
    .await;
    let pods = f
        .wait_pods("app=crash", "CrashLoopBackOff after a restart", |p| {
            p.first().is_some_and(|p| {
                status(p)["restartCount"].as_i64().unwrap_or(0) >= 1
                    && status(p)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            })
        })
        .await;
    let s = status(&pods[0]);
    assert_eq!(s["lastState"]["terminated"]["exitCode"], 1, "{s}");
    assert_eq!(s["lastState"]["terminated"]["reason"], "Error", "{s}");
    assert_eq!(s["ready"], false);
    let name = pods[0]["metadata"]["name"].as_str().unwrap_or_default();
    let logs = Api::<Pod>::default_namespaced(f.sim.client())
        .logs(
            name,
            &LogParams {
                previous: true,
                ..LogParams::default()
            },
        )
        .await
        .expect("the previous run's logs");
    let want = format!("hello from a ConfigMap, run as {name}\nfatal: no database\n");
    assert_eq!(logs, want, "the container's real output");
    let kubectl = Kubectl::new(&f.sim)
        .run(&["logs", "--previous", "deployment/crash"])
        .await;
    assert!(kubectl.ok, "kubectl logs --previous: {}", kubectl.stderr);
    assert_eq!(kubectl.stdout, want, "what kubectl logs --previous shows");
    // Each start reads the environment again: a changed ConfigMap shows in the
    // next run.
    Api::<ConfigMap>::default_namespaced(f.sim.client())
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"greeting": "hello again"}})),
        )
        .await
        .expect("change the ConfigMap");
    let pods = Api::<Pod>::default_namespaced(f.sim.client());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let previous = LogParams {
            previous: true,
            ..LogParams::default()
        };
        let logs = pods.logs(name, &previous).await.unwrap_or_default();
        if logs.starts_with("hello again, run as ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a run with the changed ConfigMap within {PATIENCE:?}; last: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_map_holds_the_container_until_it_exists() {
    let f = Fixture::start().await;
    let image = f.web_image("later", "configured\n");
    f.create_deployment(
        "later",
        1,
        json!({"name": "web", "image": image, "ports": [{"containerPort": 8080}],
            "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "mode"}}}]}),
    )
    .await;
    let pods = f
        .wait_pods("app=later", "CreateContainerConfigError", |p| {
            p.first().is_some_and(|p| {
                status(p)["state"]["waiting"]["reason"] == "CreateContainerConfigError"
            })
        })
        .await;
    assert_eq!(
        status(&pods[0])["state"]["waiting"]["message"],
        "configmap \"later\" not found"
    );
    assert!(f.containers().is_empty(), "nothing ran");
    let config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "later"},
        "data": {"mode": "fast"},
    }))
    .expect("a valid ConfigMap");
    Api::<ConfigMap>::default_namespaced(f.sim.client())
        .create(&PostParams::default(), &config)
        .await
        .expect("create the ConfigMap");
    let pods = f
        .wait_pods("app=later", "the pod ready", |p| {
            p.first().is_some_and(|p| status(p)["ready"] == true)
        })
        .await;
    let ip = pods[0]["status"]["podIP"].as_str().unwrap_or_default();
    assert_eq!(get(ip, 8080).await.as_deref(), Ok("configured\n"));
    let env = f.podman(&[
        "inspect",
        "--format",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &f.containers()[0],
    ]);
    assert!(env.lines().any(|l| l == "MODE=fast"), "{env}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_deployment_removes_its_containers() {
    let f = Fixture::start().await;
    let image = f.web_image("gone", "soon gone\n");
    f.create_deployment(
        "gone",
        2,
        json!({"name": "web", "image": image, "ports": [{"containerPort": 8080}]}),
    )
    .await;
    // No readiness probe: ready once the first containerPort accepts connections.
    let pods = f
        .wait_pods("app=gone", "two ready pods", |p| {
            p.len() == 2 && p.iter().all(|p| status(p)["ready"] == true)
        })
        .await;
    for pod in &pods {
        let ip = pod["status"]["podIP"].as_str().unwrap_or_default();
        assert_eq!(
            get(ip, 8080).await.as_deref(),
            Ok("soon gone\n"),
            "pod at {ip}"
        );
    }
    assert_eq!(f.containers().len(), 2);
    Api::<Deployment>::default_namespaced(f.sim.client())
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete the Deployment");
    f.wait_pods("app=gone", "the pods gone", <[Value]>::is_empty)
        .await;
    let deadline = Instant::now() + PATIENCE;
    while !f.containers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers left: {:?}",
            f.containers()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates the Job `name` whose one container `step` runs `script` with busybox's
/// shell, never restarted, and polls it until it has the condition `condition`.
async fn run_job(f: &Fixture, name: &str, image: &str, script: &str, condition: &str) -> Job {
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "step", "image": image,
                "command": ["/bin/busybox", "sh", "-c", script],
                "terminationMessagePolicy": "FallbackToLogsOnError"}],
        }}},
    }))
    .expect("a valid Job");
    let jobs = Api::<Job>::default_namespaced(f.sim.client());
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create the Job");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let job = jobs.get(name).await.expect("get the Job");
        let holds = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == condition && c.status == "True"));
        if holds {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "Job {name} {condition} within {PATIENCE:?}: {job:#?}; pods: {:#?}",
            f.pods(&format!("job-name={name}")).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reaches_the_hosts_loopback_and_completes_with_its_termination_message() {
    let f = Fixture::start().await;
    let image = f.web_image("asker", "unused\n");
    let alias = f.sim.host_alias().expect("a Podman-backed cluster");
    let port = f.registry.port();
    // busybox's nc asks the test's registry (on the host's 127.0.0.1) for /v2/ and
    // leaves the status line as the termination message.
    let script = format!(
        "printf 'GET /v2/ HTTP/1.0\\r\\nHost: {alias}\\r\\n\\r\\n' | /bin/busybox nc {alias} {port} \
         | /bin/busybox head -n 1 | /bin/busybox tr -d '\\r' > /dev/termination-log; echo asked"
    );
    run_job(&f, "ask", &image, &script, "Complete").await;
    let pods = f.pods("job-name=ask").await;
    assert_eq!(pods.len(), 1, "{pods:#?}");
    let pod = serde_json::to_value(&pods[0]).expect("pod as JSON");
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod:#}");
    let terminated = &status(&pod)["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 0, "{terminated}");
    assert_eq!(terminated["reason"], "Completed", "{terminated}");
    assert_eq!(terminated["message"], "HTTP/1.0 200 OK\n", "{terminated}");
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let logs = Api::<Pod>::default_namespaced(f.sim.client())
        .logs(name, &LogParams::default())
        .await
        .expect("the logs");
    assert_eq!(logs, "asked\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_container_exits_3_fails_with_its_log_as_the_message() {
    let f = Fixture::start().await;
    let image = f.web_image("failer", "unused\n");
    run_job(
        &f,
        "fail",
        &image,
        "echo compiling; echo 'error: no such file' >&2; exit 3",
        "Failed",
    )
    .await;
    let pods = f.pods("job-name=fail").await;
    assert_eq!(pods.len(), 1, "backoffLimit 0: one try; {pods:#?}");
    let pod = serde_json::to_value(&pods[0]).expect("pod as JSON");
    assert_eq!(pod["status"]["phase"], "Failed", "{pod:#}");
    let terminated = &status(&pod)["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 3, "{terminated}");
    assert_eq!(terminated["reason"], "Error", "{terminated}");
    // No message written: FallbackToLogsOnError takes the log's tail.
    assert_eq!(
        terminated["message"], "compiling\nerror: no such file\n",
        "{terminated}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_pod_serves_on_the_hosts_address() {
    let f = Fixture::start().await;
    let image = f.web_image("hostnet", "served on the host\n");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "hostnet", "labels": {"app": "hostnet"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "web", "image": image,
            "command": ["/bin/busybox", "httpd", "-f", "-p", format!("127.0.0.1:{port}"), "-h", "/www"],
            "ports": [{"containerPort": port}]}]},
    }))
    .expect("a valid Pod");
    Api::<Pod>::default_namespaced(f.sim.client())
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the Pod");
    let pods = f
        .wait_pods("app=hostnet", "the pod ready", |p| {
            p.first().is_some_and(|p| status(p)["ready"] == true)
        })
        .await;
    assert_eq!(pods[0]["status"]["podIP"], "127.0.0.1");
    assert_eq!(
        get("127.0.0.1", port).await.as_deref(),
        Ok("served on the host\n")
    );
}

/// A restricted pod (not root, read-only root file system, no capabilities, no
/// privilege escalation) writes only to its `emptyDir`: the security context and
/// the volume reach the real container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_pod_runs_as_its_user_and_writes_only_to_its_empty_dir() {
    let f = Fixture::start().await;
    let image = f.web_image("restricted", "unused\n");
    let script = "/bin/busybox id -u > /dev/termination-log; echo x > /scratch/ok || exit 5; \
                  if echo x > /root-file 2>/dev/null; then echo ROOT-WRITABLE; exit 4; fi";
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "restricted"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "containers": [{"name": "step", "image": image,
                "command": ["/bin/busybox", "sh", "-c", script],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}}}],
        }}},
    }))
    .expect("a valid Job");
    Api::<Job>::default_namespaced(f.sim.client())
        .create(&PostParams::default(), &job)
        .await
        .expect("create the Job");
    let pods = f
        .wait_pods("job-name=restricted", "the pod finished", |p| {
            p.first().is_some_and(|p| {
                matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
            })
        })
        .await;
    let terminated = &status(&pods[0])["state"]["terminated"];
    assert_eq!(pods[0]["status"]["phase"], "Succeeded", "{terminated}");
    assert_eq!(terminated["message"], "65532\n", "{terminated}");
}
