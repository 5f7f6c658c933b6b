//! Text output for people; `--format json` prints the serde types instead.

use std::fmt::Write;

use indicatif::HumanBytes;
use shipflow_kit::{Outcome, Plan, Report, Revision, Stage, TargetRollout, TargetStatus};

/// The plan for people: one block per app with its image, stages and reasons.
pub(crate) fn plan(plan: &Plan) -> String {
    let mut out = String::new();
    let head = format!("{} ({})", plan.head, plan.revision.short_sha);
    let _ = match &plan.base {
        Some(base) => {
            let paths = match plan.changed_paths {
                1 => "1 path".to_owned(),
                n => format!("{n} paths"),
            };
            writeln!(out, "{base} → {head}: {paths} changed")
        }
        None => writeln!(out, "{head}: every app"),
    };
    if plan.apps.is_empty() {
        out.push_str("nothing to ship: no app's inputs changed\n");
    }
    let width = plan.apps.iter().map(|a| a.app.len()).max().unwrap_or(0);
    for app in &plan.apps {
        let stages: Vec<String> = app.stages.iter().map(Stage::to_string).collect();
        let _ = writeln!(out, "\n  {:width$}  {}", app.app, app.image);
        if !stages.is_empty() {
            let _ = writeln!(out, "  {:width$}  {}", "", stages.join(" → "));
        }
        for reason in &app.reasons {
            let _ = writeln!(out, "  {:width$}  • {reason}", "");
        }
    }
    if !plan.unchanged.is_empty() {
        let _ = writeln!(out, "\nunchanged: {}", plan.unchanged.join(", "));
    }
    out
}

/// Where a run's images went: the registry, or the local store of `build`.
#[derive(Clone, Copy)]
pub(crate) enum Destination<'a> {
    /// Pushed to a registry.
    Registry,
    /// Written to the local OCI layout store at this path.
    Store(&'a std::path::Path),
}

/// The report for people: one line per app with its outcome, then a summary.
pub(crate) fn report(report: &Report, to: Destination<'_>) -> String {
    let mut out = String::new();
    let width = report.apps.iter().map(|a| a.app.len()).max().unwrap_or(0);
    let pushed = match to {
        Destination::Registry => "pushed".to_owned(),
        Destination::Store(path) => format!("stored in {}", path.display()),
    };
    let upload = |bytes| match to {
        Destination::Registry => format!("push: {} uploaded", HumanBytes(bytes)),
        Destination::Store(_) => format!("store: {} written", HumanBytes(bytes)),
    };
    for app in &report.apps {
        let outcome = match &app.outcome {
            Outcome::Deployed => "deployed".to_owned(),
            Outcome::Pushed => pushed.clone(),
            Outcome::Unchanged => "unchanged".to_owned(),
            Outcome::RolledBack { stage } => format!("{stage} failed, rolled back"),
            Outcome::Failed { stage } => format!("{stage} failed"),
            Outcome::Skipped => "skipped".to_owned(),
            Outcome::Cancelled { stage: None, .. } => "cancelled before it started".to_owned(),
            Outcome::Cancelled {
                stage: Some(stage),
                restored: true,
            } => format!("cancelled during {stage}, what ran before was restored"),
            Outcome::Cancelled {
                stage: Some(stage),
                restored: false,
            } => format!("cancelled during {stage}"),
        };
        let _ = writeln!(out, "{:width$}  {outcome}", app.app);
        if let Some(image) = &app.image {
            let _ = writeln!(out, "{:width$}  image {image}", "");
        }
        if let Some(push) = &app.push {
            let _ = writeln!(
                out,
                "{:width$}  {} in {} blobs, {} already there, {} mounted",
                "",
                upload(push.bytes_uploaded),
                push.blobs_uploaded,
                push.blobs_skipped,
                push.blobs_mounted
            );
        }
        if let Some(rollout) = app.rollout.as_ref().or(app.rollback.as_ref()) {
            let revision = rollout
                .revision
                .map(|r| format!(" revision {r}"))
                .unwrap_or_default();
            let _ = writeln!(out, "{:width$}  {}{revision}", "", rollout.workload);
        }
        out.push_str(&targets(&app.targets, width + 2));
        let t = &app.timings;
        let times: Vec<String> = [
            (Stage::Build, t.build_ms),
            (Stage::Push, t.push_ms),
            (Stage::Deploy, t.deploy_ms),
            (Stage::Rollback, t.rollback_ms),
        ]
        .into_iter()
        .filter(|(_, ms)| *ms > 0)
        .map(|(stage, ms)| format!("{stage} {}", seconds(ms)))
        .collect();
        if !times.is_empty() {
            let _ = writeln!(out, "{:width$}  {}", "", times.join(", "));
        }
        for reason in &app.reasons {
            let _ = writeln!(out, "{:width$}  • {reason}", "");
        }
        for line in app.error.iter().chain(&app.note) {
            let _ = writeln!(out, "{:width$}  ! {line}", "");
        }
    }
    let count = |f: fn(&Outcome) -> bool| report.apps.iter().filter(|a| f(&a.outcome)).count();
    let shipped = count(|o| matches!(o, Outcome::Deployed | Outcome::Pushed));
    let unchanged = count(|o| matches!(o, Outcome::Unchanged)) + report.plan.unchanged.len();
    let rolled_back = count(|o| matches!(o, Outcome::RolledBack { .. }));
    let failed = count(|o| matches!(o, Outcome::Failed { .. } | Outcome::Skipped));
    let cancelled_apps = count(|o| matches!(o, Outcome::Cancelled { .. }));
    let bytes = HumanBytes(report.bytes_pushed());
    let took = seconds(report.duration_ms);
    let _ = match to {
        Destination::Registry => writeln!(
            out,
            "\n{shipped} shipped, {unchanged} unchanged, {rolled_back} rolled back, {failed} failed, {cancelled_apps} cancelled; {bytes} pushed in {took}"
        ),
        Destination::Store(path) => writeln!(
            out,
            "\n{shipped} stored in {}, {unchanged} unchanged, {failed} failed, {cancelled_apps} cancelled; {bytes} written in {took}",
            path.display()
        ),
    };
    out
}

/// What runs for each app, and whether it is behind `head`.
pub(crate) fn status(rows: &[crate::AppStatus], head: &str) -> String {
    let width = rows.iter().map(|r| r.app.len()).max().unwrap_or(0);
    let mut text = String::new();
    for row in rows {
        let state = match (&row.running, row.up_to_date) {
            (None, _) => "never deployed".to_owned(),
            (Some(_), true) => "up to date".to_owned(),
            (Some(_), false) => format!("behind {head}: inputs changed"),
        };
        let _ = writeln!(text, "{:width$}  {state}", row.app);
        if let Some(running) = &row.running {
            let revision = running
                .revision
                .map(|n| format!(" (revision {n})"))
                .unwrap_or_default();
            let _ = writeln!(text, "{:width$}  runs {}{revision}", "", running.image);
        }
    }
    text
}

/// An app's revisions, oldest first, the live one marked.
pub(crate) fn history(app: &str, revisions: &[Revision]) -> String {
    let mut out = String::new();
    if revisions.is_empty() {
        let _ = writeln!(out, "{app}: never deployed");
    }
    for r in revisions {
        let live = if r.current { "  <- live" } else { "" };
        let _ = writeln!(out, "{:>4}  {}{live}", r.number, r.image);
        let when = r.created_at.as_deref().unwrap_or("");
        let cause = r.change_cause.as_deref().unwrap_or("");
        if !(when.is_empty() && cause.is_empty()) {
            let _ = writeln!(out, "      {when}  {cause}");
        }
    }
    out
}

/// One line per target of a deploy to several (clusters), indented by `indent`:
/// how it ended, where, and why it failed or was (not) rolled back.
pub(crate) fn targets(targets: &[TargetRollout], indent: usize) -> String {
    let mut out = String::new();
    let width = targets.iter().map(|t| t.target.len()).max().unwrap_or(0);
    for t in targets {
        let status = match t.status {
            TargetStatus::Deployed => "deployed",
            TargetStatus::Unchanged => "unchanged",
            TargetStatus::Failed => "failed",
            TargetStatus::Cancelled => "cancelled",
            TargetStatus::RolledBack => "failed, rolled back",
            _ => "ended",
        };
        let rollout = t.rollback.as_ref().or(t.rollout.as_ref());
        let revision = rollout
            .and_then(|r| r.revision)
            .map(|r| format!(" revision {r}"))
            .unwrap_or_default();
        let image = rollout
            .map(|r| format!(", runs {}", r.image))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:indent$}{:width$}  {status}{revision}{image} ({})",
            "",
            t.target,
            seconds(t.duration_ms)
        );
        for line in t.error.iter().chain(&t.note) {
            let _ = writeln!(out, "{:indent$}{:width$}  ! {line}", "", "");
        }
    }
    out
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// What `apply` did: one line per object.
pub(crate) fn applied(applied: &[shipflow_kit::k8s::Applied], dry_run: bool) -> String {
    let mut out = String::new();
    for a in applied {
        let what = match (a.changed, dry_run) {
            (false, _) => "unchanged",
            (true, false) => "configured",
            (true, true) => "would be configured",
        };
        let _ = writeln!(
            out,
            "{} {}/{} {what}  ({} #{})",
            a.kind.to_lowercase(),
            a.namespace,
            a.name,
            a.path.display(),
            a.document
        );
    }
    if applied.is_empty() {
        out.push_str("no manifests\n");
    }
    out
}

/// What `configmap` did (or, for a dry run, would do): the ConfigMap, the Deployments
/// rolled, the versions deleted.
pub(crate) fn config_rollout(
    namespace: &str,
    r: &shipflow_kit::k8s::ConfigRollout,
    dry_run: bool,
) -> String {
    let state = match (dry_run, r.created) {
        (true, _) => "(dry run: nothing written)",
        (false, true) => "created",
        (false, false) => "already there",
    };
    let mut out = format!("configmap {namespace}/{} {state}\n", r.name);
    let _ = match (r.rolled.as_slice(), dry_run) {
        ([], _) => writeln!(out, "no deployment needs a change"),
        (rolled, false) => writeln!(out, "rolled: {}", rolled.join(", ")),
        (rolled, true) => writeln!(out, "would roll: {}", rolled.join(", ")),
    };
    if !r.pruned.is_empty() {
        let _ = writeln!(out, "deleted unused versions: {}", r.pruned.join(", "));
    }
    out
}
