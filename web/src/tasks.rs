//! Replays and purges started from the browser. Each runs in the background through the same
//! `queues::dlq::replay` / `purge` the CLI runs, with a rate limit; the page polls its progress
//! and shows the replayed / skipped / failed summary at the end. The audit log gets the action
//! with who started it when it starts, and what it came to when it ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use fleet::Actor;
use fleet::audit::{Action, Entry};
use queues::dlq::{DlqFilter, ScanObserver, ScanOptions, ScanReport};
use serde::Serialize;
use serde_json::json;

use crate::state::AppState;

/// Replay or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Replay,
    Purge,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "replay" => Some(Kind::Replay),
            "purge" => Some(Kind::Purge),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Replay => "replay",
            Kind::Purge => "purge",
        }
    }
}

/// Where a task is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "state", content = "error")]
pub enum State {
    Running,
    Done,
    Failed(String),
}

/// One replay or purge and its progress.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub id: u64,
    pub kind: Kind,
    pub queue: String,
    pub filter: String,
    pub actor: String,
    pub started: DateTime<Utc>,
    pub finished: Option<DateTime<Utc>>,
    /// The dry-run count shown before it started.
    pub expected: u64,
    pub rate: Option<f64>,
    pub report: ScanReport,
    pub state: State,
}

/// The tasks of this process, newest kept.
#[derive(Debug, Default)]
pub struct Tasks {
    next: Mutex<u64>,
    all: Arc<Mutex<BTreeMap<u64, Task>>>,
}

impl Tasks {
    pub fn get(&self, id: u64) -> Option<Task> {
        self.all.lock().expect("tasks lock").get(&id).cloned()
    }

    /// All tasks of `queue`, newest first.
    pub fn of_queue(&self, queue: &str) -> Vec<Task> {
        let all = self.all.lock().expect("tasks lock");
        all.values()
            .rev()
            .filter(|t| t.queue == queue)
            .cloned()
            .collect()
    }
}

struct Progress {
    id: u64,
    all: Arc<Mutex<BTreeMap<u64, Task>>>,
}

impl ScanObserver for Progress {
    fn progress(&mut self, r: &ScanReport) {
        if let Some(t) = self.all.lock().expect("tasks lock").get_mut(&self.id) {
            t.report = r.clone();
        }
    }
}

/// What the operator asked for.
pub struct Request {
    pub kind: Kind,
    pub queue: String,
    pub filter: DlqFilter,
    pub expected: u64,
    pub rate: Option<f64>,
    pub actor: Actor,
}

/// Records the action in the audit log, then runs it in the background; returns the task id.
pub async fn start(st: &AppState, req: Request) -> Result<u64, crate::WebError> {
    let filter_text = req.filter.describe();
    let audit_id = st
        .store
        .audit(&Entry {
            actor: req.actor.clone(),
            action: match req.kind {
                Kind::Replay => Action::DlqReplay,
                Kind::Purge => Action::DlqPurge,
            },
            target: req.queue.clone(),
            detail: json!({
                "filter": filter_text,
                "rate": req.rate,
                "expected": req.expected,
                "dry_run": false,
                "via": "web",
            }),
            counts: None,
        })
        .await?;
    let id = {
        let mut n = st.tasks.next.lock().expect("tasks lock");
        *n += 1;
        *n
    };
    st.tasks.all.lock().expect("tasks lock").insert(
        id,
        Task {
            id,
            kind: req.kind,
            queue: req.queue.clone(),
            filter: filter_text,
            actor: req.actor.to_string(),
            started: Utc::now(),
            finished: None,
            expected: req.expected,
            rate: req.rate,
            report: ScanReport::default(),
            state: State::Running,
        },
    );
    let st = st.clone();
    tokio::spawn(async move {
        let mut observer = Progress {
            id,
            all: st.tasks.all.clone(),
        };
        let opts = ScanOptions {
            rate: req.rate,
            ..Default::default()
        };
        let broker = &*st.broker;
        let result = match req.kind {
            Kind::Replay => {
                queues::dlq::replay(broker, &req.queue, &req.filter, &opts, &mut observer).await
            }
            Kind::Purge => {
                queues::dlq::purge(broker, &req.queue, &req.filter, &opts, &mut observer).await
            }
        };
        let counts = match &result {
            Ok(r) => json!(r),
            Err(e) => json!({ "error": e.to_string() }),
        };
        if let Err(e) = st.store.audit_counts(audit_id, &counts).await {
            tracing::warn!(error = %e, audit_id, "could not record the outcome in the audit log");
        }
        tracing::info!(target: "audit", task = id, queue = %req.queue, action = req.kind.as_str(), actor = %req.actor, outcome = %counts, "DLQ {} from the dashboard", req.kind.as_str());
        if let Some(t) = st.tasks.all.lock().expect("tasks lock").get_mut(&id) {
            t.finished = Some(Utc::now());
            match result {
                Ok(r) => {
                    t.report = r;
                    t.state = State::Done;
                }
                Err(e) => t.state = State::Failed(e.to_string()),
            }
        }
    });
    Ok(id)
}
