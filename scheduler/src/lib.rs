//! The jobfleet scheduler: turns cron entries from the config into enqueued jobs (it never runs
//! job code), with leader election among replicas, exactly one job per tick (dedup key plus a
//! ledger in PostgreSQL), catch-up after downtime and payload templating. See
//! `docs/scheduler.md`.

pub mod core;
pub mod lease;
pub mod ledger;
pub mod list;
pub mod runner;
pub mod schedule;
pub mod template;

pub use crate::core::{Core, CoreOptions, Fired, ScheduleOverview, tick_key};
pub use crate::lease::{Lease, LeaseState};
pub use crate::ledger::{Ledger, Reason};
pub use crate::schedule::CompiledSchedule;

/// The lease key replicas elect a leader on, unless told otherwise.
pub const DEFAULT_LEASE_NAME: &str = "jobfleet-scheduler";

/// The scheduler's own tables (`migrations/0090_scheduler.sql`). Idempotent; `worker migrate`
/// applies it with the rest, [`ensure_schema`] lets tests and a first run apply it alone.
pub const SCHEMA_SQL: &str = include_str!("../../migrations/0090_scheduler.sql");

/// Everything that can go wrong in the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A schedule entry is unusable; names the entry.
    #[error("schedule `{name}`: {message}")]
    InvalidSchedule { name: String, message: String },
    /// `trigger` or a cron job named a schedule the config does not have.
    #[error("no schedule named `{0}` in the config")]
    UnknownSchedule(String),
    /// The config as a whole is invalid.
    #[error(transparent)]
    Config(#[from] runtime::ConfigError),
    /// The lease/ledger database.
    #[error("scheduler database: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker refused a send.
    #[error("broker: {0}")]
    Queue(#[from] queues::QueueError),
    /// tokio-cron-scheduler failed.
    #[error("cron runtime: {0}")]
    Cron(#[from] tokio_cron_scheduler::JobSchedulerError),
    /// The admin HTTP port.
    #[error("admin HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// Applies [`SCHEMA_SQL`] under an advisory lock, so concurrent first runs don't race on
/// `CREATE TABLE IF NOT EXISTS`.
pub async fn ensure_schema(pool: &sqlx::PgPool) -> Result<(), SchedulerError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('jobfleet.scheduler schema'))")
        .execute(&mut *tx)
        .await?;
    // "already exists, skipping" notices on every start are noise.
    sqlx::query("SET LOCAL client_min_messages = warning")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(SCHEMA_SQL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}
