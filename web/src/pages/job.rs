//! Job lookup by id: which queue's DLQ holds it (with its history), and which schedule tick
//! enqueued it. Queued and running jobs are not visible through the broker interface, so the
//! page says where it looked.

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Html;
use chrono::{DateTime, Utc};
use maud::html;
use serde::Deserialize;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, csrf, page, q, when};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct Params {
    pub id: Option<String>,
}

/// `GET /job?id=`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Query(p): Query<Params>,
) -> Result<Html<String>, WebError> {
    let id = p.id.as_deref().map(str::trim).unwrap_or("");
    if id.is_empty() {
        let body = html! { p.muted { "Type a job id into the box at the top." } };
        return Ok(page(&viewer, "Find a job", Nav::Job, body));
    }
    let mut in_dlq = Vec::new();
    for queue in st.cfg.queues.keys() {
        if let Some(e) = st.broker.dlq_get(queue, id).await? {
            in_dlq.push(e);
        }
    }
    let ticks: Vec<(String, DateTime<Utc>, String, String)> = sqlx::query_as(
        "SELECT schedule, tick_at, state, queue FROM jobfleet.scheduler_ticks WHERE job_id = $1",
    )
    .bind(id)
    .fetch_all(st.store.pool())
    .await
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "scheduler ledger not readable for a job lookup");
        Vec::new()
    });
    let cancels: Vec<_> = st
        .store
        .cancels(None, 1000)
        .await
        .map(|all| all.into_iter().filter(|c| c.job_id == id).collect())
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cancel requests not readable for a job lookup");
            Vec::new()
        });
    let body = html! {
        @for e in &in_dlq {
            h2 { "In the DLQ of " (e.queue) }
            p {
                "Dead-lettered " (when(e.dead_lettered_at)) ": " span.reason { (e.reason) } " · "
                a href={ "/queues/" (q(&e.queue)) "/dlq/entry?id=" (q(&e.id)) } { "envelope, history, replay" }
            }
            @if let Some(env) = &e.envelope {
                table.history {
                    thead { tr { th { "#" } th { "at" } th { "worker" } th { "error" } } }
                    tbody { @for r in &env.errors { tr { td { (r.attempt) } td { (when(Some(r.at))) } td { (r.worker) } td { pre { (r.error) } } } } }
                }
            }
        }
        @for (schedule, tick, state, queue) in &ticks {
            p { "Enqueued by schedule " strong { (schedule) } " for the tick " (when(Some(*tick))) " onto " (queue) " (" (state) ")." }
        }
        @if in_dlq.is_empty() {
            p.muted {
                "Not in the DLQ of any configured queue (" (st.cfg.queues.keys().cloned().collect::<Vec<_>>().join(", ")) "). "
                "A job that is queued or running is not listed by id through the broker; it shows here once it is dead-lettered."
            }
        }
        @for c in &cancels {
            p.warn {
                "Cancel requested for " (c.queue) " by " (c.requested_by) " at " (when(Some(c.requested_at))) ": " (c.reason)
                @match &c.consumed_by { Some(w) => { " — carried out by " (w) " at " (when(c.consumed_at)) "." }, None => { " — pending (a worker stops it when it runs it)." } }
            }
        }
        @if viewer.can_act() && in_dlq.is_empty() {
            h2 { "Cancel" }
            form.confirm method="post" action="/job/cancel" {
                (csrf(&viewer))
                input type="hidden" name="id" value=(id);
                label { "queue " select name="queue" { @for name in st.cfg.queues.keys() { option value=(name) { (name) } } } }
                input name="reason" placeholder="reason (for the audit log)" size="36";
                button type="submit" class="danger" { "Cancel this job" }
            }
            p.muted { "A running job is stopped by its worker and dead-lettered with the reason; a queued one is when it is received." }
        }
    };
    Ok(page(&viewer, &format!("Job {id}"), Nav::Job, body))
}
