//! The in-memory [`Delivery`]: a lease number on one queue's in-flight map.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use tokio::time::Instant;

use super::{BACKEND, Dead, MemoryBroker};
use crate::broker::{Delivery, Message};
use crate::envelope::Envelope;
use crate::error::{QueueError, Result};

pub(super) struct MemoryDelivery {
    pub(super) broker: MemoryBroker,
    pub(super) queue: String,
    pub(super) lease: u64,
    pub(super) msg: Message,
}

#[async_trait]
impl Delivery for MemoryDelivery {
    fn message(&self) -> &Message {
        &self.msg
    }

    async fn ack(&self) -> Result<()> {
        self.broker.lease_op(&self.queue, self.lease, |_, _| ())
    }

    async fn nack(&self, retry_after: Duration) -> Result<()> {
        let queue = self.queue.clone();
        self.broker.lease_op(&self.queue, self.lease, |st, m| {
            st.queue(&queue).put(m, retry_after, Instant::now());
        })
    }

    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()> {
        let queue = self.queue.clone();
        let body = Bytes::from(updated.to_bytes());
        self.broker.lease_op(&self.queue, self.lease, |st, _old| {
            let m = st.store(body);
            st.queue(&queue).put(m, retry_after, Instant::now());
        })
    }

    async fn extend(&self, visibility: Duration) -> Result<()> {
        let mut st = self.broker.lock();
        let q = st.queue(&self.queue);
        let now = Instant::now();
        q.promote(now);
        match q.in_flight.get_mut(&self.lease) {
            Some((deadline, _)) => {
                *deadline = now + visibility;
                Ok(())
            }
            None => Err(QueueError::LeaseLost {
                backend: BACKEND,
                id: self.msg.id().to_owned(),
            }),
        }
    }

    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()> {
        let queue = self.queue.clone();
        let body = updated.map(|e| Bytes::from(e.to_bytes()));
        let reason = reason.to_owned();
        self.broker.lease_op(&self.queue, self.lease, |st, m| {
            let seq = st.seq();
            st.queue(&queue).dead.insert(
                seq,
                Dead {
                    body: body.unwrap_or(m.body),
                    reason,
                    at: Utc::now(),
                    broker_id: m.seq.to_string(),
                },
            );
        })
    }
}
