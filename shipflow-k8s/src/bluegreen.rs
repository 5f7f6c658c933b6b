//! Blue-green apps (`strategy = "blue-green"`): two Deployments, `<deployment>-blue`
//! and `<deployment>-green`, written from the same settings, behind an active and a
//! preview Service.
//!
//! A deploy rolls the colour the active Service does not select and watches its
//! rollout; it points the preview Service at it, switches the active Service's
//! selector only once the preview Service's EndpointSlices hold only the new pods,
//! all ready, as many as the replicas, then waits until the active Service's
//! EndpointSlices hold only new pods before the old colour is scaled down. Endpoint
//! state, not timers, decides each step. A rollback switches the selector back
//! (scaling the previous colour up first when it was scaled down).
//!
//! The old colour's scale-down after `scale_down_delay` does not hold the deploy:
//! with a delay of 0 the deploy does it before it returns; otherwise a task of the
//! deploying process does it when the delay is over, if the active Service still
//! selects the new colour and the old colour's Deployment is as the deploy left it
//! (a resourceVersion precondition). A process that ends before then leaves the old
//! colour running, which is safe (a rollback is then only a switch), and the next
//! deploy rolls its new image into that colour anyway.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shipflow_core::{
    BoxError, Context, DeployMeta, Deployed, Fingerprint, ImageRef, Revision, RollbackTarget,
    Rollout,
};

use crate::check::CheckUrl;
use crate::compat::Field;
use crate::deployer::{
    CHANGE_CAUSE_ANNOTATION, FINGERPRINT_ANNOTATION, GIT_SHA_ANNOTATION, Target,
};
use crate::from_config::{deployment, service};
use crate::lock::LockGuard;
use crate::retry::RetryPolicy;
use crate::spec::KubernetesTarget;
use crate::status::{Expected, Verdict, judge};
use crate::workload::{APP_LABEL, BlueGreen, COLOUR_LABEL, RELEASE_LABEL};
use crate::{EnvConfigMap, KubeDeployer, KubeError};

/// The annotation of a colour's Deployment with the number of the release it runs:
/// one more than the other colour's at each deploy that changes its pods.
pub const RELEASE_NUMBER_ANNOTATION: &str = "shipflow.dev/release-number";

/// The annotation a rollback writes on the colour it switches to, with the time.
pub const SWITCHED_AT_ANNOTATION: &str = "shipflow.dev/switched-at";

/// The field manager of switches and scale-downs.
const FIELD_MANAGER: &str = "shipflow-deploy";
/// The default seconds between the switch and the old colour's scale-down.
const DEFAULT_SCALE_DOWN_DELAY: u32 = 30;
/// The default seconds a promotion check may take.
const DEFAULT_CHECK_TIMEOUT: u32 = 10;

/// One of the two Deployments of a blue-green app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Colour {
    Blue,
    Green,
}

impl Colour {
    fn name(self) -> &'static str {
        match self {
            Self::Blue => "blue",
            Self::Green => "green",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Blue => Self::Green,
            Self::Green => Self::Blue,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "blue" => Some(Self::Blue),
            "green" => Some(Self::Green),
            _ => None,
        }
    }
}

/// Where a blue-green app lives: its Deployments' base name and its Services.
struct Layout<'a> {
    t: &'a Target,
    s: &'a KubernetesTarget,
    bg: BlueGreen,
    active: String,
    preview: String,
}

impl<'a> Layout<'a> {
    fn of(t: &'a Target, s: &'a KubernetesTarget) -> Self {
        let bg = s.blue_green.clone().unwrap_or_default();
        Self {
            active: bg
                .active_service
                .clone()
                .unwrap_or_else(|| t.deployment.clone()),
            preview: bg
                .preview_service
                .clone()
                .unwrap_or_else(|| format!("{}-preview", t.deployment)),
            t,
            s,
            bg,
        }
    }

    /// The Target of `colour`'s Deployment.
    fn colour(&self, colour: Colour) -> Target {
        Target {
            app: self.t.app.clone(),
            namespace: self.t.namespace.clone(),
            deployment: format!("{}-{}", self.t.deployment, colour.name()),
            container: self.t.container.clone(),
        }
    }

    fn describe(&self, colour: Colour) -> String {
        format!(
            "{} (blue-green, service {})",
            self.colour(colour).describe(),
            self.active
        )
    }

    /// A Service `name` selecting `colour`'s pods.
    fn service(&self, name: &str, colour: Colour) -> Option<Value> {
        let mut selector = serde_json::Map::new();
        selector.insert(APP_LABEL.into(), json!(self.t.app));
        selector.insert(COLOUR_LABEL.into(), json!(colour.name()));
        service(self.t, self.s, name, selector)
    }

    /// The label selector of `colour`'s pods of release `release`.
    fn pods(&self, colour: Colour, release: &str) -> String {
        format!(
            "{APP_LABEL}={},{COLOUR_LABEL}={},{RELEASE_LABEL}={release}",
            self.t.app,
            colour.name()
        )
    }

    fn replicas(&self) -> i32 {
        self.s
            .replicas
            .and_then(|r| i32::try_from(r).ok())
            .unwrap_or(1)
    }

    fn error(&self, colour: Colour, step: &'static str, cause: String) -> KubeError {
        KubeError::BlueGreen {
            app: self.t.app.clone(),
            workload: self.colour(colour).workload(),
            step,
            cause,
        }
    }
}

/// The colour a Service selects.
fn selected(svc: &Service) -> Option<Colour> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()?
        .get(COLOUR_LABEL)
        .and_then(|c| Colour::parse(c))
}

fn label<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref()?.get(key).cloned()
}

/// The release label of the pods a colour's Deployment makes now.
fn release_of(dep: &Deployment) -> Option<String> {
    dep.spec
        .opt()?
        .template
        .metadata
        .as_ref()
        .and_then(|m| label(m, RELEASE_LABEL))
        .map(str::to_owned)
}

fn number_of(dep: &Deployment) -> Option<u64> {
    annotation(&dep.metadata, RELEASE_NUMBER_ANNOTATION)?
        .parse()
        .ok()
}

fn replicas_of(dep: &Deployment) -> i32 {
    dep.spec.opt().and_then(|s| s.replicas).unwrap_or(1)
}

fn complete(dep: &Deployment) -> bool {
    replicas_of(dep) > 0 && judge(dep, &Expected::current(dep)) == Verdict::Complete
}

/// A short hash of a pod template: the release label of its pods.
fn release_hash(template: &Value) -> String {
    let digest = Sha256::digest(template.to_string().as_bytes());
    digest[..5].iter().map(|b| format!("{b:02x}")).collect()
}

impl KubeDeployer {
    fn client_api<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The app's colour Deployments (one list) and the colour its active Service
    /// selects (one read).
    async fn colours(
        &self,
        l: &Layout<'_>,
        step: &'static str,
        ctx: &Context,
    ) -> Result<(BTreeMap<Colour, Deployment>, Option<Colour>), KubeError> {
        let t = l.t;
        let deps: Api<Deployment> = self.client_api(&t.namespace);
        let lp = ListParams::default().labels(&format!("{APP_LABEL}={},{COLOUR_LABEL}", t.app));
        let list = self
            .retry
            .run(step, false, ctx.cancellation(), || deps.list(&lp))
            .await
            .map_err(t.failed(step))?;
        let mut colours = BTreeMap::new();
        for dep in list.items {
            if let Some(c) = label(&dep.metadata, COLOUR_LABEL).and_then(Colour::parse)
                && dep.metadata.name.as_deref() == Some(l.colour(c).deployment.as_str())
            {
                colours.insert(c, dep);
            }
        }
        let svcs: Api<Service> = self.client_api(&t.namespace);
        let active = self
            .retry
            .run(step, false, ctx.cancellation(), || svcs.get_opt(&l.active))
            .await
            .map_err(|e| {
                e.about(
                    &t.app,
                    &format!("service {}/{}", t.namespace, l.active),
                    step,
                )
            })?;
        Ok((colours, active.as_ref().and_then(selected)))
    }

    /// Points Service `name` at `colour` (server-side apply).
    async fn point(
        &self,
        l: &Layout<'_>,
        name: &str,
        colour: Colour,
        step: &'static str,
        ctx: &Context,
    ) -> Result<(), KubeError> {
        let body = l
            .service(name, colour)
            .ok_or_else(|| l.error(colour, step, "no port has a service_port".into()))?;
        self.apply_object(l.t, ("v1", "Service", "services"), name, &body, step, ctx)
            .await
    }

    /// Runs a promotion check, if one is configured.
    async fn promotion_check(
        l: &Layout<'_>,
        url: Option<&String>,
        ctx: &Context,
    ) -> Result<(), String> {
        let Some(url) = url else { return Ok(()) };
        let url = CheckUrl::parse(url)?;
        let timeout = Duration::from_secs(u64::from(
            l.bg.check_timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT),
        ));
        let status = url
            .get(timeout)
            .await
            .map_err(|e| format!("GET {url} {e}"))?;
        ctx.message(format!("GET {url}: HTTP {status}"));
        Ok(())
    }

    /// Deploys `image` to a blue-green app (see the [module docs](self)).
    pub(crate) async fn deploy_blue_green(
        &self,
        t: &Target,
        s: &KubernetesTarget,
        image: &ImageRef,
        meta: &DeployMeta,
        ctx: &Context,
        lock: Option<LockGuard>,
    ) -> Result<Rollout, BoxError> {
        let l = Layout::of(t, s);
        let (deps, active) = self.colours(&l, "read colours", ctx).await?;
        let new = active.map_or(Colour::Blue, Colour::other);
        let nt = l.colour(new);
        if deps
            .get(&new)
            .is_some_and(|d| d.spec.opt().and_then(|s| s.paused) == Some(true))
        {
            return Err(nt.paused("deploy").into());
        }
        let maps = s
            .config_maps
            .iter()
            .map(|c| EnvConfigMap::from_env_file(&c.name, &c.path))
            .collect::<Result<Vec<_>, _>>()?;
        let wanted = image.to_string();
        let mut body = deployment(&nt, s, &wanted, meta, None, &maps);
        let release = release_hash(&body["spec"]["template"]);
        let running = active.and_then(|a| deps.get(&a));
        if let Some(dep) = running
            && release_of(dep).as_deref() == Some(release.as_str())
            && complete(dep)
        {
            let a = active.unwrap_or(new);
            ctx.message(format!("{wanted} already takes {}'s traffic", l.active));
            return Ok(Rollout::new(wanted, l.describe(a), false).with_revision(number_of(dep)));
        }
        let number = deps.values().filter_map(number_of).max().unwrap_or(0) + 1;
        body["metadata"]["labels"][COLOUR_LABEL] = json!(new.name());
        body["metadata"]["annotations"][RELEASE_NUMBER_ANNOTATION] = json!(number.to_string());
        body["spec"]["selector"]["matchLabels"][COLOUR_LABEL] = json!(new.name());
        body["spec"]["template"]["metadata"]["labels"][COLOUR_LABEL] = json!(new.name());
        body["spec"]["template"]["metadata"]["labels"][RELEASE_LABEL] = json!(release);
        body["spec"]["replicas"] = json!(l.replicas());
        let describe = l.describe(new);
        if ctx.dry_run() {
            ctx.message(format!(
                "would roll {describe} to {wanted}, then switch service {} to {}",
                l.active,
                new.name()
            ));
            return Ok(Rollout::new(wanted, describe, true));
        }
        nt.check_cancelled(ctx, "apply deployment")?;
        if let Some(lock) = &lock {
            lock.check("apply deployment")?;
        }
        self.create_config_maps(t, &maps, ctx).await?;
        if let Some(name) = &s.image_pull_secret {
            let secret = self.pull_secret(t, name, image.registry())?;
            self.apply_object(
                t,
                ("v1", "Secret", "secrets"),
                name,
                &secret,
                "write image pull secret",
                ctx,
            )
            .await?;
        }
        self.point(&l, &l.preview, new, "point preview service", ctx)
            .await?;
        ctx.message(format!("rolling {describe} to {wanted}"));
        let api: Api<Deployment> = self.client_api(&t.namespace);
        let applied = self.apply_deployment(&nt, &api, &body, ctx).await?;
        let expected = Expected::after_write(&applied);
        self.wait_for_rollout(&nt, applied, expected, "watch rollout", ctx, lock.as_ref())
            .await?;
        let replicas = usize::try_from(l.replicas()).unwrap_or(1);
        let step = "wait for preview endpoints";
        self.wait_endpoints(&nt, &l.preview, &l.pods(new, &release), replicas, step, ctx)
            .await?;
        let untouched = match active {
            Some(a) => format!("service {} still selects {}", l.active, a.name()),
            None => format!("service {} was not created", l.active),
        };
        Self::promotion_check(&l, l.bg.pre_promotion.as_ref(), ctx)
            .await
            .map_err(|e| l.error(new, "pre-promotion check", format!("{e}; {untouched}")))?;
        let step = "switch active service";
        nt.check_cancelled(ctx, step)?;
        if let Some(lock) = &lock {
            lock.check(step)?;
        }
        self.point(&l, &l.active, new, step, ctx).await?;
        ctx.message(format!("switched service {} to {}", l.active, new.name()));
        let after_switch = async {
            self.wait_endpoints(
                &nt,
                &l.active,
                &l.pods(new, &release),
                replicas,
                "wait for active endpoints",
                ctx,
            )
            .await
            .map_err(|e| ("wait for active endpoints", e.to_string()))?;
            Self::promotion_check(&l, l.bg.post_promotion.as_ref(), ctx)
                .await
                .map_err(|e| ("post-promotion check", e))
        };
        if let Err((step, cause)) = after_switch.await {
            let back = match active {
                Some(old) => match self.point(&l, &l.active, old, "switch back", ctx).await {
                    Ok(()) => format!("switched service {} back to {}", l.active, old.name()),
                    Err(e) => format!(
                        "switching service {} back to {} failed too: {e}",
                        l.active,
                        old.name()
                    ),
                },
                None => format!("no previous colour to switch service {} back to", l.active),
            };
            return Err(l.error(new, step, format!("{cause}; {back}")).into());
        }
        if let Some(old) = active
            && deps.get(&old).is_some_and(|d| replicas_of(d) > 0)
            && !l.bg.keep_previous
        {
            self.scale_down_old(&l, old, new, ctx).await;
        }
        for config in &maps {
            self.prune_config_maps(&t.namespace, config, &config.name(), ctx)
                .await;
        }
        Ok(Rollout::new(wanted, describe, true).with_revision(Some(number)))
    }

    /// Scales `old` down now (delay 0), or in a task after the delay.
    async fn scale_down_old(&self, l: &Layout<'_>, old: Colour, new: Colour, ctx: &Context) {
        let delay = l.bg.scale_down_delay.unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
        let down = ScaleDown {
            client: self.client.clone(),
            retry: self.retry,
            namespace: l.t.namespace.clone(),
            deployment: l.colour(old).deployment,
            service: l.active.clone(),
            new,
        };
        if delay == 0 {
            match down.run().await {
                Ok(true) => ctx.message(format!("scaled {} down to 0", down.deployment)),
                Ok(false) => {}
                Err(e) => ctx.message(format!(
                    "app {}: scale down old colour: deployment {}/{}: {e}; it keeps running",
                    l.t.app, down.namespace, down.deployment
                )),
            }
            return;
        }
        // The Deployment as it is now: the task scales it down only if nobody
        // wrote it since (a rollback to it, the next deploy into it).
        let api: Api<Deployment> = self.client_api(&l.t.namespace);
        let step = "read old colour";
        let read = self
            .retry
            .run(step, false, ctx.cancellation(), || {
                api.get_opt(&down.deployment)
            })
            .await;
        let Ok(Some(Deployment {
            metadata:
                kube::api::ObjectMeta {
                    resource_version: Some(resource_version),
                    ..
                },
            ..
        })) = read
        else {
            ctx.message(format!(
                "app {}: scale down old colour: cannot read deployment {}/{}; it keeps running",
                l.t.app, down.namespace, down.deployment
            ));
            return;
        };
        ctx.message(format!(
            "{} is scaled down in {delay} s if this process still runs then",
            down.deployment
        ));
        let app = l.t.app.clone();
        let resource_version = Some(resource_version);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
            match down.run_if_unchanged(resource_version).await {
                Ok(done) => {
                    tracing::info!(%app, deployment = %down.deployment, done, "old colour scale-down")
                }
                Err(e) => {
                    tracing::warn!(%app, deployment = %down.deployment, error = %e, "old colour scale-down failed")
                }
            }
        });
    }

    /// What a blue-green app runs: the image of the colour its active Service selects.
    pub(crate) async fn current_blue_green(
        &self,
        t: &Target,
        s: &KubernetesTarget,
        ctx: &Context,
    ) -> Result<Option<Deployed>, BoxError> {
        let l = Layout::of(t, s);
        let (deps, active) = self.colours(&l, "read colours", ctx).await?;
        let Some(dep) = active.and_then(|a| deps.get(&a)) else {
            return Ok(None);
        };
        let ct = l.colour(active.unwrap_or(Colour::Blue));
        let image = image_of(&ct, dep)?;
        Ok(Some(
            Deployed::new(image)
                .with_revision(number_of(dep))
                .with_fingerprint(
                    annotation(&dep.metadata, FINGERPRINT_ANNOTATION)
                        .filter(|_| complete(dep))
                        .map(Fingerprint),
                )
                .with_git_sha(annotation(&dep.metadata, GIT_SHA_ANNOTATION)),
        ))
    }

    /// The releases the two colours hold, oldest first; the one the active Service
    /// selects is current.
    pub(crate) async fn history_blue_green(
        &self,
        t: &Target,
        s: &KubernetesTarget,
        ctx: &Context,
    ) -> Result<Vec<Revision>, BoxError> {
        let l = Layout::of(t, s);
        let (deps, active) = self.colours(&l, "history", ctx).await?;
        let mut revisions: Vec<Revision> = deps
            .iter()
            .filter_map(|(c, dep)| {
                let number = number_of(dep)?;
                Some(
                    Revision::new(number, image_of(&l.colour(*c), dep).unwrap_or_default())
                        .with_change_cause(annotation(&dep.metadata, CHANGE_CAUSE_ANNOTATION))
                        .with_current(Some(*c) == active),
                )
            })
            .collect();
        revisions.sort_by_key(|r| r.number);
        Ok(revisions)
    }

    /// Switches the active Service back to the other colour (or the colour holding
    /// release `n`), scaling it up first when it was scaled down.
    pub(crate) async fn rollback_blue_green(
        &self,
        t: &Target,
        s: &KubernetesTarget,
        to: RollbackTarget,
        ctx: &Context,
        lock: Option<LockGuard>,
    ) -> Result<Rollout, BoxError> {
        let l = Layout::of(t, s);
        let step = "rollback";
        let (deps, active) = self.colours(&l, step, ctx).await?;
        let wanted = match to {
            RollbackTarget::Previous => active.map(Colour::other),
            RollbackTarget::Revision(n) => deps
                .iter()
                .find(|(_, d)| number_of(d) == Some(n))
                .map(|(c, _)| *c),
        };
        let Some((colour, dep)) = wanted.and_then(|c| deps.get(&c).map(|d| (c, d))) else {
            return Err(KubeError::NoRevision {
                app: t.app.clone(),
                workload: format!("{}/{}", t.namespace, l.active),
                wanted: match to {
                    RollbackTarget::Previous => "previous".into(),
                    RollbackTarget::Revision(n) => n.to_string(),
                },
                available: deps.values().filter_map(number_of).collect(),
            }
            .into());
        };
        let ct = l.colour(colour);
        let image = image_of(&ct, dep)?;
        let describe = l.describe(colour);
        if Some(colour) == active {
            return Ok(Rollout::new(image, describe, false).with_revision(number_of(dep)));
        }
        if ctx.dry_run() {
            ctx.message(format!("would switch service {} to {describe}", l.active));
            return Ok(Rollout::new(image, describe, true).with_revision(number_of(dep)));
        }
        ct.check_cancelled(ctx, step)?;
        if let Some(lock) = &lock {
            lock.check(step)?;
        }
        let replicas = if replicas_of(dep) > 0 {
            replicas_of(dep)
        } else {
            l.replicas()
        };
        // Always a write, even when the colour runs: its new resourceVersion stops a
        // pending scale-down of it (see the module docs) that read the Service
        // before this switch.
        let api: Api<Deployment> = self.client_api(&t.namespace);
        let patch = json!({
            "metadata": {"annotations": {SWITCHED_AT_ANNOTATION: k8s_openapi::jiff::Timestamp::now().to_string()}},
            "spec": {"replicas": replicas},
        });
        let patch = Patch::Merge(&patch);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let scaled = self
            .retry
            .run("scale up", false, ctx.cancellation(), || {
                api.patch(&ct.deployment, &params, &patch)
            })
            .await
            .map_err(ct.failed("scale up"))?;
        if !complete(&scaled) {
            ctx.message(format!("scaling {} up to {replicas}", ct.workload()));
            let expected = Expected::after_write(&scaled).going_back();
            self.wait_for_rollout(&ct, scaled, expected, step, ctx, lock.as_ref())
                .await?;
        }
        self.point(&l, &l.active, colour, step, ctx).await?;
        ctx.message(format!(
            "switched service {} to {}",
            l.active,
            colour.name()
        ));
        let release = release_of(dep).unwrap_or_default();
        let count = usize::try_from(replicas).unwrap_or(1);
        self.wait_endpoints(
            &ct,
            &l.active,
            &l.pods(colour, &release),
            count,
            "wait for active endpoints",
            ctx,
        )
        .await?;
        Ok(Rollout::new(image, describe, true).with_revision(number_of(dep)))
    }
}

/// The image of the app's container in a colour's Deployment.
fn image_of(ct: &Target, dep: &Deployment) -> Result<String, KubeError> {
    let containers = dep
        .spec
        .opt()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .find(|c| c.name == ct.container)
        .map(|c| c.image.clone().unwrap_or_default())
        .ok_or_else(|| KubeError::NoContainer {
            app: ct.app.clone(),
            workload: ct.workload(),
            step: "read colours",
            container: ct.container.clone(),
            available: containers.iter().map(|c| c.name.clone()).collect(),
        })
}

/// The old colour's scale-down, owned so that a task can run it later.
struct ScaleDown {
    client: Client,
    retry: RetryPolicy,
    namespace: String,
    deployment: String,
    service: String,
    new: Colour,
}

impl ScaleDown {
    async fn run(&self) -> Result<bool, kube::Error> {
        self.run_if_unchanged(None).await
    }

    /// Scales the old colour to 0 unless the active Service no longer selects the
    /// new colour (a rollback happened) or, with `resource_version`, the old
    /// colour's Deployment changed since: `Ok(false)` then.
    async fn run_if_unchanged(
        &self,
        resource_version: Option<String>,
    ) -> Result<bool, kube::Error> {
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let svc = svcs.get(&self.service).await?;
        if selected(&svc) != Some(self.new) {
            return Ok(false);
        }
        let deps: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut patch = json!({"spec": {"replicas": 0}});
        if let Some(rv) = resource_version {
            patch["metadata"] = json!({"resourceVersion": rv});
        }
        let patch = Patch::Merge(&patch);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let never = shipflow_core::CancellationToken::new();
        match self
            .retry
            .run("scale down old colour", false, &never, || {
                deps.patch(&self.deployment, &params, &patch)
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(crate::retry::Failure::Api(kube::Error::Api(s))) if s.code == 409 => Ok(false),
            Err(crate::retry::Failure::Api(e)) => Err(e),
            Err(crate::retry::Failure::Cancelled) => Ok(false),
        }
    }
}
