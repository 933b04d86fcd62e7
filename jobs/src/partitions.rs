//! `ensure_partitions {table, months_ahead, retention_months?}`: keep a table that is
//! range-partitioned by a timestamp supplied with monthly partitions (current month through
//! `months_ahead`), moving rows a DEFAULT partition holds for a new month into it, and
//! optionally detaching and dropping partitions older than the retention. All in one
//! transaction under a per-table advisory lock, so two workers at once are safe.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use crate::config::PartitionsConfig;
use crate::ident::{MAX_IDENT_LEN, QualifiedName, db_error, lock_key, quote_ident};
use crate::{Handler, JobContext, JobError, Outcome, RetryPolicy, SetupError};

/// The envelope kind.
pub const KIND: &str = "ensure_partitions";

/// Payload of `ensure_partitions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsPayload {
    /// `schema.table`, range-partitioned by one `timestamptz`, `timestamp` or `date` column.
    pub table: String,
    /// Months after the current one (UTC) that must have a partition.
    pub months_ahead: u32,
    /// Drop partitions that end on or before the first day of the month this many months
    /// before the current one. Absent: nothing is dropped.
    #[serde(default)]
    pub retention_months: Option<u32>,
}

/// What one run changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReport {
    /// Partitions created (`schema.name`).
    pub created: Vec<String>,
    /// Rows moved out of the DEFAULT partition into created ones.
    pub moved_rows: u64,
    /// Partitions detached and dropped by retention.
    pub dropped: Vec<String>,
    /// Months that another, differently bounded partition partly covers (left alone).
    pub overlapping: Vec<String>,
}

/// The `ensure_partitions` handler.
pub struct EnsurePartitions {
    pool: PgPool,
    allowed: Vec<QualifiedName>,
    max_months_ahead: u32,
    lock_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bound {
    Min,
    At(NaiveDateTime),
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Timestamptz,
    Timestamp,
    Date,
}

impl KeyType {
    fn from_catalog(t: &str) -> Option<KeyType> {
        match t {
            "timestamp with time zone" => Some(KeyType::Timestamptz),
            "timestamp without time zone" => Some(KeyType::Timestamp),
            "date" => Some(KeyType::Date),
            _ => None,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            KeyType::Timestamptz => "timestamptz",
            KeyType::Timestamp => "timestamp",
            KeyType::Date => "date",
        }
    }

    /// A bound literal of month `m`; generated here, never taken from input.
    fn literal(self, m: i32) -> String {
        let d = month_start(m);
        match self {
            KeyType::Timestamptz => format!("{} 00:00:00+00", d.format("%Y-%m-%d")),
            KeyType::Timestamp => format!("{} 00:00:00", d.format("%Y-%m-%d")),
            KeyType::Date => d.format("%Y-%m-%d").to_string(),
        }
    }
}

/// Months as one integer (`year * 12 + month0`) so ranges cross year boundaries trivially.
fn month_index(y: i32, m: u32) -> i32 {
    y * 12 + m as i32 - 1
}

fn month_start(idx: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(idx.div_euclid(12), idx.rem_euclid(12) as u32 + 1, 1)
        .unwrap_or(NaiveDate::MIN)
}

fn month_bound(idx: i32) -> Bound {
    Bound::At(
        month_start(idx)
            .and_hms_opt(0, 0, 0)
            .unwrap_or(NaiveDateTime::MIN),
    )
}

/// Reads one side of `FOR VALUES FROM (..) TO (..)` as deparsed with `TimeZone = UTC`.
fn parse_bound(s: &str) -> Option<Bound> {
    let s = s.trim();
    match s {
        "MINVALUE" => return Some(Bound::Min),
        "MAXVALUE" => return Some(Bound::Max),
        _ => {}
    }
    let v = s.strip_prefix('\'')?.strip_suffix('\'')?;
    match v {
        "-infinity" => return Some(Bound::Min),
        "infinity" => return Some(Bound::Max),
        _ => {}
    }
    if let Ok(t) = DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(Bound::At(t.naive_utc()));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(Bound::At(t));
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(Bound::At)
}

/// `None` for the DEFAULT partition.
fn parse_range(expr: &str) -> Option<Option<(Bound, Bound)>> {
    if expr.trim() == "DEFAULT" {
        return Some(None);
    }
    let rest = expr.trim().strip_prefix("FOR VALUES FROM (")?;
    let rest = rest.strip_suffix(')')?;
    let (lo, hi) = rest.split_once(") TO (")?;
    Some(Some((parse_bound(lo)?, parse_bound(hi)?)))
}

/// The catalog's view of the payload's table; the partition columns are NULL when it is not
/// partitioned.
type TableRow = (
    String,
    String,
    Option<String>,
    Option<i16>,
    Option<String>,
    Option<String>,
);

struct Child {
    name: QualifiedName,
    range: Option<(Bound, Bound)>,
}

impl EnsurePartitions {
    /// A handler with the allow-list and limits of `cfg`.
    pub fn new(pool: PgPool, cfg: &PartitionsConfig) -> Result<Self, SetupError> {
        let allowed = cfg
            .allowed_tables
            .iter()
            .map(|v| {
                QualifiedName::parse(v)
                    .map_err(|e| SetupError::Config(format!("jobs.partitions.allowed_tables: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(EnsurePartitions {
            pool,
            allowed,
            max_months_ahead: cfg.max_months_ahead,
            lock_timeout: cfg.lock_timeout,
        })
    }

    fn check(&self, p: &PartitionsPayload) -> Result<QualifiedName, JobError> {
        check(p, self.max_months_ahead)
    }

    /// Brings `p.table` up to date as of `now` (injectable so tests can stand in December).
    pub async fn ensure(
        &self,
        p: &PartitionsPayload,
        now: DateTime<Utc>,
    ) -> Result<PartitionReport, JobError> {
        let name = self.check(p)?;
        let mut tx = self.pool.begin().await.map_err(|e| db_error("begin", e))?;
        // Bounds are deparsed and compared in UTC whatever the server's default is.
        sqlx::query(
            "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), \
                    set_config('lock_timeout', $1, true)",
        )
        .bind(format!("{}ms", self.lock_timeout.as_millis()))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error("session settings", e))?;

        let row: Option<TableRow> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, p.partstrat::text, p.partnatts, \
                        a.attname::text, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid \
                 LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0] \
                 WHERE c.oid = to_regclass($1)",
        )
        .bind(name.quoted())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error("looking up table", e))?;
        let Some((schema, relname, strat, natts, column, coltype)) = row else {
            return Err(JobError::Permanent(format!("table {name} does not exist")));
        };
        let parent = QualifiedName::new(&schema, &relname);
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|a| a == &parent || (a.schema.is_none() && a.name == relname))
        {
            return Err(JobError::Permanent(format!(
                "{parent} is not in jobs.partitions.allowed_tables"
            )));
        }
        let (Some("r"), Some(1), Some(column), Some(coltype)) =
            (strat.as_deref(), natts, column, coltype)
        else {
            return Err(JobError::Permanent(format!(
                "{parent} is not range-partitioned by a single column"
            )));
        };
        let Some(key_type) = KeyType::from_catalog(&coltype) else {
            return Err(JobError::Permanent(format!(
                "{parent} is partitioned by {column} of type {coltype}, not a timestamp or date"
            )));
        };
        if relname.len() + "_p000000".len() > MAX_IDENT_LEN {
            return Err(JobError::Permanent(format!(
                "partition names of {parent} would be longer than {MAX_IDENT_LEN} bytes"
            )));
        }

        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key("jobfleet.ensure_partitions", &parent.to_string()))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("locking table", e))?;

        let children = self.children(&mut tx, &parent).await?;
        let current = month_index(now.year(), now.month());
        let mut report = PartitionReport::default();

        let mut to_create = Vec::new();
        for m in current..=current + p.months_ahead as i32 {
            let (lo, hi) = (month_bound(m), month_bound(m + 1));
            let mut exact = false;
            let mut overlaps = false;
            for c in &children {
                if let Some((clo, chi)) = c.range {
                    if (clo, chi) == (lo, hi) {
                        exact = true;
                    } else if clo < hi && lo < chi {
                        overlaps = true;
                    }
                }
            }
            if exact {
                continue;
            }
            if overlaps {
                report
                    .overlapping
                    .push(month_start(m).format("%Y-%m").to_string());
                continue;
            }
            to_create.push(m);
        }

        let default = children
            .iter()
            .find(|c| c.range.is_none())
            .map(|c| c.name.clone());
        let col = quote_ident(&column);
        let ty = key_type.sql();
        let parent_q = parent.quoted();

        // Months whose rows already sit in the default partition: a plain CREATE ... PARTITION
        // OF would fail on them, so they are moved while the default is detached.
        let mut with_rows = Vec::new();
        if let Some(d) = &default {
            let sql = format!(
                "SELECT EXISTS (SELECT 1 FROM {} WHERE {col} >= $1::{ty} AND {col} < $2::{ty})",
                d.quoted()
            );
            for &m in &to_create {
                let has: bool = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
                    .bind(key_type.literal(m))
                    .bind(key_type.literal(m + 1))
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| db_error("scanning default partition", e))?;
                if has {
                    with_rows.push(m);
                }
            }
        }
        let detach = match &default {
            Some(d) if !with_rows.is_empty() => Some(d.clone()),
            _ => None,
        };
        if let Some(d) = &detach {
            exec(
                &mut tx,
                format!("ALTER TABLE {parent_q} DETACH PARTITION {}", d.quoted()),
            )
            .await?;
        }
        for &m in &to_create {
            let part = QualifiedName::new(
                &schema,
                &format!("{relname}_p{}", month_start(m).format("%Y%m")),
            );
            exec(
                &mut tx,
                format!(
                    "CREATE TABLE {} PARTITION OF {parent_q} FOR VALUES FROM ('{}') TO ('{}')",
                    part.quoted(),
                    key_type.literal(m),
                    key_type.literal(m + 1)
                ),
            )
            .await?;
            report.created.push(part.to_string());
        }
        if let Some(d) = &detach {
            let cols: Vec<String> = sqlx::query_scalar(
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
                   AND attgenerated = '' ORDER BY attnum",
            )
            .bind(&parent_q)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_error("reading columns", e))?;
            let cols = cols
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "WITH moved AS (DELETE FROM {} WHERE {col} >= $1::{ty} AND {col} < $2::{ty} \
                   RETURNING {cols}) \
                 INSERT INTO {parent_q} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved",
                d.quoted()
            );
            for &m in &with_rows {
                let r = sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(key_type.literal(m))
                    .bind(key_type.literal(m + 1))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_error("moving rows out of the default partition", e))?;
                report.moved_rows += r.rows_affected();
            }
            exec(
                &mut tx,
                format!(
                    "ALTER TABLE {parent_q} ATTACH PARTITION {} DEFAULT",
                    d.quoted()
                ),
            )
            .await?;
        }

        if let Some(keep) = p.retention_months {
            let cutoff = month_bound(current - keep as i32);
            for c in &children {
                let Some((_, hi)) = c.range else { continue };
                if hi <= cutoff {
                    exec(
                        &mut tx,
                        format!(
                            "ALTER TABLE {parent_q} DETACH PARTITION {}",
                            c.name.quoted()
                        ),
                    )
                    .await?;
                    exec(&mut tx, format!("DROP TABLE {}", c.name.quoted())).await?;
                    report.dropped.push(c.name.to_string());
                }
            }
        }
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        Ok(report)
    }

    async fn children(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        parent: &QualifiedName,
    ) -> Result<Vec<Child>, JobError> {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, pg_get_expr(c.relpartbound, c.oid) \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE i.inhparent = to_regclass($1)",
        )
        .bind(parent.quoted())
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| db_error("listing partitions", e))?;
        rows.into_iter()
            .map(|(s, n, expr)| {
                let name = QualifiedName::new(&s, &n);
                let expr = expr.unwrap_or_default();
                let range = parse_range(&expr).ok_or_else(|| {
                    JobError::Permanent(format!("cannot read the bounds of {name}: {expr}"))
                })?;
                Ok(Child { name, range })
            })
            .collect()
    }
}

async fn exec(tx: &mut Transaction<'static, Postgres>, sql: String) -> Result<(), JobError> {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(&mut **tx)
        .await
        .map(|_| ())
        .map_err(|e| db_error(&sql, e))
}

#[async_trait]
impl Handler for EnsurePartitions {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff_base: Duration::from_secs(10),
            backoff_cap: Duration::from_secs(600),
            timeout: Duration::from_secs(600),
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        self.check(&parse(payload)?).map(|_| ())
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let p = parse(payload)?;
        let r = self.ensure(&p, Utc::now()).await?;
        let mut s = format!(
            "{}: {} partitions created, {} rows moved from default, {} dropped",
            p.table,
            r.created.len(),
            r.moved_rows,
            r.dropped.len()
        );
        if !r.overlapping.is_empty() {
            s.push_str(&format!(
                "; months covered by other partitions: {}",
                r.overlapping.join(", ")
            ));
        }
        Ok(Outcome::new(s))
    }
}

/// Checks an `ensure_partitions` payload against `jobs.partitions.max_months_ahead` (the
/// table name's syntax; whether it is allowed and partitioned is known only when the job runs).
pub fn validate_payload(payload: &Value, max_months_ahead: u32) -> Result<(), JobError> {
    check(&parse(payload)?, max_months_ahead).map(|_| ())
}

fn check(p: &PartitionsPayload, max_months_ahead: u32) -> Result<QualifiedName, JobError> {
    let bad = |m: String| JobError::bad_payload(KIND, m);
    let name = QualifiedName::parse(&p.table).map_err(|e| bad(e.to_string()))?;
    if p.months_ahead > max_months_ahead {
        return Err(bad(format!(
            "months_ahead {} is more than jobs.partitions.max_months_ahead ({})",
            p.months_ahead, max_months_ahead
        )));
    }
    if p.retention_months == Some(0) {
        return Err(bad("retention_months must be at least 1".into()));
    }
    Ok(name)
}

fn parse(payload: &Value) -> Result<PartitionsPayload, JobError> {
    crate::parse_payload(KIND, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_cross_years() {
        let dec = month_index(2026, 12);
        assert_eq!(month_start(dec).to_string(), "2026-12-01");
        assert_eq!(month_start(dec + 1).to_string(), "2027-01-01");
        assert_eq!(month_start(dec - 12).to_string(), "2025-12-01");
        assert_eq!(
            KeyType::Timestamptz.literal(dec + 1),
            "2027-01-01 00:00:00+00"
        );
    }

    #[test]
    fn bounds_are_read() {
        let r =
            parse_range("FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')")
                .unwrap()
                .unwrap();
        assert_eq!(
            r,
            (
                month_bound(month_index(2026, 12)),
                month_bound(month_index(2027, 1))
            )
        );
        let r = parse_range("FOR VALUES FROM (MINVALUE) TO ('2026-01-01')")
            .unwrap()
            .unwrap();
        assert_eq!(r.0, Bound::Min);
        assert_eq!(
            parse_range("FOR VALUES FROM ('2026-01-01 05:00:00+05') TO (MAXVALUE)")
                .unwrap()
                .unwrap()
                .0,
            month_bound(month_index(2026, 1))
        );
        assert_eq!(parse_range("DEFAULT"), Some(None));
        assert_eq!(parse_range("FOR VALUES IN (1)"), None);
    }
}
