//! Adding one month's partition without holding a strong lock for longer than a short final
//! step, even when the DEFAULT partition already holds many of that month's rows.
//!
//! 1. Create the month as a plain table (`LIKE` the parent, indexes included, identity not:
//!    the parent's identity keeps numbering) with a CHECK constraint equal to the bound.
//! 2. Move the month's rows out of the default partition in batches of `batch_rows`, one short
//!    transaction each (`DELETE … RETURNING` into the new table). Writers keep inserting; rows
//!    of the month still land in the default partition meanwhile.
//! 3. Final step, under `lock_timeout` and retried on timeout: pause the table's writers
//!    (SHARE ROW EXCLUSIVE on the parent) and lock the default partition, move what arrived
//!    since, `ATTACH PARTITION` (the validated CHECK spares the scan of the new table;
//!    PostgreSQL still checks the default partition, now without the month's rows), drop the
//!    CHECK, commit. Readers of other partitions are never paused; readers of the default
//!    partition and all writers wait for this step only.
//!
//! Until step 3 commits, rows already moved are in a table the parent does not see yet; a run
//! cut off in between leaves that table, which the next run finishes (see [`NameState`]).
//!
//! [`NameState`]: super::table::NameState

use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, PgPool};

use super::step::{self, LockLimits, StepError, with_lock_retries};
use super::table::{BOUND_CONSTRAINT, Table};
use crate::JobError;
use crate::ident::QualifiedName;

/// One month to add.
pub(crate) struct Month<'a> {
    pub index: i32,
    pub part: QualifiedName,
    /// An interrupted run already created the plain table.
    pub resume: bool,
    /// The default partition, if the table has one.
    pub default: Option<&'a QualifiedName>,
    /// Columns a moved row carries (quoted, comma-separated).
    pub cols: &'a str,
}

/// What adding the month did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Added {
    /// Rows moved from the default partition.
    pub moved: u64,
    /// Of those, rows moved in the final step (written while the batches ran).
    pub moved_last: u64,
    /// How long the final step took from asking for its locks to the commit: the longest a
    /// writer (or a reader of the default partition) could have waited for it.
    pub held: Duration,
    /// Lock timeouts retried.
    pub lock_retries: u32,
}

/// Creates, fills and attaches `m`'s partition of `t`.
pub(crate) async fn add_month(
    pool: &PgPool,
    limits: LockLimits,
    batch_rows: u32,
    t: &Table,
    m: &Month<'_>,
) -> Result<Added, JobError> {
    let ty = t.key_type.sql();
    let (lo, hi) = (t.key_type.literal(m.index), t.key_type.literal(m.index + 1));
    let col = &t.column;
    let part = m.part.quoted();
    let mut added = Added::default();

    if !m.resume {
        let create = format!(
            "CREATE TABLE {part} (LIKE {} INCLUDING ALL EXCLUDING IDENTITY)",
            t.parent.quoted()
        );
        let check = format!(
            "ALTER TABLE {part} ADD CONSTRAINT {BOUND_CONSTRAINT} \
             CHECK ({col} >= '{lo}'::{ty} AND {col} < '{hi}'::{ty})"
        );
        let ((), retries) = with_lock_retries(limits, "creating partition table", || async {
            let mut tx = step::begin(pool, limits.timeout).await?;
            step::exec(&mut tx, &create).await?;
            step::exec(&mut tx, &check).await?;
            tx.commit().await.map_err(|e| step::step_error("commit", e))
        })
        .await?;
        added.lock_retries += retries;
    }

    let move_sql = |d: &QualifiedName, limit: bool| {
        let d = d.quoted();
        let pick = if limit {
            format!(
                "ctid = ANY(ARRAY(SELECT ctid FROM {d} WHERE {col} >= $1::{ty} AND {col} < $2::{ty} \
                 LIMIT {batch_rows} FOR UPDATE SKIP LOCKED))"
            )
        } else {
            format!("{col} >= $1::{ty} AND {col} < $2::{ty}")
        };
        format!(
            "WITH moved AS (DELETE FROM {d} WHERE {pick} RETURNING {cols}) \
             INSERT INTO {part} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM moved",
            cols = m.cols
        )
    };

    if let Some(d) = m.default {
        // Batches take only row locks, so they never wait behind or block the table's users;
        // rows locked by someone else are skipped here and picked up by the final step.
        let sql = move_sql(d, true);
        loop {
            let (n, retries) = with_lock_retries(limits, "moving rows", || async {
                let mut tx = step::begin(pool, limits.timeout).await?;
                let n = sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(&lo)
                    .bind(&hi)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| step::step_error("moving rows out of the default partition", e))?
                    .rows_affected();
                tx.commit()
                    .await
                    .map_err(|e| step::step_error("commit", e))?;
                Ok(n)
            })
            .await?;
            added.lock_retries += retries;
            added.moved += n;
            if n < u64::from(batch_rows) {
                break;
            }
        }
    }

    let lock_default = m
        .default
        .map(|d| format!("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE", d.quoted()));
    let last_move = m.default.map(|d| move_sql(d, false));
    let lock_parent = format!(
        "LOCK TABLE ONLY {} IN SHARE ROW EXCLUSIVE MODE",
        t.parent.quoted()
    );
    let attach = format!(
        "ALTER TABLE {} ATTACH PARTITION {part} FOR VALUES FROM ('{lo}') TO ('{hi}')",
        t.parent.quoted()
    );
    let drop_check = format!("ALTER TABLE {part} DROP CONSTRAINT {BOUND_CONSTRAINT}");
    let ((last, held), retries) = with_lock_retries(limits, "attaching partition", || async {
        let mut tx = step::begin(pool, limits.timeout).await?;
        let started = Instant::now();
        // Writers pause at the parent (readers do not): a writer that got past it would route
        // its row with the partitions as they were, wait for the default partition and then
        // fail PostgreSQL's recheck of the default's new constraint once the attach commits.
        // The parent's lock also keeps rows of the month from arriving between the last move
        // and the attach. ATTACH itself locks the default partition, which pauses its readers.
        step::exec(&mut tx, &lock_parent).await?;
        let mut last = 0;
        if let (Some(lock), Some(sql)) = (&lock_default, &last_move) {
            step::exec(&mut tx, lock).await?;
            last = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(&lo)
                .bind(&hi)
                .execute(&mut *tx)
                .await
                .map_err(|e| step::step_error("moving the last rows", e))?
                .rows_affected();
        }
        step::exec(&mut tx, &attach).await?;
        // Redundant with the partition constraint now; PostgreSQL's docs advise dropping it.
        step::exec(&mut tx, &drop_check).await?;
        tx.commit()
            .await
            .map_err(|e| step::step_error("commit", e))?;
        Ok::<_, StepError>((last, started.elapsed()))
    })
    .await?;
    added.moved += last;
    added.moved_last = last;
    added.held = held;
    added.lock_retries += retries;
    Ok(added)
}
