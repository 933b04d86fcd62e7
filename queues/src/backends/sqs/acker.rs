//! Coalesces deletes into `DeleteMessageBatch` calls. A worker pool acks its jobs one by one
//! and concurrently; sending each as its own `DeleteMessage` would make acks half of the API
//! bill. `ack()` hands its receipt handle to the queue's batcher and waits for the answer for
//! that handle, so an ack still returns only once SQS confirmed the delete.

use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use tokio::sync::{mpsc, oneshot};

use super::api::{Api, BACKEND, Subject, copy_err, is_lease_gone};
use crate::error::{Msg, QueueError, Result};

/// How long the first delete of a batch waits for company. Short enough not to matter next to a
/// job's run time, long enough for a pool's concurrent acks to meet.
const LINGER: Duration = Duration::from_millis(5);
/// SQS's limit per batch call.
const MAX_BATCH: usize = 10;

pub(crate) struct DeleteReq {
    pub handle: String,
    /// Job id (or MessageId), for the `LeaseLost` error.
    pub id: String,
    pub done: oneshot::Sender<Result<()>>,
}

/// Starts the batcher of one queue. It ends when every sender is gone (the broker dropped).
pub(crate) fn spawn(api: Api, url: String) -> mpsc::UnboundedSender<DeleteReq> {
    let (tx, mut rx) = mpsc::unbounded_channel::<DeleteReq>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    more = rx.recv() => match more {
                        Some(r) => batch.push(r),
                        None => break,
                    },
                    _ = &mut linger => break,
                }
            }
            // The call runs on its own so the next batch can fill meanwhile.
            tokio::spawn(flush(api.clone(), url.clone(), batch));
        }
    });
    tx
}

async fn flush(api: Api, url: String, batch: Vec<DeleteReq>) {
    let entries: std::result::Result<Vec<_>, _> = batch
        .iter()
        .enumerate()
        .map(|(i, r)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&r.handle)
                .build()
        })
        .collect();
    let entries = match entries {
        Ok(e) => e,
        Err(e) => {
            let err = QueueError::backend(BACKEND, "DeleteMessageBatch", e);
            for r in batch {
                let _ = r.done.send(Err(copy_err(&err)));
            }
            return;
        }
    };
    let res = api
        .client
        .delete_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send()
        .await;
    match res {
        Ok(out) => {
            let mut failed = std::collections::HashMap::new();
            for f in out.failed() {
                failed.insert(f.id().to_owned(), f);
            }
            for (i, r) in batch.into_iter().enumerate() {
                let result = match failed.get(&i.to_string()) {
                    None => Ok(()),
                    Some(f) if is_lease_gone(f.code()) => Err(QueueError::LeaseLost {
                        backend: BACKEND,
                        id: r.id.clone(),
                    }),
                    Some(f) => Err(QueueError::backend(
                        BACKEND,
                        "DeleteMessageBatch",
                        Msg(format!("{}: {}", f.code(), f.message().unwrap_or(""))),
                    )),
                };
                let _ = r.done.send(result);
            }
        }
        Err(e) => {
            let err = api.err("DeleteMessageBatch", Subject::Queue(&url), e);
            for r in batch {
                let _ = r.done.send(Err(copy_err(&err)));
            }
        }
    }
}
