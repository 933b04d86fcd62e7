//! `ensure_partitions {table, months_ahead, retention_months?, backfill?, retention_mode?}`:
//! keep a table that is range-partitioned by a time column supplied with monthly partitions.
//!
//! One run creates the partitions of the current month (UTC) through `months_ahead` and, with
//! `backfill` (the default), of every month that has rows in the DEFAULT partition, moving those
//! rows into them in bounded batches ([`backfill`]); then it retires partitions older than
//! `retention_months` by dropping, detaching or archiving them ([`retention`]). The work is cut
//! into short transactions so that readers and writers are never held up for long; a
//! per-table advisory lock, held for the whole run, keeps two workers from doing it at once.

mod backfill;
mod bounds;
mod retention;
mod step;
mod table;

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};

use self::bounds::{END_MONTH, FIRST_MONTH, month_bound, month_index, month_label};
use self::step::LockLimits;
use self::table::{NameState, Table};
use crate::config::{PartitionsConfig, RetentionMode};
use crate::ident::{QualifiedName, db_error, lock_key};
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
    /// Retire partitions that end on or before the first day of the month this many months
    /// before the current one. Absent: nothing is retired.
    #[serde(default)]
    pub retention_months: Option<u32>,
    /// Also create a partition for every month that has rows in the default partition and
    /// move those rows into it (default `true`).
    #[serde(default = "yes")]
    pub backfill: bool,
    /// Overrides `jobs.partitions.retention_mode` for this table.
    #[serde(default)]
    pub retention_mode: Option<RetentionMode>,
}

fn yes() -> bool {
    true
}

impl PartitionsPayload {
    /// A payload for `table` with `months_ahead`, backfill on and no retention.
    pub fn new(table: impl Into<String>, months_ahead: u32) -> Self {
        PartitionsPayload {
            table: table.into(),
            months_ahead,
            retention_months: None,
            backfill: true,
            retention_mode: None,
        }
    }
}

/// What one run changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionReport {
    /// Another run on the same table held the lock; nothing was done.
    pub already_running: bool,
    /// Partitions created (`schema.name`).
    pub created: Vec<String>,
    /// Rows moved out of the DEFAULT partition into created ones.
    pub moved_rows: u64,
    /// Per created partition that received rows: its name and how many.
    pub moved: Vec<(String, u64)>,
    /// Partitions detached and dropped by retention.
    pub dropped: Vec<String>,
    /// Partitions detached by retention and left where they were.
    pub detached: Vec<String>,
    /// Partitions moved to the archive schema and detached (names after the move).
    pub archived: Vec<String>,
    /// Why detaches were not `CONCURRENTLY`, when they were not.
    pub detach_not_concurrent: Option<String>,
    /// Months that another, differently bounded partition partly covers (left alone).
    pub overlapping: Vec<String>,
    /// Longest final attach step (writers of the table paused, from the lock request to the
    /// commit).
    pub longest_lock: Duration,
    /// Steps retried because they gave up on a lock.
    pub lock_retries: u32,
}

impl PartitionReport {
    /// The job's one-line summary.
    pub fn summary(&self, table: &str) -> String {
        if self.already_running {
            return format!("skipped: ensure_partitions of {table} is already running");
        }
        let mut s = format!(
            "{table}: {} partitions created, {} rows moved from default",
            self.created.len(),
            self.moved_rows
        );
        if !self.moved.is_empty() {
            let per: Vec<String> = self.moved.iter().map(|(p, n)| format!("{p} {n}")).collect();
            s.push_str(&format!(" ({})", per.join(", ")));
        }
        s.push_str(&format!(", {} dropped", self.dropped.len()));
        if !self.dropped.is_empty() {
            s.push_str(&format!(" ({})", self.dropped.join(", ")));
        }
        if !self.detached.is_empty() {
            s.push_str(&format!(
                ", {} detached and kept ({})",
                self.detached.len(),
                self.detached.join(", ")
            ));
        }
        if !self.archived.is_empty() {
            s.push_str(&format!(
                ", {} archived ({})",
                self.archived.len(),
                self.archived.join(", ")
            ));
        }
        if let Some(why) = &self.detach_not_concurrent {
            s.push_str(&format!("; not CONCURRENTLY: {why}"));
        }
        if !self.created.is_empty() {
            s.push_str(&format!(
                "; writers paused for at most {} ms",
                self.longest_lock.as_millis()
            ));
        }
        if self.lock_retries > 0 {
            s.push_str(&format!("; {} lock timeouts retried", self.lock_retries));
        }
        if !self.overlapping.is_empty() {
            s.push_str(&format!(
                "; months covered by other partitions: {}",
                self.overlapping.join(", ")
            ));
        }
        s
    }
}

/// The `ensure_partitions` handler.
pub struct EnsurePartitions {
    pool: PgPool,
    allowed: Vec<QualifiedName>,
    cfg: PartitionsConfig,
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
            cfg: cfg.clone(),
        })
    }

    fn limits(&self) -> LockLimits {
        LockLimits {
            timeout: self.cfg.lock_timeout,
            retries: self.cfg.lock_retries,
        }
    }

    fn check(&self, p: &PartitionsPayload) -> Result<(QualifiedName, RetentionMode), JobError> {
        check(p, &self.cfg)
    }

    /// Brings `p.table` up to date as of `now` (injectable so tests can stand in December).
    pub async fn ensure(
        &self,
        p: &PartitionsPayload,
        now: DateTime<Utc>,
    ) -> Result<PartitionReport, JobError> {
        let (name, mode) = self.check(p)?;
        let mut report = PartitionReport::default();
        // Holds the per-table advisory lock for the whole run. Transaction-scoped, so a
        // cancelled job's rollback releases it; the work itself runs in other, short
        // transactions. Only catalog reads run in it: a lock it took on the table would be
        // held to the end and block the run's own attach. Bounds are deparsed in UTC whatever
        // the server's default is.
        let mut guard = self.pool.begin().await.map_err(|e| db_error("begin", e))?;
        sqlx::query(
            "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true)",
        )
        .execute(&mut *guard)
        .await
        .map_err(|e| db_error("session settings", e))?;
        let t = Table::resolve(&mut guard, &name).await?;
        if !self.allowed.is_empty()
            && !self
                .allowed
                .iter()
                .any(|a| a == &t.parent || (a.schema.is_none() && a.name == t.relname))
        {
            return Err(JobError::Permanent(format!(
                "{} is not in jobs.partitions.allowed_tables",
                t.parent
            )));
        }
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(lock_key(
                "jobfleet.ensure_partitions",
                &t.parent.to_string(),
            ))
            .fetch_one(&mut *guard)
            .await
            .map_err(|e| db_error("locking table", e))?;
        if !got {
            report.already_running = true;
            return Ok(report);
        }

        let children = t.children(&mut guard).await?;
        let default = children
            .iter()
            .find(|c| c.range.is_none())
            .map(|c| c.name.clone());
        let current = month_index(now.year(), now.month());
        let mut months: BTreeSet<i32> = (current..=current + p.months_ahead as i32).collect();
        if p.backfill
            && let Some(d) = &default
        {
            months.extend(months_with_rows(&self.pool, &t, d).await?);
        }

        let mut to_create = Vec::new();
        for m in months {
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
                report.overlapping.push(month_label(m));
                continue;
            }
            let part = t.partition_name(m);
            let resume = match table::name_state(&mut guard, &part).await? {
                NameState::Free => false,
                NameState::Unfinished => true,
                NameState::Taken => {
                    return Err(JobError::Permanent(format!(
                        "{part} already exists and is not a partition of {}; rename or drop it \
                         so that month {} can be partitioned",
                        t.parent,
                        month_label(m)
                    )));
                }
            };
            to_create.push((m, part, resume));
        }

        let cols = match &default {
            Some(_) if !to_create.is_empty() => t.insert_columns(&mut guard).await?,
            _ => String::new(),
        };
        for (m, part, resume) in to_create {
            let month = backfill::Month {
                index: m,
                part: part.clone(),
                resume,
                default: default.as_ref(),
                cols: &cols,
            };
            let added =
                backfill::add_month(&self.pool, self.limits(), self.cfg.batch_rows, &t, &month)
                    .await?;
            tracing::info!(
                table = %t.parent, partition = %part, moved = added.moved,
                moved_in_final_step = added.moved_last, lock_ms = added.held.as_millis() as u64,
                resumed = resume, "partition attached"
            );
            report.created.push(part.to_string());
            report.moved_rows += added.moved;
            if added.moved > 0 {
                report.moved.push((part.to_string(), added.moved));
            }
            report.longest_lock = report.longest_lock.max(added.held);
            report.lock_retries += added.lock_retries;
        }

        if let Some(keep) = p.retention_months {
            self.retire(&mut guard, &t, current - keep as i32, mode, &mut report)
                .await?;
        }
        guard.commit().await.map_err(|e| db_error("commit", e))?;
        Ok(report)
    }

    /// Retires the partitions that end on or before month `cutoff` (backfilled ones included).
    async fn retire(
        &self,
        guard: &mut sqlx::PgConnection,
        t: &Table,
        cutoff: i32,
        mode: RetentionMode,
        report: &mut PartitionReport,
    ) -> Result<(), JobError> {
        let children = t.children(guard).await?;
        let has_default = children.iter().any(|c| c.range.is_none());
        let cutoff = month_bound(cutoff);
        for c in &children {
            let Some((_, hi)) = c.range else { continue };
            if hi > cutoff {
                continue;
            }
            let r = retention::retire(
                &self.pool,
                self.limits(),
                t,
                c,
                has_default,
                mode,
                self.cfg.archive_schema.as_deref(),
            )
            .await?;
            tracing::info!(
                table = %t.parent, partition = %c.name, now = %r.name, ?mode,
                concurrently = r.concurrently, "partition retired"
            );
            report.lock_retries += r.lock_retries;
            if mode != RetentionMode::Drop && !r.concurrently {
                report.detach_not_concurrent = Some(retention::NOT_CONCURRENT_DEFAULT.to_owned());
            }
            match mode {
                RetentionMode::Drop => report.dropped.push(r.name),
                RetentionMode::Detach => report.detached.push(r.name),
                RetentionMode::Archive => report.archived.push(r.name),
            }
        }
        Ok(())
    }
}

/// Months (years 1–9999) that have rows in the default partition `d`: one `min()` per month,
/// which an index on the key answers without reading the months' rows. Not in the guard's
/// transaction: its lock on `d` would last the whole run and block the attach.
async fn months_with_rows(
    pool: &PgPool,
    t: &Table,
    d: &QualifiedName,
) -> Result<Vec<i32>, JobError> {
    let (col, ty) = (&t.column, t.key_type.sql());
    let sql = format!(
        "SELECT {} FROM {} WHERE {col} >= $1::{ty} AND {col} < $2::{ty}",
        t.key_type.as_utc_timestamp(&format!("min({col})")),
        d.quoted()
    );
    let end = t.key_type.literal(END_MONTH);
    let mut found = Vec::new();
    let mut from = FIRST_MONTH;
    while from < END_MONTH {
        let first: Option<NaiveDateTime> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .bind(t.key_type.literal(from))
            .bind(&end)
            .fetch_one(pool)
            .await
            .map_err(|e| db_error("scanning the default partition", e))?;
        let Some(first) = first else { break };
        let m = month_index(first.year(), first.month());
        found.push(m);
        from = m + 1;
    }
    Ok(found)
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
        Ok(Outcome::new(r.summary(&p.table)))
    }
}

/// Checks an `ensure_partitions` payload against `[jobs.partitions]` (the table name's syntax,
/// the limits, the retention mode's settings; whether the table is partitioned is known only
/// when the job runs).
pub fn validate_payload(payload: &Value, cfg: &PartitionsConfig) -> Result<(), JobError> {
    check(&parse(payload)?, cfg).map(|_| ())
}

fn check(
    p: &PartitionsPayload,
    cfg: &PartitionsConfig,
) -> Result<(QualifiedName, RetentionMode), JobError> {
    let bad = |m: String| JobError::bad_payload(KIND, m);
    let name = QualifiedName::parse(&p.table).map_err(|e| bad(e.to_string()))?;
    if p.months_ahead > cfg.max_months_ahead {
        return Err(bad(format!(
            "months_ahead {} is more than jobs.partitions.max_months_ahead ({})",
            p.months_ahead, cfg.max_months_ahead
        )));
    }
    if p.retention_months == Some(0) {
        return Err(bad("retention_months must be at least 1".into()));
    }
    let mode = p.retention_mode.unwrap_or(cfg.retention_mode);
    if mode == RetentionMode::Archive && cfg.archive_schema.is_none() {
        return Err(bad(
            "retention_mode archive needs jobs.partitions.archive_schema in the worker's config"
                .into(),
        ));
    }
    Ok((name, mode))
}

fn parse(payload: &Value) -> Result<PartitionsPayload, JobError> {
    crate::parse_payload(KIND, payload)
}
