//! The queue tables come from the project's one migrator (`migrations/`): applied at connect
//! when the database lacks any of its migrations, so an API that uses only this crate works on
//! a fresh database, and the same files `worker migrate` applies (docs/decisions.md D20).

use sqlx::PgPool;

use super::{BACKEND, map_err};
use crate::error::{QueueError, Result};

/// Brings the schema up to date; costs one query when it already is.
pub(super) async fn ensure_schema(pool: &PgPool, url: &str) -> Result<()> {
    match migrations::ensure(pool).await {
        Ok(_) => Ok(()),
        Err(migrations::Error::Status(e)) => Err(map_err(url, "apply schema", e)),
        Err(e) => Err(QueueError::backend(BACKEND, "apply schema", e)),
    }
}

/// Every ack leaves a dead row; without autovacuum the messages table and its index only grow
/// and receives slow down. Worth one log line at start, not a failure.
pub(super) async fn warn_without_autovacuum(pool: &PgPool, url: &str) {
    let on: std::result::Result<String, sqlx::Error> =
        sqlx::query_scalar("SELECT current_setting('autovacuum')")
            .fetch_one(pool)
            .await;
    if matches!(on.as_deref(), Ok("off")) {
        tracing::warn!(
            url = %crate::error::redact_url(url),
            "postgres queue: autovacuum is off; run `VACUUM jobfleet.messages` every few minutes \
             or the table bloats (see docs/backends/postgres.md)"
        );
    }
}
