//! The fleet from the registry (`fleet::Store::workers`, what `worker workers` prints): host,
//! version, backend, pools, running, last seen, and whether it is running, draining or lost.

use axum::Extension;
use axum::extract::State;
use axum::response::Html;
use maud::html;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, page, when};
use crate::state::AppState;

/// `GET /workers`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, WebError> {
    let rows = st.store.workers().await?;
    let body = html! {
        table.workers {
            thead { tr {
                th { "worker" } th { "host / pid" } th { "version" } th { "backend" } th { "state" }
                th { "started" } th { "last seen" } th { "pools: running / target" }
                th.num { "succeeded" } th.num { "failed" } th.num { "DLQ" }
            } }
            tbody {
                @for w in &rows {
                    @let (running, ok, failed, dead) = w.totals();
                    tr class=(w.state.as_str()) {
                        td { (w.registration.worker_id) }
                        td { (w.registration.host) " / " (w.registration.pid) }
                        td { (w.registration.version) }
                        td { (w.registration.backend) }
                        td.state { (w.state.as_str()) }
                        td { (when(Some(w.registration.started_at))) }
                        td { (format!("{:.0} s ago", w.seen_ago_s)) }
                        td {
                            @for p in &w.pools { (p.queue) " " (p.running) "/" (p.target) br; }
                            span.muted { "total running " (running) }
                        }
                        td.num { (ok) } td.num { (failed) } td.num { (dead) }
                    }
                }
                @if rows.is_empty() { tr { td.muted colspan="11" { "no worker has registered (is one running against this database?)" } } }
            }
        }
    };
    Ok(page(&viewer, "Workers", Nav::Workers, body))
}
