//! The SQS [`Delivery`]: a receipt handle (the newest one, see `leases`) settled by delete,
//! visibility change or a re-send.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageAttributeValue;
use chrono::Utc;

use super::api::secs_ceil;
use super::{
    ATTR_AT, ATTR_REASON, ATTR_SOURCE, Inner, MAX_DELAY_SECS, MAX_VISIBILITY_SECS, Urls, leases,
    string_attr,
};
use crate::backends::util::lock;
use crate::broker::{Delivery, Message};
use crate::envelope::Envelope;
use crate::error::Result;

pub(super) struct SqsDelivery {
    pub(super) inner: Arc<Inner>,
    pub(super) queue: String,
    pub(super) urls: Arc<Urls>,
    pub(super) message_id: String,
    pub(super) token: u64,
    /// The newest receipt handle (see `leases`).
    pub(super) handle: leases::Handle,
    pub(super) msg: Message,
    /// The replacement copy (`retry`) or DLQ copy (`dead_letter`) has been written: a repeated
    /// call after a failed delete only deletes, so a retried settle never writes a second copy.
    pub(super) replaced: AtomicBool,
}

impl SqsDelivery {
    fn id(&self) -> &str {
        self.msg.id()
    }

    fn receipt(&self) -> String {
        lock(&self.handle).clone()
    }

    /// Deletes the received copy and records the message as settled here.
    async fn settle(&self) -> Result<()> {
        let res = self
            .inner
            .delete(&self.urls.main, &self.receipt(), self.id())
            .await;
        if res.is_ok() {
            self.inner.leases.settled(&self.message_id, self.token);
        }
        res
    }

    /// Writes the copy that replaces this delivery (once, however often it is asked), then
    /// deletes the received one.
    async fn replace_then_settle(
        &self,
        url: &str,
        body: String,
        delay: i32,
        attrs: Option<HashMap<String, MessageAttributeValue>>,
    ) -> Result<()> {
        if !self.replaced.load(Ordering::SeqCst) {
            self.inner
                .send_body(&self.queue, url, body, delay, attrs)
                .await?;
            self.replaced.store(true, Ordering::SeqCst);
        }
        self.settle().await
    }
}

impl Drop for SqsDelivery {
    fn drop(&mut self) {
        // Settled or not, this process no longer works on it: a later copy is a new delivery.
        self.inner.leases.release(&self.message_id, self.token);
    }
}

#[async_trait]
impl Delivery for SqsDelivery {
    fn message(&self) -> &Message {
        &self.msg
    }

    /// A receipt handle outlives the connection, a delete of a deleted message succeeds, and
    /// `replaced` keeps a repeated `retry`/`dead_letter` from writing its copy twice.
    fn settle_retryable(&self) -> bool {
        true
    }

    async fn ack(&self) -> Result<()> {
        self.settle().await
    }

    async fn nack(&self, retry_after: Duration) -> Result<()> {
        let secs = secs_ceil(retry_after, MAX_VISIBILITY_SECS);
        self.inner
            .set_visibility(&self.urls.main, &self.receipt(), self.id(), secs)
            .await?;
        self.inner.leases.release(&self.message_id, self.token);
        Ok(())
    }

    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()> {
        let mut env = updated.clone();
        if retry_after > Duration::from_secs(MAX_DELAY_SECS) {
            // Past what DelaySeconds can express: receive keeps it hidden until run_at.
            let at = Utc::now()
                + chrono::Duration::from_std(retry_after).unwrap_or(chrono::Duration::MAX);
            env.run_at = Some(env.run_at.map_or(at, |r| r.max(at)));
        }
        let body = String::from_utf8_lossy(&env.to_bytes()).into_owned();
        let delay = secs_ceil(retry_after, MAX_DELAY_SECS);
        self.replace_then_settle(&self.urls.main, body, delay, None)
            .await
    }

    async fn extend(&self, visibility: Duration) -> Result<()> {
        let secs = secs_ceil(visibility, MAX_VISIBILITY_SECS);
        let asked = tokio::time::Instant::now();
        self.inner
            .set_visibility(&self.urls.main, &self.receipt(), self.id(), secs)
            .await?;
        let until = asked + Duration::from_secs(secs as u64);
        self.inner
            .leases
            .extended(&self.message_id, self.token, until);
        Ok(())
    }

    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()> {
        let dlq = self.inner.dlq_url(&self.queue, &self.urls).await?;
        let body = match updated {
            Some(env) => String::from_utf8_lossy(&env.to_bytes()).into_owned(),
            None => String::from_utf8_lossy(self.msg.body()).into_owned(),
        };
        // Attribute values must be non-empty and count toward the message size limit.
        let reason = if reason.trim().is_empty() {
            "(no reason given)".to_owned()
        } else {
            reason.chars().take(4096).collect()
        };
        let attrs = HashMap::from([
            (ATTR_REASON.to_owned(), string_attr(&reason)?),
            (ATTR_AT.to_owned(), string_attr(&Utc::now().to_rfc3339())?),
            (ATTR_SOURCE.to_owned(), string_attr(&self.queue)?),
        ]);
        self.replace_then_settle(&dlq, body, 0, Some(attrs)).await
    }
}
