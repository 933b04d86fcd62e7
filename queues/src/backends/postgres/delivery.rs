//! The PostgreSQL [`Delivery`]: a leased row, settled by `(id, lease)`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::acks::AckRequest;
use super::{BACKEND, PgBroker, body_text};
use crate::backends::util;
use crate::broker::{Delivery, Message};
use crate::envelope::Envelope;
use crate::error::{Msg, QueueError, Result};

/// One leased row. Every settle matches on `(id, lease)`: a lease that expired and was taken by
/// another consumer no longer matches, which is [`QueueError::LeaseLost`]. A lease that expired
/// but was not re-received still matches, so a slow job's ack is not wasted.
pub(super) struct PgDelivery {
    pub(super) broker: PgBroker,
    pub(super) id: i64,
    pub(super) lease: Uuid,
    pub(super) msg: Message,
}

impl PgDelivery {
    fn lost(&self) -> QueueError {
        QueueError::LeaseLost {
            backend: BACKEND,
            id: self.msg.id().to_owned(),
        }
    }

    fn check(&self, op: &'static str, r: std::result::Result<u64, sqlx::Error>) -> Result<()> {
        match r {
            Ok(0) => Err(self.lost()),
            Ok(_) => Ok(()),
            Err(e) => Err(self.broker.err(op, e)),
        }
    }

    fn pool(&self) -> &PgPool {
        &self.broker.inner.pool
    }
}

/// Makes a leased row visible again after `$3` ms, with a new body when `$4` is not NULL (then
/// as a fresh message: receive count and age restart), and wakes that queue's consumers.
const REQUEUE_SQL: &str = "WITH u AS ( \
       UPDATE jobfleet.messages SET lease = NULL, \
         visible_at = now() + $3 * interval '1 millisecond', \
         body = COALESCE($4, body), \
         receive_count = CASE WHEN $4 IS NULL THEN receive_count ELSE 0 END, \
         enqueued_at = CASE WHEN $4 IS NULL THEN enqueued_at ELSE now() END \
       WHERE id = $1 AND lease = $2 RETURNING ns, queue \
     ) SELECT pg_notify('jobfleet_queues', ns || ':' || queue) FROM u";

#[async_trait]
impl Delivery for PgDelivery {
    fn message(&self) -> &Message {
        &self.msg
    }

    /// Every settle matches `(id, lease)` in one statement: repeating one that failed in
    /// transit either lands or finds the lease gone, never touches a newer delivery.
    fn settle_retryable(&self) -> bool {
        true
    }

    async fn ack(&self) -> Result<()> {
        let (done, result) = oneshot::channel();
        let req = AckRequest {
            id: self.id,
            lease: self.lease,
            done,
        };
        let closed = || QueueError::backend(BACKEND, "ack", Msg("ack task stopped".into()));
        self.broker.inner.acks.send(req).map_err(|_| closed())?;
        match result.await.map_err(|_| closed())? {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(e) => Err(e),
        }
    }

    async fn nack(&self, retry_after: Duration) -> Result<()> {
        let r = sqlx::query(REQUEUE_SQL)
            .bind(self.id)
            .bind(self.lease)
            .bind(util::millis_i64(retry_after))
            .bind(None::<String>)
            .fetch_all(self.pool())
            .await
            .map(|rows| rows.len() as u64);
        self.check("nack", r)
    }

    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()> {
        // The body is replaced in the same row, atomically: never lost, never duplicated.
        let r = sqlx::query(REQUEUE_SQL)
            .bind(self.id)
            .bind(self.lease)
            .bind(util::millis_i64(retry_after))
            .bind(Some(body_text(updated)?))
            .fetch_all(self.pool())
            .await
            .map(|rows| rows.len() as u64);
        self.check("retry", r)
    }

    async fn extend(&self, visibility: Duration) -> Result<()> {
        let r = sqlx::query(
            "UPDATE jobfleet.messages SET visible_at = now() + $3 * interval '1 millisecond' \
             WHERE id = $1 AND lease = $2",
        )
        .bind(self.id)
        .bind(self.lease)
        .bind(util::millis_i64(visibility))
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected());
        self.check("extend", r)
    }

    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()> {
        let (entry_id, body) = match updated {
            Some(env) => (env.id.clone(), Some(body_text(env)?)),
            None => (self.msg.id().to_owned(), None),
        };
        // Delete and insert in one statement: the message is in exactly one of the two tables.
        let r = sqlx::query(
            "WITH d AS ( \
               DELETE FROM jobfleet.messages WHERE id = $1 AND lease = $2 \
               RETURNING id, ns, queue, body, receive_count, enqueued_at \
             ) INSERT INTO jobfleet.dead_letters \
                 (ns, queue, entry_id, body, reason, broker_id, receive_count, enqueued_at) \
               SELECT ns, queue, $3, COALESCE($4, body), $5, id::text, receive_count, enqueued_at \
               FROM d",
        )
        .bind(self.id)
        .bind(self.lease)
        .bind(entry_id)
        .bind(body)
        .bind(reason)
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected());
        self.check("dead_letter", r)
    }
}
