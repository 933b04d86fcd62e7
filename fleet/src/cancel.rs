//! Cancel requests: "this job must not run (or go on running)". A request is pending until the
//! worker that meets the job dead-letters it with [`CancelRequest::dlq_reason`], at receive
//! (every backend, including those that cannot delete a queued message by id) or while it runs
//! (its handler is aborted). Workers read the pending requests once per sample interval into
//! their snapshot; the job path never queries this table.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Action, Entry};
use crate::{Actor, Error, Result, Store};

/// A request no worker met within this long is no longer looked for (the job most likely
/// finished before it was asked for); it stays in the table, visible with [`Store::cancels`].
pub const PENDING_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest job id accepted: ids are UUIDs when jobfleet makes them, producers may set their own.
pub const MAX_JOB_ID_LEN: usize = 200;

/// One cancel request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CancelRequest {
    pub queue: String,
    pub job_id: String,
    pub requested_at: DateTime<Utc>,
    pub requested_by: String,
    pub reason: String,
    /// When a worker dead-lettered the job; `None` while pending.
    pub consumed_at: Option<DateTime<Utc>>,
    /// Which worker did.
    pub consumed_by: Option<String>,
}

impl CancelRequest {
    /// The DLQ reason of the cancelled job: `cancelled by <who>: <reason>`.
    pub fn dlq_reason(&self) -> String {
        let why = if self.reason.trim().is_empty() {
            "no reason given"
        } else {
            self.reason.as_str()
        };
        format!("cancelled by {}: {why}", self.requested_by)
    }
}

/// Refuses a job id that no envelope can carry: empty, over [`MAX_JOB_ID_LEN`] bytes, with
/// whitespace at either end or any control character. The message names the value.
pub fn check_job_id(id: &str) -> Result<()> {
    let problem = if id.is_empty() {
        Some("is empty")
    } else if id.len() > MAX_JOB_ID_LEN {
        Some("is longer than 200 bytes")
    } else if id.trim() != id {
        Some("has whitespace at its start or end")
    } else if id.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(p) => Err(Error::Invalid(format!(
            "job id {id:?} {p}; pass the job's id as `worker enqueue` or `worker dlq list` shows it"
        ))),
    }
}

type Row = (
    String,
    String,
    DateTime<Utc>,
    String,
    String,
    Option<DateTime<Utc>>,
    Option<String>,
);

fn from_row(r: Row) -> CancelRequest {
    let (queue, job_id, requested_at, requested_by, reason, consumed_at, consumed_by) = r;
    CancelRequest {
        queue,
        job_id,
        requested_at,
        requested_by,
        reason,
        consumed_at,
        consumed_by,
    }
}

const COLUMNS: &str = "queue, job_id, requested_at, requested_by, reason, consumed_at, consumed_by";

impl Store {
    /// Asks the fleet to cancel `job_id` of `queue`, with the audit row in the same
    /// transaction. Asking again renews the request (a job replayed after an earlier cancel
    /// can be cancelled again). The caller checks that the queue is configured.
    pub async fn cancel(
        &self,
        actor: &Actor,
        queue: &str,
        job_id: &str,
        reason: &str,
    ) -> Result<CancelRequest> {
        check_job_id(job_id)?;
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(Error::db("cancel a job"))?;
        let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobfleet.cancel_requests (queue, job_id, requested_by, reason) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (queue, job_id) DO UPDATE SET requested_at = now(), requested_by = $3, \
               reason = $4, consumed_at = NULL, consumed_by = NULL \
             RETURNING {COLUMNS}"
        )))
        .bind(queue)
        .bind(job_id)
        .bind(actor.as_str())
        .bind(reason)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db("cancel a job"))?;
        audit::insert(
            &mut *tx,
            &Entry {
                actor: actor.clone(),
                action: Action::Cancel,
                target: format!("{queue}/{job_id}"),
                detail: json!({ "queue": queue, "job_id": job_id, "reason": reason }),
                counts: None,
            },
        )
        .await?;
        tx.commit().await.map_err(Error::db("cancel a job"))?;
        Ok(from_row(row))
    }

    /// The requests workers still look for (not consumed, younger than [`PENDING_FOR`]).
    pub async fn pending_cancels(&self) -> Result<Vec<CancelRequest>> {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobfleet.cancel_requests \
             WHERE consumed_at IS NULL AND requested_at > now() - make_interval(secs => $1) \
             ORDER BY requested_at"
        )))
        .bind(PENDING_FOR.as_secs_f64())
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the cancel requests"))?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Every request of `queue` (all queues when `None`), newest first, at most `limit`.
    pub async fn cancels(&self, queue: Option<&str>, limit: i64) -> Result<Vec<CancelRequest>> {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobfleet.cancel_requests \
             WHERE $1::text IS NULL OR queue = $1 ORDER BY requested_at DESC LIMIT $2"
        )))
        .bind(queue)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the cancel requests"))?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Every request for `job_id`, on any queue, newest first.
    pub async fn cancels_of_job(&self, job_id: &str) -> Result<Vec<CancelRequest>> {
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobfleet.cancel_requests WHERE job_id = $1 \
             ORDER BY requested_at DESC"
        )))
        .bind(job_id)
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the cancel requests"))?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Marks requests as met: `worker` dead-lettered these `(queue, job id)`s.
    pub async fn consume_cancels(&self, worker: &str, done: &[(String, String)]) -> Result<u64> {
        if done.is_empty() {
            return Ok(0);
        }
        let (queues, ids): (Vec<&str>, Vec<&str>) =
            done.iter().map(|(q, j)| (q.as_str(), j.as_str())).unzip();
        let n = sqlx::query(
            "UPDATE jobfleet.cancel_requests c SET consumed_at = now(), consumed_by = $3 \
             FROM unnest($1::text[], $2::text[]) AS d(queue, job_id) \
             WHERE c.queue = d.queue AND c.job_id = d.job_id AND c.consumed_at IS NULL",
        )
        .bind(&queues)
        .bind(&ids)
        .bind(worker)
        .execute(self.pool())
        .await
        .map_err(Error::db("mark cancel requests done"))?
        .rows_affected();
        Ok(n)
    }

    /// Deletes the requests for these job ids of `queue`: a DLQ replay does it, so the
    /// replayed copies run.
    pub async fn clear_cancels(&self, queue: &str, job_ids: &[String]) -> Result<u64> {
        if job_ids.is_empty() {
            return Ok(0);
        }
        let n = sqlx::query(
            "DELETE FROM jobfleet.cancel_requests WHERE queue = $1 AND job_id = ANY($2)",
        )
        .bind(queue)
        .bind(job_ids)
        .execute(self.pool())
        .await
        .map_err(Error::db("clear cancel requests"))?
        .rows_affected();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_no_envelope_can_carry_are_refused_by_name() {
        assert!(check_job_id("0192f0c4-7f7e-7d7a-9a6b-1c2d3e4f5a6b").is_ok());
        assert!(check_job_id("order-42/retry").is_ok());
        for (bad, why) in [
            ("", "is empty"),
            (" abc", "whitespace"),
            ("abc\n", "whitespace"),
            ("a\u{7}b", "control character"),
        ] {
            let msg = check_job_id(bad).unwrap_err().to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains(&format!("{bad:?}")), "{bad:?}: {msg}");
        }
        let long = "x".repeat(201);
        assert!(check_job_id(&long).is_err());
    }

    #[test]
    fn the_dlq_reason_names_who_and_why() {
        let mut r = CancelRequest {
            queue: "q".into(),
            job_id: "j".into(),
            requested_at: Utc::now(),
            requested_by: "alice@ops".into(),
            reason: "wrong customer".into(),
            consumed_at: None,
            consumed_by: None,
        };
        assert_eq!(r.dlq_reason(), "cancelled by alice@ops: wrong customer");
        r.reason = " ".into();
        assert_eq!(r.dlq_reason(), "cancelled by alice@ops: no reason given");
    }
}
