//! Installs the jobs' tables into a schema other than `jobfleet`, with a matching config:
//! lets tests and benchmarks run in isolation next to each other (and shows how an application
//! would host the tables in its own schema).

use sqlx::{AssertSqlSafe, PgPool};

use crate::JobsConfig;
use crate::ident::{check_ident, quote_ident};

/// The jobs' migration, verbatim.
pub const JOBS_MIGRATION: &str = include_str!("../../migrations/0002_jobs.sql");

/// Creates `schema` and, inside it, every table, partition and view of the jobs' migration.
pub async fn install_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    check_ident(schema).map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    let q = quote_ident(schema);
    let ddl = JOBS_MIGRATION.replace("jobfleet.", &format!("{q}."));
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {q};\n{ddl}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops `schema` and everything in it.
pub async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    check_ident(schema).map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(schema)
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// The default config with every table moved to `schema`.
pub fn config_for_schema(schema: &str) -> JobsConfig {
    let mut c = JobsConfig::default();
    let re = |s: &mut String| *s = s.replace("jobfleet.", &format!("{schema}."));
    re(&mut c.documents.table);
    re(&mut c.documents.chunks_table);
    re(&mut c.documents.state_table);
    re(&mut c.analytics.events_table);
    re(&mut c.analytics.rollup_hour_table);
    re(&mut c.analytics.rollup_day_table);
    c
}

/// A fresh random schema name with `prefix`.
pub fn random_schema(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}
