//! Replay and purge from the browser, in two steps. `plan` counts what the action would touch
//! (a dry run over the same filter, read-only) and shows the count with a confirm form (the
//! rate for a replay); `run` records the action in the audit log and starts it as a
//! background task ([`crate::tasks`]), whose page shows progress and the summary.

use std::collections::BTreeSet;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::html;
use queues::dlq::DlqFilter;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, csrf, page, q};
use crate::pages::form::{Fields, FilterQuery};
use crate::state::AppState;
use crate::tasks::{self, Kind};

/// What the form asks for: which action, on which entries.
struct Asked {
    kind: Kind,
    selected: bool,
    ids: Vec<String>,
    query: FilterQuery,
    filter: DlqFilter,
}

fn read(f: &Fields) -> Result<Asked, WebError> {
    let what = f.get("do").unwrap_or("");
    let (kind, scope) = what
        .split_once('-')
        .and_then(|(k, s)| Some((Kind::parse(k)?, s)))
        .ok_or_else(|| WebError::BadRequest(format!("unknown action `{what}`")))?;
    let selected = match scope {
        "selected" => true,
        "matching" => false,
        other => return Err(WebError::BadRequest(format!("unknown scope `{other}`"))),
    };
    let query = FilterQuery::from_fields(f);
    let mut filter = query.parse()?;
    let ids = f.all("id");
    if selected {
        if ids.is_empty() {
            return Err(WebError::BadRequest(
                "nothing selected: tick the entries first, or use \"all matching\"".into(),
            ));
        }
        filter.ids = Some(ids.iter().cloned().collect::<BTreeSet<_>>());
    }
    Ok(Asked {
        kind,
        selected,
        ids,
        query,
        filter,
    })
}

/// `POST /queues/{queue}/dlq/plan`: the dry-run count and the confirm form.
pub async fn plan(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
    body: Bytes,
) -> Result<Html<String>, WebError> {
    st.queue(&queue)?;
    let a = read(&Fields::parse(&body))?;
    // The count walks the DLQ read-only with the filter the run will use.
    let g = queues::dlq::group_by_error(&*st.broker, &queue, &a.filter).await?;
    let malformed: u64 = g
        .groups
        .iter()
        .flat_map(|grp| grp.kinds.iter())
        .filter(|(k, _)| k == "(malformed)")
        .map(|(_, n)| n)
        .sum();
    let would = match a.kind {
        Kind::Replay => g.matched - malformed,
        Kind::Purge => g.matched,
    };
    let skip = if a.kind == Kind::Replay { malformed } else { 0 };
    let base = format!("/queues/{}/dlq", q(&queue));
    let verb = match a.kind {
        Kind::Replay => "replay",
        Kind::Purge => "purge",
    };
    let qs = a.query.query_string();
    let back = if qs.is_empty() {
        base.clone()
    } else {
        format!("{base}?{qs}")
    };
    let scope = if a.selected {
        format!("{} selected", a.ids.len())
    } else {
        "all matching".into()
    };
    let body = html! {
        p { a href=(back) { "← back to the DLQ" } }
        p.dryrun {
            "Dry run: would " (verb) " " strong data-dry-run-count { (would) } " "
            @if would == 1 { "entry" } @else { "entries" }
            " of " (queue)
            @if skip > 0 { ", skip " (skip) " malformed" }
            " (" (scope) "; filter " code { (a.filter.describe()) } ")."
        }
        @if a.kind == Kind::Purge { p.warn { "A purge deletes these jobs for good." } }
        @if would > 0 {
            form.confirm method="post" action={ (base) "/run" } {
                (csrf(&viewer))
                input type="hidden" name="do" value=(format!("{verb}-{}", if a.selected { "selected" } else { "matching" }));
                input type="hidden" name="expected" value=(would);
                (a.query.hidden())
                @for id in &a.ids { input type="hidden" name="id" value=(id); }
                @if a.kind == Kind::Replay {
                    label { "rate (entries/s, empty = unlimited) " input name="rate" size="6" inputmode="decimal"; }
                }
                button type="submit" class=[(a.kind == Kind::Purge).then_some("danger")] { "Yes, " (verb) " " (would) }
            }
        }
    };
    Ok(page(
        &viewer,
        &format!("{} · dry run", queue),
        Nav::None,
        body,
    ))
}

/// `POST /queues/{queue}/dlq/run`: starts the task and goes to its page.
pub async fn run(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
    body: Bytes,
) -> Result<Response, WebError> {
    st.queue(&queue)?;
    let f = Fields::parse(&body);
    let a = read(&f)?;
    let rate = match f.get("rate").map(str::trim) {
        None | Some("") => None,
        Some(s) => match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Some(r),
            _ => {
                return Err(WebError::BadRequest(format!(
                    "rate `{s}` must be a number above 0 (entries per second)"
                )));
            }
        },
    };
    let expected = f.get("expected").and_then(|s| s.parse().ok()).unwrap_or(0);
    let id = tasks::start(
        &st,
        tasks::Request {
            kind: a.kind,
            queue: queue.clone(),
            filter: a.filter,
            expected,
            rate,
            actor: viewer.actor(),
        },
    )
    .await?;
    Ok(Redirect::to(&format!("/tasks/{id}")).into_response())
}
