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
    /// A service did not answer at start (names it, its URL and what to check).
    #[error(transparent)]
    Unreachable(#[from] runtime::health::Unreachable),
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
