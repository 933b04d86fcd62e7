//! `worker migrate [--status]`: applies the project's migrations, or lists which are applied.

use std::time::Duration;

use runtime::Config;
use serde::Serialize;

use crate::cmd::CliError;
use crate::config::JobSettings;

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
pub async fn execute(cfg: &Config, settings: &JobSettings, args: &Args) -> Result<(), CliError> {
    let list = if args.status {
        status(cfg).await?
    } else {
        let list = apply(cfg).await?;
        vectors(cfg, settings).await?;
        list
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
    migrations::MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| CliError::Failed(format!("migration failed: {e}")))?;
    status_on(&pool).await
}

/// Where pgvector is installed, converts the chunk table's `real[]` embeddings to
/// `vector(N)` in batches and builds the HNSW index `CONCURRENTLY` (docs/search.md); without
/// the extension it leaves the `real[]` path as it is and says so.
pub async fn vectors(cfg: &Config, settings: &JobSettings) -> Result<(), CliError> {
    let pool = db(cfg).await?;
    let report = jobs::vector::migrate(&pool, &settings.jobs, |n| {
        tracing::info!(converted = n, "converting chunk embeddings to vector")
    })
    .await
    .map_err(|e| CliError::Failed(format!("vector migration failed: {e}")))?;
    tracing::info!("{}", report.summary);
    Ok(())
}

/// Which migrations are applied and which pending, changing nothing.
pub async fn status(cfg: &Config) -> Result<Vec<MigrationStatus>, CliError> {
    let pool = db(cfg).await?;
    status_on(&pool).await
}

async fn status_on(pool: &sqlx::PgPool) -> Result<Vec<MigrationStatus>, CliError> {
    let list = migrations::status(pool)
        .await
        .map_err(|e| CliError::Failed(format!("cannot read migration status: {e}")))?;
    Ok(list
        .into_iter()
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description,
            applied: m.applied,
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
