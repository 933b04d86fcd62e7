//! The small async traits every backend implements, and the types they pass around.
//!
//! A backend is picked at run time from the config, so the traits are object-safe and used as
//! `Arc<dyn Broker>`. [`Broker`] is just the sum of the four roles so that a caller which only
//! enqueues (the scheduler, an API) can take a `&dyn Producer`.
//!
//! Semantics (the conformance suite in [`crate::conformance`] is the executable definition):
//! at-least-once; a delivery that is neither acked, nacked, retried, dead-lettered nor extended
//! becomes visible again once its visibility timeout passes, with a higher `receive_count`.
//!
//! Queue names are plain `&str` here: they are valid [`crate::QueueName`]s already, checked where
//! they entered (config, CLI, [`Envelope::parse`]), so backends use them as they are.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::envelope::{Envelope, EnvelopeError};
use crate::error::Result;

/// What one receive hands out, in the order the broker gave them.
pub type Deliveries = Vec<Box<dyn Delivery>>;

/// Visibility timeout of a queue nobody declared.
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

/// What a backend needs to know about a queue when it declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Queue name as jobs and operators know it (backends may prefix it).
    pub name: String,
    /// How long a received message stays invisible to other consumers.
    pub visibility_timeout: Duration,
}

impl QueueSpec {
    /// A spec with the default visibility timeout.
    pub fn new(name: impl Into<String>) -> Self {
        QueueSpec {
            name: name.into(),
            visibility_timeout: DEFAULT_VISIBILITY,
        }
    }

    /// Builder: visibility timeout.
    pub fn with_visibility(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }
}

/// How many messages a queue holds, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Depth {
    /// Ready to be received now.
    pub visible: u64,
    /// Received and not yet settled.
    pub in_flight: u64,
    /// Waiting for their `run_at` or a retry delay.
    pub delayed: u64,
    /// In the queue's DLQ.
    pub dead_lettered: u64,
    /// Age of the oldest visible message, where the broker can tell.
    #[serde(with = "opt_secs")]
    pub oldest_age: Option<Duration>,
}

impl Depth {
    /// Work not yet finished: what pool sizing and autoscaling look at.
    pub fn backlog(&self) -> u64 {
        self.visible + self.in_flight
    }
}

mod opt_secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

/// A received body, parsed once. Malformed bodies are still delivered (with the parse error) so
/// the worker can dead-letter them with the reason instead of dropping or looping on them.
#[derive(Debug, Clone)]
pub struct Message {
    body: Bytes,
    parsed: std::result::Result<Envelope, EnvelopeError>,
    receive_count: u32,
    broker_id: String,
}

impl Message {
    /// Parses `body`. `receive_count` is 1 on the first delivery of this body.
    pub fn new(body: impl Into<Bytes>, receive_count: u32, broker_id: impl Into<String>) -> Self {
        let body = body.into();
        let parsed = Envelope::parse(&body);
        Message {
            body,
            parsed,
            receive_count: receive_count.max(1),
            broker_id: broker_id.into(),
        }
    }

    /// The raw body as the broker holds it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The envelope, or why the body is not one.
    pub fn envelope(&self) -> std::result::Result<&Envelope, &EnvelopeError> {
        self.parsed.as_ref()
    }

    /// How many times this body has been delivered (1 the first time). A crash loop shows here
    /// even though no failure was ever written into the envelope.
    pub fn receive_count(&self) -> u32 {
        self.receive_count
    }

    /// The broker's own id for the message (SQS MessageId, stream id, row id, ...).
    pub fn broker_id(&self) -> &str {
        &self.broker_id
    }

    /// The job id when the body parsed, else the broker id: what logs and the DLQ show.
    pub fn id(&self) -> &str {
        match &self.parsed {
            Ok(e) => &e.id,
            Err(_) => &self.broker_id,
        }
    }
}

/// One received message and the lease on it. Settle it exactly once with `ack`, `nack`, `retry`
/// or `dead_letter`; `extend` may be called any number of times before that. All methods take
/// `&self` so a heartbeat can extend while the handler runs.
#[async_trait]
pub trait Delivery: Send + Sync {
    /// The message.
    fn message(&self) -> &Message;

    /// Done: remove it from the queue.
    async fn ack(&self) -> Result<()>;

    /// Hand it back unchanged, visible again after `retry_after` (zero: at once). Used on
    /// shutdown; counts as a delivery.
    async fn nack(&self, retry_after: Duration) -> Result<()>;

    /// Replace the body with `updated` (attempt and error history grown) and make it visible
    /// again after `retry_after`. The new body is written before the old one is removed.
    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()>;

    /// Keep it invisible for `visibility` from now (heartbeat for long jobs). Fails with
    /// [`crate::QueueError::LeaseLost`] when the lease is already gone.
    async fn extend(&self, visibility: Duration) -> Result<()>;

    /// Move it to the queue's DLQ with `reason`. `updated` (history grown) replaces the body when
    /// given; a malformed body is dead-lettered as it came.
    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()>;

    /// Whether a settle (`ack`, `nack`, `retry`, `dead_letter`) that failed because the broker
    /// was unreachable may simply be called again, with the same arguments, while the lease
    /// lasts: the lease is named by something that outlives a connection (row id + lease
    /// token, message id + receive count, a receipt handle), and a repeated call can neither
    /// settle a newer delivery nor write a second copy. False (the default) where the lease
    /// dies with the connection (a RabbitMQ delivery tag): the broker has already taken the
    /// message back, so there is nothing left to retry.
    fn settle_retryable(&self) -> bool {
        false
    }
}

/// What became of one envelope handed to [`Producer::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sent {
    /// Written: it will be delivered.
    Enqueued,
    /// Nothing written: its `dedup_key` is held by another job of the same queue accepted
    /// within that job's `unique_for` window (see [`Envelope::dedup`]).
    Duplicate,
}

impl Sent {
    /// Whether the envelope was written.
    pub fn is_enqueued(self) -> bool {
        self == Sent::Enqueued
    }
}

/// Enqueues jobs.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Writes one envelope to `envelope.queue`, delayed until `run_at` when that is in the
    /// future, unless it is a duplicate ([`Sent::Duplicate`]: nothing written). Returns once the
    /// broker has confirmed the write. The duplicate check and the write are one step: two
    /// producers racing with one key get one `Enqueued` between them.
    async fn send(&self, envelope: &Envelope) -> Result<Sent>;

    /// Writes many envelopes (any mix of queues) with as few round trips as the broker allows;
    /// one [`Sent`] per envelope, in order. Two envelopes of the batch with one key and queue
    /// count as two enqueues: the second is a duplicate.
    async fn send_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Sent>> {
        let mut out = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            out.push(self.send(e).await?);
        }
        Ok(out)
    }
}

/// Takes jobs off a queue.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Up to `max` deliveries from `queue`. Waits up to `wait` for the first one (long poll,
    /// never a busy loop) and returns as soon as at least one is there; empty after `wait`.
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Deliveries>;
}

/// Looks at queues.
#[async_trait]
pub trait Inspector: Send + Sync {
    /// Counts by state for `queue` and its DLQ.
    async fn depth(&self, queue: &str) -> Result<Depth>;
}

/// A dead-lettered message as the DLQ holds it.
#[derive(Debug, Clone, Serialize)]
pub struct DlqEntry {
    /// Stable id for `dlq_get`: the job id when the body parsed, else the broker's id.
    pub id: String,
    /// The queue whose DLQ this is (where a replay sends it).
    pub queue: String,
    /// The body, as text (lossy for non-UTF-8 bodies).
    pub body: String,
    /// The parsed envelope, `None` for a malformed body.
    pub envelope: Option<Envelope>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// When it was dead-lettered, where the backend records it.
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// Backend token for `DlqScan::remove` (row id, receipt handle, delivery tag, ...).
    #[serde(skip)]
    pub handle: String,
}

impl DlqEntry {
    /// Builds an entry, parsing the body.
    pub fn new(
        queue: impl Into<String>,
        body: &[u8],
        reason: impl Into<String>,
        dead_lettered_at: Option<DateTime<Utc>>,
        handle: impl Into<String>,
        broker_id: &str,
    ) -> DlqEntry {
        let envelope = Envelope::parse(body).ok();
        DlqEntry {
            id: envelope
                .as_ref()
                .map(|e| e.id.clone())
                .unwrap_or_else(|| broker_id.to_owned()),
            queue: queue.into(),
            body: String::from_utf8_lossy(body).into_owned(),
            envelope,
            reason: reason.into(),
            dead_lettered_at,
            handle: handle.into(),
        }
    }
}

/// One page of a DLQ listing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DlqPage {
    /// Entries, oldest first.
    pub entries: Vec<DlqEntry>,
    /// Pass to the next `dlq_list` call; `None` when this was the last page.
    pub next_cursor: Option<String>,
}

impl DlqPage {
    /// Reads a numeric cursor (offset, row id, sequence) handed out by an earlier page; no
    /// cursor is the start, 0.
    pub fn numeric_cursor<T: std::str::FromStr + Default>(cursor: Option<&str>) -> Result<T> {
        cursor.map_or(Ok(T::default()), |c| {
            c.parse().map_err(|_| {
                crate::QueueError::Config(format!(
                    "bad DLQ cursor `{c}` (pass the next_cursor of the previous page)"
                ))
            })
        })
    }

    /// A page of at most `limit` entries from up to `limit + 1` fetched in order (the extra one
    /// only tells that more follow); the cursor is the last kept entry's `handle`.
    pub fn from_overfetch(mut entries: Vec<DlqEntry>, limit: usize) -> DlqPage {
        let more = entries.len() > limit;
        entries.truncate(limit);
        DlqPage {
            next_cursor: if more {
                entries.last().map(|e| e.handle.clone())
            } else {
                None
            },
            entries,
        }
    }
}

/// One pass over a DLQ that can remove entries as it goes: what replay and purge are built on.
/// Entries handed out are reserved for `hold` (backends that can't browse without taking, like
/// SQS and RabbitMQ); if the process dies, they come back by themselves after that.
#[async_trait]
pub trait DlqScan: Send {
    /// The next entries of the pass; empty when the pass has seen every entry it started with.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>>;

    /// Deletes an entry handed out by this scan (after it was written elsewhere).
    async fn remove(&mut self, entry: &DlqEntry) -> Result<()>;

    /// Releases the entries handed out and not removed.
    async fn finish(self: Box<Self>) -> Result<()>;
}

/// Reads and edits a queue's DLQ. Replay and purge are generic, in [`crate::dlq`].
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` entries after `cursor` (from the previous page), oldest first.
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage>;

    /// One entry by id (job id, or broker id for a malformed body).
    async fn dlq_get(&self, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
        let mut cursor: Option<String> = None;
        loop {
            let page = self.dlq_list(queue, 500, cursor.as_deref()).await?;
            if let Some(e) = page.entries.into_iter().find(|e| e.id == id) {
                return Ok(Some(e));
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(None),
            }
        }
    }

    /// Starts a pass over `queue`'s DLQ; entries handed out stay reserved for `hold`.
    async fn dlq_scan(&self, queue: &str, hold: Duration) -> Result<Box<dyn DlqScan>>;
}

/// A whole backend: the four roles plus what the worker needs to manage it.
#[async_trait]
pub trait Broker: Producer + Consumer + Inspector + DeadLetters {
    /// `sqs`, `rabbitmq`, `redis`, `postgres` or `memory`.
    fn backend(&self) -> &'static str;

    /// Where it connects, password hidden: for logs and error messages.
    fn url(&self) -> String;

    /// Checks the broker answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    /// Billable API calls made so far, for backends that charge per call (SQS); `None` where
    /// calls are free.
    fn api_calls(&self) -> Option<u64> {
        None
    }

    /// Creates `spec.name` and its DLQ if missing and records its visibility timeout.
    /// Idempotent. Sending to or receiving from an undeclared queue uses the defaults where the
    /// backend can create queues on the fly.
    async fn declare(&self, spec: &QueueSpec) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_cursor_reads_offsets_and_rejects_junk() {
        assert_eq!(DlqPage::numeric_cursor::<u64>(None).unwrap(), 0);
        assert_eq!(DlqPage::numeric_cursor::<i64>(Some("42")).unwrap(), 42);
        let err = DlqPage::numeric_cursor::<usize>(Some("page-2")).unwrap_err();
        assert!(matches!(err, crate::QueueError::Config(_)));
        assert!(err.to_string().contains("bad DLQ cursor `page-2`"), "{err}");
    }
}
