//! `refresh_materialized_view {view}`: refresh a materialized view that the catalog knows,
//! `CONCURRENTLY` when it is populated and has a usable unique index, under a per-view advisory
//! lock so two refreshes never overlap (the second returns at once as "already running").

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use crate::config::MatviewConfig;
use crate::ident::{QualifiedName, db_error, lock_key};
use crate::{Handler, JobContext, JobError, Outcome, RetryPolicy, SetupError};

/// The envelope kind.
pub const KIND: &str = "refresh_materialized_view";

/// Payload of `refresh_materialized_view`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshPayload {
    /// `schema.view` (or `view`, found through `search_path`); case-sensitive.
    pub view: String,
}

/// How a refresh ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// Refreshed without blocking readers.
    Concurrently,
    /// Plain refresh (no unique index, or never populated).
    Plain,
    /// Another refresh of the view holds the lock; nothing done.
    AlreadyRunning,
}

/// The `refresh_materialized_view` handler.
pub struct RefreshMatview {
    pool: PgPool,
    statement_timeout: Duration,
    allowed: Vec<QualifiedName>,
}

const SQL_RESOLVE: &str = "\
    SELECT m.schemaname::text, m.matviewname::text, m.ispopulated, \
      EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique \
              AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL) \
    FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_matviews m ON m.schemaname = n.nspname AND m.matviewname = c.relname \
    WHERE c.oid = to_regclass($1)";

impl RefreshMatview {
    /// A handler with the timeout and allow-list of `cfg`.
    pub fn new(pool: PgPool, cfg: &MatviewConfig) -> Result<Self, SetupError> {
        let allowed = cfg
            .allowed
            .iter()
            .map(|v| {
                QualifiedName::parse(v)
                    .map_err(|e| SetupError::Config(format!("jobs.matview.allowed: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(RefreshMatview {
            pool,
            statement_timeout: cfg.statement_timeout,
            allowed,
        })
    }

    /// Refreshes `view`; the handler's `run` without the JSON.
    pub async fn refresh(&self, view: &str) -> Result<Refreshed, JobError> {
        let name = QualifiedName::parse(view).map_err(|e| JobError::bad_payload(KIND, e))?;
        let row: Option<(String, String, bool, bool)> = sqlx::query_as(SQL_RESOLVE)
            .bind(name.quoted())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("looking up view", e))?;
        let Some((schema, relname, populated, unique)) = row else {
            return Err(JobError::Permanent(format!(
                "{name} is not a materialized view (not in pg_matviews)"
            )));
        };
        let resolved = QualifiedName::new(&schema, &relname);
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|a| a == &resolved || (a.schema.is_none() && a.name == relname))
        {
            return Err(JobError::Permanent(format!(
                "{resolved} is not in jobs.matview.allowed"
            )));
        }
        let concurrently = populated && unique;

        let mut tx = self.pool.begin().await.map_err(|e| db_error("begin", e))?;
        // A transaction-scoped lock is released by the rollback when the worker cancels the
        // future; a session lock would stay on the pooled connection.
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(lock_key(
                "jobfleet.refresh_materialized_view",
                &resolved.to_string(),
            ))
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error("locking view", e))?;
        if !got {
            return Ok(Refreshed::AlreadyRunning);
        }
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(format!("{}ms", self.statement_timeout.as_millis()))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("setting statement_timeout", e))?;
        let sql = format!(
            "REFRESH MATERIALIZED VIEW {}{}",
            if concurrently { "CONCURRENTLY " } else { "" },
            resolved.quoted()
        );
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(&format!("refreshing {resolved}"), e))?;
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        Ok(if concurrently {
            Refreshed::Concurrently
        } else {
            Refreshed::Plain
        })
    }
}

#[async_trait]
impl Handler for RefreshMatview {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(600),
            timeout: self.statement_timeout + Duration::from_secs(60),
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        validate_payload(payload)
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let p = parse(payload)?;
        Ok(Outcome::new(match self.refresh(&p.view).await? {
            Refreshed::Concurrently => format!("{} refreshed concurrently", p.view),
            Refreshed::Plain => format!("{} refreshed", p.view),
            Refreshed::AlreadyRunning => {
                format!("skipped: a refresh of {} is already running", p.view)
            }
        }))
    }
}

/// Checks a `refresh_materialized_view` payload (the view name's syntax; whether it is
/// allowed and exists is known only when the job runs).
pub fn validate_payload(payload: &Value) -> Result<(), JobError> {
    let p = parse(payload)?;
    QualifiedName::parse(&p.view)
        .map(|_| ())
        .map_err(|e| JobError::bad_payload(KIND, e))
}

fn parse(payload: &Value) -> Result<RefreshPayload, JobError> {
    crate::parse_payload(KIND, payload)
}
