//! One DLQ entry: why it was dead-lettered, its envelope (payload pretty-printed), the full
//! error history, the raw body; replay or purge of just this entry (through the dry run).

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::html;
use serde::Deserialize;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, csrf, page, q, when};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct Params {
    pub id: String,
}

/// `GET /queues/{queue}/dlq/entry?id=`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
    Query(p): Query<Params>,
) -> Result<Html<String>, WebError> {
    st.queue(&queue)?;
    let e = st.broker.dlq_get(&queue, &p.id).await?.ok_or_else(|| {
        WebError::NotFound(format!(
            "no entry `{}` in the DLQ of `{queue}` (replayed or purged already?)",
            p.id
        ))
    })?;
    let base = format!("/queues/{}/dlq", q(&queue));
    let body = html! {
        p { a href=(base) { "← DLQ of " (queue) } }
        dl.facts {
            dt { "id" } dd { code { (e.id) } }
            dt { "queue" } dd { (e.queue) }
            dt { "dead-lettered" } dd { (when(e.dead_lettered_at)) }
            dt { "reason" } dd.reason { (e.reason) }
            @if let Some(env) = &e.envelope {
                dt { "kind" } dd { (env.kind) }
                dt { "attempts" } dd { (env.attempt) " of " (env.max_attempts) }
                dt { "enqueued" } dd { (when(Some(env.enqueued_at))) }
                @if let Some(k) = &env.dedup_key { dt { "dedup key" } dd { code { (k) } } }
            }
        }
        @if viewer.can_act() {
            form.actions method="post" action={ (base) "/plan" } {
                (csrf(&viewer))
                input type="hidden" name="id" value=(e.id);
                button type="submit" name="do" value="replay-selected" { "Replay this entry…" }
                button type="submit" name="do" value="purge-selected" class="danger" { "Purge this entry…" }
            }
        }
        @match &e.envelope {
            Some(env) => {
                h2 { "Payload" }
                pre.payload { (serde_json::to_string_pretty(&env.payload).unwrap_or_default()) }
                h2 { "Error history" }
                @if env.errors.is_empty() {
                    p.muted { "No failures recorded in the envelope." }
                } @else {
                    table.history {
                        thead { tr { th { "#" } th { "at" } th { "worker" } th { "error" } } }
                        tbody {
                            @for r in &env.errors {
                                tr { td { (r.attempt) } td { (when(Some(r.at))) } td { (r.worker) } td { pre { (r.error) } } }
                            }
                        }
                    }
                }
            }
            None => {
                p.error { "The body is not a valid envelope; it can be purged but not replayed." }
            }
        }
        details {
            summary { "Raw body" }
            pre.payload { (e.body) }
        }
    };
    Ok(page(
        &viewer,
        &format!("DLQ entry {}", e.id),
        Nav::None,
        body,
    ))
}
