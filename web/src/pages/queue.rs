//! One queue: its numbers, the depth and throughput charts of the last hour, pause/resume, the
//! fleet-wide limits of the queue and its kinds ([`crate::pages::limits`]), the way into its
//! DLQ (browser, error groups, failures of the last hour) and the replays and purges started
//! here.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use chrono::Utc;
use maud::html;

use crate::WebError;
use crate::auth::Viewer;
use crate::chart::{Metric, svg};
use crate::layout::{Nav, csrf, page, q, when};
use crate::pages::overview::cells;
use crate::state::AppState;

/// `GET /queues/{queue}`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
) -> Result<Html<String>, WebError> {
    let qc = st.queue(&queue)?;
    let snap = st.samples.latest();
    let c = snap.queues.get(&queue).map(cells).unwrap_or_default();
    let cell = |f: &str| c.get(f).cloned().unwrap_or_else(|| "-".into());
    let tasks = st.tasks.of_queue(&queue);
    let limits = crate::pages::limits::section(&st, &viewer, &queue).await;
    let body = html! {
        dl.facts data-live="/live" {
            dt { "priority" } dd { (qc.priority.as_str()) " (pool " (qc.min) "–" (qc.max) ", " (qc.jobs_per_slot) " jobs per slot)" }
            dt { "visible" } dd data-q=(queue) data-f="visible" { (cell("visible")) }
            dt { "in flight" } dd data-q=(queue) data-f="in_flight" { (cell("in_flight")) }
            dt { "delayed" } dd data-q=(queue) data-f="delayed" { (cell("delayed")) }
            dt { "DLQ" } dd data-q=(queue) data-f="dead_lettered" { (cell("dead_lettered")) }
            dt { "oldest" } dd data-q=(queue) data-f="oldest" { (cell("oldest")) }
            dt { "running / target" } dd data-q=(queue) data-f="slots" { (cell("slots")) }
            dt { "ok/s · failed/s" } dd { span data-q=(queue) data-f="succeeded" { (cell("succeeded")) } " · " span data-q=(queue) data-f="failed" { (cell("failed")) } }
        }
        div.pause {
            @match snap.queues.get(&queue).and_then(|s| s.paused) {
                Some(true) => {
                    p.warn data-q=(queue) data-f="paused" { (cell("paused")) }
                    @if viewer.can_act() {
                        form method="post" action={ "/queues/" (q(&queue)) "/resume" } {
                            (csrf(&viewer))
                            button type="submit" name="resume" { "Resume" }
                        }
                    }
                }
                Some(false) => {
                    p.muted { "Receiving (not paused)." }
                    @if viewer.can_act() {
                        form.inline method="post" action={ "/queues/" (q(&queue)) "/pause" } {
                            (csrf(&viewer))
                            input name="reason" placeholder="reason (for the audit log)" size="36";
                            button type="submit" name="pause" class="danger" { "Pause for the fleet" }
                        }
                    }
                }
                None => { p.error { "Paused state unknown: the control state is not readable." } }
            }
        }
        div.charts {
            img data-chart src={ "/chart/" (q(&queue)) "/depth" } alt="depth over the last hour" width="640" height="160";
            img data-chart src={ "/chart/" (q(&queue)) "/rate" } alt="jobs per second over the last hour" width="640" height="160";
        }
        h2 #limits { "Limits" }
        (limits)
        h2 { "Dead letters" }
        p {
            a href={ "/queues/" (q(&queue)) "/dlq" } { "Browse the DLQ" } " · "
            a href={ "/queues/" (q(&queue)) "/dlq/groups" } { "Group by error" } " · "
            a href={ "/queues/" (q(&queue)) "/dlq?since=1h" } { "Failures of the last hour" }
        }
        @if !tasks.is_empty() {
            h2 { "Replays and purges from this dashboard" }
            table {
                thead { tr { th { "#" } th { "action" } th { "by" } th { "started" } th { "filter" } th { "state" } th.num { "done" } } }
                tbody {
                    @for t in &tasks {
                        tr {
                            td { a href={ "/tasks/" (t.id) } { (t.id) } }
                            td { (t.kind.as_str()) }
                            td { (t.actor) }
                            td { (when(Some(t.started))) }
                            td { code { (t.filter) } }
                            td { (crate::pages::task::state_text(&t.state)) }
                            td.num { (t.report.done) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, &format!("Queue {queue}"), Nav::None, body))
}

/// `GET /chart/{queue}/{depth|rate}`: the SVG.
pub async fn chart(
    State(st): State<AppState>,
    Path((queue, metric)): Path<(String, String)>,
) -> Result<Response, WebError> {
    st.queue(&queue)?;
    let metric = Metric::parse(&metric)
        .ok_or_else(|| WebError::NotFound(format!("no chart `{metric}` (depth or rate)")))?;
    let body = svg(&st.samples.history(&queue), metric, Utc::now()).into_string();
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response())
}
