//! `refresh_materialized_view {view}`: refresh a materialized view that the catalog knows,
//! `CONCURRENTLY` when it is populated and has a usable unique index, under a per-view advisory
//! lock so two refreshes never overlap (the second returns at once as "already running").
//!
//! A plain `REFRESH` blocks every reader of the view until it commits. When that is the only
//! way, the summary and a WARN log say for how long and which unique index would allow
//! `CONCURRENTLY`; `jobs.matview.allow_blocking_refresh = false` refuses such refreshes. The
//! duration goes to `jobfleet_matview_refresh_seconds{view, mode}` (`concurrently`/`blocking`).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use crate::config::MatviewConfig;
use crate::ident::{QualifiedName, db_error, lock_key, quote_ident};
use crate::{Handler, JobContext, JobError, Outcome, RetryPolicy, SetupError};

/// The envelope kind.
pub const KIND: &str = "refresh_materialized_view";

/// The refresh-duration histogram.
pub const REFRESH_SECONDS: &str = "jobfleet_matview_refresh_seconds";

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
    Concurrently { took: Duration },
    /// Plain refresh of a populated view without a usable unique index: readers were blocked
    /// for `blocked`. `advice` says which index would allow `CONCURRENTLY`.
    Blocking { blocked: Duration, advice: String },
    /// First population of a view created `WITH NO DATA`: only a plain refresh can do it, and
    /// there was nothing to read before.
    FirstPopulation { took: Duration },
    /// Another refresh of the view holds the lock; nothing done.
    AlreadyRunning,
}

/// The `refresh_materialized_view` handler.
pub struct RefreshMatview {
    pool: PgPool,
    statement_timeout: Duration,
    allowed: Vec<QualifiedName>,
    allow_blocking: bool,
}

/// Resolves the view: its names, whether it is populated, whether it has a unique index that
/// `CONCURRENTLY` can use (plain columns, no predicate) and whether it has any unique index.
const SQL_RESOLVE: &str = "\
    SELECT m.schemaname::text, m.matviewname::text, m.ispopulated, \
      EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique \
              AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL), \
      EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique) \
    FROM pg_class c \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_matviews m ON m.schemaname = n.nspname AND m.matviewname = c.relname \
    WHERE c.oid = to_regclass($1)";

/// Key columns of the view's plain, non-unique indexes: (names, names with ` DESC` where the
/// index sorts descending), one row per index. Candidates for a suggested unique index.
const SQL_INDEX_COLUMNS: &str = "\
    SELECT array_agg(a.attname::text ORDER BY k.n), \
           array_agg(quote_ident(a.attname) || CASE WHEN \
               pg_index_column_has_property(i.indexrelid, k.n::int, 'desc') THEN ' DESC' ELSE '' END \
             ORDER BY k.n) \
    FROM pg_index i \
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
    WHERE i.indrelid = to_regclass($1) AND NOT i.indisunique AND i.indisvalid \
      AND i.indpred IS NULL AND i.indexprs IS NULL AND k.n <= i.indnkeyatts \
    GROUP BY i.indexrelid ORDER BY i.indexrelid";

impl RefreshMatview {
    /// A handler with the timeout, allow-list and blocking policy of `cfg`.
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
            allow_blocking: cfg.allow_blocking_refresh,
        })
    }

    /// Refreshes `view`; the handler's `run` without the JSON.
    pub async fn refresh(&self, view: &str) -> Result<Refreshed, JobError> {
        let name = QualifiedName::parse(view).map_err(|e| JobError::bad_payload(KIND, e))?;
        let row: Option<(String, String, bool, bool, bool)> = sqlx::query_as(SQL_RESOLVE)
            .bind(name.quoted())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("looking up view", e))?;
        let Some((schema, relname, populated, unique, any_unique)) = row else {
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
        let blocking = populated && !unique;
        if blocking && !self.allow_blocking {
            let advice = self.advice(&resolved, any_unique).await;
            return Err(JobError::Permanent(format!(
                "refusing to refresh {resolved} without CONCURRENTLY, which would block its \
                 readers for the whole refresh (jobs.matview.allow_blocking_refresh = false): \
                 {advice}"
            )));
        }

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
        let started = Instant::now();
        sqlx::query(AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(&format!("refreshing {resolved}"), e))?;
        // A plain refresh holds ACCESS EXCLUSIVE on the view until the commit.
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        let took = started.elapsed();
        metrics::histogram!(
            REFRESH_SECONDS,
            "view" => resolved.to_string(),
            "mode" => if concurrently { "concurrently" } else { "blocking" }
        )
        .record(took.as_secs_f64());
        if concurrently {
            return Ok(Refreshed::Concurrently { took });
        }
        if !blocking {
            return Ok(Refreshed::FirstPopulation { took });
        }
        let advice = self.advice(&resolved, any_unique).await;
        tracing::warn!(
            view = %resolved, blocked_ms = took.as_millis() as u64, %advice,
            "materialized view refreshed without CONCURRENTLY: its readers were blocked"
        );
        Ok(Refreshed::Blocking {
            blocked: took,
            advice,
        })
    }

    /// Which unique index would let `view` refresh `CONCURRENTLY`. A concrete
    /// `CREATE UNIQUE INDEX` only when it is known to work: the columns of one of the view's
    /// plain indexes on which its rows are unique today; otherwise what such an index needs.
    async fn advice(&self, view: &QualifiedName, any_unique: bool) -> String {
        let shown = format!(
            "{}.{}",
            sql_name(view.schema.as_deref().unwrap_or("")),
            sql_name(&view.name)
        );
        let candidates: Vec<(Vec<String>, Vec<String>)> = sqlx::query_as(SQL_INDEX_COLUMNS)
            .bind(view.quoted())
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
        let mut not_unique = Vec::new();
        for (cols, keys) in candidates {
            let group = cols
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {} GROUP BY {group} HAVING count(*) > 1)",
                view.quoted()
            );
            match sqlx::query_scalar::<_, bool>(AssertSqlSafe(sql))
                .fetch_one(&self.pool)
                .await
            {
                Ok(true) => {
                    return format!(
                        "CREATE UNIQUE INDEX ON {shown} ({}) would allow CONCURRENTLY (the \
                         view's rows are unique on these columns today; make sure its query \
                         keeps them so)",
                        keys.join(", ")
                    );
                }
                Ok(false) => not_unique.push(format!("({})", cols.join(", "))),
                Err(_) => {}
            }
        }
        let mut s = String::from(if any_unique {
            "its unique indexes are partial or on expressions, which CONCURRENTLY cannot use"
        } else {
            "it has no unique index"
        });
        if !not_unique.is_empty() {
            s.push_str(&format!(
                "; its rows are not unique on the columns of its other indexes {}",
                not_unique.join(", ")
            ));
        }
        s.push_str(&format!(
            "; CONCURRENTLY needs CREATE UNIQUE INDEX ON {shown} (<columns that identify a row, \
             e.g. the GROUP BY columns of its query>) with plain columns and no WHERE"
        ));
        s
    }
}

/// `name` as SQL would need it written (quoted only when it has to be), for suggestions.
fn sql_name(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_owned()
    } else {
        quote_ident(name)
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
            Refreshed::Concurrently { took } => {
                format!(
                    "{} refreshed concurrently in {} ms",
                    p.view,
                    took.as_millis()
                )
            }
            Refreshed::Blocking { blocked, advice } => format!(
                "{} refreshed without CONCURRENTLY: readers were blocked for {} ms; {advice}",
                p.view,
                blocked.as_millis()
            ),
            Refreshed::FirstPopulation { took } => {
                format!(
                    "{} populated for the first time in {} ms",
                    p.view,
                    took.as_millis()
                )
            }
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
