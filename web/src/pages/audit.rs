//! The audit log (`fleet::audit`, the one the CLI writes too): who did what, newest first.

use axum::Extension;
use axum::extract::State;
use axum::response::Html;
use maud::html;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, page, when};
use crate::state::AppState;

/// Rows shown.
const LIMIT: i64 = 500;

/// `GET /audit`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Result<Html<String>, WebError> {
    let rows = st.store.audit_since(None, LIMIT).await?;
    let body = html! {
        p.muted { "Newest first, at most " (LIMIT) "." }
        table.audit {
            thead { tr { th { "at" } th { "who" } th { "action" } th { "target" } th { "request" } th { "outcome" } } }
            tbody {
                @for r in &rows {
                    tr {
                        td { (when(Some(r.at))) }
                        td { (r.actor) }
                        td { (r.action) }
                        td { code { (r.target) } }
                        td { code { (r.detail) } }
                        td { @match &r.counts { Some(c) => code { (c) }, None => span.muted { "-" } } }
                    }
                }
                @if rows.is_empty() { tr { td.muted colspan="6" { "nothing recorded yet" } } }
            }
        }
    };
    Ok(page(&viewer, "Audit log", Nav::Audit, body))
}
