//! "Where is job X?": everything jobfleet knows about one job id, gathered from every place it
//! leaves a trace: the worker registry (running on which worker, since when), each configured
//! queue's DLQ (with the reason), the scheduler's tick ledger (which tick enqueued it) and the
//! cancel requests. The dashboard's job page and `worker job` both call [`find`], so the two
//! never disagree (as with the DLQ filters, docs/decisions.md D71).
//!
//! A job that is waiting in its queue leaves no trace any broker can find by id; the answer
//! says where it looked instead. A place that cannot be read is named in
//! [`JobLookup::unreadable`] and the others are still answered.

use chrono::{DateTime, Utc};
use queues::{Broker, DlqEntry};
use serde::Serialize;

use crate::cancel::{CancelRequest, check_job_id};
use crate::registry::{Omitting, RunningAt};
use crate::{Error, Result, Store};

/// A schedule tick that enqueued the job (a row of `jobfleet.scheduler_ticks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tick {
    pub schedule: String,
    pub tick_at: DateTime<Utc>,
    /// `pending` (claimed, the send not yet confirmed) or `enqueued`.
    pub state: String,
    pub queue: String,
}

/// What is known about one job id.
#[derive(Debug, Clone, Serialize)]
pub struct JobLookup {
    pub job_id: String,
    /// The workers whose last report lists it as running. A lost worker's list is its last
    /// report: the job may have been handed to another worker since.
    pub running: Vec<RunningAt>,
    /// Only when it is not listed as running: workers whose last report left running jobs out
    /// (too many to list), so it may be running there.
    pub maybe_running: Vec<Omitting>,
    /// DLQ entries with this id, one per queue that holds one.
    pub dead_lettered: Vec<DlqEntry>,
    /// The queues whose DLQ was searched (the configured ones).
    pub searched: Vec<String>,
    /// The schedule ticks that enqueued it.
    pub ticks: Vec<Tick>,
    /// Cancel requests for it, newest first.
    pub cancels: Vec<CancelRequest>,
    /// Places that could not be read, each with why: the answer is incomplete.
    pub unreadable: Vec<String>,
}

impl JobLookup {
    /// Whether any place has a trace of the job (an unreadable one aside).
    pub fn found(&self) -> bool {
        !(self.running.is_empty()
            && self.dead_lettered.is_empty()
            && self.ticks.is_empty()
            && self.cancels.is_empty())
    }
}

/// Looks `job_id` up everywhere: the registry, the DLQ of each of `queues`, the tick ledger
/// and the cancel requests. Only an id no envelope can carry is an error
/// ([`Error::Invalid`]); a place that does not answer is listed in
/// [`JobLookup::unreadable`].
pub async fn find(
    store: &Store,
    broker: &dyn Broker,
    queues: &[String],
    job_id: &str,
) -> Result<JobLookup> {
    check_job_id(job_id)?;
    let dlqs = async {
        let mut found = Vec::new();
        let mut failed = Vec::new();
        for q in queues {
            match broker.dlq_get(q, job_id).await {
                Ok(Some(e)) => found.push(e),
                Ok(None) => {}
                Err(e) => failed.push(format!("the DLQ of `{q}`: {e}")),
            }
        }
        (found, failed)
    };
    let (running, (dead_lettered, dlq_failed), ticks, cancels) = tokio::join!(
        store.running_job(job_id),
        dlqs,
        ticks(store, job_id),
        store.cancels_of_job(job_id),
    );
    let mut unreadable = Vec::new();
    let running = keep(&mut unreadable, running);
    let ticks = keep(&mut unreadable, ticks);
    let cancels = keep(&mut unreadable, cancels);
    let maybe_running = if running.is_empty() {
        keep(&mut unreadable, store.omitting_running().await)
    } else {
        Vec::new()
    };
    unreadable.extend(dlq_failed);
    Ok(JobLookup {
        job_id: job_id.to_owned(),
        running,
        maybe_running,
        dead_lettered,
        searched: queues.to_vec(),
        ticks,
        cancels,
        unreadable,
    })
}

/// The rows, or none with the error (which names what was read) noted.
fn keep<T>(unreadable: &mut Vec<String>, r: Result<Vec<T>>) -> Vec<T> {
    r.unwrap_or_else(|e| {
        unreadable.push(e.to_string());
        Vec::new()
    })
}

/// The ticks that enqueued `job_id`. The ledger is the scheduler's table; it is read here with
/// SQL rather than through the scheduler crate, which the fleet crate does not depend on.
async fn ticks(store: &Store, job_id: &str) -> Result<Vec<Tick>> {
    let rows: Vec<(String, DateTime<Utc>, String, String)> = sqlx::query_as(
        "SELECT schedule, tick_at, state, queue FROM jobfleet.scheduler_ticks \
         WHERE job_id = $1 ORDER BY tick_at DESC",
    )
    .bind(job_id)
    .fetch_all(store.pool())
    .await
    .map_err(Error::db("read the scheduler's tick ledger"))?;
    Ok(rows
        .into_iter()
        .map(|(schedule, tick_at, state, queue)| Tick {
            schedule,
            tick_at,
            state,
            queue,
        })
        .collect())
}
