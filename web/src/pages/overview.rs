//! The overview: every queue with visible, in flight, delayed, DLQ, oldest age, the worker's
//! pool target and running slots, jobs/s succeeded and failed, and the depth chart; refreshed
//! live over server-sent events from the sampler, without reloading the page.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use maud::html;
use serde::Serialize;

use crate::auth::Viewer;
use crate::layout::{Nav, age, page, q, rate, when};
use crate::sampler::{QueueSample, Snapshot, sample_once};
use crate::state::AppState;

/// The text of every live cell of one queue's row, keyed by field; the page and the live
/// stream both use it, so a refresh shows exactly what a reload would.
pub fn cells(s: &QueueSample) -> BTreeMap<&'static str, String> {
    let slots = match (s.pool_target, s.pool_running) {
        (None, None) => "-".to_owned(),
        (t, r) => format!(
            "{} / {}",
            r.map_or("-".into(), |r| r.to_string()),
            t.map_or("-".into(), |t| t.to_string())
        ),
    };
    BTreeMap::from([
        ("visible", s.visible.to_string()),
        ("in_flight", s.in_flight.to_string()),
        ("delayed", s.delayed.to_string()),
        ("dead_lettered", s.dead_lettered.to_string()),
        ("oldest", age(s.oldest_age)),
        ("slots", slots),
        ("succeeded", rate(s.succeeded_per_s)),
        ("failed", rate(s.failed_per_s)),
        ("error", s.error.clone().unwrap_or_default()),
        (
            "paused",
            match (s.paused, &s.paused_by) {
                (Some(true), Some(by)) => format!("paused by {by}"),
                (Some(true), None) => "paused".into(),
                (Some(false), _) => String::new(),
                (None, _) => "paused state unknown".into(),
            },
        ),
    ])
}

/// What one live event carries.
#[derive(Serialize)]
struct Live<'a> {
    round: u64,
    at: String,
    queues: BTreeMap<&'a str, BTreeMap<&'static str, String>>,
}

fn live_json(s: &Snapshot) -> String {
    serde_json::to_string(&Live {
        round: s.round,
        at: when(s.at),
        queues: s
            .queues
            .iter()
            .map(|(k, v)| (k.as_str(), cells(v)))
            .collect(),
    })
    .expect("plain data serializes")
}

/// `GET /`.
async fn render(st: &AppState, viewer: &Viewer) -> Html<String> {
    let mut snap = st.samples.latest();
    if snap.at.is_none() {
        sample_once(st, 0).await;
        snap = st.samples.latest();
    }
    let body = html! {
        p.muted {
            "Sampled every " (humantime::format_duration(st.samples.every)) " by this dashboard; "
            "last " span data-live-at { (when(snap.at)) } ". "
            @match snap.pools_from {
                Some("registry") => { "Pools and jobs/s summed over " (snap.workers) " live workers of the fleet." }
                Some(_) => { "No worker in the registry; pools and jobs/s from the worker on " code { (st.cfg.worker.admin_addr) } "." }
                None => { "No live worker: the pool and jobs/s columns stay empty until one runs." }
            }
        }
        table.queues data-live="/live" {
            thead { tr {
                th { "queue" } th { "priority" } th.num { "visible" } th.num { "in flight" }
                th.num { "delayed" } th.num { "DLQ" } th { "oldest" } th { "running / target (fleet)" }
                th.num { "ok/s" } th.num { "failed/s" } th { "last hour" }
            } }
            tbody {
                @for (name, qc) in &st.cfg.queues {
                    @let c = snap.queues.get(name).map(cells).unwrap_or_default();
                    @let cell = |f: &str| c.get(f).cloned().unwrap_or_else(|| "-".into());
                    tr data-queue=(name) {
                        td {
                            a href={ "/queues/" (q(name)) } { (name) } " "
                            span.paused data-q=(name) data-f="paused" { (cell("paused")) } " "
                            span.err data-q=(name) data-f="error" { (cell("error")) }
                        }
                        td { (qc.priority.as_str()) }
                        td.num data-q=(name) data-f="visible" { (cell("visible")) }
                        td.num data-q=(name) data-f="in_flight" { (cell("in_flight")) }
                        td.num data-q=(name) data-f="delayed" { (cell("delayed")) }
                        td.num { a href={ "/queues/" (q(name)) "/dlq" } data-q=(name) data-f="dead_lettered" { (cell("dead_lettered")) } }
                        td data-q=(name) data-f="oldest" { (cell("oldest")) }
                        td data-q=(name) data-f="slots" { (cell("slots")) }
                        td.num data-q=(name) data-f="succeeded" { (cell("succeeded")) }
                        td.num data-q=(name) data-f="failed" { (cell("failed")) }
                        td { img.spark data-chart src={ "/chart/" (q(name)) "/depth" } alt={ "depth of " (name) } width="320" height="80"; }
                    }
                }
            }
        }
    };
    page(viewer, "Queues", Nav::Overview, body)
}

pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Html<String> {
    render(&st, &viewer).await
}

/// `GET /live`: one `snapshot` event per sampling round.
pub async fn live(State(st): State<AppState>) -> impl IntoResponse {
    let rx = st.samples.subscribe();
    let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let data = live_json(&rx.borrow_and_update());
        Some((
            Ok::<_, Infallible>(Event::default().event("snapshot").data(data)),
            (rx, false),
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
