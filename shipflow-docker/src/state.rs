//! What the engine knows about an app: its containers, read back from their labels
//! and names. This is the deployer's only state, so a crashed run leaves nothing
//! that the next run cannot read.

use std::collections::HashMap;

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use shipflow_core::{App, DeployMeta, Deployed, Fingerprint, ImageRef, Revision};

use crate::config::DockerTarget;

/// The label naming the app.
pub(crate) const APP: &str = "dev.shipflow.app";
/// The label with the revision number.
pub(crate) const REVISION: &str = "dev.shipflow.revision";
/// The label with the digest-pinned image reference.
pub(crate) const IMAGE: &str = "dev.shipflow.image";
/// The label with the manifest digest.
pub(crate) const DIGEST: &str = "dev.shipflow.digest";
/// The label with the git commit.
pub(crate) const GIT_SHA: &str = "dev.shipflow.git-sha";
/// The label with the input fingerprint.
pub(crate) const FINGERPRINT: &str = "dev.shipflow.fingerprint";
/// The label with the change cause.
pub(crate) const CHANGE_CAUSE: &str = "dev.shipflow.change-cause";
/// The label with the creation time (RFC 3339).
pub(crate) const CREATED: &str = "dev.shipflow.created";

/// The suffix a container's name gets when it failed its health check.
/// The name suffix of a revision that failed its health check.
const FAILED_SUFFIX: &str = "--failed";
/// The name suffix of a revision whose health check has not passed yet: a deploy
/// creates it so, and renames it only once it passed. A run that dies before leaves
/// it so, and nothing then takes it for a good revision.
const UNCHECKED_SUFFIX: &str = "--unchecked";

/// The container name base of an app: `container`, else the app's name.
pub(crate) fn base_name(app: &App, target: &DockerTarget) -> String {
    target.container.clone().unwrap_or_else(|| app.name.clone())
}

/// The name of revision `number`'s container.
pub(crate) fn container_name(base: &str, number: u64) -> String {
    format!("{base}--r{number}")
}

/// Whether `name` is a revision's container of base name `base`: `<base>--r<N>`,
/// or `<base>--r<N>--failed`. Two workspaces on one host may name an app alike;
/// their containers' names (`container = …`) tell them apart.
pub(crate) fn is_revision_of(name: &str, base: &str) -> bool {
    let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix("--r")) else {
        return false;
    };
    let number = rest
        .strip_suffix(FAILED_SUFFIX)
        .or_else(|| rest.strip_suffix(UNCHECKED_SUFFIX))
        .unwrap_or(rest);
    !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
}

/// The name a failed container is renamed to.
pub(crate) fn failed_name(name: &str) -> String {
    format!("{}{FAILED_SUFFIX}", passed_name(name))
}

/// The name a new revision is created with, until it passed its health check.
pub(crate) fn unchecked_name(base: &str, number: u64) -> String {
    format!("{}{UNCHECKED_SUFFIX}", container_name(base, number))
}

/// The name of revision `name` once it passed its health check.
pub(crate) fn passed_name(name: &str) -> &str {
    name.strip_suffix(UNCHECKED_SUFFIX).unwrap_or(name)
}

/// The labels of a new revision's container.
pub(crate) fn labels(
    app: &App,
    number: u64,
    image: &ImageRef,
    meta: &DeployMeta,
    created: &str,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (APP.to_owned(), app.name.clone()),
        (REVISION.to_owned(), number.to_string()),
        (IMAGE.to_owned(), image.to_string()),
        (CREATED.to_owned(), created.to_owned()),
    ]);
    if let Some(digest) = image.digest() {
        labels.insert(DIGEST.to_owned(), digest.to_string());
    }
    if let Some(sha) = &meta.git_sha {
        labels.insert(GIT_SHA.to_owned(), sha.clone());
    }
    if let Some(fingerprint) = &meta.fingerprint {
        labels.insert(FINGERPRINT.to_owned(), fingerprint.0.clone());
    }
    if !meta.change_cause.is_empty() {
        labels.insert(CHANGE_CAUSE.to_owned(), meta.change_cause.clone());
    }
    labels
}

/// Where a container is in its life.
/// What is known of a revision's health, read from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verdict {
    /// Passed its health check and stayed healthy (a plain revision name).
    Passed,
    /// Not checked to the end: being deployed, or left by a run that died.
    Unchecked,
    /// Failed its health check.
    Failed,
}

impl Verdict {
    fn of(name: &str) -> Self {
        if name.ends_with(FAILED_SUFFIX) {
            Self::Failed
        } else if name.ends_with(UNCHECKED_SUFFIX) {
            Self::Unchecked
        } else {
            Self::Passed
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Created and never started: a deploy that stopped half-way.
    Created,
    /// Running (or restarting).
    Running,
    /// Stopped.
    Stopped,
}

/// One of an app's containers, as its labels describe it.
#[derive(Debug, Clone)]
pub(crate) struct AppContainer {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) revision: u64,
    pub(crate) image: String,
    pub(crate) git_sha: Option<String>,
    pub(crate) fingerprint: Option<String>,
    pub(crate) change_cause: Option<String>,
    pub(crate) created: Option<String>,
    pub(crate) phase: Phase,
    /// Renamed `…--failed` after failing its health check.
    pub(crate) verdict: Verdict,
}

impl AppContainer {
    /// Reads a container of the engine's list; `None` when it is not one of shipflow's.
    pub(crate) fn from_summary(summary: &ContainerSummary) -> Option<Self> {
        let labels = summary.labels.as_ref()?;
        let revision = labels.get(REVISION)?.parse().ok()?;
        let name = summary
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_owned())?;
        let phase = match summary.state {
            Some(ContainerSummaryStateEnum::CREATED) => Phase::Created,
            Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING) => {
                Phase::Running
            }
            _ => Phase::Stopped,
        };
        Some(Self {
            id: summary.id.clone()?,
            verdict: Verdict::of(&name),
            name,
            revision,
            image: labels
                .get(IMAGE)
                .cloned()
                .or_else(|| summary.image.clone())
                .unwrap_or_default(),
            git_sha: labels.get(GIT_SHA).cloned(),
            fingerprint: labels.get(FINGERPRINT).cloned(),
            change_cause: labels.get(CHANGE_CAUSE).cloned(),
            created: labels.get(CREATED).cloned(),
            phase,
        })
    }

    pub(crate) fn running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Whether this revision passed its health check: only such a one serves as
    /// the current revision or a rollback target.
    pub(crate) fn passed(&self) -> bool {
        self.verdict == Verdict::Passed
    }

    pub(crate) fn deployed(&self) -> Deployed {
        Deployed::new(self.image.clone())
            .with_revision(Some(self.revision))
            .with_fingerprint(self.fingerprint.clone().map(Fingerprint))
            .with_git_sha(self.git_sha.clone())
    }

    pub(crate) fn revision(&self, current: bool) -> Revision {
        let cause = self.change_cause.clone();
        Revision::new(self.revision, self.image.clone())
            .with_change_cause(match self.verdict {
                Verdict::Passed => cause,
                Verdict::Failed => Some(format!(
                    "{} (failed its health check)",
                    cause.unwrap_or_default()
                )),
                Verdict::Unchecked => Some(format!(
                    "{} (health not checked yet)",
                    cause.unwrap_or_default()
                )),
            })
            .with_created_at(self.created.clone())
            .with_current(current)
    }
}

/// An app's containers, oldest revision first.
#[derive(Debug, Clone, Default)]
pub(crate) struct AppState {
    pub(crate) containers: Vec<AppContainer>,
}

impl AppState {
    pub(crate) fn new(mut containers: Vec<AppContainer>) -> Self {
        containers.sort_by_key(|c| (c.revision, c.verdict));
        Self { containers }
    }

    /// The running container with the highest revision that passed its health check.
    pub(crate) fn current(&self) -> Option<&AppContainer> {
        self.containers
            .iter()
            .rev()
            .find(|c| c.running() && c.passed())
    }

    /// The next revision number.
    pub(crate) fn next_revision(&self) -> u64 {
        self.containers
            .iter()
            .map(|c| c.revision)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// The kept, healthy container of revision `number`.
    pub(crate) fn revision(&self, number: u64) -> Option<&AppContainer> {
        self.containers
            .iter()
            .find(|c| c.revision == number && c.passed())
    }

    /// The healthy container before `current` (by revision), or the newest healthy one
    /// when nothing runs.
    pub(crate) fn previous(&self, current: Option<u64>) -> Option<&AppContainer> {
        self.containers
            .iter()
            .rev()
            .filter(|c| c.passed() && c.phase == Phase::Stopped)
            .find(|c| current.is_none_or(|n| c.revision < n))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn revisions_are_told_apart_by_base_name() {
        use super::is_revision_of;
        assert!(is_revision_of("web--r12", "web"));
        assert!(is_revision_of("web--r3--failed", "web"));
        assert!(is_revision_of("web--r3--unchecked", "web"));
        assert!(!is_revision_of("web--r3--unchecked--failed", "web"));
        assert!(!is_revision_of("web--r3--failed", "we"));
        assert!(!is_revision_of("web-blue--r1", "web"));
        assert!(!is_revision_of("web--r", "web"));
        assert!(!is_revision_of("web--rx", "web"));
    }

    #[test]
    fn a_revision_passes_by_losing_its_unchecked_suffix() {
        use super::{Verdict, failed_name, passed_name, unchecked_name};
        let new = unchecked_name("web", 4);
        assert_eq!(new, "web--r4--unchecked");
        assert_eq!(Verdict::of(&new), Verdict::Unchecked);
        assert_eq!(passed_name(&new), "web--r4");
        assert_eq!(Verdict::of(passed_name(&new)), Verdict::Passed);
        assert_eq!(failed_name(&new), "web--r4--failed");
        assert_eq!(Verdict::of(&failed_name(&new)), Verdict::Failed);
    }
}
