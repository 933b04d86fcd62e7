//! The short transactions partition maintenance is cut into, and retrying the ones that give up
//! on a lock.
//!
//! Every step that needs a strong lock runs with a short `lock_timeout`: while a DDL statement
//! waits for its lock, every reader and writer that comes after it queues behind it, so waiting
//! long would block them as surely as holding the lock. A step that times out is rolled back and
//! tried again after a jittered, growing pause, which lets the long transaction in its way finish.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Transaction};

use crate::JobError;
use crate::ident::{db_error, is_lock_conflict};

/// Limits of the strong-lock steps (from `[jobs.partitions]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockLimits {
    /// `lock_timeout` of one step.
    pub timeout: Duration,
    /// Further attempts after a step timed out on its lock.
    pub retries: u32,
}

/// Why one attempt of a step failed.
#[derive(Debug)]
pub(crate) enum StepError {
    /// It gave up on a lock (lock timeout or deadlock): worth another attempt soon.
    Lock(String),
    /// Anything else, already classified.
    Job(JobError),
}

impl From<JobError> for StepError {
    fn from(e: JobError) -> Self {
        StepError::Job(e)
    }
}

/// Classifies the error of statement `context`.
pub(crate) fn step_error(context: &str, e: sqlx::Error) -> StepError {
    if is_lock_conflict(&e) {
        StepError::Lock(format!("{context}: {e}"))
    } else {
        StepError::Job(db_error(context, e))
    }
}

/// Begins a transaction with this job's settings: bounds deparsed and compared in UTC, and the
/// step's `lock_timeout`.
pub(crate) async fn begin(
    pool: &PgPool,
    lock_timeout: Duration,
) -> Result<Transaction<'static, Postgres>, StepError> {
    let mut tx = pool.begin().await.map_err(|e| step_error("begin", e))?;
    sqlx::query(
        "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), \
                set_config('lock_timeout', $1, true)",
    )
    .bind(format!("{}ms", lock_timeout.as_millis().max(1)))
    .execute(&mut *tx)
    .await
    .map_err(|e| step_error("session settings", e))?;
    Ok(tx)
}

/// Runs one statement built by this module (identifiers quoted, literals generated).
pub(crate) async fn exec(conn: &mut PgConnection, sql: &str) -> Result<u64, StepError> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(|e| step_error(sql, e))
}

/// Runs `attempt` until it succeeds, fails for another reason than a lock, or has timed out
/// `limits.retries + 1` times. Returns the result and how many lock timeouts were retried.
pub(crate) async fn with_lock_retries<T, F, Fut>(
    limits: LockLimits,
    what: &str,
    attempt: F,
) -> Result<(T, u32), JobError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StepError>>,
{
    let mut retried = 0u32;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(limits.retries as usize)
        .with_jitter();
    let result = attempt
        .retry(backoff)
        .when(|e| matches!(e, StepError::Lock(_)))
        .notify(|e, pause| {
            retried += 1;
            tracing::info!(step = what, error = ?e, ?pause, "gave up on a lock; trying again");
        })
        .await;
    match result {
        Ok(v) => Ok((v, retried)),
        Err(StepError::Job(e)) => Err(e),
        Err(StepError::Lock(msg)) => Err(JobError::Retry(format!(
            "{what}: no lock within lock_timeout {} ms in {} attempts (a long transaction on the \
             table?); the job will try again: {msg}",
            limits.timeout.as_millis(),
            limits.retries + 1
        ))),
    }
}
