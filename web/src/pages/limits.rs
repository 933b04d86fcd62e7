//! The limits section of the queue page and its one action: the fleet-wide limits of the queue
//! and of the kinds routed to it, shown with `fleet::limits::view::rows` (what `worker limits`
//! prints) and changed with `fleet::Store::set_limit` / `clear_limit` (what `worker limit`
//! calls), which write the audit row with the signed-in actor in the same transaction.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use fleet::limits::Scope;
use fleet::limits::view::{LimitRow, source};
use maud::{Markup, html};
use runtime::config::Rate;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{csrf, q, when};
use crate::pages::form::Fields;
use crate::state::{AppState, Inner};

/// The scopes the queue page shows: the queue itself, then every kind `[routes]` sends to it,
/// then any other kind that has a limit in force and is known here (a producer may send any
/// kind to any queue, and a kind's limit holds on every queue).
fn scopes(st: &Inner, queue: &str, rows: &[LimitRow]) -> Vec<Scope> {
    let mut out = vec![Scope::Queue(queue.to_owned())];
    let mut kinds: Vec<&str> = st
        .cfg
        .routes
        .iter()
        .filter(|(_, q)| q.as_str() == queue)
        .map(|(k, _)| k.as_str())
        .collect();
    for r in rows.iter().filter(|r| r.scope == "kind") {
        if !kinds.contains(&r.name.as_str()) && known_kind(st, &r.name) {
            kinds.push(&r.name);
        }
    }
    out.extend(kinds.into_iter().map(|k| Scope::Kind(k.to_owned())));
    out
}

/// Whether this dashboard's build runs `kind` (all kinds when it was not told which).
fn known_kind(st: &Inner, kind: &str) -> bool {
    st.opts.kinds.is_empty() || st.opts.kinds.iter().any(|k| k == kind)
}

/// The limits section of `GET /queues/{queue}`.
pub async fn section(st: &Inner, viewer: &Viewer, queue: &str) -> Markup {
    if !st.cfg.fleet.enabled {
        return html! { p.muted { "Limits: [fleet] enabled = false in this config, so there are no fleet-wide limits to show or change." } };
    }
    let rows = match st.store.limit_rows(&st.cfg.limits).await {
        Ok(r) => r,
        Err(e) => return html! { p.error { "Limits not readable: " (e) } },
    };
    let action = format!("/queues/{}/limits", q(queue));
    html! {
        p.muted {
            "Fleet-wide: every worker together starts no more than the rate and runs no more than the concurrency; "
            "a change applies within one sample interval ("
            (humantime::format_duration(st.cfg.worker.sample_interval)) "). Same as "
            code { "worker limits" } " / " code { "worker limit" } "; a kind's limit holds on every queue."
        }
        table.limits {
            thead { tr {
                th { "scope" } th { "name" } th { "rate" } th { "from" } th { "concurrency" } th { "from" }
                th.num { "slots held" } th.num { "workers" } th { "set by" }
                @if viewer.can_act() { th { "change (empty field: keep)" } }
            } }
            tbody {
                @for scope in scopes(st, queue, &rows) {
                    @let r = rows.iter().find(|r| r.is(&scope));
                    tr data-scope=(scope.key()) {
                        td { (scope.class()) }
                        td { code { (scope.name()) } }
                        td data-l="rate" { (r.and_then(|r| r.rate.clone()).unwrap_or_else(|| "unlimited".into())) }
                        td.muted { (r.map_or("-", |r| source(r.config.rate.is_some(), r.override_rate.is_some()))) }
                        td data-l="concurrency" { (r.and_then(|r| r.concurrency).map_or("unlimited".into(), |c| c.to_string())) }
                        td.muted { (r.map_or("-", |r| source(r.config.concurrency.is_some(), r.override_concurrency.is_some()))) }
                        td.num { (r.map_or(0, |r| r.slots_held)) }
                        td.num { (r.map_or(0, |r| r.workers)) }
                        td data-l="set_by" {
                            @match r.and_then(|r| r.set_by.clone().zip(r.set_at)) {
                                Some((who, at)) => { (who) " at " (when(Some(at))) }
                                None => { "-" }
                            }
                        }
                        @if viewer.can_act() {
                            td {
                                form.inline.limit method="post" action=(action) {
                                    (csrf(viewer))
                                    input type="hidden" name="scope" value=(scope.class());
                                    input type="hidden" name="name" value=(scope.name());
                                    input name="rate" placeholder="500/min" size="9" aria-label="rate";
                                    " "
                                    input name="concurrency" placeholder="N" size="4" aria-label="concurrency";
                                    " "
                                    button type="submit" name="do" value="set" { "Set" }
                                    @if r.is_some_and(|r| r.set_by.is_some()) {
                                        " "
                                        button type="submit" name="do" value="clear" { "Clear override" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A checked change: nothing is written before one exists.
#[derive(Debug, PartialEq)]
enum Change {
    Set {
        rate: Option<Rate>,
        concurrency: Option<u32>,
    },
    Clear,
}

/// The scope a form names, if the queue page offers it.
fn scope_of(st: &Inner, queue: &str, f: &Fields) -> Result<Scope, WebError> {
    let name = f.get("name").map(str::trim).unwrap_or("");
    match f.get("scope") {
        Some("queue") if name == queue => Ok(Scope::Queue(name.to_owned())),
        Some("kind") if !name.is_empty() && known_kind(st, name) => {
            Ok(Scope::Kind(name.to_owned()))
        }
        Some("kind") => Err(WebError::BadRequest(format!(
            "`{name}` is not a job kind this dashboard's build runs (kinds: {})",
            st.opts.kinds.join(", ")
        ))),
        _ => Err(WebError::BadRequest(format!(
            "the queue page of `{queue}` changes the limit of that queue or of a kind"
        ))),
    }
}

/// The same rules as `worker limit`: a rate in its notation, a concurrency of at least 1, and
/// at least one of them (or a clear).
fn change_of(f: &Fields) -> Result<Change, WebError> {
    if f.get("do") == Some("clear") {
        return Ok(Change::Clear);
    }
    let field = |k: &str| f.get(k).map(str::trim).filter(|v| !v.is_empty());
    let rate = field("rate")
        .map(str::parse::<Rate>)
        .transpose()
        .map_err(|e| WebError::BadRequest(format!("rate: {e}")))?;
    let concurrency = field("concurrency")
        .map(|c| {
            c.parse::<u32>().map_err(|_| {
                WebError::BadRequest(format!("concurrency `{c}` is not a whole number"))
            })
        })
        .transpose()?;
    if concurrency == Some(0) {
        return Err(WebError::BadRequest(
            "concurrency 0: must be at least 1 (to stop a queue, pause it)".into(),
        ));
    }
    if rate.is_none() && concurrency.is_none() {
        return Err(WebError::BadRequest(
            "nothing to change: give a rate (COUNT/UNIT, e.g. 500/min) and/or a concurrency, or clear the override".into(),
        ));
    }
    Ok(Change::Set { rate, concurrency })
}

/// `POST /queues/{queue}/limits` (fields `scope`, `name`, `rate`, `concurrency`, `do`).
pub async fn change(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
    body: Bytes,
) -> Result<Response, WebError> {
    st.queue(&queue)?;
    if !st.cfg.fleet.enabled {
        return Err(WebError::BadRequest(
            "[fleet] enabled = false in this config: there is no fleet-wide state to change".into(),
        ));
    }
    let f = Fields::parse(&body);
    let scope = scope_of(&st, &queue, &f)?;
    let change = change_of(&f)?;
    let actor = viewer.actor();
    let invalid = |e: fleet::Error| match e {
        fleet::Error::Invalid(m) => WebError::BadRequest(m),
        e => WebError::Fleet(e),
    };
    match change {
        Change::Set { rate, concurrency } => {
            st.store
                .set_limit(&scope, rate, concurrency, &actor)
                .await
                .map_err(invalid)?;
        }
        Change::Clear => {
            st.store
                .clear_limit(&scope, &actor)
                .await
                .map_err(invalid)?;
        }
    }
    Ok(Redirect::to(&format!("/queues/{}#limits", q(&queue))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_rules_hold_for_the_form() {
        let err = |body: &str| match change_of(&Fields::parse(body.as_bytes())) {
            Err(WebError::BadRequest(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(err("rate=3000%2Ffortnight").contains("`3000/fortnight`"));
        assert!(err("concurrency=0").contains("at least 1"));
        assert!(err("concurrency=two").contains("`two`"));
        assert!(err("rate=&concurrency=").contains("nothing to change"));
        assert_eq!(
            change_of(&Fields::parse(b"rate=500%2Fmin&concurrency=")).unwrap(),
            Change::Set {
                rate: Some("500/min".parse().unwrap()),
                concurrency: None
            }
        );
        assert_eq!(
            change_of(&Fields::parse(b"rate=1%2Fs&do=clear")).unwrap(),
            Change::Clear
        );
    }
}
