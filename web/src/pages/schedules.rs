//! The schedules: each one's cron and time zone, its next fires, its last enqueued tick, and
//! which scheduler replica holds the lease — what `scheduler list` prints, from the same
//! `scheduler::Core::overview`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Html;
use chrono::Utc;
use maud::html;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, page, when};
use crate::state::AppState;

/// `GET /schedules`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, WebError> {
    let core = scheduler::runner::build_core_with(
        &st.cfg,
        st.store.pool().clone(),
        &st.opts.lease_name,
        Arc::new(scheduler::runner::NoSend),
    )?;
    let rows = core.overview(Utc::now(), 3).await?;
    let leader = core.lease().current_holder().await?;
    let body = html! {
        p { "Leader: " @match &leader { Some(l) => strong { (l) }, None => span.warn { "none (no live lease: is a scheduler running?)" } } }
        table.schedules {
            thead { tr { th { "schedule" } th { "cron (time zone)" } th { "kind → queue" } th { "catch-up" } th { "next fires (UTC)" } th { "last enqueued tick" } } }
            tbody {
                @for r in &rows {
                    tr {
                        td { (r.name) }
                        td { code { (r.cron) } " (" (r.timezone) ")" }
                        td { (r.kind) " → " (r.queue) }
                        td { (r.catch_up) @if r.run_at_start { ", at start" } }
                        td { @for t in &r.next { (when(Some(*t))) br; } }
                        td { @match &r.last {
                            Some(l) => { (when(Some(l.tick_at))) " (" (l.reason) ", " (l.state) ")" br; span.muted { "job " code { (l.job_id) } } }
                            None => span.muted { "never" }
                        } }
                    }
                }
                @if rows.is_empty() { tr { td.muted colspan="6" { "no schedules configured" } } }
            }
        }
    };
    Ok(page(&viewer, "Schedules", Nav::Schedules, body))
}
