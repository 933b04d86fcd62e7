//! jobfleet's whole database schema in one place: the `.sql` files beside this file, embedded as
//! one sqlx [`MIGRATOR`]. `worker migrate` runs it; processes that need the tables at start
//! (the PostgreSQL queue backend, the scheduler) call [`ensure`], which costs one query when the
//! database is already current. Nothing else in the workspace applies SQL DDL.
//!
//! The `.sql` files are immutable once released: sqlx stores each one's checksum and refuses a
//! database whose applied file differs, so a change is always a new file with a higher number.

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};

/// Every migration in this folder (`NNNN_description.sql`), in version order. (The path is
/// relative to this crate's manifest, i.e. this folder; sqlx refuses a bare `"."`.)
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// PostgreSQL's "undefined_table": the bookkeeping table does not exist yet.
const UNDEFINED_TABLE: &str = "42P01";

/// Why the schema could not be read or brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not say which migrations it has (unreachable, no permission, ...).
    #[error("cannot read the migration status: {0}")]
    Status(#[source] sqlx::Error),
    /// A migration failed, or the database's record disagrees with this binary's files.
    #[error("migration failed: {0} (see `worker migrate --status`)")]
    Apply(#[from] MigrateError),
}

/// One migration of [`MIGRATOR`] and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: i64,
    /// The rest of the file name, underscores as spaces.
    pub description: String,
    /// Recorded as successfully applied.
    pub applied: bool,
}

/// Which migrations the database has and which are pending, changing nothing. One query.
pub async fn status(pool: &PgPool) -> Result<Vec<Migration>, Error> {
    let applied = applied_versions(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// Applies [`MIGRATOR`] if the database lacks any of its migrations; returns how many were
/// pending (0: nothing was done, and the check was the only query). The migrator holds its own
/// advisory lock while it runs, so processes starting together apply each file once.
pub async fn ensure(pool: &PgPool) -> Result<usize, Error> {
    let pending = status(pool).await?.iter().filter(|m| !m.applied).count();
    if pending > 0 {
        MIGRATOR.run(pool).await?;
    }
    Ok(pending)
}

async fn applied_versions(pool: &PgPool) -> Result<Vec<i64>, Error> {
    let table = &MIGRATOR.table_name;
    match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE success"
    )))
    .fetch_all(pool)
    .await
    {
        Ok(v) => Ok(v),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_TABLE) => {
            Ok(Vec::new())
        }
        Err(e) => Err(Error::Status(e)),
    }
}
