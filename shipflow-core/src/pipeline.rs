//! [`Pipeline`]: plan, then build → push → deploy each changed app, and report.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    App, BoxError, BuildRequest, ChangeDetector, CommandHooks, Context, DeployItem, DeployMeta,
    Deployed, Deployer, Digest, EventKind, EventSink, Fingerprint, Hooked, ImageBuilder, ImageRef,
    PushReport, Reason, Registry, Restored, RevisionInfo, RollbackTarget, Rollout, Selection,
    Stage, TagValues, TargetRollout, TargetStatus, TargetsFailed, TemplateError, UnknownApp,
    Workspace, analyze, caused_by, find_cause,
};

/// What happens to the other apps when one fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Start no further app after a failure; apps already under way finish
    /// (nothing is left half-deployed).
    #[default]
    FailFast,
    /// Carry on with every other app.
    Continue,
}

/// Why a pipeline could not be built, planned or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A part the configuration needs was not given to the builder.
    #[error("pipeline has no {part}: {hint}")]
    MissingPart {
        /// The missing part.
        part: &'static str,
        /// How to supply it or do without it.
        hint: &'static str,
    },
    /// The concurrency limit is zero.
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    /// Change detection failed.
    #[error("detect: {source}")]
    Detect {
        /// The detector's error.
        #[source]
        source: BoxError,
    },
    /// An app's fingerprint could not be computed.
    #[error("{app}: detect: cannot fingerprint inputs: {source}")]
    Fingerprint {
        /// The app.
        app: String,
        /// The detector's error.
        #[source]
        source: BoxError,
    },
    /// An app's tag could not be rendered.
    #[error("{app}: tag: {source}")]
    Tag {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: TemplateError,
    },
    /// An app's image and tag do not make a reference.
    #[error("{app}: tag: {source}")]
    Image {
        /// The app.
        app: String,
        /// Why.
        #[source]
        source: crate::ReferenceError,
    },
    /// The app filter names an unknown app.
    #[error(transparent)]
    UnknownApp(#[from] UnknownApp),
}

/// One app of a [`Plan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PlannedApp {
    /// The app.
    pub app: String,
    /// Why it is in.
    pub reasons: Vec<Reason>,
    /// Its input fingerprint at the head revision.
    pub fingerprint: Fingerprint,
    /// The tag it will be pushed under.
    pub tag: String,
    /// Further tags moved to the pushed image (`tags = [...]` past the first).
    #[serde(default)]
    pub extra_tags: Vec<String>,
    /// The image it will be pushed as, `repository:tag`.
    pub image: ImageRef,
    /// The stages that will run.
    pub stages: Vec<Stage>,
}

/// What a run would do, with no side effects: printable, serialisable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Plan {
    /// The base revision as given, if any.
    pub base: Option<String>,
    /// The head revision as given.
    pub head: String,
    /// Facts about the head revision (after `GIT_SHA`).
    pub revision: RevisionInfo,
    /// How many paths changed between base and head.
    pub changed_paths: usize,
    /// The apps to ship, in name order.
    pub apps: Vec<PlannedApp>,
    /// The apps left alone.
    pub unchanged: Vec<String>,
}

/// How an app's run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Built, pushed and rolled out.
    Deployed,
    /// Built and pushed; deploy was skipped.
    Pushed,
    /// Nothing to roll: that image (or fingerprint) already runs.
    Unchanged,
    /// A stage failed; the workload was rolled back to what ran before.
    RolledBack {
        /// The stage that failed.
        stage: Stage,
    },
    /// A stage failed and nothing was rolled back (see `error` and `note`).
    Failed {
        /// The stage that failed.
        stage: Stage,
    },
    /// Not started, because another app failed under [`FailurePolicy::FailFast`].
    Skipped,
    /// Not started or stopped early, because the run was cancelled.
    Cancelled {
        /// The stage under way when the cancel came; `None` when the app had not
        /// started.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<Stage>,
        /// Whether what ran before runs again: the deployer restored it, or the
        /// pipeline rolled the cancelled deploy back.
        #[serde(default)]
        restored: bool,
    },
}

impl Outcome {
    /// Whether this outcome is a failure of the app.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Outcome::RolledBack { .. } | Outcome::Failed { .. } | Outcome::Cancelled { .. }
        )
    }
}

/// Milliseconds spent per stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StageTimings {
    /// Build.
    pub build_ms: u64,
    /// Push.
    pub push_ms: u64,
    /// Deploy, including watching the rollout.
    pub deploy_ms: u64,
    /// Rollback.
    pub rollback_ms: u64,
}

/// What happened to one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AppReport {
    /// The app.
    pub app: String,
    /// Why it was in.
    pub reasons: Vec<Reason>,
    /// How it ended.
    pub outcome: Outcome,
    /// Its input fingerprint.
    pub fingerprint: Fingerprint,
    /// The tag pushed.
    pub tag: String,
    /// Further tags moved to the image, by manifest only.
    #[serde(default)]
    pub extra_tags: Vec<String>,
    /// The digest-pinned image, `repository@sha256:…`, once known.
    pub image: Option<ImageRef>,
    /// What the push did.
    pub push: Option<PushReport>,
    /// What the rollout did.
    pub rollout: Option<Rollout>,
    /// What the rollback did, if one ran.
    pub rollback: Option<Rollout>,
    /// Per target, for a deployer that rolls the app out to several (clusters,
    /// regions): how each ended, and what its rollback did. Empty for one target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRollout>,
    /// Time per stage.
    pub timings: StageTimings,
    /// The error, with its causes, when a stage failed.
    pub error: Option<String>,
    /// Anything else a person needs to know (e.g. why no rollback ran).
    pub note: Option<String>,
}

/// What a run did, per app, and in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// The plan the run carried out.
    pub plan: Plan,
    /// Per app, in name order.
    pub apps: Vec<AppReport>,
    /// Wall time of the run.
    pub duration_ms: u64,
}

/// A one-word summary of a [`Report`], for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// No app needed anything.
    NothingToDo,
    /// Every app succeeded.
    Succeeded,
    /// Some app failed, and every failed rollout was rolled back.
    RolledBack,
    /// Some app failed and was not rolled back.
    Failed,
    /// The run was cancelled before every app finished (see each app's outcome for
    /// what was stopped and what restored).
    Cancelled,
}

impl Report {
    /// The run's summary: failures first, then rollbacks, then success.
    pub fn status(&self) -> RunStatus {
        let cancelled = |o: &Outcome| matches!(o, Outcome::Cancelled { .. });
        if self.apps.iter().any(|a| cancelled(&a.outcome)) {
            RunStatus::Cancelled
        } else if self
            .apps
            .iter()
            .any(|a| matches!(a.outcome, Outcome::Failed { .. }))
        {
            RunStatus::Failed
        } else if self
            .apps
            .iter()
            .any(|a| matches!(a.outcome, Outcome::RolledBack { .. }))
        {
            RunStatus::RolledBack
        } else if self
            .apps
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Unchanged | Outcome::Skipped))
        {
            RunStatus::NothingToDo
        } else {
            RunStatus::Succeeded
        }
    }

    /// Bytes uploaded by every push.
    pub fn bytes_pushed(&self) -> u64 {
        self.apps
            .iter()
            .filter_map(|a| a.push.as_ref())
            .map(|p| p.bytes_uploaded)
            .sum()
    }
}

/// Builds a [`Pipeline`]. Only the detector is always needed; to run, the registry
/// is needed, the builder unless builds are skipped, the deployer unless deploys are.
pub struct PipelineBuilder {
    workspace: Workspace,
    detector: Option<Arc<dyn ChangeDetector>>,
    builder: Option<Arc<dyn ImageBuilder>>,
    registry: Option<Arc<dyn Registry>>,
    deployer: Option<Arc<dyn Deployer>>,
    settings: Settings,
}

#[derive(Debug, Clone)]
struct Settings {
    concurrency: usize,
    failure_policy: FailurePolicy,
    rollback_on_failure: bool,
    skip_build: bool,
    skip_deploy: bool,
    dry_run: bool,
    build_number: Option<String>,
    events: EventSink,
    cancel: CancellationToken,
}

impl PipelineBuilder {
    /// The change detector.
    pub fn detector(mut self, detector: Arc<dyn ChangeDetector>) -> Self {
        self.detector = Some(detector);
        self
    }

    /// The image builder.
    pub fn builder(mut self, builder: Arc<dyn ImageBuilder>) -> Self {
        self.builder = Some(builder);
        self
    }

    /// The registry.
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The deployer.
    pub fn deployer(mut self, deployer: Arc<dyn Deployer>) -> Self {
        self.deployer = Some(deployer);
        self
    }

    /// How many apps are worked on at once; default 4.
    pub fn concurrency(mut self, apps: usize) -> Self {
        self.settings.concurrency = apps;
        self
    }

    /// What to do with the other apps when one fails; default fail fast.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.settings.failure_policy = policy;
        self
    }

    /// Roll a failed rollout back to what ran before; default on. Only this run's own
    /// change is undone: when the workload does not run this run's image after the
    /// failure (the deploy gave up before changing anything), nothing is rolled back,
    /// and a deployer that restored the old version itself ([`Restored`]) is not
    /// asked to roll back again. A deployer that failed with per-target results
    /// ([`TargetsFailed`]: some clusters failed, others did not) is asked to roll
    /// back without that check, which it makes per target itself; the report then
    /// shows each target's rollback.
    pub fn rollback_on_failure(mut self, rollback: bool) -> Self {
        self.settings.rollback_on_failure = rollback;
        self
    }

    /// Skip the build and push: deploy the image already in the registry under the tag.
    pub fn skip_build(mut self, skip: bool) -> Self {
        self.settings.skip_build = skip;
        self
    }

    /// Skip the deploy: build and push only.
    pub fn skip_deploy(mut self, skip: bool) -> Self {
        self.settings.skip_deploy = skip;
        self
    }

    /// Pass dry-run to every adapter: they report what they would do and change nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.settings.dry_run = dry_run;
        self
    }

    /// The CI build number for `${BUILD_NUMBER}`.
    pub fn build_number(mut self, number: Option<String>) -> Self {
        self.settings.build_number = number;
        self
    }

    /// Where progress events go.
    pub fn events(mut self, sink: EventSink) -> Self {
        self.settings.events = sink;
        self
    }

    /// Cancel the run through `token`: no new stage starts, adapters stop at safe points.
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.settings.cancel = token;
        self
    }

    /// Builds the pipeline. Only the detector is needed to plan; [`Pipeline::run`]
    /// checks that the parts its settings need are there.
    pub fn build(self) -> Result<Pipeline, PipelineError> {
        if self.settings.concurrency == 0 {
            return Err(PipelineError::ZeroConcurrency);
        }
        let detector = self.detector.ok_or(PipelineError::MissingPart {
            part: "change detector",
            hint: "call .detector(…), e.g. with shipflow_git::GitChangeDetector",
        })?;
        // The hooks of shipflow.toml run around whatever builder and deployer were given.
        let hooks = Arc::new(CommandHooks::new(&self.workspace));
        let (builder, deployer) = if hooks.any(self.workspace.apps()) {
            (
                self.builder
                    .map(|b| Arc::new(Hooked::new(b, hooks.clone())) as Arc<dyn ImageBuilder>),
                self.deployer
                    .map(|d| Arc::new(Hooked::new(d, hooks.clone())) as Arc<dyn Deployer>),
            )
        } else {
            (self.builder, self.deployer)
        };
        Ok(Pipeline {
            inner: Arc::new(Inner {
                workspace: self.workspace,
                detector,
                builder,
                registry: self.registry,
                deployer,
                settings: self.settings,
            }),
        })
    }
}

/// The orchestrator: plans from the change detector, then runs build → push →
/// deploy for each changed app with bounded concurrency, and reports.
///
/// See the crate docs for an example.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

struct Inner {
    workspace: Workspace,
    detector: Arc<dyn ChangeDetector>,
    builder: Option<Arc<dyn ImageBuilder>>,
    registry: Option<Arc<dyn Registry>>,
    deployer: Option<Arc<dyn Deployer>>,
    settings: Settings,
}

impl Pipeline {
    /// Starts a builder for `workspace`.
    pub fn builder(workspace: Workspace) -> PipelineBuilder {
        PipelineBuilder {
            workspace,
            detector: None,
            builder: None,
            registry: None,
            deployer: None,
            settings: Settings {
                concurrency: 4,
                failure_policy: FailurePolicy::default(),
                rollback_on_failure: true,
                skip_build: false,
                skip_deploy: false,
                dry_run: false,
                build_number: None,
                events: EventSink::default(),
                cancel: CancellationToken::new(),
            },
        }
    }

    /// The workspace.
    pub fn workspace(&self) -> &Workspace {
        &self.inner.workspace
    }

    fn context(&self) -> Context {
        let s = &self.inner.settings;
        Context::new()
            .with_cancellation(s.cancel.clone())
            .with_events(s.events.clone())
            .with_dry_run(s.dry_run)
    }

    /// Works out what a run would do. Only the change detector is called (read-only);
    /// nothing is built, pushed or deployed. Without `base`, every app is in with
    /// [`Reason::NoBase`], and a run skips those whose fingerprint already runs.
    pub async fn plan(
        &self,
        base: Option<&str>,
        head: &str,
        selection: &Selection,
    ) -> Result<Plan, PipelineError> {
        let inner = &self.inner;
        let ctx = self.context().scoped(None, Stage::Detect);
        ctx.emit(EventKind::Started);
        let detect = |source| PipelineError::Detect { source };
        let mut revision = inner.detector.revision(head, &ctx).await.map_err(detect)?;
        if let Some(sha) = inner.workspace.git_sha_override() {
            revision.short_sha = sha.chars().take(7).collect();
            revision.sha = sha.to_owned();
        }
        let changes = match base {
            Some(base) => {
                inner
                    .detector
                    .changed_paths(base, head, &ctx)
                    .await
                    .map_err(detect)?
                    .paths
            }
            None => Vec::new(),
        };
        let no_base = base.is_none() && !selection.all;
        let selection = Selection {
            all: selection.all || no_base,
            apps: selection.apps.clone(),
        };
        let mut set = analyze(&inner.workspace, &changes, &selection)?;
        if no_base {
            for reasons in set.apps.values_mut() {
                *reasons = vec![Reason::NoBase];
            }
        }
        let mut apps = Vec::with_capacity(set.apps.len());
        for (name, reasons) in set.apps {
            let app = inner
                .workspace
                .app(&name)
                .expect("analyze returns workspace apps");
            let fingerprint = inner
                .detector
                .fingerprint(head, &inner.workspace.inputs(app), &ctx)
                .await
                .map_err(|source| PipelineError::Fingerprint {
                    app: name.clone(),
                    source,
                })?
                .with_settings(&app.settings());
            let values = TagValues::new(
                &revision,
                Some(&fingerprint),
                inner.settings.build_number.clone(),
            );
            let render = |template: &crate::TagTemplate| {
                template
                    .render(&values)
                    .map_err(|source| PipelineError::Tag {
                        app: name.clone(),
                        source,
                    })
            };
            let tag = render(inner.workspace.tag_template())?;
            let mut extra_tags = Vec::new();
            for template in inner.workspace.extra_tag_templates() {
                let extra = render(template)?;
                if extra != tag && !extra_tags.contains(&extra) {
                    extra_tags.push(extra);
                }
            }
            let mut stages = Vec::new();
            if !inner.settings.skip_build {
                stages.extend([Stage::Build, Stage::Push]);
            }
            if !inner.settings.skip_deploy {
                stages.push(Stage::Deploy);
            }
            let image = app
                .image
                .with_tag(&tag)
                .map_err(|source| PipelineError::Image {
                    app: name.clone(),
                    source,
                })?;
            apps.push(PlannedApp {
                extra_tags,
                image,
                tag,
                app: name,
                reasons,
                fingerprint,
                stages,
            });
        }
        ctx.emit(EventKind::Finished { ok: true });
        Ok(Plan {
            base: base.map(str::to_owned),
            head: head.to_owned(),
            revision,
            changed_paths: changes.len(),
            apps,
            unchanged: set.unchanged,
        })
    }

    /// Plans, then builds, pushes and deploys every app of the plan. An app's
    /// failure is in its [`AppReport`]; `Err` is only for failures before any app
    /// started (a missing part, detection, configuration).
    pub async fn run(
        &self,
        base: Option<&str>,
        head: &str,
        selection: &Selection,
    ) -> Result<Report, PipelineError> {
        self.check_parts()?;
        let plan = self.plan(base, head, selection).await?;
        self.execute(plan).await
    }

    fn check_parts(&self) -> Result<(), PipelineError> {
        let inner = &self.inner;
        let s = &inner.settings;
        if !s.skip_build && inner.builder.is_none() {
            return Err(PipelineError::MissingPart {
                part: "image builder",
                hint: "call .builder(…), or .skip_build(true) to deploy images already pushed",
            });
        }
        if inner.registry.is_none() {
            return Err(PipelineError::MissingPart {
                part: "registry",
                hint: "call .registry(…), e.g. with shipflow_oci::RegistryClient",
            });
        }
        if !s.skip_deploy && inner.deployer.is_none() {
            return Err(PipelineError::MissingPart {
                part: "deployer",
                hint: "call .deployer(…), or .skip_deploy(true) to build and push only",
            });
        }
        Ok(())
    }

    /// Carries out a plan made by [`Pipeline::plan`].
    pub async fn execute(&self, plan: Plan) -> Result<Report, PipelineError> {
        self.check_parts()?;
        // A plan made elsewhere (or for an older workspace) may name apps this one lacks.
        if let Some(unknown) = plan
            .apps
            .iter()
            .find(|p| self.inner.workspace.app(&p.app).is_none())
        {
            let known: Vec<&str> = self
                .inner
                .workspace
                .apps()
                .map(|a| a.name.as_str())
                .collect();
            return Err(UnknownApp {
                app: unknown.app.clone(),
                known: known.join(", "),
            }
            .into());
        }
        let started = Instant::now();
        let settings = &self.inner.settings;
        let permits = Arc::new(Semaphore::new(settings.concurrency));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        // Which app each task works on, and in which stage, for a task that panics.
        let mut running = HashMap::new();
        for planned in plan.apps.clone() {
            let this = self.clone();
            let permits = permits.clone();
            let stop = stop.clone();
            let revision = plan.revision.clone();
            let span = info_span!("app", app = %planned.app);
            let stage = StageCell::default();
            let task_stage = stage.clone();
            let task_planned = planned.clone();
            let handle = tasks.spawn(
                async move {
                    let _permit = permits
                        .acquire_owned()
                        .await
                        .expect("semaphore is never closed");
                    let mut report = AppReport::new(&task_planned);
                    let mut parked = None;
                    if this.inner.settings.cancel.is_cancelled() {
                        report.outcome = Outcome::Cancelled {
                            stage: None,
                            restored: false,
                        };
                    } else if stop.load(Ordering::SeqCst) {
                        report.outcome = Outcome::Skipped;
                        report.note = Some("not started: another app failed (fail-fast)".into());
                    } else {
                        parked = this
                            .run_app(&task_planned, &revision, &mut report, &task_stage)
                            .await;
                        if report.outcome.is_failure()
                            && this.inner.settings.failure_policy == FailurePolicy::FailFast
                        {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    (report, parked)
                }
                .instrument(span),
            );
            running.insert(handle.id(), (planned, stage));
        }
        let mut apps = Vec::with_capacity(plan.apps.len());
        let mut ready = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((report, None)) => apps.push(report),
                Ok((report, Some(parked))) => ready.push((report, parked)),
                // A panicking adapter is a bug; the app still shows, failed, in the report.
                Err(e) => {
                    warn!("an app task panicked: {e}");
                    if let Some((planned, stage)) = running.remove(&e.id()) {
                        let mut report = AppReport::new(&planned);
                        let stage = stage.get();
                        report.outcome = Outcome::Failed { stage };
                        report.error = Some(format!(
                            "{}: {stage} failed: the adapter panicked",
                            planned.app
                        ));
                        apps.push(report);
                    }
                }
            }
        }
        apps.extend(
            self.deploy_together(ready, stop.load(Ordering::SeqCst))
                .await,
        );
        apps.sort_by(|a, b| a.app.cmp(&b.app));
        Ok(Report {
            plan,
            apps,
            duration_ms: millis(started),
        })
    }

    /// Ships one app; an app ready for a batching deployer is returned parked, for
    /// [`deploy_together`](Self::deploy_together).
    async fn run_app(
        &self,
        planned: &PlannedApp,
        revision: &RevisionInfo,
        report: &mut AppReport,
        cell: &StageCell,
    ) -> Option<Parked> {
        let Some(app) = self.inner.workspace.app(&planned.app) else {
            // `execute` checked the plan's apps; nothing to do for one it lacks.
            return None;
        };
        let mut before = None;
        let ending = self
            .ship(app, planned, revision, report, cell, &mut before)
            .await;
        if let Ending::Ready { image, meta } = ending {
            return Some(Parked {
                app: app.clone(),
                image,
                meta,
                before,
            });
        }
        self.settle(app, ending, before, report, cell).await;
        None
    }

    /// Deploys the apps parked for a batching deployer in one
    /// [`Deployer::deploy_batch`] call, once every app of the run has built and
    /// pushed or dropped out (an app waiting here holds no concurrency slot), then
    /// settles each as a lone deploy would be. A cancelled run sends no batch; after a
    /// fail-fast stop the batch does not go either: those apps stay pushed.
    async fn deploy_together(
        &self,
        ready: Vec<(AppReport, Parked)>,
        stopped: bool,
    ) -> Vec<AppReport> {
        let Some(deployer) = self.deployer().cloned().filter(|_| !ready.is_empty()) else {
            return ready.into_iter().map(|(report, _)| report).collect();
        };
        // Nothing was deployed: nothing to check or roll back.
        let unsent = |ready: Vec<(AppReport, Parked)>, outcome: Outcome, note: &str| {
            ready
                .into_iter()
                .map(|(mut report, _)| {
                    report.outcome = outcome.clone();
                    report.note = Some(note.into());
                    report
                })
                .collect()
        };
        if self.context().cancelled() {
            let cancelled = Outcome::Cancelled {
                stage: Some(Stage::Deploy),
                restored: false,
            };
            return unsent(
                ready,
                cancelled,
                "pushed, not deployed: the run was cancelled",
            );
        }
        if stopped {
            return unsent(
                ready,
                Outcome::Pushed,
                "pushed, not deployed: another app failed (fail-fast)",
            );
        }
        let contexts: Vec<Context> = ready
            .iter()
            .map(|(_, p)| self.context().scoped(Some(&p.app.name), Stage::Deploy))
            .collect();
        let work: Vec<(App, ImageRef, DeployMeta, Context)> = ready
            .iter()
            .zip(&contexts)
            .map(|((_, p), ctx)| (p.app.clone(), p.image.clone(), p.meta.clone(), ctx.clone()))
            .collect();
        contexts.iter().for_each(|ctx| ctx.emit(EventKind::Started));
        let started = Instant::now();
        // In a task of its own, so that a panicking adapter fails these apps, not the run.
        let batch = tokio::spawn(async move {
            let items: Vec<DeployItem<'_>> = work
                .iter()
                .map(|(app, image, meta, ctx)| DeployItem::new(app, image, meta, ctx))
                .collect();
            deployer.deploy_batch(&items).await
        })
        .await;
        let ms = millis(started);
        let results = match batch {
            Ok(results) => results,
            Err(e) => {
                // What the batch did before it panicked is unknown: nothing is rolled
                // back on a guess, and the report says so.
                warn!("a batch deploy panicked: {e}");
                return ready
                    .into_iter()
                    .zip(&contexts)
                    .map(|((mut report, parked), ctx)| {
                        ctx.emit(EventKind::Finished { ok: false });
                        report.timings.deploy_ms = ms;
                        report.outcome = Outcome::Failed {
                            stage: Stage::Deploy,
                        };
                        report.error = Some(format!(
                            "{}: deploy failed: the adapter panicked",
                            parked.app.name
                        ));
                        report.note = Some(
                            "not rolled back: the deployer panicked mid-batch; check what runs"
                                .into(),
                        );
                        report
                    })
                    .collect();
            }
        };
        let mut results = results.into_iter();
        let permits = Arc::new(Semaphore::new(self.inner.settings.concurrency));
        let mut settled = JoinSet::new();
        let mut fallback = HashMap::new();
        for (((mut report, parked), ctx), result) in ready
            .into_iter()
            .zip(contexts)
            .zip(std::iter::from_fn(|| Some(results.next())))
        {
            let ending = match result {
                Some(Ok(rollout)) => Ending::Deployed(rollout),
                Some(Err(error)) => Ending::Failed {
                    stage: Stage::Deploy,
                    error,
                },
                None => Ending::Failed {
                    stage: Stage::Deploy,
                    error: format!(
                        "{}: deploy: the deployer's batch returned no result for this app",
                        parked.app.name
                    )
                    .into(),
                },
            };
            ctx.emit(EventKind::Finished {
                ok: matches!(ending, Ending::Deployed(_)),
            });
            report.timings.deploy_ms = ms;
            fallback.insert(parked.app.name.clone(), report.clone());
            let this = self.clone();
            let permits = permits.clone();
            let span = info_span!("app", app = %parked.app.name);
            settled.spawn(
                async move {
                    // Rollbacks respect the run's concurrency, as deploys do.
                    let _permit = permits.acquire_owned().await;
                    let Parked { app, before, .. } = parked;
                    let cell = StageCell::default();
                    cell.set(Stage::Deploy);
                    this.settle(&app, ending, before, &mut report, &cell).await;
                    report
                }
                .instrument(span),
            );
        }
        let mut reports = Vec::with_capacity(fallback.len());
        while let Some(joined) = settled.join_next().await {
            match joined {
                Ok(report) => {
                    fallback.remove(&report.app);
                    reports.push(report);
                }
                Err(e) => warn!("an app task panicked settling its deploy: {e}"),
            }
        }
        // A settle that panicked (in a rollback) leaves its app failed in the report.
        reports.extend(fallback.into_values().map(|mut report| {
            report.outcome = Outcome::Failed {
                stage: Stage::Rollback,
            };
            report.error = Some(format!(
                "{}: rollback failed: the adapter panicked",
                report.app
            ));
            report
        }));
        reports
    }

    /// Runs one stage of `app`: the stage is recorded (for a panic), announced
    /// with started and finished events, and timed.
    async fn stage<T, F, Fut>(
        &self,
        app: &App,
        stage: Stage,
        cell: &StageCell,
        f: F,
    ) -> (Result<T, BoxError>, u64)
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        let ctx = self.context().scoped(Some(&app.name), stage);
        cell.set(stage);
        let started = Instant::now();
        ctx.emit(EventKind::Started);
        let result = f(ctx.clone()).await;
        ctx.emit(EventKind::Finished { ok: result.is_ok() });
        (result, millis(started))
    }

    /// Build, push and deploy `app`, as far as its plan and the settings go. What
    /// ran before is left in `before`, for a rollback.
    async fn ship(
        &self,
        app: &App,
        planned: &PlannedApp,
        revision: &RevisionInfo,
        report: &mut AppReport,
        cell: &StageCell,
        before: &mut Option<Deployed>,
    ) -> Ending {
        let inner = &self.inner;
        let s = &inner.settings;
        let failed = |stage, error| Ending::Failed { stage, error };
        let target = match app.image.with_tag(&report.tag) {
            Ok(t) => t,
            Err(e) => return failed(Stage::Push, e.into()),
        };
        let forced = planned.reasons.contains(&Reason::All);
        let deployer = self.deployer();

        // What runs now: to skip an unchanged app, and to roll back exactly.
        if let (Some(deployer), false) = (&deployer, s.skip_deploy) {
            cell.set(Stage::Deploy);
            let ctx = self.context().scoped(Some(&app.name), Stage::Deploy);
            match deployer.current(app, &ctx).await {
                Ok(now) => *before = now,
                Err(e) => return failed(Stage::Deploy, e),
            }
        }
        if let Some(now) = before.as_ref()
            && now.fingerprint.as_ref() == Some(&planned.fingerprint)
            && !forced
        {
            report.image = now.image.parse().ok();
            return Ending::Unchanged {
                note: "inputs unchanged since the running deploy (same fingerprint)",
            };
        }

        let digest = match self
            .image(app, planned, revision, &target, report, cell)
            .await
        {
            Ok(digest) => digest,
            Err(ending) => return ending,
        };
        if let Err(error) = self.move_tags(app, planned, &digest, report, cell).await {
            return failed(Stage::Push, error);
        }
        let pinned = app.image.pinned(digest);
        report.image = Some(pinned.clone());
        let Some(deployer) = deployer.filter(|_| !s.skip_deploy) else {
            return Ending::Pushed;
        };

        let meta = DeployMeta {
            fingerprint: Some(planned.fingerprint.clone()),
            git_sha: (!revision.sha.is_empty()).then(|| revision.sha.clone()),
            change_cause: format!(
                "shipflow: {} at {} ({})",
                app.name,
                revision.short_sha,
                planned
                    .reasons
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            reasons: planned.reasons.clone(),
            tag: (!report.tag.is_empty()).then(|| report.tag.clone()),
        };
        if deployer.batches() {
            return Ending::Ready {
                image: pinned,
                meta,
            };
        }
        let (result, ms) = self
            .stage(app, Stage::Deploy, cell, |ctx| async move {
                deployer.deploy(app, &pinned, &meta, &ctx).await
            })
            .await;
        report.timings.deploy_ms = ms;
        match result {
            Ok(rollout) => Ending::Deployed(rollout),
            Err(error) => failed(Stage::Deploy, error),
        }
    }

    /// Points the plan's further tags (`latest`, say) at `digest`, by manifest only.
    async fn move_tags(
        &self,
        app: &App,
        planned: &PlannedApp,
        digest: &Digest,
        report: &mut AppReport,
        cell: &StageCell,
    ) -> Result<(), BoxError> {
        if planned.extra_tags.is_empty() {
            return Ok(());
        }
        cell.set(Stage::Push);
        let ctx = self.context().scoped(Some(&app.name), Stage::Push);
        for tag in &planned.extra_tags {
            let target = app.image.with_tag(tag)?;
            self.registry().tag(digest, &target, &ctx).await?;
            ctx.message(format!("tagged {target}"));
            report.extra_tags.push(tag.clone());
        }
        Ok(())
    }

    /// The digest to deploy: found in the registry (a fingerprint tag, or
    /// `skip_build`), else built and pushed.
    async fn image(
        &self,
        app: &App,
        planned: &PlannedApp,
        revision: &RevisionInfo,
        target: &ImageRef,
        report: &mut AppReport,
        cell: &StageCell,
    ) -> Result<Digest, Ending> {
        let s = &self.inner.settings;
        let registry = self.registry();
        let failed = |stage, error| Ending::Failed { stage, error };
        if s.skip_build || self.uses_fingerprint_tag() {
            cell.set(Stage::Push);
            let ctx = self.context().scoped(Some(&app.name), Stage::Push);
            match registry.resolve(target, &ctx).await {
                Ok(Some(digest)) => return Ok(digest),
                Ok(None) if s.skip_build => {
                    return Err(failed(
                        Stage::Build,
                        format!("{target} is not in the registry and builds are skipped; build it first or drop --skip-build").into(),
                    ));
                }
                Ok(None) => {}
                Err(e) => return Err(failed(Stage::Push, e)),
            }
        }
        let builder = self.image_builder().ok_or_else(|| {
            failed(
                Stage::Build,
                "no image builder (checked when the run started)".into(),
            )
        })?;
        let request = BuildRequest {
            root: self.inner.workspace.root().to_owned(),
            tag: report.tag.clone(),
            revision: revision.clone(),
            fingerprint: Some(planned.fingerprint.clone()),
            labels: [
                (
                    "org.opencontainers.image.revision".to_owned(),
                    revision.sha.clone(),
                ),
                ("dev.shipflow.app".to_owned(), app.name.clone()),
                (
                    "dev.shipflow.fingerprint".to_owned(),
                    planned.fingerprint.0.clone(),
                ),
            ]
            .into(),
            reasons: planned.reasons.clone(),
        };
        let (built, ms) = self
            .stage(app, Stage::Build, cell, |ctx| async move {
                builder.build(app, &request, &ctx).await
            })
            .await;
        report.timings.build_ms = ms;
        let image = built.map_err(|e| failed(Stage::Build, e))?;
        if self.context().cancelled() {
            return Err(failed(Stage::Build, Box::new(crate::Cancelled)));
        }
        let (pushed, ms) = self
            .stage(app, Stage::Push, cell, |ctx| async move {
                registry
                    .push(&image, target, &ctx)
                    .await
                    .map(|push| (push, image.digest))
            })
            .await;
        report.timings.push_ms = ms;
        let (push, built_digest) = pushed.map_err(|e| failed(Stage::Push, e))?;
        let digest = push.digest.clone().unwrap_or(built_digest);
        report.push = Some(push);
        Ok(digest)
    }

    /// The one place an app's ending becomes its outcome: a failed or cancelled deploy is rolled
    /// back here when that undoes this run's change and nothing else.
    async fn settle(
        &self,
        app: &App,
        ending: Ending,
        before: Option<Deployed>,
        report: &mut AppReport,
        cell: &StageCell,
    ) {
        let (stage, error) = match ending {
            Ending::Deployed(mut rollout) => {
                report.targets = std::mem::take(&mut rollout.targets);
                report.outcome = if rollout.changed {
                    Outcome::Deployed
                } else {
                    Outcome::Unchanged
                };
                if let Some(image) = &report.image {
                    info!(image = %image, "deployed");
                }
                report.rollout = Some(rollout);
                return;
            }
            Ending::Unchanged { note } => {
                report.outcome = Outcome::Unchanged;
                report.note = Some(note.into());
                return;
            }
            // A ready app is settled after its batch; here it stays pushed.
            Ending::Pushed | Ending::Ready { .. } => {
                report.outcome = Outcome::Pushed;
                return;
            }
            Ending::Failed { stage, error } => (stage, error),
        };
        let text = error_chain(error.as_ref());
        warn!(app = %app.name, %stage, "failed: {text}");
        report.error = Some(format!("{}: {stage} failed: {text}", app.name));
        let restored = caused_by::<Restored>(error.as_ref());
        // A deployer with several targets says how each ended, and undoes its own
        // targets' changes when asked to roll back.
        let per_target = match find_cause::<TargetsFailed>(error.as_ref()) {
            Some(failed) => {
                report.targets = failed.targets().to_vec();
                true
            }
            None => false,
        };
        report.outcome = if caused_by::<crate::Cancelled>(error.as_ref()) {
            Outcome::Cancelled {
                stage: Some(stage),
                restored,
            }
        } else {
            Outcome::Failed { stage }
        };
        if stage != Stage::Deploy {
            return;
        }
        if restored {
            if let Outcome::Failed { stage } = report.outcome {
                report.outcome = Outcome::RolledBack { stage };
            }
            report.note = Some("the deployer brought back what ran before".into());
        } else if !self.inner.settings.rollback_on_failure {
            report.note = Some("automatic rollback is off; the rollout was left as it is".into());
        } else if let Some(pinned) = report.image.clone()
            && (per_target || self.runs(app, &pinned, report).await)
        {
            self.roll_back(app, before, report, cell).await;
        }
    }

    fn registry(&self) -> &Arc<dyn Registry> {
        self.inner
            .registry
            .as_ref()
            .expect("checked when the run started")
    }

    fn image_builder(&self) -> Option<&Arc<dyn ImageBuilder>> {
        self.inner.builder.as_ref()
    }

    fn deployer(&self) -> Option<&Arc<dyn Deployer>> {
        self.inner.deployer.as_ref()
    }

    /// Whether `app` runs `pinned` after its deploy failed, so a rollback would undo
    /// this run's change and nothing else. When it does not (the deploy failed before
    /// changing anything, say waiting for another pipeline's lock, or another deploy
    /// came since), the note says what runs and there is nothing of ours to undo.
    async fn runs(&self, app: &App, pinned: &ImageRef, report: &mut AppReport) -> bool {
        let Some(deployer) = self.deployer() else {
            return false;
        };
        let ctx = Context::new().scoped(Some(&app.name), Stage::Rollback);
        let note = match deployer.current(app, &ctx).await {
            Ok(Some(now)) if now.image == pinned.to_string() => return true,
            Ok(Some(now)) => format!(
                "not rolled back: the deploy left no change of this run in place ({} runs)",
                now.image
            ),
            Ok(None) => "not rolled back: nothing runs".to_owned(),
            Err(e) => format!(
                "not rolled back: cannot tell what runs now: {}",
                error_chain(e.as_ref())
            ),
        };
        report.note = Some(note);
        false
    }

    fn uses_fingerprint_tag(&self) -> bool {
        self.inner
            .workspace
            .tag_template()
            .variables()
            .any(|v| v == "FINGERPRINT")
    }

    async fn roll_back(
        &self,
        app: &App,
        before: Option<Deployed>,
        report: &mut AppReport,
        cell: &StageCell,
    ) {
        let Some(before) = before else {
            report.note = Some(
                "first deploy of this app: there is no earlier revision to roll back to".into(),
            );
            return;
        };
        let Some(deployer) = self.deployer() else {
            return;
        };
        // Rollback runs even when the run was cancelled: it restores what ran before.
        let ctx = Context::new()
            .with_events(self.inner.settings.events.clone())
            .with_dry_run(self.inner.settings.dry_run)
            .scoped(Some(&app.name), Stage::Rollback);
        let target = before
            .revision
            .map_or(RollbackTarget::Previous, RollbackTarget::Revision);
        let t = Instant::now();
        ctx.emit(EventKind::Started);
        cell.set(Stage::Rollback);
        let result = deployer.rollback(app, target, &ctx).await;
        report.timings.rollback_ms = millis(t);
        ctx.emit(EventKind::Finished { ok: result.is_ok() });
        match result {
            Ok(mut rollout) if !rollout.targets.is_empty() && !rollout.changed => {
                // Per target, nothing of this run was left to undo where it failed.
                merge_targets(&mut report.targets, std::mem::take(&mut rollout.targets));
                report.note =
                    Some("not rolled back: no target that failed runs a change of this run".into());
            }
            Ok(mut rollout) => {
                merge_targets(&mut report.targets, std::mem::take(&mut rollout.targets));
                match &mut report.outcome {
                    Outcome::Failed { stage } => {
                        report.outcome = Outcome::RolledBack { stage: *stage };
                    }
                    Outcome::Cancelled { restored, .. } => *restored = true,
                    _ => {}
                }
                report.rollback = Some(rollout);
            }
            Err(e) if caused_by::<crate::Unsupported>(e.as_ref()) => {
                report.note = Some(
                    "not rolled back: the deployer offers no rollback; the failed rollout was left as it is"
                        .into(),
                );
            }
            Err(e) => {
                if let Some(failed) = find_cause::<TargetsFailed>(e.as_ref()) {
                    merge_targets(&mut report.targets, failed.targets().to_vec());
                }
                report.note = Some(format!(
                    "rollback failed too, the app may be half-deployed: {}",
                    error_chain(e.as_ref())
                ));
            }
        }
    }
}

/// How one app's run ended, before [`Pipeline::settle`] writes it into the report.
enum Ending {
    /// The deployer rolled (or found the digest already running).
    Deployed(Rollout),
    /// Skipped: what runs already has these inputs.
    Unchanged { note: &'static str },
    /// Built and pushed; deploys are off.
    Pushed,
    /// Built and pushed, for the run's batch deploy.
    Ready { image: ImageRef, meta: DeployMeta },
    /// A stage failed.
    Failed { stage: Stage, error: BoxError },
}

impl AppReport {
    fn new(planned: &PlannedApp) -> Self {
        Self {
            app: planned.app.clone(),
            reasons: planned.reasons.clone(),
            outcome: Outcome::Skipped,
            fingerprint: planned.fingerprint.clone(),
            tag: planned.tag.clone(),
            extra_tags: Vec::new(),
            image: None,
            push: None,
            rollout: None,
            rollback: None,
            targets: Vec::new(),
            timings: StageTimings::default(),
            error: None,
            note: None,
        }
    }
}

/// An app built and pushed, waiting for its batching deployer.
struct Parked {
    app: App,
    image: ImageRef,
    meta: DeployMeta,
    /// What ran before, for a rollback.
    before: Option<Deployed>,
}

/// The stage an app's task is in, so the report can say where an adapter panicked.
#[derive(Clone)]
struct StageCell(Arc<std::sync::Mutex<Stage>>);

impl Default for StageCell {
    fn default() -> Self {
        Self(Arc::new(std::sync::Mutex::new(Stage::Build)))
    }
}

impl StageCell {
    fn set(&self, stage: Stage) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = stage;
    }

    fn get(&self) -> Stage {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Lays a rollback's per-target results over the deploy's: a target rolled back
/// takes its rollback and status; a note (why it was not) is kept beside the
/// deploy's error.
fn merge_targets(deployed: &mut Vec<TargetRollout>, rolled: Vec<TargetRollout>) {
    for back in rolled {
        match deployed.iter_mut().find(|t| t.target == back.target) {
            Some(target) => {
                if back.rollback.is_some() && back.status == TargetStatus::RolledBack {
                    target.status = TargetStatus::RolledBack;
                }
                if back.rollback.is_some() {
                    target.rollback = back.rollback;
                }
                if let Some(error) = back.error {
                    target.note = Some(format!("rollback failed: {error}"));
                } else if back.note.is_some() {
                    target.note = back.note;
                }
            }
            None => deployed.push(back),
        }
    }
}

/// An error and its causes on one line, `error: cause: cause`, skipping causes
/// whose text the message already contains (many errors repeat their source).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
