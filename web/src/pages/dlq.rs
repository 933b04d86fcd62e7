//! The DLQ browser: the CLI's filters (kind, error regex, since/until, min attempts), a page of
//! matching entries at a time with a cursor (`queues::dlq::list_matching`, which
//! `worker dlq list` calls too), and replay or purge of the selected entries or of everything
//! matching, each through a dry-run count first.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::html;
use serde::Deserialize;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, csrf, page, q, when};
use crate::pages::form::{FilterQuery, filter_form};
use crate::state::AppState;

/// Entries per page unless asked otherwise, and the most a page shows.
const PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Debug, Deserialize)]
pub struct Params {
    #[serde(flatten)]
    pub filter: FilterQuery,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s
    }
}

/// `GET /queues/{queue}/dlq`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
    Query(p): Query<Params>,
) -> Result<Html<String>, WebError> {
    st.queue(&queue)?;
    let limit = match p.limit.as_deref().map(str::trim) {
        None | Some("") => PAGE,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| WebError::BadRequest(format!("limit `{s}` is not a whole number")))?
            .clamp(1, MAX_PAGE),
    };
    let filter = p.filter.parse()?;
    let found =
        queues::dlq::list_matching(&*st.broker, &queue, &filter, limit, p.cursor.as_deref())
            .await?;
    let base = format!("/queues/{}/dlq", q(&queue));
    let qs = p.filter.query_string();
    let with_filter = |path: &str| {
        if qs.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{qs}")
        }
    };
    let groups_link = with_filter(&format!("{base}/groups"));
    let first_link = with_filter(&base);
    let next_link = found.next_cursor.as_ref().map(|c| {
        let sep = if qs.is_empty() { "" } else { "&" };
        format!("{base}?{qs}{sep}cursor={}&limit={limit}", q(c))
    });
    let table = html! {
        table.dlq {
            thead { tr {
                @if viewer.can_act() { th { input type="checkbox" data-select-all aria-label="select all"; } }
                th { "id" } th { "kind" } th { "attempts" } th { "dead-lettered" } th { "reason" }
            } }
            tbody {
                @for e in &found.entries {
                    tr {
                        @if viewer.can_act() { td { input type="checkbox" name="id" value=(e.id) aria-label={ "select " (e.id) }; } }
                        td { a href={ (base) "/entry?id=" (q(&e.id)) } { code { (e.id) } } }
                        @match &e.envelope {
                            Some(env) => {
                                td { (env.kind) }
                                td { (env.errors.len()) " (" (env.attempt) "/" (env.max_attempts) ")" }
                            }
                            None => { td.muted { "(malformed)" } td { "-" } }
                        }
                        td { (when(e.dead_lettered_at)) }
                        td.reason { (one_line(&e.reason, 140)) }
                    }
                }
                @if found.entries.is_empty() {
                    tr { td.muted colspan="6" { "no matching entries" } }
                }
            }
        }
    };
    let body = html! {
        p {
            a href={ "/queues/" (q(&queue)) } { "← queue " (queue) } " · "
            a href=(groups_link) { "Group by error" }
        }
        (filter_form(&base, &p.filter))
        p.muted {
            "Filter: " code { (filter.describe()) } " · " (found.entries.len()) " shown, "
            (found.scanned) " looked at"
            @if p.cursor.is_some() { " · " a href=(first_link) { "first page" } }
        }
        // Read-only: the table alone, with no form that could be posted.
        @if viewer.can_act() {
            form id="act" method="post" action={ (base) "/plan" } {
                (csrf(&viewer))
                (p.filter.hidden())
                div.actions {
                    button type="submit" name="do" value="replay-selected" { "Replay selected" }
                    button type="submit" name="do" value="purge-selected" class="danger" { "Purge selected" }
                    button type="submit" name="do" value="replay-matching" { "Replay all matching…" }
                    button type="submit" name="do" value="purge-matching" class="danger" { "Purge all matching…" }
                    span.muted { "Each shows a dry-run count first." }
                }
                (table)
            }
        } @else {
            (table)
        }
        @if let Some(next) = &next_link {
            p { a.next href=(next) { "Next page →" } }
        }
    };
    Ok(page(&viewer, &format!("DLQ of {queue}"), Nav::None, body))
}
