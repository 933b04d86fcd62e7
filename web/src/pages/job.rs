//! Job lookup by id: where the job is, from `fleet::lookup::find` (what `worker job` prints):
//! running on which worker (host, pid, since when; a lost worker marked), which queue's DLQ
//! holds it (with its history), which schedule tick enqueued it, and its cancel requests, with
//! the cancel form while it is not dead-lettered. A job waiting in its queue is not visible by
//! id through any broker, so the page says where it looked.

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Html;
use fleet::lookup::JobLookup;
use fleet::registry::{LOST_AFTER_INTERVALS, WorkerState};
use maud::{Markup, html};
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
    let queues: Vec<String> = st.cfg.queues.keys().cloned().collect();
    let found = fleet::lookup::find(&st.store, &*st.broker, &queues, id)
        .await
        .map_err(|e| match e {
            fleet::Error::Invalid(m) => WebError::BadRequest(m),
            other => WebError::Fleet(other),
        })?;
    for u in &found.unreadable {
        tracing::warn!(job_id = %id, "job lookup incomplete: could not read {u}");
    }
    let act = viewer.can_act().then_some(&viewer);
    Ok(page(
        &viewer,
        &format!("Job {id}"),
        Nav::Job,
        body(&found, act),
    ))
}

/// The page's content; `act` is the viewer when they may cancel.
fn body(l: &JobLookup, act: Option<&Viewer>) -> Markup {
    html! {
        @for r in &l.running {
            @let w = &r.worker.registration;
            h2 { "Running on " (w.worker_id) }
            p class=(r.worker.state.as_str()) {
                "Running on " strong { (w.worker_id) } " (" (w.host) ", pid " (w.pid) ") since "
                (when(Some(r.job.started_at))) ", queue " (r.job.queue) ", kind " (r.job.kind) "."
            }
            @if r.worker.state == WorkerState::Lost {
                p.warn {
                    "That worker is lost: no report for " (LOST_AFTER_INTERVALS) " sample intervals (last "
                    (format!("{:.0}", r.worker.seen_ago_s)) " s ago). This is its last report; the job returns to its queue after its visibility timeout."
                }
            }
        }
        @if l.running.is_empty() {
            p.muted { "Not running on any registered worker (as of each worker's last report, at most one sample interval old)." }
            @for o in &l.maybe_running {
                p.muted {
                    "It may be running on " (o.worker.registration.worker_id) " (" (o.worker.registration.host) ", pid "
                    (o.worker.registration.pid) "), which runs " (o.omitted) " jobs more than its report lists."
                }
            }
        }
        @for e in &l.dead_lettered {
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
        @for k in &l.ticks {
            p { "Enqueued by schedule " strong { (k.schedule) } " for the tick " (when(Some(k.tick_at))) " onto " (k.queue) " (" (k.state) ")." }
        }
        @if l.dead_lettered.is_empty() {
            p.muted {
                "Not in the DLQ of any configured queue (" (l.searched.join(", ")) "). "
                "A job waiting in its queue is not listed by id through the broker; it shows here once it runs or is dead-lettered."
            }
        }
        @for c in &l.cancels {
            p.warn {
                "Cancel requested for " (c.queue) " by " (c.requested_by) " at " (when(Some(c.requested_at))) ": " (c.reason)
                @match &c.consumed_by { Some(w) => { " — carried out by " (w) " at " (when(c.consumed_at)) "." }, None => { " — pending (a worker stops it when it runs it)." } }
            }
        }
        @for u in &l.unreadable {
            p.warn { "Could not read " (u) "; the answer above may be incomplete." }
        }
        @if let (Some(viewer), true) = (act, l.dead_lettered.is_empty()) {
            h2 { "Cancel" }
            form.confirm method="post" action="/job/cancel" {
                (csrf(viewer))
                input type="hidden" name="id" value=(l.job_id);
                label { "queue " select name="queue" {
                    @for name in &l.searched {
                        // The queue it runs on is preselected: a cancel must name that queue to stop it.
                        @if l.running.iter().any(|r| &r.job.queue == name) {
                            option value=(name) selected { (name) }
                        } @else {
                            option value=(name) { (name) }
                        }
                    }
                } }
                input name="reason" placeholder="reason (for the audit log)" size="36";
                button type="submit" class="danger" { "Cancel this job" }
            }
            p.muted { "A running job is stopped by its worker and dead-lettered with the reason; a queued one is when it is received." }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use fleet::registry::{Registration, RunningAt, RunningJob, WorkerRow};

    use super::*;

    fn running(worker_id: &str, state: WorkerState) -> RunningAt {
        RunningAt {
            worker: WorkerRow {
                registration: Registration {
                    instance: uuid_like(),
                    worker_id: worker_id.into(),
                    host: "host-<b>".into(),
                    pid: 4242,
                    version: "0.1.0".into(),
                    backend: "redis".into(),
                    started_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0).unwrap(),
                    interval_ms: 1000,
                },
                seen_at: Utc::now(),
                seen_ago_s: 7.0,
                state,
                pools: vec![],
            },
            job: RunningJob {
                id: "job-1".into(),
                queue: "emails".into(),
                kind: "send".into(),
                started_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            },
        }
    }

    fn uuid_like() -> sqlx::types::Uuid {
        sqlx::types::Uuid::from_u128(7)
    }

    fn lookup(running: Vec<RunningAt>) -> JobLookup {
        JobLookup {
            job_id: "job-1".into(),
            running,
            maybe_running: vec![],
            dead_lettered: vec![],
            searched: vec!["emails".into(), "reports".into()],
            ticks: vec![],
            cancels: vec![],
            unreadable: vec![],
        }
    }

    #[test]
    fn names_the_worker_escaped_and_marks_a_lost_one() {
        let html = body(&lookup(vec![running("w-1", WorkerState::Running)]), None).into_string();
        assert!(
            html.contains("Running on <strong>w-1</strong> (host-&lt;b&gt;, pid 4242) since 2026-01-02 03:04:05Z, queue emails, kind send."),
            "{html}"
        );
        assert!(!html.contains("lost"), "{html}");
        assert!(!html.contains("Not running"), "{html}");

        let html = body(&lookup(vec![running("w-2", WorkerState::Lost)]), None).into_string();
        assert!(html.contains("Running on <strong>w-2</strong>"), "{html}");
        assert!(html.contains("That worker is lost"), "{html}");
    }

    #[test]
    fn says_where_it_looked_when_nothing_is_found() {
        let html = body(&lookup(vec![]), None).into_string();
        assert!(
            html.contains("Not running on any registered worker"),
            "{html}"
        );
        assert!(
            html.contains("Not in the DLQ of any configured queue (emails, reports)"),
            "{html}"
        );
        assert!(!html.contains("Running on"), "{html}");
    }
}
