//! Waiting for a Service's endpoints to hold exactly a set of pods: one watch on
//! its EndpointSlices, and a list of the wanted pods each time the slices hold as
//! many ready endpoints as wanted and nothing else.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use shipflow_core::Context;
use tokio::time::Instant;

use crate::compat::Field;
use crate::deployer::Target;
use crate::{KubeDeployer, KubeError};

/// How long one watch request on the EndpointSlices lasts.
const WATCH_SECONDS: u32 = 290;

/// What a Service's endpoints held when last looked at.
#[derive(Debug, Default)]
struct Held {
    endpoints: usize,
    ready: usize,
    wanted: Option<usize>,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} endpoints, {} ready", self.endpoints, self.ready)?;
        if let Some(n) = self.wanted {
            write!(f, ", {n} of them new pods")?;
        }
        Ok(())
    }
}

impl KubeDeployer {
    /// Waits until the EndpointSlices of Service `service` hold only pods matching
    /// the label selector `pods`, all ready and not terminating, `replicas` of
    /// them; fails after the deployer's timeout, naming what they held.
    pub(crate) async fn wait_endpoints(
        &self,
        t: &Target,
        service: &str,
        pods: &str,
        replicas: usize,
        step: &'static str,
        ctx: &Context,
    ) -> Result<(), KubeError> {
        let deadline = Instant::now() + self.timeout;
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &t.namespace);
        let pod_api: Api<Pod> = Api::namespaced(self.client.clone(), &t.namespace);
        let config = watcher::Config::default()
            .labels(&format!("kubernetes.io/service-name={service}"))
            .timeout(WATCH_SECONDS);
        let mut events = watcher(slices, config).backoff(self.retry.delays()).boxed();
        let wanted_pods = ListParams::default().labels(pods);
        let mut seen: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, EndpointSlice>> = None;
        let mut held = Held::default();
        let failed = |cause: String| KubeError::BlueGreen {
            app: t.app.clone(),
            workload: t.workload(),
            step,
            cause,
        };
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, events.next()) => next,
                () = ctx.cancellation().cancelled() => {
                    return Err(KubeError::Cancelled {
                        app: t.app.clone(),
                        workload: t.workload(),
                        step,
                        source: shipflow_core::Cancelled,
                    });
                }
            };
            let event = match next {
                Err(_) => {
                    return Err(failed(format!(
                        "after {:?}, service {service} holds {held}; wanted {replicas} ready new pods and nothing else",
                        self.timeout
                    )));
                }
                Ok(None) => {
                    return Err(failed(format!(
                        "the watch of service {service}'s endpoints ended"
                    )));
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(app = %t.app, error = %e, "endpoint watch error; retrying");
                    continue;
                }
                Ok(Some(Ok(event))) => event,
            };
            let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
            match event {
                watcher::Event::Init => listing = Some(BTreeMap::new()),
                watcher::Event::InitApply(s) => {
                    listing.get_or_insert_default().insert(name(&s), s);
                    continue;
                }
                watcher::Event::InitDone => seen = listing.take().unwrap_or_default(),
                watcher::Event::Apply(s) => {
                    seen.insert(name(&s), s);
                }
                watcher::Event::Delete(s) => {
                    seen.remove(&name(&s));
                }
            }
            let endpoints: Vec<(Option<String>, bool)> = seen
                .values()
                .flat_map(|s| s.endpoints.opt().into_iter().flatten())
                .map(|e| {
                    let ready = e
                        .conditions
                        .as_ref()
                        .is_some_and(|c| c.ready == Some(true) && c.terminating != Some(true));
                    (e.target_ref.as_ref().and_then(|r| r.name.clone()), ready)
                })
                .collect();
            held = Held {
                endpoints: endpoints.len(),
                ready: endpoints.iter().filter(|(_, ready)| *ready).count(),
                wanted: None,
            };
            if held.endpoints != replicas || held.ready != replicas {
                continue;
            }
            let list = self
                .retry
                .run(step, false, ctx.cancellation(), || {
                    pod_api.list(&wanted_pods)
                })
                .await
                .map_err(|e| e.about(&t.app, &format!("pods {pods} in {}", t.namespace), step))?;
            let names: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            let wanted = endpoints
                .iter()
                .filter(|(pod, _)| pod.as_ref().is_some_and(|p| names.contains(p)))
                .count();
            held.wanted = Some(wanted);
            if wanted == replicas {
                return Ok(());
            }
        }
    }
}
