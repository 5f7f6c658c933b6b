//! The new pods of a rollout: which they are (those of the ReplicaSet whose pod
//! template is the rollout's, as the Deployment controller picks it, never by
//! revision number), whether one failed in a way that waiting will not fix, and its
//! last log lines.
//!
//! Some waiting reasons never heal (`InvalidImageName`, `ErrImageNeverPull`, a pull
//! the registry answers "not found" or "denied"); a crash loop fails once it
//! restarted more often than the budget; the others (a pull that failed for another
//! reason, `CreateContainerConfigError`, `CreateContainerError`,
//! `RunContainerError`) often do heal (the registry's rate limit passes, the Secret
//! appears) and fail a rollout only when they last for the failure window.

use crate::compat::Field;
use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Api;
use kube::api::{ListParams, LogParams};
use serde_json::Value;
use tokio::time::Instant;

use crate::FailedPod;
use crate::status::{Expected, HASH_LABEL};

/// How many log lines a failure carries.
const LOG_LINES: i64 = 20;
/// The most log bytes read for them.
const LOG_BYTES: i64 = 16 * 1024;

/// How urgent a container's trouble is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trouble {
    /// Fails the rollout now.
    Fatal,
    /// Fails the rollout if it lasts; the string groups reasons that alternate
    /// (`ErrImagePull` and `ImagePullBackOff`).
    Lasting(&'static str),
}

/// A registry's answer that a retry will not change.
fn pull_refused(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "not found",
        "manifest unknown",
        "unauthorized",
        "authentication required",
        "denied",
        "forbidden",
    ]
    .iter()
    .any(|s| m.contains(s))
}

fn trouble(reason: &str, message: &str, restarts: u32, budget: u32) -> Option<Trouble> {
    match reason {
        "InvalidImageName" | "ErrImageNeverPull" => Some(Trouble::Fatal),
        "ErrImagePull" | "ImagePullBackOff" if pull_refused(message) => Some(Trouble::Fatal),
        "ErrImagePull" | "ImagePullBackOff" => Some(Trouble::Lasting("pull")),
        "CreateContainerConfigError" => Some(Trouble::Lasting("CreateContainerConfigError")),
        "CreateContainerError" => Some(Trouble::Lasting("CreateContainerError")),
        "RunContainerError" => Some(Trouble::Lasting("RunContainerError")),
        "CrashLoopBackOff" | "Error" if restarts > budget => Some(Trouble::Fatal),
        _ => None,
    }
}

/// A container's trouble, with what the error reports about it.
struct Finding {
    pod: FailedPod,
    trouble: Trouble,
    /// Whether the container has run (so it has a log).
    ran: bool,
}

fn describe(pod: &str, c: &ContainerStatus) -> (FailedPod, bool) {
    let state = c.state.as_ref();
    let (reason, message) = match (
        state.and_then(|s| s.waiting.as_ref()),
        state.and_then(|s| s.terminated.as_ref()),
    ) {
        (Some(w), _) => (
            w.reason.clone().unwrap_or_default(),
            w.message.clone().unwrap_or_default(),
        ),
        (None, Some(t)) => (
            t.reason.clone().unwrap_or_else(|| "Terminated".into()),
            t.message.clone().unwrap_or_default(),
        ),
        (None, None) if !c.ready => (
            "NotReady".into(),
            "the container runs but is not ready".into(),
        ),
        (None, None) => ("Running".into(), String::new()),
    };
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let mut failed = FailedPod::new(pod, &c.name, &reason, &message);
    failed.restarts = u32::try_from(c.restart_count).unwrap_or(0);
    failed.last_termination = last.map(|t| {
        let text = t
            .message
            .clone()
            .or_else(|| t.reason.clone())
            .unwrap_or_default();
        format!("exit code {}: {text}", t.exit_code)
    });
    failed.previous_logs = last.is_some() && state.and_then(|s| s.running.as_ref()).is_none();
    let ran =
        last.is_some() || state.is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    (failed, ran)
}

/// The troubled containers of `pod`, init containers first.
fn findings(pod: &Pod, restart_budget: u32) -> Vec<Finding> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter_map(|c| {
            let (failed, ran) = describe(&name, c);
            let trouble = trouble(
                &failed.reason,
                &failed.message,
                failed.restarts,
                restart_budget,
            )?;
            Some(Finding {
                pod: failed,
                trouble,
                ran,
            })
        })
        .collect()
}

/// Why `pod` is not ready: its first unready container, or its scheduling.
fn unready(pod: &Pod) -> Option<(FailedPod, bool)> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .filter(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_none_or(|t| t.exit_code != 0)
        })
        .chain(
            status
                .container_statuses
                .iter()
                .flatten()
                .filter(|c| !c.ready),
        );
    if let Some(c) = containers.into_iter().next() {
        return Some(describe(&name, c));
    }
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    Some((
        FailedPod::new(
            &name,
            "",
            unscheduled.reason.as_deref().unwrap_or("Unschedulable"),
            unscheduled.message.as_deref().unwrap_or_default(),
        ),
        false,
    ))
}

/// `a=b,c in (d,e),!f`: a `LabelSelector` as a query.
pub(crate) fn selector_query(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        terms.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    terms.join(",")
}

/// Whether `meta`'s controller is the object with `uid`.
pub(crate) fn controlled_by(meta: &ObjectMeta, uid: Option<&str>) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// A ReplicaSet's pod template without the controller's hash label, as JSON.
pub(crate) fn template_without_hash(rs: &ReplicaSet) -> Value {
    let template = rs.spec.opt().and_then(|s| s.template.as_ref());
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    value
}

/// The Deployment's ReplicaSet for the expected template, as `FindNewReplicaSet`
/// picks it: the oldest one whose template (but for the hash label) is it.
pub(crate) fn new_replica_set<'a>(
    sets: &'a [ReplicaSet],
    dep: &Deployment,
    expected: &Expected,
) -> Option<&'a ReplicaSet> {
    let uid = dep.metadata.uid.as_deref();
    sets.iter()
        .filter(|rs| controlled_by(&rs.metadata, uid) && rs.metadata.deletion_timestamp.is_none())
        .filter(|rs| template_without_hash(rs) == *expected.template())
        .min_by_key(|rs| {
            (
                rs.metadata.creation_timestamp.clone(),
                rs.metadata.name.clone(),
            )
        })
}

/// Looks at a rollout's new pods when its Deployment has been quiet for a while,
/// more rarely the longer it stays quiet, and remembers for how long each
/// container's passing trouble has lasted.
pub(crate) struct PodCheck {
    window: Duration,
    first: Duration,
    interval: Duration,
    /// When to look next.
    pub(crate) next_at: Instant,
    /// `(pod, container)` → the trouble's group and when it was first seen.
    lasting: HashMap<(String, String), (&'static str, Instant)>,
    /// The new ReplicaSet, once found: its uid and pod selector.
    new_rs: Option<(String, String)>,
}

/// What a look at the new pods found.
pub(crate) enum Look {
    /// Nothing fatal (yet).
    Fine,
    /// A container failed for good.
    Failed(Box<FailedPod>),
}

impl PodCheck {
    /// Trouble that may heal fails a rollout after lasting `window`; the first look
    /// is a tenth of it (between 50 ms and 3 s) after the Deployment last changed.
    pub(crate) fn new(window: Duration) -> Self {
        let first = (window / 10).clamp(Duration::from_millis(50), Duration::from_secs(3));
        Self {
            window,
            first,
            interval: first,
            next_at: Instant::now() + first,
            lasting: HashMap::new(),
            new_rs: None,
        }
    }

    /// The Deployment moved: the pods are worth a look only after a new quiet spell.
    pub(crate) fn progressed(&mut self) {
        self.interval = self.first;
        self.next_at = Instant::now() + self.first;
    }

    /// The new ReplicaSet's uid and pod selector, listing ReplicaSets until it exists.
    async fn new_rs(
        &mut self,
        client: &kube::Client,
        dep: &Deployment,
        expected: &Expected,
    ) -> kube::Result<Option<(String, String)>> {
        if self.new_rs.is_none() {
            let ns = dep.metadata.namespace.as_deref().unwrap_or("default");
            let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
            let selector = dep
                .spec
                .opt()
                .map(|s| selector_query(&s.selector))
                .unwrap_or_default();
            let sets = api
                .list(&ListParams::default().labels(&selector))
                .await?
                .items;
            self.new_rs = new_replica_set(&sets, dep, expected).and_then(|rs| {
                let uid = rs.metadata.uid.clone()?;
                let selector = rs.spec.opt().map(|s| selector_query(&s.selector))?;
                Some((uid, selector))
            });
        }
        Ok(self.new_rs.clone())
    }

    /// The new ReplicaSet's live pods.
    async fn pods(
        &mut self,
        client: &kube::Client,
        dep: &Deployment,
        expected: &Expected,
    ) -> kube::Result<Vec<Pod>> {
        let Some((uid, selector)) = self.new_rs(client, dep, expected).await? else {
            return Ok(Vec::new());
        };
        let ns = dep.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        Ok(pods
            .into_iter()
            .filter(|p| {
                controlled_by(&p.metadata, Some(&uid)) && p.metadata.deletion_timestamp.is_none()
            })
            .collect())
    }

    /// Looks at the new pods: a fatal trouble, or a passing one that has lasted the
    /// window, fails the rollout. Schedules the next look.
    pub(crate) async fn look(
        &mut self,
        client: &kube::Client,
        dep: &Deployment,
        expected: &Expected,
        restart_budget: u32,
    ) -> kube::Result<Look> {
        let pods = self.pods(client, dep, expected).await?;
        let now = Instant::now();
        let mut seen = HashMap::new();
        let mut failed = None;
        for pod in &pods {
            for mut f in findings(pod, restart_budget) {
                pull_error(client, dep, &mut f, restart_budget).await;
                let key = (f.pod.pod.clone(), f.pod.container.clone());
                let fatal = match f.trouble {
                    Trouble::Fatal => true,
                    Trouble::Lasting(group) => {
                        let since = match self.lasting.get(&key) {
                            Some((g, since)) if *g == group => *since,
                            _ => now,
                        };
                        seen.insert(key, (group, since));
                        now.duration_since(since) >= self.window
                    }
                };
                if fatal && failed.is_none() {
                    failed = Some((f.pod, f.ran));
                }
            }
        }
        self.lasting = seen;
        if let Some((mut pod, ran)) = failed {
            if ran {
                pod.logs = logs(client, dep, &pod).await;
            }
            return Ok(Look::Failed(Box::new(pod)));
        }
        self.interval = (self.interval * 2).min(self.window.max(self.first));
        let until_lasting = self
            .lasting
            .values()
            .map(|(_, since)| *since + self.window)
            .min();
        self.next_at = until_lasting.map_or(now + self.interval, |t| t.min(now + self.interval));
        Ok(Look::Fine)
    }

    /// How many times the containers of the new pods have restarted in all; `None`
    /// when they cannot be read (the watch of the Deployment still sees unreadiness).
    pub(crate) async fn restarts(
        &mut self,
        client: &kube::Client,
        dep: &Deployment,
        expected: &Expected,
    ) -> Option<u64> {
        let pods = match self.pods(client, dep, expected).await {
            Ok(pods) => pods,
            Err(e) => {
                tracing::debug!(error = %e, "cannot count the new pods' restarts");
                return None;
            }
        };
        let count = pods
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .map(|c| u64::try_from(c.restart_count).unwrap_or(0))
            .sum();
        Some(count)
    }

    /// Why the rollout does not finish: its first failing or unready new pod, with
    /// its log; `None` when there is none or the pods cannot be read.
    pub(crate) async fn explain(
        &mut self,
        client: &kube::Client,
        dep: &Deployment,
        expected: &Expected,
        restart_budget: u32,
    ) -> Option<Box<FailedPod>> {
        self.new_rs = None;
        let pods = self.pods(client, dep, expected).await.ok()?;
        let (mut pod, ran) = pods
            .iter()
            .find_map(|p| {
                findings(p, restart_budget)
                    .into_iter()
                    .next()
                    .map(|f| (f.pod, f.ran))
            })
            .or_else(|| pods.iter().find_map(unready))?;
        if ran {
            pod.logs = logs(client, dep, &pod).await;
        }
        Some(Box::new(pod))
    }
}

/// While a pull backs off, its container says only "Back-off pulling image": the
/// kubelet's last `Failed` event for the pod says why the pull failed. That message
/// replaces the generic one, and a registry's refusal makes the trouble fatal.
async fn pull_error(client: &kube::Client, dep: &Deployment, f: &mut Finding, restart_budget: u32) {
    if f.pod.reason != "ImagePullBackOff" {
        return;
    }
    let ns = dep.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind=Pod,involvedObject.name={}",
        f.pod.pod
    ));
    let events = match api.list(&lp).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!(pod = %f.pod.pod, error = %e, "cannot read the pod's events");
            return;
        }
    };
    let why = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("Failed"))
        .filter_map(|e| Some((e.last_timestamp.clone(), e.message.clone()?)))
        .filter(|(_, m)| {
            m.contains(&format!("\"{}\"", image_of(f, dep))) || m.starts_with("Failed to pull")
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, m)| m);
    if let Some(why) = why {
        f.trouble = trouble("ErrImagePull", &why, f.pod.restarts, restart_budget)
            .unwrap_or(f.trouble.clone());
        f.pod.message = why;
    }
}

/// The image of the finding's container in the Deployment's template.
fn image_of(f: &Finding, dep: &Deployment) -> String {
    dep.spec
        .opt()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| {
            p.containers
                .iter()
                .chain(p.init_containers.iter().flatten())
                .find(|c| c.name == f.pod.container)
        })
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The last lines of a failed container's log (of its previous run when it
/// restarted); empty when it cannot be read.
async fn logs(client: &kube::Client, dep: &Deployment, pod: &FailedPod) -> Vec<String> {
    let ns = dep.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let params = LogParams {
        container: Some(pod.container.clone()),
        previous: pod.previous_logs,
        tail_lines: Some(LOG_LINES),
        limit_bytes: Some(LOG_BYTES),
        ..LogParams::default()
    };
    match api.logs(&pod.pod, &params).await {
        Ok(text) => {
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let skip = lines.len().saturating_sub(LOG_LINES as usize);
            lines.into_iter().skip(skip).collect()
        }
        Err(e) => {
            tracing::debug!(pod = %pod.pod, error = %e, "cannot read the failed container's log");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(statuses: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "api-1"},
            "status": {"containerStatuses": statuses}}))
        .expect("valid pod")
    }

    fn waiting(reason: &str, message: &str, restarts: i32) -> Value {
        json!([{"name": "api", "image": "x", "imageID": "", "ready": false, "restartCount": restarts,
            "state": {"waiting": {"reason": reason, "message": message}},
            "lastState": if restarts > 0 { json!({"terminated": {"exitCode": 2, "message": "panic: boom"}}) } else { json!({}) }}])
    }

    fn trouble_of(reason: &str, message: &str, restarts: i32) -> Option<Trouble> {
        findings(&pod(waiting(reason, message, restarts)), 2)
            .into_iter()
            .next()
            .map(|f| f.trouble)
    }

    #[test]
    fn what_heals_and_what_does_not() {
        assert_eq!(trouble_of("InvalidImageName", "", 0), Some(Trouble::Fatal));
        assert_eq!(
            trouble_of(
                "ErrImagePull",
                "failed to resolve reference: r/api@sha256:1: not found",
                0
            ),
            Some(Trouble::Fatal)
        );
        assert_eq!(
            trouble_of(
                "ErrImagePull",
                "unexpected status code 429 Too Many Requests",
                0
            ),
            Some(Trouble::Lasting("pull"))
        );
        assert_eq!(
            trouble_of("ImagePullBackOff", "Back-off pulling image", 0),
            Some(Trouble::Lasting("pull"))
        );
        assert_eq!(
            trouble_of("CreateContainerConfigError", "secret \"s\" not found", 0),
            Some(Trouble::Lasting("CreateContainerConfigError")),
            "the Secret may appear"
        );
        assert_eq!(
            trouble_of("CrashLoopBackOff", "back-off", 2),
            None,
            "within the budget"
        );
        assert_eq!(
            trouble_of("CrashLoopBackOff", "back-off", 3),
            Some(Trouble::Fatal)
        );
        assert_eq!(trouble_of("ContainerCreating", "", 0), None);
        let f = &findings(&pod(waiting("CrashLoopBackOff", "back-off", 3)), 2)[0];
        assert_eq!(
            f.pod.last_termination.as_deref(),
            Some("exit code 2: panic: boom")
        );
        assert!(f.pod.previous_logs && f.ran);
    }

    #[test]
    fn selectors_keep_their_expressions() {
        let selector: LabelSelector = serde_json::from_value(json!({"matchLabels": {"app": "api"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"}]}))
        .expect("valid");
        assert_eq!(
            selector_query(&selector),
            "app=api,tier in (web,edge),!canary"
        );
    }
}
