//! A simulated Kubernetes API server for tests, reached through the real [`kube::Client`]
//! over HTTP (feature `testing`).
//!
//! It serves `apps/v1` Deployments and ReplicaSets, `v1` Pods, ConfigMaps and Services
//! and `coordination.k8s.io/v1` Leases (GET, LIST and WATCH with label and field
//! selectors, POST, PUT and DELETE with resourceVersion preconditions, and
//! strategic-merge, JSON-merge or server-side-apply PATCH; apply is simplified: it
//! merges the applied fields and does not track field managers), and
//! runs a Deployment controller that moves each rollout forward one step at a time as
//! the deployment's scripted [`Outcome`] says: a new ReplicaSet per pod template with
//! the next `deployment.kubernetes.io/revision`, new pods, old pods removed, the
//! Deployment's status and conditions kept in step, and, once a rollout completes,
//! old ReplicaSets beyond `spec.revisionHistoryLimit` deleted.
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
mod server;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use store::{Kind, Shared};

/// How the simulated controller plays a Deployment's next rollouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    /// New pods become ready one by one, old ones go, the rollout completes.
    #[default]
    Healthy,
    /// The new pod cannot pull its image: `ErrImagePull`, then `ImagePullBackOff`.
    ImagePullFailure,
    /// The new pod's container exits with `panic: boom` and restarts in
    /// `CrashLoopBackOff`, its restart count growing each step.
    CrashLoop,
    /// The new pod runs but never becomes ready; after a few steps the Deployment's
    /// `Progressing` condition turns `False` with `ProgressDeadlineExceeded`.
    DeadlineExceeded,
    /// Nothing happens after the new ReplicaSet is created.
    Stuck,
}

/// A running simulated API server. Dropping it stops the server.
#[derive(Debug)]
pub struct SimCluster {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SimCluster {
    /// Starts a server on `127.0.0.1:0` whose controller takes a step every 20 ms.
    pub async fn start() -> std::io::Result<Self> {
        Self::with_step(Duration::from_millis(20)).await
    }

    /// Starts a server whose controller takes a step every `step`.
    pub async fn with_step(step: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(step));
        let serving = shared.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| server::handle(shared.clone(), req));
                    // A client hanging up mid-request is not the server's problem.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            server,
        })
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

    /// Creates a Deployment `ns/name` with one container running `image`, already rolled
    /// out: ReplicaSet revision 1 and `replicas` ready pods. The pods carry the label
    /// `app=<name>`.
    pub fn seed_deployment(
        &self,
        ns: &str,
        name: &str,
        container: &str,
        image: &str,
        replicas: u32,
    ) {
        let dep = json!({
            "metadata": {
                "name": name,
                "generation": 1,
                "labels": {"app": name},
                "annotations": {"kubernetes.io/change-cause": format!("seeded with {image}")},
            },
            "spec": {
                "replicas": replicas,
                "progressDeadlineSeconds": 600,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": container, "image": image}]},
                },
            },
        });
        let mut st = self.shared.lock();
        controller::seed(&self.shared, &mut st, ns, name, dep);
    }

    /// Sets how the controller plays the next rollouts of `ns/name`. A rollout to
    /// images the Deployment already rolled out with succeeds whatever this says,
    /// as a rollback to a known-good image does on a real cluster.
    pub fn set_outcome(&self, ns: &str, name: &str, outcome: Outcome) {
        self.shared
            .lock()
            .outcomes
            .insert((ns.to_owned(), name.to_owned()), outcome);
    }

    /// Ends every watch after `limit`, as API servers do at their own discretion; a
    /// client must then watch again from the last resource version it saw.
    pub fn limit_watches(&self, limit: Duration) {
        self.shared.lock().watch_limit = Some(limit);
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
    /// Deployment `ns/name` (every replica new and ready, no old one left).
    pub fn ready_at(&self, ns: &str, name: &str, generation: u64) -> Option<std::time::Instant> {
        self.shared
            .lock()
            .ready_at
            .get(&(ns.to_owned(), name.to_owned(), generation))
            .copied()
    }

    /// The stored ConfigMap `ns/name`, as JSON.
    pub fn config_map(&self, ns: &str, name: &str) -> Option<Value> {
        self.object(Kind::ConfigMap, ns, name)
    }

    /// The names of the ReplicaSets stored in `ns`.
    pub fn replica_set_names(&self, ns: &str) -> Vec<String> {
        self.shared
            .lock()
            .objects
            .keys()
            .filter(|(kind, n, _)| *kind == Kind::ReplicaSet && n == ns)
            .map(|(_, _, name)| name.clone())
            .collect()
    }

    /// The stored Service `ns/name`, as JSON.
    pub fn service(&self, ns: &str, name: &str) -> Option<Value> {
        self.object(Kind::Service, ns, name)
    }

    /// The stored Lease `ns/name`, as JSON.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.object(Kind::Lease, ns, name)
    }

    /// Stores `object` (a ConfigMap, Service, Lease, Pod or ReplicaSet as JSON, with
    /// `metadata.name`) as if created through the API; Deployments use
    /// [`seed_deployment`](Self::seed_deployment) or [`seed_deployment_json`](Self::seed_deployment_json).
    ///
    /// # Panics
    /// If `kind` is not one the server serves.
    pub fn seed_object(&self, kind: &str, ns: &str, object: Value) {
        let kind = match kind {
            "ConfigMap" => Kind::ConfigMap,
            "Service" => Kind::Service,
            "Lease" => Kind::Lease,
            "Pod" => Kind::Pod,
            "ReplicaSet" => Kind::ReplicaSet,
            other => panic!("the simulated server does not serve {other}"),
        };
        let mut st = self.shared.lock();
        self.shared.put(&mut st, kind, ns, object);
    }

    /// Creates a Deployment from its JSON (`metadata.name`, `spec` with `replicas`,
    /// `selector` and `template`), already rolled out like
    /// [`seed_deployment`](Self::seed_deployment).
    pub fn seed_deployment_json(&self, ns: &str, mut dep: Value) {
        let name = dep["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        dep["metadata"]["generation"] = 1.into();
        let mut st = self.shared.lock();
        controller::seed(&self.shared, &mut st, ns, &name, dep);
    }

    /// The stored Deployment `ns/name`, as JSON.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Value> {
        self.object(Kind::Deployment, ns, name)
    }

    fn object(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .objects
            .get(&(kind, ns.to_owned(), name.to_owned()))
            .cloned()
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
