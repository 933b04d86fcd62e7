//! `rollup_analytics {granularity, from, to}`: recompute the hourly or daily rollup rows of
//! exactly one window from the raw events, in one statement, so a re-run fixes a partial window
//! and counts late events. Buckets of the window that no longer have events are removed.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Timelike, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use crate::config::AnalyticsConfig;
use crate::ident::{QualifiedName, db_error, lock_key, quote_ident};
use crate::{Handler, JobContext, JobError, Outcome, RetryPolicy, SetupError};

/// The envelope kind.
pub const KIND: &str = "rollup_analytics";

/// Bucket size of a rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One row per hour and event name.
    Hour,
    /// One row per UTC day and event name.
    Day,
}

impl Granularity {
    fn as_str(self) -> &'static str {
        match self {
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    fn is_aligned(self, t: DateTime<Utc>) -> bool {
        let hour_aligned = t.minute() == 0 && t.second() == 0 && t.nanosecond() == 0;
        match self {
            Granularity::Hour => hour_aligned,
            Granularity::Day => hour_aligned && t.hour() == 0,
        }
    }
}

/// Payload of `rollup_analytics`: the half-open window `[from, to)`, aligned to the buckets.
#[derive(Debug, Clone)]
pub struct RollupPayload {
    /// `hour` or `day`.
    pub granularity: Granularity,
    /// First instant of the window (RFC 3339).
    pub from: DateTime<Utc>,
    /// End of the window, exclusive.
    pub to: DateTime<Utc>,
}

/// The payload as sent, so a bad time can be reported with its field name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayload {
    granularity: Granularity,
    from: String,
    to: String,
}

/// What one run changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollupStats {
    /// Buckets written (inserted or updated).
    pub upserted: i64,
    /// Buckets removed because their events are gone.
    pub removed: i64,
}

/// The `rollup_analytics` handler.
pub struct RollupAnalytics {
    pool: PgPool,
    max_window: Duration,
    hour: (String, String),
    day: (String, String),
}

impl RollupAnalytics {
    /// A handler over the tables in `cfg`.
    pub fn new(pool: PgPool, cfg: &AnalyticsConfig) -> Result<Self, SetupError> {
        let name = |key: &str, v: &str| {
            QualifiedName::parse(v)
                .map(|q| q.quoted())
                .map_err(|e| SetupError::Config(format!("jobs.analytics.{key}: {e}")))
        };
        let events = name("events_table", &cfg.events_table)?;
        let hour = name("rollup_hour_table", &cfg.rollup_hour_table)?;
        let day = name("rollup_day_table", &cfg.rollup_day_table)?;
        let t = quote_ident(&cfg.time_column);
        let n = quote_ident(&cfg.name_column);
        let u = quote_ident(&cfg.user_column);
        // Upsert of the window's buckets and removal of its stale buckets in one statement:
        // both see one snapshot of the events, and they touch disjoint rows.
        let sql = |rollup: &str| {
            format!(
                "WITH agg AS ( \
                   SELECT date_trunc($1, e.{t}, 'UTC') AS bucket, coalesce(e.{n}::text, '') AS name, \
                          count(*)::bigint AS events, count(DISTINCT e.{u})::bigint AS users \
                   FROM {events} e WHERE e.{t} >= $2 AND e.{t} < $3 GROUP BY 1, 2 \
                 ), upserted AS ( \
                   INSERT INTO {rollup} AS r (bucket, name, events, users, computed_at) \
                   SELECT bucket, name, events, users, now() FROM agg \
                   ON CONFLICT (bucket, name) DO UPDATE SET events = EXCLUDED.events, \
                     users = EXCLUDED.users, computed_at = EXCLUDED.computed_at \
                   RETURNING 1 \
                 ), removed AS ( \
                   DELETE FROM {rollup} r WHERE r.bucket >= $2 AND r.bucket < $3 \
                     AND NOT EXISTS (SELECT 1 FROM agg a WHERE a.bucket = r.bucket AND a.name = r.name) \
                   RETURNING 1 \
                 ) \
                 SELECT (SELECT count(*) FROM upserted), (SELECT count(*) FROM removed)"
            )
        };
        Ok(RollupAnalytics {
            pool,
            max_window: cfg.max_window,
            hour: (sql(&hour), hour),
            day: (sql(&day), day),
        })
    }

    fn check(&self, p: &RollupPayload) -> Result<(), JobError> {
        check(p, self.max_window)
    }

    /// Recomputes one window; the handler's `run` without the JSON.
    pub async fn rollup(&self, p: &RollupPayload) -> Result<RollupStats, JobError> {
        self.check(p)?;
        let (sql, table) = match p.granularity {
            Granularity::Hour => &self.hour,
            Granularity::Day => &self.day,
        };
        let mut tx = self.pool.begin().await.map_err(|e| db_error("begin", e))?;
        // Overlapping windows of one rollup table (duplicates, re-runs, catch-up) would
        // otherwise upsert the same keys in different orders and deadlock.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key("jobfleet.rollup_analytics", table))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("locking rollup table", e))?;
        let (upserted, removed): (i64, i64) = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(p.granularity.as_str())
            .bind(p.from)
            .bind(p.to)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_error("rolling up events", e))?;
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        Ok(RollupStats { upserted, removed })
    }
}

#[async_trait]
impl Handler for RollupAnalytics {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_secs(5),
            backoff_cap: Duration::from_secs(300),
            timeout: Duration::from_secs(600),
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        self.check(&parse(payload)?)
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let p = parse(payload)?;
        let s = self.rollup(&p).await?;
        Ok(Outcome::new(format!(
            "{} {} buckets written, {} removed for [{}, {})",
            s.upserted,
            p.granularity.as_str(),
            s.removed,
            p.from.to_rfc3339(),
            p.to.to_rfc3339()
        )))
    }
}

/// Checks a `rollup_analytics` payload against `jobs.analytics.max_window`; needs no database.
pub fn validate_payload(payload: &Value, max_window: Duration) -> Result<(), JobError> {
    check(&parse(payload)?, max_window)
}

fn check(p: &RollupPayload, max_window: Duration) -> Result<(), JobError> {
    let bad = |m: String| Err(JobError::bad_payload(KIND, m));
    if p.from >= p.to {
        return bad(format!(
            "`from` ({}) must be before `to` ({})",
            p.from, p.to
        ));
    }
    for (key, t) in [("from", p.from), ("to", p.to)] {
        if !p.granularity.is_aligned(t) {
            return bad(format!(
                "`{key}` ({t}) is not on a {} boundary (UTC)",
                p.granularity.as_str()
            ));
        }
    }
    let len = (p.to - p.from).to_std().unwrap_or(Duration::MAX);
    if len > max_window {
        return bad(format!(
            "window of {}h is longer than jobs.analytics.max_window ({}h)",
            len.as_secs() / 3600,
            max_window.as_secs() / 3600
        ));
    }
    Ok(())
}

fn parse(payload: &Value) -> Result<RollupPayload, JobError> {
    let raw: RawPayload = crate::parse_payload(KIND, payload)?;
    let time = |key: &str, v: &str| {
        DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                JobError::bad_payload(
                    KIND,
                    format!("`{key}` ('{v}') is not an RFC 3339 time: {e}"),
                )
            })
    };
    Ok(RollupPayload {
        granularity: raw.granularity,
        from: time("from", &raw.from)?,
        to: time("to", &raw.to)?,
    })
}
