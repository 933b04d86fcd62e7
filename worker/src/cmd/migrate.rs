//! `worker migrate [--status]`: applies the project's migrations, or lists which are applied.

use std::time::Duration;

use runtime::Config;
use serde::Serialize;

use crate::cmd::CliError;

/// `worker migrate` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Only list applied and pending migrations.
    #[arg(long)]
    pub status: bool,
}

/// One migration and whether the database has it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// Applies (or with `--status` only lists) and prints the status.
pub async fn execute(cfg: &Config, args: &Args) -> Result<(), CliError> {
    let list = if args.status {
        status(cfg).await?
    } else {
        apply(cfg).await?
    };
    println!("{}", render(&list));
    Ok(())
}

async fn db(cfg: &Config) -> Result<sqlx::PgPool, CliError> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&cfg.database.url)
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot connect to the database at {}: {e} (is it running? check [database] url / JOBFLEET_DATABASE_URL)",
                queues::error::redact_url(&cfg.database.url)
            ))
        })
}

/// Applies the pending migrations; returns the status afterwards.
pub async fn apply(cfg: &Config) -> Result<Vec<MigrationStatus>, CliError> {
    let pool = db(cfg).await?;
    jobs::MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| CliError::Failed(format!("migration failed: {e}")))?;
    status_on(&pool).await
}

/// Which migrations are applied and which pending, changing nothing.
pub async fn status(cfg: &Config) -> Result<Vec<MigrationStatus>, CliError> {
    let pool = db(cfg).await?;
    status_on(&pool).await
}

async fn status_on(pool: &sqlx::PgPool) -> Result<Vec<MigrationStatus>, CliError> {
    let table = &jobs::MIGRATOR.table_name;
    let applied: Vec<i64> = match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE success"
    )))
    .fetch_all(pool)
    .await
    {
        Ok(v) => v,
        // No bookkeeping table yet: nothing applied.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot read migration status: {e}"
            )));
        }
    };
    Ok(jobs::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect())
}

/// The migration status as text.
pub fn render(list: &[MigrationStatus]) -> String {
    list.iter()
        .map(|m| {
            format!(
                "{:<8} {:>14}  {}",
                if m.applied { "applied" } else { "pending" },
                m.version,
                m.description
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
