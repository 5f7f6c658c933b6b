//! The web console: server-rendered HTML, a little inline script for the live
//! log (server-sent events) and the buttons (manual run, rollback).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Html;

use shipflow_kit::Report;

use shipflow_kit::{Context, error_chain};

use crate::api::{ApiError, ApiResult, deployer_of, matrix, require_read};
use crate::db::{Deployment, Run};
use crate::runner::{Service, short};

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}code,pre{font:12px ui-monospace,monospace}pre{background:#f6f6f6;padding:1em;max-height:40em;overflow:auto}.failed,.error,.interrupted{color:#b00}.succeeded{color:#070}";

/// The token box and the function the buttons post with: the token stays in the
/// browser (session storage), never in a page or a URL.
const SCRIPT: &str = r#"<p><label>Token for actions <input type="password" id="token" autocomplete="off"></label></p>
<script>
const tokenBox = document.getElementById('token');
tokenBox.value = sessionStorage.getItem('console-token') || '';
tokenBox.addEventListener('change', () => sessionStorage.setItem('console-token', tokenBox.value));
async function act(url, body, question) {
  if (question && !confirm(question)) return;
  const r = await fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + tokenBox.value}, body: JSON.stringify(body)});
  const answer = await r.json();
  document.getElementById('result').textContent = r.ok ? JSON.stringify(answer) : ('refused: ' + answer.error);
  if (r.ok && answer.run) location.href = '/runs/' + answer.run;
}
</script><p id="result"></p>"#;

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body><p><a href=\"/\">console</a></p><h1>{t}</h1>{body}</body></html>",
        t = esc(title)
    ))
}

fn runs_table(runs: &[Run]) -> String {
    let mut out = String::from(
        "<table id=\"runs\"><tr><th>run</th><th>environment</th><th>ref</th><th>commit</th><th>trigger</th><th>status</th><th>reason</th></tr>",
    );
    for r in runs {
        let _ = write!(
            out,
            "<tr><td><a href=\"/runs/{id}\">{id}</a></td><td>{env}</td><td>{reference}</td><td><code>{sha}</code></td><td>{trigger}</td><td class=\"{status}\">{status}</td><td>{reason}</td></tr>",
            id = r.id,
            env = esc(&r.environment),
            reference = esc(&r.reference),
            sha = esc(short(&r.sha)),
            trigger = esc(&r.trigger),
            status = esc(&r.status),
            reason = esc(r.reason.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>");
    out
}

/// Apps × environments, the last runs, and a manual run.
pub(crate) async fn index(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
) -> ApiResult<Html<String>> {
    require_read(&service, &headers)?;
    let m = matrix(&service)?;
    let names = |key: &str| -> Vec<String> {
        m[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let (apps, environments) = (names("apps"), names("environments"));
    let current: Vec<Deployment> = service.db.current()?;
    let mut body =
        String::from("<h2>Apps × environments</h2><table id=\"matrix\"><tr><th>app</th>");
    for env in &environments {
        let _ = write!(body, "<th>{}</th>", esc(env));
    }
    body.push_str("</tr>");
    for app in &apps {
        let _ = write!(
            body,
            "<tr><td><a href=\"/apps/{a}\">{a}</a></td>",
            a = esc(app)
        );
        for env in &environments {
            let cell = current
                .iter()
                .find(|d| &d.app == app && &d.environment == env)
                .map_or_else(String::new, |d| {
                    format!(
                        "<code class=\"image\">{}</code><br>{} <code>{}</code>",
                        esc(&d.image),
                        esc(&d.action),
                        esc(d.sha.as_deref().map(short).unwrap_or(""))
                    )
                });
            let _ = write!(body, "<td>{cell}</td>");
        }
        body.push_str("</tr>");
    }
    body.push_str("</table><h2>Run a branch or tag</h2>");
    body.push_str(SCRIPT);
    body.push_str("<p><input id=\"ref\" placeholder=\"main or v1.2.0\"> <button onclick=\"act('/api/runs', {ref: document.getElementById('ref').value})\">Run</button></p>");
    body.push_str("<h2>Last runs</h2>");
    body.push_str(&runs_table(&service.db.runs(30)?));
    Ok(page("shipflow console", &body))
}

/// A run: its report's apps, and its log, live while it runs.
pub(crate) async fn run(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Html<String>> {
    require_read(&service, &headers)?;
    let Some(run) = service.db.run(id)? else {
        return Ok(page("no such run", ""));
    };
    let mut body = runs_table(std::slice::from_ref(&run));
    body.push_str("<h2>Apps</h2><table id=\"apps\"><tr><th>app</th><th>stage</th><th>state</th><th>image</th><th>why</th></tr>");
    let report: Option<Report> = service
        .db
        .report(id)?
        .and_then(|r| serde_json::from_str(&r).ok());
    for app in report.iter().flat_map(|r| &r.apps) {
        let outcome = serde_json::to_value(&app.outcome).ok();
        let status = outcome
            .as_ref()
            .and_then(|o| o["status"].as_str())
            .unwrap_or_default();
        let reasons: Vec<String> = app.reasons.iter().map(ToString::to_string).collect();
        let _ = write!(
            body,
            "<tr id=\"app-{a}\"><td>{a}</td><td>{status}</td><td>{error}</td><td><code>{image}</code></td><td>{why}</td></tr>",
            a = esc(&app.app),
            status = esc(status),
            error = esc(app.error.as_deref().unwrap_or("")),
            image = esc(&app
                .image
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()),
            why = esc(&reasons.join("; ")),
        );
    }
    body.push_str("</table>");
    body.push_str("<h2>Log</h2><pre id=\"log\"></pre>");
    let _ = write!(
        body,
        r#"<script>
const log = document.getElementById('log');
const apps = document.getElementById('apps');
const source = new EventSource('/api/runs/{id}/stream');
source.addEventListener('line', e => {{ log.textContent += e.data + '\n'; }});
source.addEventListener('app', e => {{
  const a = JSON.parse(e.data);
  let row = document.getElementById('app-' + a.app);
  if (!row) {{ row = apps.insertRow(); row.id = 'app-' + a.app; row.insertCell().textContent = a.app; row.insertCell(); row.insertCell(); row.insertCell(); row.insertCell(); }}
  row.cells[1].textContent = a.stage; row.cells[2].textContent = a.state;
}});
source.addEventListener('end', e => {{ log.textContent += '[' + e.data + ']\n'; log.dataset.ended = e.data; source.close(); }});
</script>"#
    );
    Ok(page(&format!("run {id}"), &body))
}

/// An app's deployments per environment, with rollback.
pub(crate) async fn app(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Html<String>> {
    require_read(&service, &headers)?;
    let history = service.db.app_history(&app)?;
    let mut body = String::from(SCRIPT);
    let mut environments: Vec<&str> = history.iter().map(|d| d.environment.as_str()).collect();
    environments.sort_unstable();
    environments.dedup();
    // The button posts a rollback after the browser's confirmation; without a
    // revision, to the previous one.
    let button = |env: &str, revision: Option<u64>| {
        let (label, to, data) = match revision {
            Some(n) => (
                format!("Roll back to {n}"),
                format!("revision {n}"),
                format!(" data-revision=\"{n}\""),
            ),
            None => (
                "Roll back".to_owned(),
                "its previous revision".to_owned(),
                String::new(),
            ),
        };
        format!(
            "<button class=\"rollback\" data-env=\"{e}\" data-app=\"{a}\"{data} onclick=\"act('/api/apps/' + encodeURIComponent(this.dataset.app) + '/rollback', {{environment: this.dataset.env, revision: this.dataset.revision ? Number(this.dataset.revision) : null}}, 'Roll ' + this.dataset.app + ' back to {to} in ' + this.dataset.env + '?')\">{label}</button>",
            e = esc(env),
            a = esc(&app),
        )
    };
    for env in environments {
        let _ = write!(body, "<h2>{}</h2>{}", esc(env), button(env, None));
        // What the deployer keeps: each revision can be rolled back to.
        match deployer_of(&service, env).await {
            Ok((workspace, deployer)) => match workspace.app(&app) {
                Some(target) => match deployer.history(target, &Context::new()).await {
                    Ok(revisions) => {
                        body.push_str("<h3>Revisions</h3><table class=\"revisions\"><tr><th>revision</th><th>image</th><th>cause</th><th>created</th><th></th></tr>");
                        for r in revisions {
                            let action = if r.current {
                                "running".to_owned()
                            } else {
                                button(env, Some(r.number))
                            };
                            let _ = write!(
                                body,
                                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{action}</td></tr>",
                                r.number,
                                esc(&r.image),
                                esc(r.change_cause.as_deref().unwrap_or("")),
                                esc(r.created_at.as_deref().unwrap_or("")),
                            );
                        }
                        body.push_str("</table>");
                    }
                    Err(e) => {
                        let _ = write!(
                            body,
                            "<p>no revisions: {}</p>",
                            esc(&error_chain(e.as_ref()))
                        );
                    }
                },
                None => body.push_str("<p>not an app of this environment</p>"),
            },
            Err(ApiError(_, message)) => {
                let _ = write!(body, "<p>no revisions: {}</p>", esc(&message));
            }
        }
        body.push_str("<h3>Deploys from the console</h3><table><tr><th>when</th><th>action</th><th>image</th><th>commit</th><th>run</th></tr>");
        for d in history.iter().filter(|d| d.environment == env) {
            let run = d
                .run_id
                .map_or(String::new(), |r| format!("<a href=\"/runs/{r}\">{r}</a>"));
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{run}</td></tr>",
                d.at,
                esc(&d.action),
                esc(&d.image),
                esc(d.sha.as_deref().map(short).unwrap_or("")),
            );
        }
        body.push_str("</table>");
    }
    Ok(page(&format!("app {app}"), &body))
}
