//! The HTTP server: webhooks, the JSON API, and the pages (see `pages`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use shipflow_kit::{Context, RollbackTarget};
use tokio::sync::broadcast;

use crate::config::Secret;
use crate::runner::{Live, Service};
use crate::webhook::{Delivery, Provider, Refused};
use crate::{pages, parts, triggers};

type Shared = State<Arc<Service>>;

/// The routes.
pub(crate) fn router(service: Arc<Service>) -> Router {
    let limit = service.config.max_body_bytes;
    Router::new()
        .route("/", get(pages::index))
        .route("/runs/{id}", get(pages::run))
        .route("/apps/{app}", get(pages::app))
        .route("/hooks/{provider}", post(hook))
        .route("/api/status", get(status))
        .route("/api/runs", get(runs).post(manual_run))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/log", get(log))
        .route("/api/runs/{id}/events", get(events))
        .route("/api/runs/{id}/stream", get(stream))
        .route("/api/apps/{app}", get(app_history))
        .route("/api/apps/{app}/revisions", get(revisions))
        .route("/api/apps/{app}/rollback", post(rollback))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(service)
}

/// An error answered as JSON; server errors are logged.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!("{}", self.1);
        }
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"console\""),
            );
        }
        response
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no {what}"))
}

/// The token a request carries: `Authorization: Bearer <token>`, or Basic with the
/// token as password (what a browser asks for).
fn presented(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_owned());
    }
    let basic = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    Some(decoded.split_once(':')?.1.to_owned())
}

/// Equal tokens, compared through their digests (no early exit on a common prefix).
fn same(given: &str, secret: &Secret) -> bool {
    Sha256::digest(given.as_bytes()) == Sha256::digest(secret.expose().as_bytes())
}

/// Mutating actions need the write token.
fn require_write(service: &Service, headers: &HeaderMap) -> ApiResult<()> {
    match presented(headers) {
        Some(t) if same(&t, &service.config.auth.token) => Ok(()),
        _ => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "a mutating action needs the bearer token".into(),
        )),
    }
}

/// Reading needs the read token (or the write token) when one is configured.
pub(crate) fn require_read(service: &Service, headers: &HeaderMap) -> ApiResult<()> {
    let auth = &service.config.auth;
    let Some(read) = &auth.read_token else {
        return Ok(());
    };
    match presented(headers) {
        Some(t) if same(&t, read) || same(&t, &auth.token) => Ok(()),
        _ => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "reading needs the read token".into(),
        )),
    }
}

async fn hook(
    State(service): Shared,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let started = Instant::now();
    let webhooks = &service.config.webhooks;
    let (provider, secret) = match provider.as_str() {
        "github" => (Provider::GitHub, webhooks.github.as_ref()),
        "gitea" => (Provider::Gitea, webhooks.gitea.as_ref()),
        "gitlab" => (Provider::GitLab, webhooks.gitlab.as_ref()),
        _ => return Err(not_found("such webhook provider")),
    };
    if service.shutdown.is_cancelled() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down".into(),
        ));
    }
    let delivery = provider.verify(secret, &headers, &body).map_err(|e| {
        tracing::warn!(?provider, "webhook refused: {e}");
        let status = match e {
            Refused::Payload(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        ApiError(status, e.to_string())
    })?;
    let push = match delivery {
        Delivery::Push(push) => push,
        Delivery::Other(event) => return Ok(Json(json!({ "ignored": event }))),
    };
    let Some(sha) = push.sha else {
        return Ok(Json(
            json!({ "ignored": format!("{} was deleted", push.reference) }),
        ));
    };
    let delivery = provider.delivery_id(&headers);
    if let Some(id) = &delivery
        && !service.db.first_delivery(provider.name(), id)?
    {
        tracing::info!(?provider, delivery = id, "duplicate delivery ignored");
        return Ok(Json(json!({ "ignored": "duplicate delivery" })));
    }
    let queued = service
        .trigger(
            &push.reference,
            &sha,
            &format!("{provider:?} webhook").to_lowercase(),
        )
        .await
        .inspect_err(|_| {
            if let Some(id) = &delivery
                && let Err(e) = service.db.forget_delivery(provider.name(), id)
            {
                tracing::error!("cannot forget a delivery: {e:#}");
            }
        })?;
    tracing::debug!(elapsed = ?started.elapsed(), "webhook handled");
    Ok(Json(
        serde_json::to_value(queued).map_err(anyhow::Error::from)?,
    ))
}

#[derive(Deserialize)]
struct ManualRun {
    #[serde(rename = "ref")]
    reference: String,
}

async fn manual_run(
    State(service): Shared,
    headers: HeaderMap,
    Json(body): Json<ManualRun>,
) -> ApiResult<Json<Value>> {
    require_write(&service, &headers)?;
    let queued = triggers::run_ref(&service, &body.reference, "manual")
        .await
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")))?;
    Ok(Json(
        serde_json::to_value(queued).map_err(anyhow::Error::from)?,
    ))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn runs(
    State(service): Shared,
    headers: HeaderMap,
    Query(q): Query<Limit>,
) -> ApiResult<Json<Value>> {
    require_read(&service, &headers)?;
    let runs = service.db.runs(q.limit.unwrap_or(50).clamp(1, 500))?;
    Ok(Json(json!({ "runs": runs })))
}

async fn run(
    State(service): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    require_read(&service, &headers)?;
    let run = service.db.run(id)?.ok_or_else(|| not_found("such run"))?;
    let report: Option<Value> = service
        .db
        .report(id)?
        .and_then(|r| serde_json::from_str(&r).ok());
    Ok(Json(json!({ "run": run, "report": report })))
}

async fn log(
    State(service): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    require_read(&service, &headers)?;
    Ok(Json(json!({ "lines": service.db.log_lines(id, 0)? })))
}

async fn events(
    State(service): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    require_read(&service, &headers)?;
    let events: Vec<Value> = service
        .db
        .events(id)?
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    Ok(Json(json!({ "events": events })))
}

/// Apps × environments: what each runs, from which commit.
pub(crate) fn matrix(service: &Service) -> anyhow::Result<Value> {
    let (apps, environments) = parts::names(&service.rules());
    let current = service.db.current()?;
    Ok(json!({ "apps": apps, "environments": environments, "deployments": current }))
}

async fn status(State(service): Shared, headers: HeaderMap) -> ApiResult<Json<Value>> {
    require_read(&service, &headers)?;
    Ok(Json(matrix(&service)?))
}

async fn app_history(
    State(service): Shared,
    headers: HeaderMap,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    require_read(&service, &headers)?;
    Ok(Json(
        json!({ "app": app, "deployments": service.db.app_history(&app)? }),
    ))
}

/// Only an environment of shipflow.toml: its name becomes a path and a lock.
fn known_environment(service: &Service, environment: &str) -> ApiResult<()> {
    let (_, environments) = parts::names(&service.rules());
    if environments.iter().any(|e| e == environment) {
        Ok(())
    } else {
        Err(not_found("such environment"))
    }
}

/// The workspace of `environment` as its last run checked it out, and its deployer.
pub(crate) async fn deployer_of(
    service: &Service,
    environment: &str,
) -> ApiResult<(shipflow_kit::Workspace, Arc<dyn shipflow_kit::Deployer>)> {
    known_environment(service, environment)?;
    let dir = service.repo.worktree(environment);
    if !dir.exists() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("nothing ran in {environment} yet"),
        ));
    }
    let workspace = parts::workspace(&dir, environment)?;
    let deployer = parts::deployer(&workspace).await?;
    Ok((workspace, deployer))
}

#[derive(Deserialize)]
struct InEnvironment {
    environment: String,
}

/// The deployer's own history of an app in an environment (what rollback picks from).
async fn revisions(
    State(service): Shared,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<InEnvironment>,
) -> ApiResult<Json<Value>> {
    require_read(&service, &headers)?;
    let (workspace, deployer) = deployer_of(&service, &q.environment).await?;
    let target = workspace.app(&app).ok_or_else(|| not_found("such app"))?;
    let revisions = deployer
        .history(target, &Context::new())
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::BAD_GATEWAY,
                shipflow_kit::error_chain(e.as_ref()),
            )
        })?;
    Ok(Json(
        json!({ "app": app, "environment": q.environment, "revisions": revisions }),
    ))
}

#[derive(Deserialize)]
struct Rollback {
    environment: String,
    /// A revision number of the deployer's history; the previous one without it.
    revision: Option<u64>,
}

async fn rollback(
    State(service): Shared,
    headers: HeaderMap,
    Path(app): Path<String>,
    Json(body): Json<Rollback>,
) -> ApiResult<Json<Value>> {
    require_write(&service, &headers)?;
    known_environment(&service, &body.environment)?;
    // Not while a run deploys there.
    let env_lock = service.env_lock(&body.environment);
    let _guard = env_lock.lock().await;
    let (workspace, deployer) = deployer_of(&service, &body.environment).await?;
    let target = workspace.app(&app).ok_or_else(|| not_found("such app"))?;
    let to = body
        .revision
        .map_or(RollbackTarget::Previous, RollbackTarget::Revision);
    let done = deployer
        .rollback(target, to, &Context::new())
        .await
        .map_err(|e| ApiError(StatusCode::CONFLICT, shipflow_kit::error_chain(e.as_ref())))?;
    service
        .db
        .rolled_back(&body.environment, &app, &done.image)?;
    tracing::info!(
        app,
        environment = body.environment,
        image = done.image,
        "rolled back"
    );
    Ok(Json(
        json!({ "app": app, "environment": body.environment, "image": done.image }),
    ))
}

/// A run's log and app progress as server-sent events: what is stored, then what
/// comes, until the run ends.
async fn stream(
    State(service): Shared,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    require_read(&service, &headers)?;
    // Subscribe first: a line stored meanwhile comes twice and is dropped by seq.
    let receiver = service.live.subscribe();
    let run = service.db.run(id)?.ok_or_else(|| not_found("such run"))?;
    let stored = service.db.log_lines(id, 0)?;
    let last = stored.last().map_or(0, |l| l.seq);
    let mut first: Vec<SseEvent> = stored.iter().map(line_event).collect();
    let finished = crate::db::FINISHED.contains(&run.status.as_str());
    if finished {
        first.push(SseEvent::default().event("end").data(&run.status));
    }
    let state = (
        first.into_iter(),
        Some(receiver).filter(|_| !finished),
        last,
    );
    let events = futures_util::stream::unfold(state, move |(mut first, mut receiver, mut last)| {
        let service = service.clone();
        async move {
            if let Some(event) = first.next() {
                return Some((Ok(event), (first, receiver, last)));
            }
            let rx = receiver.as_mut()?;
            loop {
                let received = tokio::select! {
                    received = rx.recv() => received,
                    // Shutdown ends the streams too, or queued runs would hold the server.
                    () = service.shutdown.cancelled() => return None,
                };
                let live = match received {
                    Ok(live) => live,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live channel: the lines missed are stored,
                        // and the run's end may have been missed too. Its status is
                        // read first: a finished run has stored all its lines.
                        let status = service.db.run(id).ok()??.status;
                        let ended = crate::db::FINISHED.contains(&status.as_str());
                        let missed = service.db.log_lines(id, last).ok()?;
                        last = missed.last().map_or(last, |l| l.seq);
                        let mut missed: Vec<SseEvent> = missed.iter().map(line_event).collect();
                        if ended {
                            missed.push(SseEvent::default().event("end").data(&status));
                        }
                        let mut missed = missed.into_iter();
                        let Some(event) = missed.next() else {
                            continue;
                        };
                        let receiver = if ended { None } else { receiver };
                        return Some((Ok(event), (missed, receiver, last)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                if live.run() != id {
                    continue;
                }
                let event = match &live {
                    Live::Line { seq, text, .. } if *seq > last => {
                        last = *seq;
                        SseEvent::default()
                            .event("line")
                            .id(seq.to_string())
                            .data(text)
                    }
                    Live::Line { .. } => continue,
                    Live::App { .. } => SseEvent::default()
                        .event("app")
                        .data(serde_json::to_string(&live).unwrap_or_default()),
                    Live::End { status, .. } => {
                        let event = SseEvent::default().event("end").data(status);
                        return Some((Ok(event), (first, None, last)));
                    }
                };
                return Some((Ok(event), (first, receiver, last)));
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn line_event(line: &crate::db::LogLine) -> SseEvent {
    SseEvent::default()
        .event("line")
        .id(line.seq.to_string())
        .data(&line.line)
}
