//! Image automation: keep a config repository at what image policies choose.
//!
//! An [`ImageAutomation`] joins shipflow-oci's [`ImagePolicy`] and [`TagCache`] with
//! shipflow-git's [`GitOpsDeployer`]. Each pass lists every watched repository once
//! (however many policies watch it), resolves every policy to a digest, and writes
//! the apps whose digest changed into the config repository in **one** commit and
//! one push. A digest the config repository already names, or that this loop wrote
//! already, is never committed again. Each decision is logged (`tracing`, target
//! `shipflow_kit::automation`) with the policy's reason: the tag it chose and why.
//!
//! Passes are woken by a poll interval, by the registry's own push notifications
//! through a [`NotificationServer`] (a push reaches git in about a second), and
//! in-process through a [`Trigger`] (after a pipeline's own push). A burst of wakes
//! within the debounce makes one pass and so one commit. The loop runs until its
//! cancellation token fires; a registry or git outage is retried with capped
//! exponential backoff and reported, never fatal.
//!
//! What the loop compares a choice with is what the config repository named when the
//! loop started, then what the loop itself wrote: an image someone else puts in the
//! files later (a manual rollback, say) stays until the policy chooses a new digest.
//!
//! ```no_run
//! use std::time::Duration;
//! use shipflow_kit::CancellationToken;
//! use shipflow_kit::automation::{ImageAutomation, NotificationServer, PolicyBinding};
//! use shipflow_kit::git::gitops::{FileTarget, GitOpsDeployer};
//! use shipflow_kit::oci::{ImagePolicy, PolicyRule, RegistryClient};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let deployer = GitOpsDeployer::builder("git@github.com:acme/fleet.git")
//!     .message("automation: {apps}")
//!     .build();
//! let policy = ImagePolicy::new("api", "ghcr.io/acme/api", PolicyRule::Semver {
//!     range: ">=1.0.0".into(),
//! })?;
//! let automation = ImageAutomation::builder(deployer, RegistryClient::builder().build()?)
//!     .bind(PolicyBinding::new("api", policy, vec![
//!         FileTarget::setter("apps/api/deployment.yaml", "flux-system:api"),
//!     ]))
//!     .interval(Duration::from_secs(300))
//!     .build()?;
//! let cancel = CancellationToken::new();
//! let endpoint = NotificationServer::bind("127.0.0.1:8085".parse()?)
//!     .await?
//!     .bearer_token("from-the-registry-config");
//! tokio::spawn(endpoint.serve(automation.trigger(), cancel.clone()));
//! automation.run(cancel).await;
//! # Ok(())
//! # }
//! ```

mod binding;
mod decision;
mod envelope;
mod error;
mod event;
mod server;
mod trigger;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shipflow_core::{Backoff, CancellationToken, Context, ImageRef};
use shipflow_git::gitops::{GitOpsDeployer, ImageUpdate};
use shipflow_oci::{ImagePolicy, RegistryClient, Resolution, TagCache};

pub use binding::PolicyBinding;
use decision::{Known, rule_words};
pub use error::AutomationError;
pub use event::{Action, AutomationEvent, Decision, Pass};
pub use server::{DEFAULT_MAX_BODY, NotificationServer};
pub use trigger::Trigger;

type Observer = Arc<dyn Fn(&AutomationEvent) + Send + Sync>;

/// Builds an [`ImageAutomation`].
pub struct ImageAutomationBuilder {
    deployer: GitOpsDeployer,
    client: RegistryClient,
    bindings: Vec<PolicyBinding>,
    interval: Duration,
    debounce: Duration,
    backoff: Backoff,
    trigger: Trigger,
    observer: Option<Observer>,
}

impl fmt::Debug for ImageAutomationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageAutomationBuilder")
            .field("bindings", &self.bindings.len())
            .field("interval", &self.interval)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl ImageAutomationBuilder {
    /// Watches `binding`'s policy for its app.
    pub fn bind(mut self, binding: PolicyBinding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// Watches every one of `bindings`.
    pub fn bind_all(mut self, bindings: impl IntoIterator<Item = PolicyBinding>) -> Self {
        self.bindings.extend(bindings);
        self
    }

    /// How often every repository is polled; default 5 minutes. Notifications and
    /// the [`Trigger`] wake the loop in between.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a wake waits for more before the pass, so that a burst of pushes
    /// makes one commit; default 250 ms.
    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// After a failed pass (registry or git down), the first retry comes after about
    /// `first`, each next one after twice as long, never more than `max` apart;
    /// default 1 s and 60 s.
    pub fn retry(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(u32::MAX, first, max.max(first));
        self
    }

    /// Uses `trigger` (one made before, held by a pipeline, say) instead of a new one.
    pub fn trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger;
        self
    }

    /// Calls `f` for every decision, commit, failure and pass; it runs on the loop's
    /// task, so keep it short.
    pub fn on_event(mut self, f: impl Fn(&AutomationEvent) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// The automation; refuses no bindings, two bindings of one app, and bindings
    /// that name no file or no place in one.
    pub fn build(self) -> Result<ImageAutomation, AutomationError> {
        if self.bindings.is_empty() {
            return Err(AutomationError::Config {
                message: "no policy is bound to an app: add one with bind()".into(),
            });
        }
        let mut apps = BTreeSet::new();
        for binding in &self.bindings {
            binding.check()?;
            if !apps.insert(binding.app.as_str()) {
                return Err(AutomationError::Config {
                    message: format!(
                        "app {} is bound twice: one policy per app (a policy may serve many apps)",
                        binding.app
                    ),
                });
            }
        }
        Ok(ImageAutomation {
            bindings: self.bindings,
            deployer: self.deployer,
            tags: TagCache::new(self.client),
            interval: self.interval,
            debounce: self.debounce,
            backoff: self.backoff,
            trigger: self.trigger,
            observer: self.observer,
            known: tokio::sync::Mutex::new(None),
        })
    }
}

/// Which policies a pass resolves.
enum Scope {
    /// All, after listing every repository again.
    All,
    /// Those on these repository paths, after listing them again.
    Repositories(BTreeSet<String>),
}

/// The loop that keeps a config repository at what image policies choose: see the
/// [module documentation](self).
pub struct ImageAutomation {
    bindings: Vec<PolicyBinding>,
    deployer: GitOpsDeployer,
    tags: TagCache,
    interval: Duration,
    debounce: Duration,
    backoff: Backoff,
    trigger: Trigger,
    observer: Option<Observer>,
    /// Per app; `None` until the config repository was read once.
    known: tokio::sync::Mutex<Option<HashMap<String, Known>>>,
}

impl fmt::Debug for ImageAutomation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageAutomation")
            .field("bindings", &self.bindings.len())
            .field("deployer", &self.deployer)
            .field("interval", &self.interval)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

impl ImageAutomation {
    /// An automation writing through `deployer`, asking the registry with `client`.
    pub fn builder(deployer: GitOpsDeployer, client: RegistryClient) -> ImageAutomationBuilder {
        ImageAutomationBuilder {
            deployer,
            client,
            bindings: Vec::new(),
            interval: Duration::from_secs(300),
            debounce: Duration::from_millis(250),
            backoff: Backoff::new(u32::MAX, Duration::from_secs(1), Duration::from_secs(60)),
            trigger: Trigger::new(),
            observer: None,
        }
    }

    /// The handle that wakes this loop.
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// The bindings it watches.
    pub fn bindings(&self) -> &[PolicyBinding] {
        &self.bindings
    }

    fn emit(&self, event: AutomationEvent) {
        if let Some(f) = &self.observer {
            f(&event);
        }
    }

    /// One full pass now: every repository listed again, every policy resolved, the
    /// changed apps committed together.
    pub async fn reconcile(&self, ctx: &Context) -> Pass {
        self.pass(Scope::All, ctx).await
    }

    /// Runs until `cancel` fires: a full pass at once and every interval, a pass of
    /// the repositories notified on each wake (after the debounce), and after a
    /// failure, full passes with capped exponential backoff until one succeeds.
    pub async fn run(&self, cancel: CancellationToken) {
        let ctx = Context::new().with_cancellation(cancel.clone());
        let mut failures = 0u32;
        let mut next_full = tokio::time::Instant::now();
        tracing::info!(
            policies = self.bindings.len(),
            interval = ?self.interval,
            "image automation started"
        );
        loop {
            let timer = tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(next_full) => true,
                () = self.trigger.woken() => false,
            };
            let scope = if timer {
                // A full pass covers whatever was notified meanwhile.
                self.trigger.take();
                Scope::All
            } else {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(self.debounce) => {}
                }
                let dirty = self.trigger.take();
                if dirty.is_empty() {
                    continue;
                }
                if dirty.all || failures > 0 {
                    Scope::All
                } else {
                    Scope::Repositories(dirty.repositories)
                }
            };
            let full = matches!(scope, Scope::All);
            let started = Instant::now();
            let pass = self.pass(scope, &ctx).await;
            if cancel.is_cancelled() {
                break;
            }
            let transient = pass.errors.iter().any(AutomationError::is_transient);
            let retry_in = if transient {
                failures = failures.saturating_add(1);
                let wait = self.backoff.delay(failures);
                next_full = tokio::time::Instant::now() + wait;
                tracing::warn!(failures, retry_in = ?wait, "pass failed; retrying with backoff");
                Some(wait)
            } else {
                if full {
                    failures = 0;
                    next_full = tokio::time::Instant::now() + self.interval;
                }
                None
            };
            self.emit(AutomationEvent::Pass {
                full,
                policies: pass.policies,
                took: started.elapsed(),
                retry_in,
            });
        }
        tracing::info!("image automation stopped");
    }

    async fn pass(&self, scope: Scope, ctx: &Context) -> Pass {
        let mut known_guard = self.known.lock().await;
        let mut pass = Pass::default();
        if known_guard.is_none() {
            let targets: Vec<_> = self
                .bindings
                .iter()
                .map(|b| (b.app.clone(), b.target()))
                .collect();
            match self.deployer.images(&targets).await {
                Ok(images) => {
                    *known_guard = Some(
                        targets
                            .into_iter()
                            .map(|(app, _)| app)
                            .zip(images.into_iter().map(Known::from))
                            .collect(),
                    );
                }
                Err(source) => {
                    self.fail(
                        &mut pass,
                        AutomationError::ReadRepository {
                            source: Box::new(source),
                        },
                    );
                    return pass;
                }
            }
        }
        let Some(known) = known_guard.as_mut() else {
            return pass;
        };
        let selected: Vec<&PolicyBinding> = match &scope {
            Scope::All => {
                self.tags.next_poll();
                self.bindings.iter().collect()
            }
            Scope::Repositories(paths) => {
                let chosen: Vec<&PolicyBinding> = self
                    .bindings
                    .iter()
                    .filter(|b| paths.contains(b.policy.repository().repository()))
                    .collect();
                for binding in &chosen {
                    self.tags.forget(binding.policy.repository());
                }
                chosen
            }
        };
        pass.policies = selected.len();
        if selected.is_empty() {
            return pass;
        }
        let policies: Vec<ImagePolicy> = selected.iter().map(|b| b.policy.clone()).collect();
        let resolved = self.tags.resolve_all(&policies, ctx).await;
        let mut updates = Vec::new();
        for (binding, result) in selected.iter().zip(resolved) {
            let resolution = match result {
                Ok(r) => r,
                Err(source) => {
                    // Listed again on the next try, not taken from this poll's cache.
                    self.tags.forget(binding.policy.repository());
                    self.fail(
                        &mut pass,
                        AutomationError::Policy {
                            app: binding.app.clone(),
                            source: Box::new(source),
                        },
                    );
                    continue;
                }
            };
            let reason = self.reason(binding, &resolution, ctx).await;
            let current = known.get(&binding.app).cloned().unwrap_or_default();
            let digest = resolution.digest.to_string();
            let same = current.names(resolution.tag(), &digest, binding.format);
            let image = resolution.pinned();
            let action = if same {
                tracing::debug!(app = %binding.app, policy = %resolution.policy, %image, %reason, "up to date");
                Action::Keep
            } else {
                let from = current.digest.as_ref().map(|d| match &current.tag {
                    Some(t) => format!("{t}@{d}"),
                    None => d.clone(),
                });
                tracing::info!(
                    app = %binding.app,
                    policy = %resolution.policy,
                    %image,
                    from = from.as_deref().unwrap_or("nothing"),
                    %reason,
                    "new image chosen"
                );
                match image.parse::<ImageRef>() {
                    Ok(reference) => updates.push((
                        binding,
                        resolution.clone(),
                        ImageUpdate::new(
                            binding.app.clone(),
                            reference,
                            reason.clone(),
                            binding.target(),
                        ),
                    )),
                    Err(e) => {
                        self.fail(
                            &mut pass,
                            AutomationError::Config {
                                message: format!(
                                    "app {}: {image} is not a reference: {e}",
                                    binding.app
                                ),
                            },
                        );
                        continue;
                    }
                }
                Action::Write { from }
            };
            self.emit(AutomationEvent::Decision(Decision {
                app: binding.app.clone(),
                policy: resolution.policy.clone(),
                image,
                reason,
                action,
            }));
        }
        if updates.is_empty() {
            return pass;
        }
        let (meta, batch): (Vec<_>, Vec<_>) =
            updates.into_iter().map(|(b, r, u)| ((b, r), u)).unzip();
        let results = self.deployer.write_all(batch, ctx).await;
        for ((binding, resolution), result) in meta.into_iter().zip(results) {
            match result {
                Ok(written) => {
                    known.insert(binding.app.clone(), Known::written(&resolution));
                    if written.changed {
                        pass.written.push(binding.app.clone());
                        if pass.commit.is_none() {
                            pass.commit = written.commit;
                        }
                    } else {
                        tracing::debug!(app = %binding.app, "the config repository named the image already");
                    }
                }
                Err(source) => self.fail(
                    &mut pass,
                    AutomationError::Write {
                        app: binding.app.clone(),
                        image: resolution.pinned(),
                        source: Box::new(source),
                    },
                ),
            }
        }
        if let Some(commit) = &pass.commit {
            tracing::info!(%commit, apps = ?pass.written, "committed and pushed");
            self.emit(AutomationEvent::Committed {
                commit: commit.clone(),
                apps: pass.written.clone(),
            });
        }
        pass
    }

    fn fail(&self, pass: &mut Pass, error: AutomationError) {
        let transient = error.is_transient();
        tracing::warn!(error = %error, transient, "image automation");
        self.emit(AutomationEvent::Failed {
            error: error.to_string(),
            transient,
        });
        pass.errors.push(error);
    }

    /// Why the policy chose what it did, for logs and the commit message.
    async fn reason(
        &self,
        binding: &PolicyBinding,
        resolution: &Resolution,
        ctx: &Context,
    ) -> String {
        let rule = rule_words(binding.policy.rule());
        // Listed in this pass already: no request.
        let of = match self.tags.tags(binding.policy.repository(), ctx).await {
            Ok(tags) => format!(" of {} tags", tags.len()),
            Err(_) => String::new(),
        };
        format!(
            "policy {} chose tag {}{of} by {rule}",
            binding.policy.name(),
            resolution.tag()
        )
    }
}
