//! The fleet registry: one row per running `worker run`, written by the worker itself every
//! sample interval ([`Store::report`]) and removed on a clean exit ([`Store::deregister`]).
//! Readers ([`Store::workers`]: `worker workers`, the dashboard) see a row not refreshed for
//! [`LOST_AFTER_INTERVALS`] of its own intervals as lost: the process died or cannot reach the
//! control state. The report also lists the jobs the worker is running (at most
//! [`MAX_RUNNING_REPORTED`]), which [`Store::running_job`] finds by id: "where is job X?".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Store};

/// A row older than this many of its worker's sample intervals is shown as lost.
pub const LOST_AFTER_INTERVALS: i64 = 3;

/// Lost rows are dropped by the next registration after this long, so a fleet that replaced
/// its machines does not list the dead ones for ever.
const FORGET_LOST_AFTER: &str = "1 day";

/// What a worker process says about itself once, at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Unique per process (two processes may share a configured worker id).
    pub instance: uuid::Uuid,
    /// The configured (or `host/pid`) worker id, as in error histories.
    pub worker_id: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// Broker backend name (`redis`, `postgres`, ...).
    pub backend: String,
    pub started_at: DateTime<Utc>,
    /// Its `worker.sample_interval`, which judges when its row counts as lost.
    pub interval_ms: u64,
}

/// One pool's figures in a report; counters are since the process started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    pub queue: String,
    pub target: usize,
    pub granted: usize,
    pub running: usize,
    pub succeeded: u64,
    pub failed: u64,
    pub dead_lettered: u64,
}

/// At most this many running jobs are listed in one worker's report. The row is rewritten
/// every sample interval, so it must stay small: 500 entries are about 60 KB of jsonb (a
/// TOASTed value written once per interval), while a worker's budget is usually far below
/// that. The rest are counted in [`Report::running_omitted`], so a lookup that does not find
/// a job can say where it may still be running.
pub const MAX_RUNNING_REPORTED: usize = 500;

/// One job a worker is running now (its handler started and has not ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The job id (the envelope's `id`).
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// When its handler started, by the worker's clock.
    pub started_at: DateTime<Utc>,
}

/// What a worker reports every interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub draining: bool,
    pub pools: Vec<PoolReport>,
    /// The jobs running now, oldest first, at most [`MAX_RUNNING_REPORTED`].
    pub running: Vec<RunningJob>,
    /// How many running jobs were left out of `running` by the cap.
    pub running_omitted: u64,
}

/// A worker's state as a reader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Running,
    Draining,
    /// Not refreshed for [`LOST_AFTER_INTERVALS`] intervals.
    Lost,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Draining => "draining",
            WorkerState::Lost => "lost",
        }
    }
}

/// One registry row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerRow {
    #[serde(flatten)]
    pub registration: Registration,
    pub seen_at: DateTime<Utc>,
    /// Seconds since `seen_at`, by the database's clock.
    pub seen_ago_s: f64,
    pub state: WorkerState,
    pub pools: Vec<PoolReport>,
}

impl WorkerRow {
    /// Totals over the pools: (running, succeeded, failed, dead-lettered).
    pub fn totals(&self) -> (usize, u64, u64, u64) {
        self.pools.iter().fold((0, 0, 0, 0), |t, p| {
            (
                t.0 + p.running,
                t.1 + p.succeeded,
                t.2 + p.failed,
                t.3 + p.dead_lettered,
            )
        })
    }
}

/// A job found in a worker's report: which worker (as [`Store::workers`] shows it) runs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunningAt {
    pub worker: WorkerRow,
    pub job: RunningJob,
}

/// A worker whose last report left running jobs out ([`MAX_RUNNING_REPORTED`]): a job not
/// found by [`Store::running_job`] may still be running there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Omitting {
    pub worker: WorkerRow,
    pub omitted: u64,
}

/// The columns of a [`WorkerRow`], as [`WorkerRecord`] reads them (`w` is the workers table).
const WORKER_COLUMNS: &str = "w.instance, w.worker_id, w.host, w.pid, w.version, w.backend, \
     w.started_at, w.interval_ms, w.seen_at, \
     extract(epoch FROM now() - w.seen_at)::float8 AS seen_ago_s, \
     now() - w.seen_at > make_interval(secs => $1 * w.interval_ms / 1000.0) AS lost, \
     w.draining, w.pools";

#[derive(sqlx::FromRow)]
struct WorkerRecord {
    instance: uuid::Uuid,
    worker_id: String,
    host: String,
    pid: i32,
    version: String,
    backend: String,
    started_at: DateTime<Utc>,
    interval_ms: i64,
    seen_at: DateTime<Utc>,
    seen_ago_s: f64,
    lost: bool,
    draining: bool,
    pools: serde_json::Value,
}

impl From<WorkerRecord> for WorkerRow {
    fn from(r: WorkerRecord) -> WorkerRow {
        let state = if r.lost {
            WorkerState::Lost
        } else if r.draining {
            WorkerState::Draining
        } else {
            WorkerState::Running
        };
        WorkerRow {
            registration: Registration {
                instance: r.instance,
                worker_id: r.worker_id,
                host: r.host,
                pid: r.pid as u32,
                version: r.version,
                backend: r.backend,
                started_at: r.started_at,
                interval_ms: r.interval_ms.max(0) as u64,
            },
            seen_at: r.seen_at,
            seen_ago_s: r.seen_ago_s.max(0.0),
            state,
            // A row written by another version may carry other fields: read what we know.
            pools: serde_json::from_value(r.pools).unwrap_or_default(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct RunningRecord {
    #[sqlx(flatten)]
    worker: WorkerRecord,
    job: serde_json::Value,
}

#[derive(sqlx::FromRow)]
struct OmittingRecord {
    #[sqlx(flatten)]
    worker: WorkerRecord,
    running_omitted: i64,
}

impl Store {
    /// Writes (or refreshes) this process's row with its latest report.
    pub async fn report(&self, who: &Registration, report: &Report) -> Result<()> {
        let pools = serde_json::to_value(&report.pools).expect("pool reports serialize");
        // The cap is the caller's to apply (it knows what it leaves out); a longer list is cut
        // here too, so no caller can make the row large.
        let listed = report.running.len().min(MAX_RUNNING_REPORTED);
        let running =
            serde_json::to_value(&report.running[..listed]).expect("running jobs serialize");
        let omitted = report.running_omitted + (report.running.len() - listed) as u64;
        sqlx::query(
            "INSERT INTO jobfleet.workers \
               (instance, worker_id, host, pid, version, backend, started_at, interval_ms, draining, pools, \
                running_jobs, running_omitted) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (instance) DO UPDATE SET seen_at = now(), draining = $9, pools = $10, \
               running_jobs = $11, running_omitted = $12",
        )
        .bind(who.instance)
        .bind(&who.worker_id)
        .bind(&who.host)
        .bind(who.pid as i32)
        .bind(&who.version)
        .bind(&who.backend)
        .bind(who.started_at)
        .bind(who.interval_ms as i64)
        .bind(report.draining)
        .bind(pools)
        .bind(running)
        .bind(i64::try_from(omitted).unwrap_or(i64::MAX))
        .execute(self.pool())
        .await
        .map_err(Error::db("report to the worker registry"))?;
        Ok(())
    }

    /// Drops lost rows older than a day (called once when a worker starts).
    pub async fn forget_lost(&self) -> Result<u64> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM jobfleet.workers WHERE seen_at < now() - interval '{FORGET_LOST_AFTER}'"
        )))
        .execute(self.pool())
        .await
        .map_err(Error::db("clean the worker registry"))?;
        Ok(done.rows_affected())
    }

    /// Removes this process's row: a clean exit.
    pub async fn deregister(&self, instance: uuid::Uuid) -> Result<()> {
        sqlx::query("DELETE FROM jobfleet.workers WHERE instance = $1")
            .bind(instance)
            .execute(self.pool())
            .await
            .map_err(Error::db("leave the worker registry"))?;
        Ok(())
    }

    /// Every registered worker, oldest start first, with its state judged now.
    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        let rows: Vec<WorkerRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKER_COLUMNS} FROM jobfleet.workers w \
             ORDER BY w.started_at, w.worker_id, w.instance"
        )))
        .bind(LOST_AFTER_INTERVALS as f64)
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the worker registry"))?;
        Ok(rows.into_iter().map(WorkerRow::from).collect())
    }

    /// The workers whose last report lists `job_id` as running, most recently seen first. More
    /// than one when a lost worker's last report still lists a job that another worker runs
    /// now (redelivered after its visibility timeout), or when a producer reused an id. A job
    /// that ended is no longer listed after its worker's next report (one sample interval).
    pub async fn running_job(&self, job_id: &str) -> Result<Vec<RunningAt>> {
        // The containment test picks the rows; the lateral unnest then keeps the one element
        // of each (a worker's list holds the id once unless the id was reused).
        let needle = serde_json::json!([{ "id": job_id }]);
        let rows: Vec<RunningRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKER_COLUMNS}, j.value AS job \
             FROM jobfleet.workers w CROSS JOIN LATERAL jsonb_array_elements(w.running_jobs) j \
             WHERE w.running_jobs @> $2 AND j.value @> $3 \
             ORDER BY w.seen_at DESC, w.instance"
        )))
        .bind(LOST_AFTER_INTERVALS as f64)
        .bind(&needle)
        .bind(&needle[0])
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("look a job up in the worker registry"))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                // An element another version wrote differently is skipped, not an error.
                let job: RunningJob = serde_json::from_value(r.job).ok()?;
                Some(RunningAt {
                    worker: r.worker.into(),
                    job,
                })
            })
            .collect())
    }

    /// The workers whose last report left running jobs out, with how many.
    pub async fn omitting_running(&self) -> Result<Vec<Omitting>> {
        let rows: Vec<OmittingRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {WORKER_COLUMNS}, w.running_omitted \
             FROM jobfleet.workers w WHERE w.running_omitted > 0 \
             ORDER BY w.started_at, w.worker_id, w.instance"
        )))
        .bind(LOST_AFTER_INTERVALS as f64)
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the worker registry"))?;
        Ok(rows
            .into_iter()
            .map(|r| Omitting {
                omitted: r.running_omitted.max(0) as u64,
                worker: r.worker.into(),
            })
            .collect())
    }
}
