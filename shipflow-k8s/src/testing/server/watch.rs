//! WATCH: events after a resourceVersion within the history window (410 Gone
//! beyond it), every object at once without one, bookmarks to watches that ask.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::{Body, Call, ChannelBody, filter, status, status_body};
use crate::testing::resources::Kind;
use crate::testing::store::{Change, Shared};

fn event_line(ty: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": ty, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

pub(super) fn watch_response(
    shared: &Arc<Shared>,
    call: &Call,
    kind: Kind,
    ns: Option<&str>,
) -> Response<Body> {
    let keep = match filter(call) {
        Ok(f) => f,
        Err(res) => return res.into_response(),
    };
    let from = call.param("resourceVersion").unwrap_or_default();
    let timeout = call
        .param("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1800u64);
    let bookmarks = call.flag("allowWatchBookmarks");
    let ns = ns.map(str::to_owned);
    let wanted = move |c: &Change| {
        c.kind == kind && ns.as_ref().is_none_or(|n| *n == c.namespace) && keep(&c.object)
    };
    let (tx, rx) = mpsc::channel(1024);
    let (mut changes, backlog, mut last, limit, bookmark_every) = {
        let st = shared.lock();
        let changes = shared.changes.subscribe();
        let backlog: Vec<Bytes> = match from {
            "" | "0" => st
                .objects
                .iter()
                .filter(|((k, n, _), v)| {
                    wanted(&Change {
                        rv: 0,
                        kind: *k,
                        namespace: n.clone(),
                        event: "ADDED",
                        object: (*v).clone(),
                        tick: 0,
                    })
                })
                .map(|(_, v)| event_line("ADDED", v))
                .collect(),
            rv => match rv.parse::<u64>() {
                Ok(rv) if rv >= st.history_floor() => st
                    .log
                    .iter()
                    .filter(|c| c.rv > rv && wanted(c))
                    .map(|c| event_line(c.event, &c.object))
                    .collect(),
                Ok(rv) => {
                    let gone = status_body(
                        StatusCode::GONE,
                        "Expired",
                        &format!("too old resource version: {rv} ({})", st.history_floor()),
                        None,
                    );
                    vec![event_line("ERROR", &gone)]
                }
                Err(_) => {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("invalid resourceVersion {rv:?}"),
                    )
                    .into_response();
                }
            },
        };
        let expired = backlog.len() == 1 && backlog[0].starts_with(b"{\"type\":\"ERROR\"");
        let last = if expired { u64::MAX } else { st.rv };
        (
            changes,
            backlog,
            last,
            st.watch_limit,
            shared.step * u32::try_from(st.bookmark_every).unwrap_or(60),
        )
    };
    let api_version = kind.api_version();
    let shared = shared.clone();
    tokio::spawn(async move {
        for line in backlog {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if last == u64::MAX {
            return; // 410: the client must list again.
        }
        let asked = Duration::from_secs(timeout);
        let deadline = tokio::time::sleep(limit.map_or(asked, |l| l.min(asked)));
        tokio::pin!(deadline);
        let mut bookmark =
            tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
        let mut marked = last;
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        if wanted(&c) && tx.send(event_line(c.event, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = status_body(StatusCode::GONE, "Expired", "too old resource version", None);
                        let _ = tx.send(event_line("ERROR", &gone)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = bookmark.tick(), if bookmarks => {
                    // Everything up to the newest change has been seen: say so.
                    let newest = shared.lock().rv;
                    if newest == last && last > marked {
                        marked = last;
                        let mark = json!({"kind": kind.name(), "apiVersion": api_version,
                            "metadata": {"resourceVersion": last.to_string()}});
                        if tx.send(event_line("BOOKMARK", &mark)).await.is_err() {
                            return;
                        }
                    }
                }
                () = &mut deadline => return,
                () = tx.closed() => return,
            }
        }
    });
    let mut res = Response::new(ChannelBody(rx).boxed());
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}
