//! The fleet registry: one row per running `worker run`, written by the worker itself every
//! sample interval ([`Store::report`]) and removed on a clean exit ([`Store::deregister`]).
//! Readers ([`Store::workers`]: `worker workers`, the dashboard) see a row not refreshed for
//! [`LOST_AFTER_INTERVALS`] of its own intervals as lost: the process died or cannot reach the
//! control state.

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

/// What a worker reports every interval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub draining: bool,
    pub pools: Vec<PoolReport>,
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

type Row = (
    uuid::Uuid,
    String,
    String,
    i32,
    String,
    String,
    DateTime<Utc>,
    i64,
    DateTime<Utc>,
    f64,
    bool,
    bool,
    serde_json::Value,
);

impl Store {
    /// Writes (or refreshes) this process's row with its latest report.
    pub async fn report(&self, who: &Registration, report: &Report) -> Result<()> {
        let pools = serde_json::to_value(&report.pools).expect("pool reports serialize");
        sqlx::query(
            "INSERT INTO jobfleet.workers \
               (instance, worker_id, host, pid, version, backend, started_at, interval_ms, draining, pools) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (instance) DO UPDATE SET seen_at = now(), draining = $9, pools = $10",
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
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT instance, worker_id, host, pid, version, backend, started_at, interval_ms, \
                    seen_at, extract(epoch FROM now() - seen_at)::float8, \
                    now() - seen_at > make_interval(secs => $1 * interval_ms / 1000.0), \
                    draining, pools \
             FROM jobfleet.workers ORDER BY started_at, worker_id, instance",
        )
        .bind(LOST_AFTER_INTERVALS as f64)
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the worker registry"))?;
        Ok(rows
            .into_iter()
            .map(
                |(
                    instance,
                    worker_id,
                    host,
                    pid,
                    version,
                    backend,
                    started_at,
                    interval_ms,
                    seen_at,
                    ago,
                    lost,
                    draining,
                    pools,
                )| {
                    let state = if lost {
                        WorkerState::Lost
                    } else if draining {
                        WorkerState::Draining
                    } else {
                        WorkerState::Running
                    };
                    WorkerRow {
                        registration: Registration {
                            instance,
                            worker_id,
                            host,
                            pid: pid as u32,
                            version,
                            backend,
                            started_at,
                            interval_ms: interval_ms.max(0) as u64,
                        },
                        seen_at,
                        seen_ago_s: ago.max(0.0),
                        state,
                        // A row written by another version may carry other fields: read what we know.
                        pools: serde_json::from_value(pools).unwrap_or_default(),
                    }
                },
            )
            .collect())
    }
}
