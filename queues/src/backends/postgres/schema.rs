//! The queue tables: applied at connect when `jobfleet.queue_schema` does not record them yet,
//! under an advisory lock so concurrent workers do not race each other.

use sqlx::{PgConnection, PgPool};

/// The queue tables, applied at connect when `jobfleet.queue_schema` lacks [`SCHEMA_VERSION`].
pub const MIGRATION: &str = include_str!("../../../../migrations/0001_queue.sql");

/// The version `migrations/0001_queue.sql` records in `jobfleet.queue_schema`.
pub const SCHEMA_VERSION: i32 = 1;

/// Advisory lock key serializing concurrent schema set-up (`'jfqueue1'` as a big-endian i64).
const MIGRATION_LOCK: i64 = 0x6a66_7175_6575_6531;

/// Applies `MIGRATION` unless `jobfleet.queue_schema` already records it. The check comes first
/// so a connecting worker takes no table lock (CREATE INDEX IF NOT EXISTS would) on a live queue.
pub(super) async fn ensure_schema(pool: &PgPool) -> std::result::Result<(), sqlx::Error> {
    if schema_applied(pool).await? {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Another process may have finished while we waited for the lock.
    if schema_applied_in(&mut tx).await? {
        return tx.commit().await;
    }
    if let Err(e) = sqlx::raw_sql(MIGRATION).execute(&mut *tx).await {
        drop(tx);
        // `worker migrate` (its own lock) may have raced us; fine if the tables now exist.
        if schema_applied(pool).await? {
            return Ok(());
        }
        return Err(e);
    }
    tx.commit().await
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

async fn schema_applied(pool: &PgPool) -> std::result::Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    schema_applied_in(&mut conn).await
}

async fn schema_applied_in(conn: &mut PgConnection) -> std::result::Result<bool, sqlx::Error> {
    // Two statements: PostgreSQL resolves every table a statement names before running it, so
    // one query that guards `queue_schema` with a CASE still fails on a fresh database.
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('jobfleet.queue_schema') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(false);
    }
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobfleet.queue_schema WHERE version >= $1)")
        .bind(SCHEMA_VERSION)
        .fetch_one(conn)
        .await
}
