//! A simulated Kubernetes API server for tests (feature `testing`), reached over HTTP
//! through the real [`kube::Client`] or the real `kubectl`.
//!
//! [`SimCluster`] serves `apps/v1` Deployments and ReplicaSets, `batch/v1` Jobs, `v1`
//! Pods, ConfigMaps, Secrets, Services, Endpoints and Events, `discovery.k8s.io/v1`
//! EndpointSlices and `coordination.k8s.io/v1` Leases, and runs the controllers that
//! make a cluster move.
//! A client sees what a real API server would show it; where the two disagree, the
//! simulator is wrong.
//!
//! # What it models
//!
//! - **Discovery**: `/version`, aggregated discovery (`apidiscovery.k8s.io/v2`, what
//!   `kubectl` asks for first), the legacy `/api`, `/apis` and group-version
//!   documents, and OpenAPI v3 documents with each operation's query parameters.
//! - **The API**: GET, LIST and WATCH with label selectors (set-based too) and field
//!   selectors; POST, PUT, DELETE with resourceVersion and uid preconditions; PATCH
//!   as JSON merge, strategic merge (lists merge by their keys, with the `$patch`,
//!   `$retainKeys`, `$setElementOrder` and `$deleteFromPrimitiveList` directives),
//!   JSON patch and server-side apply; a resourceVersion in any write is a
//!   precondition; `dryRun=All`; the `status` and `scale` subresources and
//!   `pods/log`; `meta.k8s.io/v1` Tables for `kubectl get`; DELETE's
//!   `propagationPolicy` (`Background`; `Foreground`: the owner waits, with a
//!   deletion timestamp and the `foregroundDeletion` finalizer, until its dependents
//!   are gone; `Orphan`: the dependents stay, without their owner reference), where
//!   a `batch/v1` Job deleted without one orphans its pods (with the API server's
//!   warning), as for compatibility it does.
//! - **What the API server does to a write**: defaults (a Deployment's strategy,
//!   revision history limit and progress deadline, a pod spec's restart policy and
//!   pull policies, a Service's cluster IP, a Secret's `stringData`, a Job's
//!   completions, parallelism, back-off limit, completion mode, suspend and pod
//!   replacement policy, and its generated selector: the template labelled
//!   `batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name`,
//!   `controller-uid` and `job-name` unless `manualSelector`), `generation`
//!   raised by any spec change, status kept out of writes to the main resource,
//!   strict schema checking against the Kubernetes OpenAPI types (a field the
//!   schema does not have is refused, as `fieldValidation=Strict` refuses it, whatever
//!   the request asks: a client bug fails the test instead of being dropped), and
//!   validation of names, labels, a Deployment's selector against its template, an
//!   immutable selector and immutable ConfigMaps and Secrets, a Job's restart policy
//!   (`OnFailure` or `Never`) and its immutable template, selector and completions.
//! - **Server-side apply**: `metadata.managedFields` per manager and operation; a
//!   field another manager set to another value is a 409 conflict naming the field
//!   unless forced; fields a manager stops applying are removed.
//! - **Watches**: resume from a resourceVersion within the history window (75 steps
//!   by default, [`watch_history`](SimCluster::watch_history)); older is `410 Gone`.
//!   Bookmarks every 60 steps to watches that ask for them. The server may end a
//!   watch early ([`limit_watches`](SimCluster::limit_watches)).
//! - **The Deployment controller**, after pkg/controller/deployment: the new
//!   ReplicaSet is the one whose template equals the Deployment's; rolling back to an
//!   existing one raises its revision in one write while the Deployment's revision
//!   annotation follows in a later sync (after `observedGeneration`); maxSurge and
//!   maxUnavailable; Recreate (old ReplicaSets to zero, then wait for their pods,
//!   then the new one); paused Deployments only scale; scaling events and
//!   proportional scaling; `progressDeadlineSeconds` (the condition stays
//!   `ProgressDeadlineExceeded` until the rollout progresses again); a ReplicaSet's
//!   `ReplicaFailure` copied while it lasts; `revisionHistoryLimit`.
//! - **The ReplicaSet controller**: creates and deletes pods (unready and young
//!   first), availability after `minReadySeconds`, `ReplicaFailure` while pod
//!   creations are refused ([`refuse_pods`](SimCluster::refuse_pods)).
//! - **The Job controller**, after pkg/controller/job: pods from the template up to
//!   `parallelism` until `completions` succeeded, a failed pod replaced after a
//!   back-off (10, 20, 40 … steps) until more than `backoffLimit` failed (or, under
//!   `OnFailure`, the containers restarted that often; a pod deleted before it
//!   succeeded counts as failed, and is replaced at once or, under
//!   `podReplacementPolicy: Failed`, once gone), `activeDeadlineSeconds`,
//!   `suspend`; the status's active, ready, terminating, succeeded and failed pods;
//!   `SuccessCriteriaMet` or `FailureTarget`, then `Complete` (with
//!   `completionTime`) or `Failed` once no pod runs; events as the controller
//!   records them; and the TTL-after-finished controller, which deletes a finished
//!   Job `ttlSecondsAfterFinished` steps later, in the foreground.
//! - **A kubelet**: one node; pulls (failing and backing off as scripted: 10, 20, 40
//!   … up to 300 steps), `CreateContainerConfigError` while a ConfigMap, Secret or key
//!   a container's environment needs is missing, init containers before the others,
//!   crash loops with back-off and restart counts, the pod's restart policy for
//!   containers that exit (`Never`: the pod ends `Succeeded` or `Failed`;
//!   `OnFailure`: only failures restart), termination messages (with
//!   `FallbackToLogsOnError`), readiness (probes' `initialDelaySeconds`), graceful
//!   deletion, logs per container run ([`set_logs`](SimCluster::set_logs)); how each
//!   image behaves is scripted with [`Outcome`]
//!   ([`set_termination_message`](SimCluster::set_termination_message) for what it
//!   leaves in `/dev/termination-log`).
//! - **Real containers, on request**: a cluster started with
//!   [`start_with_podman`](SimCluster::start_with_podman) runs its pods as Podman
//!   containers (its own storage, every container removed on drop) instead of by
//!   script. Images are pulled for real (a missing one is `ErrImagePull` with
//!   Podman's message, then `ImagePullBackOff`); containers run the image's or the
//!   spec's command and arguments with the spec's environment (values, ConfigMap and
//!   Secret keys, `envFrom`, pod fields, `$(VAR)` expansion); a process that exits
//!   is `Terminated` with its exit code and restarted after a back-off as the pod's
//!   `restartPolicy` says (`CrashLoopBackOff`); readiness is a real probe
//!   (`httpGet`, `tcpSocket` or `exec` with its timing in real seconds; without a
//!   probe, a TCP connect to the first `containerPort`); logs (`previous` too) are
//!   the container's own; the termination message is what it wrote to its
//!   `terminationMessagePath` (at most 4096 bytes; `FallbackToLogsOnError`).
//!   Each pod gets a loopback address of its own as its `podIP`, on which its
//!   container ports are published: `http://<podIP>:<port>` answers from the
//!   host, and replicas on one port do not clash. Pods reach the host's
//!   `127.0.0.1` (say a test's registry) at [`host_alias`](SimCluster::host_alias)
//!   (slirp4netns's `10.0.2.2`); `hostNetwork` pods use the host's network. Not
//!   modelled there: containers of one pod sharing `localhost` (each container has
//!   its own network namespace, all published on the pod's address), pod-to-pod
//!   traffic, graceful stops (deleted pods' containers are killed at once),
//!   liveness and startup probes, resource limits and volumes.
//! - **Endpoints and EndpointSlices** that follow pod readiness and termination, and
//!   **Events** as controllers and the kubelet record them.
//! - **Garbage collection** of ReplicaSets, pods and slices whose owner is gone, and
//!   of the dependents of owners deleted in the foreground.
//!
//! Each controller step stands for one second of cluster time (every 20 ms by
//! default): timers such as `progressDeadlineSeconds`, `minReadySeconds` and
//! back-offs count steps. Timestamps in objects are wall-clock time.
//!
//! # What it does not model
//!
//! Authentication and authorisation, admission webhooks and quotas (but see
//! [`refuse_pods`](SimCluster::refuse_pods)), namespaces as objects, other kinds
//! (StatefulSets, CronJobs, CRDs, ...), protobuf (so `kubectl create job`, which
//! sends it, is refused with 415; `kubectl create -f` works), paging (`limit` is ignored: lists are
//! whole), `resourceVersionMatch`, more than one node or scheduling constraints,
//! liveness probes, pod disruption, node failures, `kubectl exec`/`port-forward`,
//! followed logs, field ownership of status writes, OpenAPI schemas (the
//! documents list operations only); of Jobs: indexed completion, pod failure and
//! success policies, `backoffLimitPerIndex`, elastic completions, `managedBy`, and the
//! `batch.kubernetes.io/job-tracking` finalizer on their pods; finalizers other than
//! `foregroundDeletion`.
//!
//! ```no_run
//! use shipflow_k8s::testing::{Outcome, SimCluster};
//! use k8s_openapi::api::apps::v1::Deployment;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let sim = SimCluster::start().await?;
//! sim.seed_deployment("default", "api", "api", "registry.local/api:v1", 2);
//! sim.set_outcome("default", "api", Outcome::ImagePullFailure);
//! let deployments: kube::Api<Deployment> = kube::Api::namespaced(sim.client(), "default");
//! let api = deployments.get("api").await?;
//! assert_eq!(api.spec.and_then(|s| s.replicas), Some(2));
//! # Ok(())
//! # }
//! ```

mod controller;
mod discovery;
mod fields;
mod patch;
mod podman;
mod resources;
mod schema;
mod selector;
mod server;
mod store;
mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use podman::PodmanPods;
use resources::Kind;
use store::Shared;

/// How the containers of a scripted image (or of a Deployment's next rollouts) behave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Pulled, started and ready at once.
    #[default]
    Healthy,
    /// The image is not in the registry: `ErrImagePull` (a NotFound), then
    /// `ImagePullBackOff`, retried with back-off, for ever.
    ImagePullFailure,
    /// The first pull fails for a passing reason (the registry answers 429), the
    /// retry after the back-off succeeds and the container runs.
    PullRetried,
    /// The container exits with `panic: boom` while it starts (it is never ready),
    /// and is restarted after a growing back-off (`CrashLoopBackOff`).
    CrashLoop,
    /// The container runs but its readiness never passes.
    NeverReady,
    /// The container starts and gets ready like a healthy one, then exits with
    /// `panic: lost the database` `seconds` cluster seconds (steps) after it
    /// started, and so on after every restart (`CrashLoopBackOff` in between): a
    /// revision that passes its first probes and dies soon after.
    CrashesAfter {
        /// Cluster seconds from a start to the crash.
        seconds: u64,
    },
    /// The pod is never scheduled (no node has room): it stays `Pending`.
    Unschedulable,
    /// The container runs (ready, as a container without a probe is) for `after`
    /// cluster seconds (steps, at least one) and exits with `code`, as a Job's or a
    /// build's container does. What happens then is the pod's `restartPolicy`'s to
    /// say: under `Never` it stays terminated (the pod `Succeeded` if every
    /// container exited with 0, else `Failed`), under `OnFailure` only a non-zero
    /// exit is restarted (after a back-off), under `Always` every exit is. Its
    /// termination message is [`set_termination_message`](SimCluster::set_termination_message)'s.
    Exits {
        /// The exit code.
        code: i32,
        /// Cluster seconds from a start to the exit.
        after: u64,
    },
}

/// A running simulated API server. Dropping it stops the server and its controllers.
#[derive(Debug)]
pub struct SimCluster {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    controllers: tokio::task::JoinHandle<()>,
    podman: Option<Arc<podman::Runtime>>,
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.server.abort();
        self.controllers.abort();
        if let Some(runtime) = &self.podman {
            runtime.shutdown();
        }
    }
}

impl SimCluster {
    /// Starts a server on `127.0.0.1:0` whose controllers take a step every 20 ms.
    pub async fn start() -> std::io::Result<Self> {
        Self::with_step(Duration::from_millis(20)).await
    }

    /// Starts a server whose controllers take a step every `step`.
    pub async fn with_step(step: Duration) -> std::io::Result<Self> {
        Self::launch(step, None).await
    }

    /// Starts a server (steps every 20 ms) whose kubelet runs pods as real Podman
    /// containers instead of by script: images are pulled for real from their
    /// registries (plain HTTP allowed, as from a test's own `docker-registry`), a
    /// missing one is `ErrImagePull` with Podman's message; containers run their
    /// image's (or the spec's) command with the spec's environment (ConfigMap and
    /// Secret references resolved), exit for real (`CrashLoopBackOff`, restart
    /// counts), are ready when their `readinessProbe` passes (without one: when
    /// their first `containerPort` accepts connections), and their logs and
    /// termination messages are their own.
    ///
    /// Each pod gets a loopback address of its own as `status.podIP`, on which its
    /// containers' TCP ports are published: `http://<podIP>:<containerPort>` answers
    /// from the host. From inside a pod, the host's `127.0.0.1` is
    /// [`host_alias`](Self::host_alias). `hostNetwork` pods run on the host's network
    /// (`podIP` `127.0.0.1`).
    ///
    /// Podman runs with its own configuration and storage (see
    /// [`podman_command`](Self::podman_command)); every container is removed when
    /// the cluster is dropped. Fails when `podman`, `runc` or `slirp4netns` is not
    /// installed. [`Outcome`] scripts do not apply to such a cluster, and
    /// [`seed_deployment_json`](Self::seed_deployment_json) does not wait for real
    /// containers: create workloads through the API and wait for them.
    pub async fn start_with_podman(pods: PodmanPods) -> std::io::Result<Self> {
        let runtime = Arc::new(podman::Runtime::new(&pods)?);
        Self::launch(Duration::from_millis(20), Some(runtime)).await
    }

    async fn launch(
        step: Duration,
        runtime: Option<Arc<podman::Runtime>>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(step));
        shared.lock().podman = runtime.clone();
        let serving = shared.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                let host = addr.to_string();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        server::handle(shared.clone(), host.clone(), req)
                    });
                    // A client hanging up mid-request is not the server's problem.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let controllers = tokio::spawn(controller::run(shared.clone()));
        Ok(Self {
            addr,
            shared,
            server,
            controllers,
            podman: runtime,
        })
    }

    /// The address a pod of a [Podman-backed](Self::start_with_podman) cluster uses
    /// to reach the host's `127.0.0.1` (slirp4netns's forward of the host's
    /// loopback, `10.0.2.2`): a registry a test runs on `127.0.0.1:<port>` is
    /// `http://<host_alias>:<port>` from inside a pod. `None` for a scripted cluster.
    pub fn host_alias(&self) -> Option<&'static str> {
        self.podman.as_ref().map(|_| podman::HOST_ALIAS)
    }

    /// The `podman` command line pointed at a [Podman-backed](Self::start_with_podman)
    /// cluster's own configuration and storage (to build an image, or list the
    /// containers its pods run: `ps -a`); `None` for a scripted cluster.
    pub fn podman_command(&self) -> Option<std::process::Command> {
        self.podman.as_ref().map(|r| r.command())
    }

    /// The server's base URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A [`kube::Client`] for this server, with default namespace `default`.
    pub fn client(&self) -> kube::Client {
        let uri = self
            .url()
            .parse()
            .expect("a socket address always makes a valid URI");
        kube::Client::try_from(kube::Config::new(uri))
            .expect("a plain-HTTP config needs no TLS and always builds")
    }

    /// A kubeconfig (YAML) whose current context points at this server, for `kubectl
    /// --kubeconfig` or `KUBECONFIG`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n\
             users:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    \
             user: sim\n    namespace: default\ncurrent-context: sim\n",
            self.url()
        )
    }

    /// Creates a Deployment `ns/name` with one container running `image`, already
    /// rolled out: ReplicaSet revision 1 and `replicas` ready pods, labelled
    /// `app=<name>`.
    pub fn seed_deployment(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        image: &str,
        replicas: u32,
    ) {
        self.seed_deployment_json(
            ns,
            json!({
                "metadata": {
                    "name": name,
                    "labels": {"app": name},
                    "annotations": {"kubernetes.io/change-cause": format!("seeded with {image}")},
                },
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": container, "image": image}]},
                    },
                },
            }),
        );
    }

    /// Creates a Deployment from its JSON (`metadata.name`, `spec` with `replicas`,
    /// `selector` and `template`), as `kubectl create` would, and runs the controllers
    /// until it is rolled out (or 200 steps passed: a seeded image scripted to fail
    /// stays failing).
    ///
    /// # Panics
    /// If the API server would refuse the object.
    pub fn seed_deployment_json(&self, ns: &str, dep: Value) {
        let name = dep["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.seed(Kind::Deployment, ns, dep);
        let mut st = self.shared.lock();
        for _ in 0..200 {
            controller::step(&self.shared, &mut st);
            let Some(d) = st.get(Kind::Deployment, ns, &name) else {
                break;
            };
            let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
            let s = &d["status"];
            let count = |f: &str| s[f].as_i64().unwrap_or(0);
            if s["observedGeneration"] == d["metadata"]["generation"]
                && count("updatedReplicas") == want
                && count("availableReplicas") == want
                && count("replicas") == want
            {
                break;
            }
        }
    }

    /// Stores `object` (a ConfigMap, Secret, Service, Lease, Pod, ReplicaSet, ... as
    /// JSON with `metadata.name`) as if created through the API: defaulted, checked
    /// against the schema, validated. Deployments are better seeded with
    /// [`seed_deployment_json`](Self::seed_deployment_json), which also rolls them out.
    ///
    /// # Panics
    /// If `kind` is not one the server serves, or the API server would refuse the object.
    pub fn seed_object(&self, kind: &str, ns: &str, object: Value) {
        let kind = Kind::from_name(kind)
            .unwrap_or_else(|| panic!("the simulated server does not serve {kind}"));
        self.seed(kind, ns, object);
    }

    fn seed(&self, kind: Kind, ns: &str, mut object: Value) {
        let mut st = self.shared.lock();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        schema::default(&mut st, kind, &mut object);
        if matches!(kind, Kind::Deployment | Kind::ReplicaSet | Kind::Job) {
            object["metadata"]["generation"] = 1.into();
        }
        object["apiVersion"] = kind.api_version().into();
        object["kind"] = kind.name().into();
        if let Err(e) = schema::check_schema(kind, &object) {
            panic!(
                "the API server would refuse {} {ns}/{name}: {e}",
                kind.name()
            );
        }
        let errors = schema::validate(kind, &object, None);
        assert!(
            errors.is_empty(),
            "the API server would refuse {} {ns}/{name}: {errors:?}",
            kind.name()
        );
        self.shared.put(&mut st, kind, ns, object);
    }

    /// Sets how the pods of `ns/name`'s next rollouts behave. Pods of a template the
    /// Deployment has already completed a rollout with stay healthy whatever this
    /// says, as a rollback to a known-good image does on a real cluster;
    /// [`set_image`](Self::set_image) scripts an image whatever its history.
    pub fn set_outcome(&self, ns: &str, name: &str, outcome: Outcome) {
        self.shared
            .lock()
            .scripts
            .deployments
            .insert((ns.to_owned(), name.to_owned()), outcome);
    }

    /// Sets how every container started from now on with `image` behaves (init
    /// containers too), wherever it runs.
    pub fn set_image(&self, image: &str, outcome: Outcome) {
        self.shared
            .lock()
            .scripts
            .images
            .insert(image.to_owned(), outcome);
    }

    /// Sets the log lines containers of `image` print each time they start.
    pub fn set_logs(&self, image: &str, lines: &[&str]) {
        self.shared.lock().scripts.logs.insert(
            image.to_owned(),
            lines.iter().map(|l| (*l).to_owned()).collect(),
        );
    }

    /// Sets what containers of `image` write to their termination-message file
    /// (`/dev/termination-log`) before they exit (see [`Outcome::Exits`]): the
    /// kubelet reports it as `state.terminated.message`, cut to 4096 bytes. A
    /// container with `terminationMessagePolicy: FallbackToLogsOnError` that fails
    /// without a message reports the end of its log instead (its last 80 lines, at
    /// most 2048 bytes), as the kubelet does.
    pub fn set_termination_message(&self, image: &str, message: &str) {
        self.shared
            .lock()
            .scripts
            .messages
            .insert(image.to_owned(), message.to_owned());
    }

    /// Refuses the next `count` pod creations in `ns`, as a full resource quota does:
    /// the ReplicaSet gets `ReplicaFailure` (reason `FailedCreate`) until a creation
    /// succeeds again.
    pub fn refuse_pods(&self, ns: &str, count: u32) {
        self.shared
            .lock()
            .scripts
            .refuse_pods
            .insert(ns.to_owned(), count);
    }

    /// Ends every watch after `limit`, as API servers do at their own discretion; a
    /// client must then watch again from the last resource version it saw.
    pub fn limit_watches(&self, limit: Duration) {
        self.shared.lock().watch_limit = Some(limit);
    }

    /// Keeps `steps` controller steps of changes for watches to resume from (default
    /// 75, about what a real API server keeps); a watch from an older
    /// resourceVersion gets `410 Gone`. `bookmark_every` steps a watch that allows
    /// bookmarks gets one (default 60).
    pub fn watch_history(&self, steps: u64, bookmark_every: u64) {
        let mut st = self.shared.lock();
        st.history = steps;
        st.bookmark_every = bookmark_every.max(1);
    }

    /// Answers the next request `verb path` (e.g. `"PATCH"`,
    /// `"/apis/apps/v1/namespaces/default/deployments/api"`) with an error status
    /// `code` (409, 429, 500, 503, ...) instead of serving it; code 0 breaks the
    /// connection instead (see [`drop_next`](Self::drop_next)). Each call fails one request.
    pub fn fail_next(&self, verb: &str, path: &str, code: u16) {
        self.shared
            .lock()
            .faults
            .push((format!("{verb} {path}"), code));
    }

    /// Breaks the connection of the next request `verb path` mid-answer, as a flaky
    /// network or a restarting API server does: the client sees a transport error,
    /// not a status.
    pub fn drop_next(&self, verb: &str, path: &str) {
        self.fail_next(verb, path, 0);
    }

    /// When the controller finished rolling out generation `generation` of the
    /// Deployment `ns/name` (every replica new and available, no old one left).
    pub fn ready_at(&self, ns: &str, name: &str, generation: u64) -> Option<std::time::Instant> {
        self.shared
            .lock()
            .ready_at
            .get(&(ns.to_owned(), name.to_owned(), generation))
            .copied()
    }

    /// The stored object `kind` (e.g. `"Deployment"`) `ns/name`, as JSON.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let kind = Kind::from_name(kind)?;
        self.shared.lock().get(kind, ns, name).cloned()
    }

    /// The stored objects of `kind` in `ns`, as JSON, by name.
    pub fn list(&self, kind: &str, ns: &str) -> Vec<Value> {
        Kind::from_name(kind).map_or_else(Vec::new, |k| self.shared.lock().list(k, ns))
    }

    /// The stored Deployment `ns/name`, as JSON.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Value> {
        self.get("Deployment", ns, name)
    }

    /// The stored ConfigMap `ns/name`, as JSON.
    pub fn config_map(&self, ns: &str, name: &str) -> Option<Value> {
        self.get("ConfigMap", ns, name)
    }

    /// The stored Service `ns/name`, as JSON.
    pub fn service(&self, ns: &str, name: &str) -> Option<Value> {
        self.get("Service", ns, name)
    }

    /// The stored Lease `ns/name`, as JSON.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.get("Lease", ns, name)
    }

    /// The names of the ReplicaSets stored in `ns`.
    pub fn replica_set_names(&self, ns: &str) -> Vec<String> {
        self.list("ReplicaSet", ns)
            .iter()
            .filter_map(|rs| rs["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every stored object that does not pass the schema check the server applies to
    /// writes, as `"Kind ns/name: why"`: the simulator's own writes included.
    pub fn schema_violations(&self) -> Vec<String> {
        let st = self.shared.lock();
        st.objects
            .iter()
            .filter_map(|((kind, ns, name), object)| {
                schema::check_schema(*kind, object)
                    .err()
                    .map(|e| format!("{} {ns}/{name}: {e}", kind.name()))
            })
            .collect()
    }

    /// How many requests each `"VERB /path"` received; list requests count as `GET`
    /// on the collection, watches as `WATCH`.
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.shared.lock().requests.clone()
    }

    /// How many requests with `verb` (`GET`, `WATCH`, `PATCH`, `POST`) were received.
    pub fn request_count(&self, verb: &str) -> u64 {
        let prefix = format!("{verb} ");
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum()
    }
}
