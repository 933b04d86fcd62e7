//! Diagnostic job kinds for smoke tests, demos and the worker's own process-level tests
//! (SIGTERM drain, SIGKILL redelivery). They are registered only when the environment has
//! `JOBFLEET_DIAGNOSTIC_KINDS=1`, so a production worker never runs them.
//!
//! - `diag_sleep {"ms": N}`: sleeps N milliseconds (cancellable), then succeeds.
//! - `diag_fail {"message": "...", "permanent": false}`: always fails, as a retryable or a
//!   permanent error.
//! - `diag_record {"run": "...", "key": "...", "ms": N}`: sleeps N ms (optional), then inserts
//!   one row per run into `jobfleet_diag.runs` on the application database, so a fault drill
//!   (`bench/drill.sh`) can count how often each job ran: nothing lost = every key present,
//!   run twice = a key present more than once. `key` defaults to the job id (a scheduled job
//!   passes its `{{tick}}`, since each tick is a new envelope).
//! - `diag_span {"run": "...", "ms": N}`: notes when its handler started, sleeps N ms, then
//!   inserts one row with the start and end times into `jobfleet_diag.spans`, so the limit tests
//!   can count starts per second and jobs running at once across processes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jobs::{Handler, JobContext, JobError, Outcome, Registry, RetryPolicy, Validators};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::OnceCell;

/// The environment variable that turns the diagnostic kinds on.
pub const ENV: &str = "JOBFLEET_DIAGNOSTIC_KINDS";

/// Whether the environment asks for the diagnostic kinds.
pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Adds `diag_sleep` and `diag_fail` to `r` with the default policy.
pub fn register(r: &mut Registry) {
    r.register(Arc::new(Sleep), RetryPolicy::default());
    r.register(Arc::new(Fail), RetryPolicy::default());
}

/// Adds `diag_record` and `diag_span`, writing to `db`, with the default policy.
pub fn register_record(r: &mut Registry, db: PgPool) {
    r.register(Arc::new(Record::new(db.clone())), RetryPolicy::default());
    r.register(Arc::new(Span::new(db)), RetryPolicy::default());
}

/// The payload checks of the diagnostic kinds, without a database.
pub fn validators() -> Validators {
    let mut v = Validators::new();
    v.insert("diag_sleep", |p| Sleep.validate(p));
    v.insert("diag_fail", |p| Fail.validate(p));
    v.insert("diag_record", check_record);
    v.insert("diag_span", check_span);
    v
}

/// `diag_sleep`.
pub struct Sleep;

fn ms(payload: &Value) -> Option<u64> {
    payload.get("ms").and_then(Value::as_u64)
}

#[async_trait]
impl Handler for Sleep {
    fn kind(&self) -> &'static str {
        "diag_sleep"
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        ms(payload)
            .map(|_| ())
            .ok_or_else(|| JobError::bad_payload("diag_sleep", "needs {\"ms\": <integer>}"))
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let ms = ms(payload).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Outcome::new(format!("slept {ms} ms")))
    }
}

/// `diag_fail`.
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    fn kind(&self) -> &'static str {
        "diag_fail"
    }

    fn validate(&self, _payload: &Value) -> Result<(), JobError> {
        Ok(())
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let msg = payload
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("diag_fail always fails")
            .to_owned();
        if payload.get("permanent").and_then(Value::as_bool) == Some(true) {
            Err(JobError::Permanent(msg))
        } else {
            Err(JobError::Retry(msg))
        }
    }
}

/// `diag_record`.
pub struct Record {
    db: PgPool,
    table_ready: OnceCell<()>,
}

impl Record {
    /// Records into `jobfleet_diag.runs` on `db` (created on first use).
    pub fn new(db: PgPool) -> Record {
        Record {
            db,
            table_ready: OnceCell::new(),
        }
    }

    /// Creates the table once per process. The advisory lock serialises workers starting
    /// together: concurrent `CREATE TABLE IF NOT EXISTS` can still collide in `pg_type`.
    async fn ensure_table(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('jobfleet_diag.runs'))")
            .execute(&mut *tx)
            .await?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS jobfleet_diag")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS jobfleet_diag.runs (
                run text NOT NULL,
                key text NOT NULL,
                job_id text NOT NULL,
                attempt int NOT NULL,
                pid int NOT NULL,
                at timestamptz NOT NULL DEFAULT clock_timestamp()
            )",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS runs_run_key ON jobfleet_diag.runs (run, key)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

fn check_record(payload: &Value) -> Result<(), JobError> {
    let ok = payload.get("run").is_some_and(Value::is_string)
        && payload.get("key").is_none_or(Value::is_string)
        && payload.get("ms").is_none_or(Value::is_u64);
    if ok {
        Ok(())
    } else {
        Err(JobError::bad_payload(
            "diag_record",
            "needs {\"run\": <string>, \"key\": <string, optional>, \"ms\": <integer, optional>}",
        ))
    }
}

#[async_trait]
impl Handler for Record {
    fn kind(&self) -> &'static str {
        "diag_record"
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        check_record(payload)
    }

    async fn run(&self, ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        tokio::time::sleep(Duration::from_millis(ms(payload).unwrap_or(0))).await;
        let text = |field: &str| payload.get(field).and_then(Value::as_str);
        let run = text("run").unwrap_or_default();
        let key = text("key").unwrap_or(&ctx.job_id);
        // A failed write is retried like any transient failure: the run counts only once it
        // is committed, as a real job's effect would.
        let db_error = |e: sqlx::Error| JobError::Retry(format!("diag_record: {e}"));
        self.table_ready
            .get_or_try_init(|| self.ensure_table())
            .await
            .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO jobfleet_diag.runs (run, key, job_id, attempt, pid) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(run)
        .bind(key)
        .bind(&ctx.job_id)
        .bind(ctx.attempt as i32)
        .bind(std::process::id() as i32)
        .execute(&self.db)
        .await
        .map_err(db_error)?;
        Ok(Outcome::new(format!("recorded {key}")))
    }
}

/// `diag_span`.
pub struct Span {
    db: PgPool,
    table_ready: OnceCell<()>,
}

impl Span {
    /// Records into `jobfleet_diag.spans` on `db` (created on first use).
    pub fn new(db: PgPool) -> Span {
        Span {
            db,
            table_ready: OnceCell::new(),
        }
    }

    async fn ensure_table(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('jobfleet_diag.spans'))")
            .execute(&mut *tx)
            .await?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS jobfleet_diag")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS jobfleet_diag.spans (
                run text NOT NULL,
                job_id text NOT NULL,
                attempt int NOT NULL,
                pid int NOT NULL,
                started_at timestamptz NOT NULL,
                ended_at timestamptz NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS spans_run ON jobfleet_diag.spans (run)")
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
}

fn check_span(payload: &Value) -> Result<(), JobError> {
    if payload.get("run").is_some_and(Value::is_string)
        && payload.get("ms").is_none_or(Value::is_u64)
    {
        Ok(())
    } else {
        Err(JobError::bad_payload(
            "diag_span",
            "needs {\"run\": <string>, \"ms\": <integer, optional>}",
        ))
    }
}

#[async_trait]
impl Handler for Span {
    fn kind(&self) -> &'static str {
        "diag_span"
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        check_span(payload)
    }

    async fn run(&self, ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        // The wall clock, not a monotonic one: spans of several processes are compared.
        let started = chrono::Utc::now();
        let db_error = |e: sqlx::Error| JobError::Retry(format!("diag_span: {e}"));
        // Before the sleep, so the first job's table set-up does not count as its run time.
        self.table_ready
            .get_or_try_init(|| self.ensure_table())
            .await
            .map_err(db_error)?;
        tokio::time::sleep(Duration::from_millis(ms(payload).unwrap_or(0))).await;
        let run = payload
            .get("run")
            .and_then(Value::as_str)
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO jobfleet_diag.spans (run, job_id, attempt, pid, started_at, ended_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(run)
        .bind(&ctx.job_id)
        .bind(ctx.attempt as i32)
        .bind(std::process::id() as i32)
        .bind(started)
        .bind(chrono::Utc::now())
        .execute(&self.db)
        .await
        .map_err(db_error)?;
        Ok(Outcome::new(format!("span of {}", ctx.job_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(job_id: &str) -> JobContext {
        JobContext {
            job_id: job_id.into(),
            queue: "q".into(),
            attempt: 1,
        }
    }

    #[test]
    fn record_payload_is_checked() {
        assert!(check_record(&json!({"run": "r"})).is_ok());
        assert!(check_record(&json!({"run": "r", "key": "k", "ms": 5})).is_ok());
        for bad in [
            json!({}),
            json!({"run": 1}),
            json!({"run": "r", "ms": "soon"}),
        ] {
            let err = check_record(&bad).unwrap_err();
            assert!(matches!(err, JobError::Permanent(_)), "{bad}: {err}");
        }
        assert!(
            validators()
                .check("diag_record", &json!({}))
                .unwrap()
                .is_err()
        );
    }

    /// On the real database: one row per run, keyed by `key` or else the job id, so a job
    /// that runs twice shows up twice.
    #[tokio::test]
    async fn record_writes_one_row_per_run() {
        let url = std::env::var("JOBFLEET_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let db = PgPool::connect(&url).await.unwrap();
        let run = format!("unit-{}", uuid::Uuid::new_v4());
        let h = Record::new(db.clone());
        h.run(&ctx("job-1"), &json!({"run": run})).await.unwrap();
        h.run(&ctx("job-1"), &json!({"run": run})).await.unwrap();
        h.run(&ctx("job-2"), &json!({"run": run, "key": "tick-1"}))
            .await
            .unwrap();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT key, min(job_id), count(*) FROM jobfleet_diag.runs WHERE run = $1 GROUP BY key ORDER BY key",
        )
        .bind(&run)
        .fetch_all(&db)
        .await
        .unwrap();
        sqlx::query("DELETE FROM jobfleet_diag.runs WHERE run = $1")
            .bind(&run)
            .execute(&db)
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![
                ("job-1".into(), "job-1".into(), 2),
                ("tick-1".into(), "job-2".into(), 1)
            ]
        );
    }
}
