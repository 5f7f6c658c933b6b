//! Text output for people; `--format json` prints the serde types instead.

use std::fmt::Write;

use shipflow_kit::{Outcome, Plan, Report, Revision, Stage};

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

/// The report for people: one line per app with its outcome, then a summary.
pub(crate) fn report(report: &Report) -> String {
    let mut out = String::new();
    let width = report.apps.iter().map(|a| a.app.len()).max().unwrap_or(0);
    for app in &report.apps {
        let outcome = match &app.outcome {
            Outcome::Deployed => "deployed".to_owned(),
            Outcome::Pushed => "pushed".to_owned(),
            Outcome::Unchanged => "unchanged".to_owned(),
            Outcome::RolledBack { stage } => format!("{stage} failed, rolled back"),
            Outcome::Failed { stage } => format!("{stage} failed"),
            Outcome::Skipped => "skipped".to_owned(),
            Outcome::Cancelled { stage: None, .. } => "cancelled before it started".to_owned(),
            Outcome::Cancelled {
                stage: Some(stage),
                restored,
            } => format!(
                "cancelled during {stage}{}",
                if *restored {
                    ", what ran before runs again"
                } else {
                    ""
                }
            ),
        };
        let _ = writeln!(out, "{:width$}  {outcome}", app.app);
        if let Some(image) = &app.image {
            let _ = writeln!(out, "{:width$}  image {image}", "");
        }
        if let Some(push) = &app.push {
            let _ = writeln!(
                out,
                "{:width$}  push: {} uploaded in {} blobs, {} already there, {} mounted",
                "",
                bytes(push.bytes_uploaded),
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
    let _ = writeln!(
        out,
        "\n{} shipped, {} unchanged, {} rolled back, {} failed; {} pushed in {}",
        count(|o| matches!(o, Outcome::Deployed | Outcome::Pushed)),
        count(|o| matches!(o, Outcome::Unchanged)) + report.plan.unchanged.len(),
        count(|o| matches!(o, Outcome::RolledBack { .. })),
        count(|o| matches!(
            o,
            Outcome::Failed { .. } | Outcome::Cancelled { .. } | Outcome::Skipped
        )),
        bytes(report.bytes_pushed()),
        seconds(report.duration_ms),
    );
    out
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

/// A byte count for people.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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

/// What `config` did (or, for a dry run, would do): the ConfigMap, the Deployments
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
