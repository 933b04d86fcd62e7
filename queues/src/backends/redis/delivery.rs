//! The Redis [`Delivery`]: message id plus receive count, which doubles as the lease token.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::acks::AckRequest;
use super::keys::Keys;
use super::{BACKEND, RedisBroker, scripts};
use crate::backends::util;
use crate::broker::{Delivery, Message};
use crate::envelope::Envelope;
use crate::error::{QueueError, Result};

pub(super) struct RedisDelivery {
    pub(super) broker: RedisBroker,
    /// The queue's ack group commit.
    pub(super) acks: mpsc::UnboundedSender<AckRequest>,
    pub(super) keys: Keys,
    pub(super) queue: String,
    pub(super) id: String,
    pub(super) count: i64,
    pub(super) msg: Message,
}

impl RedisDelivery {
    fn lost(&self) -> QueueError {
        QueueError::LeaseLost {
            backend: BACKEND,
            id: self.msg.id().to_owned(),
        }
    }

    /// Runs a settle script whose reply is 0 when the lease is gone.
    async fn settle(&self, op: &'static str, call: scripts::Call) -> Result<()> {
        let inner = &self.broker.inner;
        let reply: Value = call
            .run(&mut inner.conn())
            .await
            .map_err(|e| inner.err_on(&self.keys, op, e))?;
        match reply {
            Value::Int(0) | Value::Nil => Err(self.lost()),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Delivery for RedisDelivery {
    fn message(&self) -> &Message {
        &self.msg
    }

    /// Every settle is one script matching id + receive count: repeating one that failed in
    /// transit either lands or finds the lease gone, never touches a newer delivery.
    fn settle_retryable(&self) -> bool {
        true
    }

    /// Through the queue's group commit: acks finishing together cost one script call. Should
    /// that writer be gone (its runtime shut down), the ack goes on its own.
    async fn ack(&self) -> Result<()> {
        let (done, settled) = oneshot::channel();
        let req = AckRequest {
            id: self.id.clone(),
            count: self.count,
            done,
        };
        if self.acks.send(req).is_ok()
            && let Ok(res) = settled.await
        {
            return match res? {
                true => Ok(()),
                false => Err(self.lost()),
            };
        }
        let call = scripts::ack(&self.keys, &self.id, self.count);
        self.settle("ack", call).await
    }

    async fn nack(&self, retry_after: Duration) -> Result<()> {
        let delay = util::millis_u64(retry_after);
        let call = scripts::nack(&self.keys, &self.id, self.count, delay);
        self.settle("nack", call).await
    }

    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()> {
        let body = updated.to_bytes();
        let delay = util::millis_u64(retry_after);
        let call = scripts::retry(&self.keys, &self.id, self.count, &body, delay);
        self.settle("retry", call).await
    }

    async fn extend(&self, visibility: Duration) -> Result<()> {
        let vis = util::millis_u64(visibility).max(1);
        let call = scripts::extend(&self.keys, &self.id, self.count, vis);
        self.settle("extend", call).await
    }

    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()> {
        let body = updated.map(Envelope::to_bytes);
        let entry_id = updated.map_or_else(|| self.msg.id().to_owned(), |e| e.id.clone());
        let at = Utc::now().to_rfc3339();
        let call = scripts::dead_letter(
            &self.keys,
            &self.id,
            self.count,
            body.as_deref(),
            reason,
            &entry_id,
            &at,
        );
        tracing::debug!(queue = %self.queue, id = %self.msg.id(), %reason, "dead-lettering");
        self.settle("dead_letter", call).await
    }
}
