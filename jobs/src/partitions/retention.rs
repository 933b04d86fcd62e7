//! Retiring partitions older than the retention: drop them, detach them and leave them where
//! they are, or move them to an archive schema and detach them. Detached and archived
//! partitions stay readable as plain tables.
//!
//! `DETACH PARTITION … CONCURRENTLY` (PostgreSQL 14+) takes only a SHARE UPDATE EXCLUSIVE lock
//! on the parent, but PostgreSQL refuses it when the table has a default partition and inside a
//! transaction block; then the plain form runs in a short transaction under `lock_timeout`, and
//! the report says why it was not concurrent.

use sqlx::PgPool;

use super::step::{self, LockLimits, StepError, with_lock_retries};
use super::table::{Child, Table};
use crate::JobError;
use crate::config::RetentionMode;
use crate::ident::{QualifiedName, db_error};

/// Why a detach was not `CONCURRENTLY` when the table has a default partition.
pub(crate) const NOT_CONCURRENT_DEFAULT: &str = "the table has a default partition, and \
     PostgreSQL does not allow DETACH PARTITION … CONCURRENTLY then; detached in a short \
     transaction under lock_timeout instead";

/// What retiring one partition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retired {
    /// Where the partition is now (`schema.name`); for a drop, where it was.
    pub name: String,
    /// Whether it was detached `CONCURRENTLY`.
    pub concurrently: bool,
    pub lock_retries: u32,
}

/// Retires `c`, a partition of `t`.
pub(crate) async fn retire(
    pool: &PgPool,
    limits: LockLimits,
    t: &Table,
    c: &Child,
    has_default: bool,
    mode: RetentionMode,
    archive_schema: Option<&str>,
) -> Result<Retired, JobError> {
    let parent = t.parent.quoted();
    let mut retries = 0;
    if mode == RetentionMode::Drop {
        // DROP of an attached partition is one statement; a pending concurrent detach has to be
        // finalized first (PostgreSQL refuses to drop a partition in that state).
        if c.detach_pending {
            retries += finalize(pool, limits, t, &c.name).await?;
        }
        let drop = format!("DROP TABLE {}", c.name.quoted());
        let detach = format!("ALTER TABLE {parent} DETACH PARTITION {}", c.name.quoted());
        let pending = c.detach_pending;
        let ((), r) = with_lock_retries(limits, "dropping partition", || async {
            let mut tx = step::begin(pool, limits.timeout).await?;
            if !pending {
                step::exec(&mut tx, &detach).await?;
            }
            step::exec(&mut tx, &drop).await?;
            tx.commit().await.map_err(|e| step::step_error("commit", e))
        })
        .await?;
        return Ok(Retired {
            name: c.name.to_string(),
            concurrently: false,
            lock_retries: retries + r,
        });
    }

    // Archive: move first, then detach, so a run cut off between the two leaves a partition
    // that is still attached (in the archive schema) and is detached by the next run.
    let mut name = c.name.clone();
    if mode == RetentionMode::Archive {
        let schema = archive_schema.ok_or_else(|| {
            JobError::Permanent(
                "retention_mode archive needs jobs.partitions.archive_schema".to_owned(),
            )
        })?;
        if name.schema.as_deref() != Some(schema) {
            let target = QualifiedName::new(schema, &name.name);
            check_archive_target(pool, schema, &target).await?;
            let sql = format!(
                "ALTER TABLE {} SET SCHEMA {}",
                name.quoted(),
                crate::ident::quote_ident(schema)
            );
            let ((), r) = with_lock_retries(limits, "moving partition to archive", || async {
                let mut tx = step::begin(pool, limits.timeout).await?;
                step::exec(&mut tx, &sql).await?;
                tx.commit().await.map_err(|e| step::step_error("commit", e))
            })
            .await?;
            retries += r;
            name = target;
        }
    }

    let concurrently = !has_default;
    if c.detach_pending {
        retries += finalize(pool, limits, t, &name).await?;
    } else if concurrently {
        let sql = format!(
            "ALTER TABLE {parent} DETACH PARTITION {} CONCURRENTLY",
            name.quoted()
        );
        // Each attempt looks at the state first: a lock timeout in the statement's second phase
        // leaves the detach pending, and then only FINALIZE can finish it.
        let finish = format!(
            "ALTER TABLE {parent} DETACH PARTITION {} FINALIZE",
            name.quoted()
        );
        let ((), r) = with_lock_retries(limits, "detaching partition concurrently", || async {
            let pending: Option<bool> = sqlx::query_scalar(
                "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass($1)",
            )
            .bind(name.quoted())
            .fetch_optional(pool)
            .await
            .map_err(|e| step::step_error("reading detach state", e))?;
            match pending {
                None => Ok(()),
                Some(true) => outside_transaction(pool, limits, &finish).await,
                Some(false) => outside_transaction(pool, limits, &sql).await,
            }
        })
        .await?;
        retries += r;
    } else {
        let sql = format!("ALTER TABLE {parent} DETACH PARTITION {}", name.quoted());
        let ((), r) = with_lock_retries(limits, "detaching partition", || async {
            let mut tx = step::begin(pool, limits.timeout).await?;
            step::exec(&mut tx, &sql).await?;
            tx.commit().await.map_err(|e| step::step_error("commit", e))
        })
        .await?;
        retries += r;
    }
    Ok(Retired {
        name: name.to_string(),
        concurrently,
        lock_retries: retries,
    })
}

/// Refuses to archive onto an existing table, naming it, before anything is changed.
async fn check_archive_target(
    pool: &PgPool,
    schema: &str,
    target: &QualifiedName,
) -> Result<(), JobError> {
    let (schema_exists, taken): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), \
                to_regclass($2) IS NOT NULL",
    )
    .bind(schema)
    .bind(target.quoted())
    .fetch_one(pool)
    .await
    .map_err(|e| db_error("looking up archive schema", e))?;
    if !schema_exists {
        return Err(JobError::Permanent(format!(
            "archive schema {schema} (jobs.partitions.archive_schema) does not exist; create it \
             with CREATE SCHEMA"
        )));
    }
    if taken {
        return Err(JobError::Permanent(format!(
            "cannot archive: {target} already exists"
        )));
    }
    Ok(())
}

/// Finishes an interrupted `DETACH … CONCURRENTLY`.
async fn finalize(
    pool: &PgPool,
    limits: LockLimits,
    t: &Table,
    name: &QualifiedName,
) -> Result<u32, JobError> {
    let sql = format!(
        "ALTER TABLE {} DETACH PARTITION {} FINALIZE",
        t.parent.quoted(),
        name.quoted()
    );
    let ((), r) = with_lock_retries(limits, "finalizing detach", || {
        outside_transaction(pool, limits, &sql)
    })
    .await?;
    Ok(r)
}

/// Runs `sql` on its own connection outside a transaction block, as `CONCURRENTLY` and
/// `FINALIZE` require. The connection is closed afterwards rather than returned to the pool,
/// so its `lock_timeout` cannot leak into other jobs (also when the job is cancelled midway).
async fn outside_transaction(
    pool: &PgPool,
    limits: LockLimits,
    sql: &str,
) -> Result<(), StepError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| step::step_error("connecting", e))?;
    conn.close_on_drop();
    step::exec(
        &mut conn,
        &format!(
            "SET lock_timeout = '{}ms'",
            limits.timeout.as_millis().max(1)
        ),
    )
    .await?;
    step::exec(&mut conn, sql).await.map(|_| ())
}
