//! Group commit for acks: one background task turns the acks that arrive together into one
//! `DELETE`.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{BACKEND, is_connection_error};
use crate::backends::util;
use crate::error::{Msg, Result};

/// An ack waiting for the group delete.
pub(super) struct AckRequest {
    pub(super) id: i64,
    pub(super) lease: Uuid,
    pub(super) done: oneshot::Sender<Result<bool>>,
}

/// Most acks deleted by one statement.
const ACK_BATCH: usize = 1000;

/// Group deletes in flight at once: enough to overlap round trips, few enough to leave the
/// pool to receives and sends.
const ACK_FLUSHES: usize = 4;

/// Group commit for acks. Each DELETE would be its own transaction waiting for a WAL flush
/// (~3 ms here), which capped a busy queue near 2,500 acks/s. So acks that arrive while one
/// delete runs go together in the next (no added delay when idle), and the ack transaction
/// commits with `synchronous_commit = off` (set for that transaction only): the caller returns
/// once the row is deleted and committed, but a database crash within ~0.6 s of an ack can
/// undo it, and the job then runs once more, which at-least-once delivery already allows.
/// Sends, receives, nacks, extends and dead-letters keep fully durable commits.
pub(super) async fn ack_loop(
    pool: PgPool,
    url: String,
    mut rx: mpsc::UnboundedReceiver<AckRequest>,
) {
    let flushing = Arc::new(tokio::sync::Semaphore::new(ACK_FLUSHES));
    loop {
        // Taken before collecting: while every flush is busy, acks pile up into a bigger batch.
        let Ok(permit) = flushing.clone().acquire_owned().await else {
            return;
        };
        let mut batch: Vec<AckRequest> = Vec::new();
        if rx.recv_many(&mut batch, ACK_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        let url = url.clone();
        tokio::spawn(async move {
            flush_acks(&pool, &url, batch).await;
            drop(permit);
        });
    }
}

async fn flush_acks(pool: &PgPool, url: &str, batch: Vec<AckRequest>) {
    let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
    let leases: Vec<Uuid> = batch.iter().map(|r| r.lease).collect();
    let res: std::result::Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
        "DELETE FROM jobfleet.messages m \
         USING UNNEST($1::bigint[], $2::uuid[]) AS a(id, lease) \
         WHERE m.id = a.id AND m.lease = a.lease \
           AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL \
         RETURNING m.id",
    )
    .bind(ids)
    .bind(leases)
    .fetch_all(pool)
    .await;
    match res {
        Ok(deleted) => {
            let mut deleted: std::collections::HashSet<i64> = deleted.into_iter().collect();
            for r in batch {
                // `remove`, so a second ack of the same delivery in one batch is LeaseLost.
                let _ = r.done.send(Ok(deleted.remove(&r.id)));
            }
        }
        Err(e) => {
            let text = e.to_string();
            let conn = is_connection_error(&e);
            for r in batch {
                let err = util::client_error(BACKEND, url, "ack", conn, Msg(text.clone()));
                let _ = r.done.send(Err(err));
            }
        }
    }
}
