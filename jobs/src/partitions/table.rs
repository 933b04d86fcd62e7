//! What the catalog says about the table a job names: that it exists, is range-partitioned by
//! one time column, its partitions and their bounds, and whether a would-be partition name is
//! free, taken by an unfinished backfill of this job, or taken by something else.
//!
//! Every name used later in SQL comes from here (the catalog), quoted, never from the payload.

use sqlx::PgConnection;

use super::bounds::{Bound, KeyType, parse_range};
use crate::JobError;
use crate::ident::{MAX_IDENT_LEN, QualifiedName, db_error, quote_ident};

/// The CHECK constraint a backfilled partition carries until it is attached; also how a later
/// run recognises a table an interrupted run left behind.
pub(crate) const BOUND_CONSTRAINT: &str = "jobfleet_partition_bound";

/// A range-partitioned table keyed by one time column.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub parent: QualifiedName,
    pub schema: String,
    pub relname: String,
    /// The key column, quoted.
    pub column: String,
    pub key_type: KeyType,
}

/// One partition of the table.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    pub name: QualifiedName,
    /// `None`: the DEFAULT partition.
    pub range: Option<(Bound, Bound)>,
    /// A `DETACH … CONCURRENTLY` was interrupted and must be finalized.
    pub detach_pending: bool,
}

/// Who holds the name a new partition would get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameState {
    Free,
    /// A plain table an interrupted backfill of this job left (it has [`BOUND_CONSTRAINT`]).
    Unfinished,
    /// Anything else: never touched.
    Taken,
}

type TableRow = (
    String,
    String,
    Option<String>,
    Option<i16>,
    Option<String>,
    Option<String>,
);

impl Table {
    /// Resolves `name`; a permanent error names the table when it cannot be maintained.
    pub(crate) async fn resolve(
        conn: &mut PgConnection,
        name: &QualifiedName,
    ) -> Result<Table, JobError> {
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
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error("looking up table", e))?;
        let Some((schema, relname, strat, natts, column, coltype)) = row else {
            return Err(JobError::Permanent(format!("table {name} does not exist")));
        };
        let parent = QualifiedName::new(&schema, &relname);
        let how = match strat.as_deref() {
            None => "is not partitioned",
            Some("l") => "is partitioned by LIST, not RANGE",
            Some("h") => "is partitioned by HASH, not RANGE",
            Some(_) if natts != Some(1) => "is range-partitioned by more than one column",
            Some(_) => "",
        };
        if !how.is_empty() {
            return Err(JobError::Permanent(format!(
                "{parent} {how}; ensure_partitions needs a table partitioned BY RANGE on one \
                 timestamptz, timestamp or date column"
            )));
        }
        let (Some(column), Some(coltype)) = (column, coltype) else {
            return Err(JobError::Permanent(format!(
                "{parent} is partitioned by an expression, not by one column"
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
        Ok(Table {
            parent,
            schema,
            relname,
            column: quote_ident(&column),
            key_type,
        })
    }

    /// The name of month `m`'s partition: `<table>_pYYYYMM` in the table's schema.
    pub(crate) fn partition_name(&self, m: i32) -> QualifiedName {
        QualifiedName::new(
            &self.schema,
            &format!(
                "{}_p{}",
                self.relname,
                super::bounds::month_start(m).format("%Y%m")
            ),
        )
    }

    /// The partitions, with bounds as deparsed under `TimeZone = UTC` (set by the caller).
    pub(crate) async fn children(&self, conn: &mut PgConnection) -> Result<Vec<Child>, JobError> {
        let rows: Vec<(String, String, Option<String>, bool)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text, pg_get_expr(c.relpartbound, c.oid), \
                    i.inhdetachpending \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE i.inhparent = to_regclass($1)",
        )
        .bind(self.parent.quoted())
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error("listing partitions", e))?;
        rows.into_iter()
            .map(|(s, n, expr, detach_pending)| {
                let name = QualifiedName::new(&s, &n);
                let expr = expr.unwrap_or_default();
                let range = parse_range(&expr).ok_or_else(|| {
                    JobError::Permanent(format!("cannot read the bounds of {name}: {expr}"))
                })?;
                Ok(Child {
                    name,
                    range,
                    detach_pending,
                })
            })
            .collect()
    }

    /// The columns a moved row carries, quoted and comma-separated (generated columns are
    /// recomputed by the insert, so they are left out).
    pub(crate) async fn insert_columns(&self, conn: &mut PgConnection) -> Result<String, JobError> {
        let cols: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped \
               AND attgenerated = '' ORDER BY attnum",
        )
        .bind(self.parent.quoted())
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error("reading columns", e))?;
        Ok(cols
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", "))
    }
}

/// Whether `name` is free for a new partition.
pub(crate) async fn name_state(
    conn: &mut PgConnection,
    name: &QualifiedName,
) -> Result<NameState, JobError> {
    let row: Option<(bool, bool)> = sqlx::query_as(
        "SELECT c.relkind = 'r' AND NOT c.relispartition, \
                EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid \
                        AND k.contype = 'c' AND k.conname = $2) \
         FROM pg_class c WHERE c.oid = to_regclass($1)",
    )
    .bind(name.quoted())
    .bind(BOUND_CONSTRAINT)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| db_error("looking up partition name", e))?;
    Ok(match row {
        None => NameState::Free,
        Some((true, true)) => NameState::Unfinished,
        Some(_) => NameState::Taken,
    })
}
