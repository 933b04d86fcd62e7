//! One replay or purge started here: progress while it runs (the page polls its JSON), then
//! the replayed / skipped / failed summary.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Json, Response};
use maud::html;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, page, q, when};
use crate::state::AppState;
use crate::tasks::{Kind, State as TaskState, Task};

/// `running`, `done` or `failed: ...`.
pub fn state_text(s: &TaskState) -> String {
    match s {
        TaskState::Running => "running".into(),
        TaskState::Done => "done".into(),
        TaskState::Failed(e) => format!("failed: {e}"),
    }
}

fn find(st: &AppState, id: &str) -> Result<Task, WebError> {
    id.parse()
        .ok()
        .and_then(|id| st.tasks.get(id))
        .ok_or_else(|| WebError::NotFound(format!("no task `{id}` in this dashboard process")))
}

/// `GET /tasks/{id}`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Result<Html<String>, WebError> {
    let t = find(&st, &id)?;
    let r = &t.report;
    let verb = match t.kind {
        Kind::Replay => "replayed",
        Kind::Purge => "purged",
    };
    let running = t.state == TaskState::Running;
    let body = html! {
        p { a href={ "/queues/" (q(&t.queue)) "/dlq" } { "← DLQ of " (t.queue) } }
        dl.facts data-task-poll=[running.then(|| format!("/tasks/{}/json", t.id))] {
            dt { "action" } dd { (t.kind.as_str()) " of " (t.queue) }
            dt { "filter" } dd { code { (t.filter) } }
            dt { "by" } dd { (t.actor) }
            dt { "started" } dd { (when(Some(t.started))) }
            dt { "rate" } dd { (t.rate.map_or("unlimited".into(), |r| format!("{r} entries/s"))) }
            dt { "dry-run count" } dd { (t.expected) }
            dt { "state" } dd data-t="state" { (state_text(&t.state)) }
        }
        progress data-t="progress" max=(t.expected.max(1)) value=(r.matched.min(t.expected.max(1))) {}
        table.summary {
            tr { th { (verb) } td data-t="done" { (r.done) } }
            tr { th { "skipped" } td data-t="skipped" { (r.skipped) } }
            tr { th { "failed" } td data-t="failed" { (r.failed) } }
            tr { th { "matched" } td data-t="matched" { (r.matched) } }
            tr { th { "looked at" } td data-t="scanned" { (r.scanned) } }
        }
        p.muted data-t="note" {
            @if !running {
                "Finished " (when(t.finished)) ". "
                @if r.skipped > 0 { "Skipped entries are malformed bodies that cannot run; purge them. " }
                @if r.failed > 0 { "Failed entries stay in the DLQ; run it again to retry them." }
            }
        }
    };
    Ok(page(
        &viewer,
        &format!("Task {} · {}", t.id, t.kind.as_str()),
        Nav::None,
        body,
    ))
}

/// `GET /tasks/{id}/json`: the task as the page's script polls it.
pub async fn json(State(st): State<AppState>, Path(id): Path<String>) -> Response {
    match find(&st, &id) {
        Ok(t) => Json(serde_json::json!({
            "state": state_text(&t.state),
            "running": t.state == TaskState::Running,
            "report": t.report,
            "expected": t.expected,
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}
