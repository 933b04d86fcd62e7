//! SQS backend (aws-sdk-sqs). One standard queue `<namespace>-<queue>` per jobfleet queue and a
//! DLQ `<namespace>-<queue>-dlq` beside it; the body is the v1 envelope as JSON, so any SQS
//! client can enqueue. Batching everywhere it pays (send, receive, delete) keeps the cost near
//! 0.3 API calls per job. `docs/backends/sqs.md` explains the choices.

mod acker;
mod api;
mod delivery;
mod dlq;
mod leases;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};

use self::api::{Api, BACKEND, Subject, is_missing_queue, is_queue_exists, secs_ceil};
use self::delivery::SqsDelivery;
use crate::backends::dedup_store::DedupStore;
use crate::backends::util::lock;
use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, Deliveries, Depth, Inspector, Message, Producer,
    QueueSpec, Sent,
};
use crate::config::BrokerConfig;
use crate::envelope::Envelope;
use crate::error::{Msg, QueueError, Result};

/// SQS's longest `DelaySeconds`.
const MAX_DELAY_SECS: u64 = 900;
/// SQS's longest visibility timeout.
const MAX_VISIBILITY_SECS: u64 = 43_200;
/// SQS's longest long poll.
const MAX_WAIT_SECS: u64 = 20;
/// Batch calls take at most this many entries.
const BATCH: usize = 10;
/// Payload limit of one `SendMessageBatch` call (the sum of its bodies).
const BATCH_BYTES: usize = 256 * 1024;
/// Redrive backstop: a message received this often without being settled (a job that kills its
/// worker every time) is moved to the DLQ by SQS itself. The worker's `max_attempts` normally
/// decides long before; far-future `run_at` re-hides also count (2 a day).
pub const MAX_RECEIVE_COUNT: u32 = 100;
/// How long a DLQ keeps an entry: SQS's maximum, 14 days.
const DLQ_RETENTION_SECS: u32 = 1_209_600;
/// Chunks of a batch send in flight at once.
const SEND_CONCURRENCY: usize = 8;

/// Message attributes jobfleet puts on a DLQ entry.
pub(crate) const ATTR_REASON: &str = "jobfleet-reason";
pub(crate) const ATTR_AT: &str = "jobfleet-dead-lettered-at";
pub(crate) const ATTR_SOURCE: &str = "jobfleet-source-queue";

/// The SQS broker. Cloning shares the client, the URL cache and the delete batchers.
#[derive(Clone)]
pub struct SqsBroker {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    api: Api,
    namespace: String,
    urls: Mutex<HashMap<String, Arc<Urls>>>,
    deleters: Mutex<HashMap<String, mpsc::UnboundedSender<acker::DeleteReq>>>,
    leases: leases::Leases,
    /// Where unique jobs' keys are kept (`broker.dedup_url`): standard queues have no such
    /// check (FIFO queues' de-duplication lasts a fixed 5 minutes and needs FIFO queues).
    dedup: Option<DedupStore>,
}

/// Where a jobfleet queue and its DLQ live.
#[derive(Debug)]
pub(crate) struct Urls {
    main: String,
    /// `None` when the queue was made outside jobfleet without a DLQ of our name (created on
    /// the first dead-letter).
    dlq: Option<String>,
    /// The queue's VisibilityTimeout, to know until when a receipt is ours.
    visibility: Duration,
}

impl SqsBroker {
    /// Builds the client. Nothing is sent yet, so an unreachable endpoint shows on the first
    /// operation (or [`Broker::ping`]) as [`QueueError::Unavailable`] naming the endpoint.
    pub async fn connect(cfg: &BrokerConfig) -> Result<SqsBroker> {
        cfg.validate()?;
        let api = Api::connect(cfg).await?;
        Ok(SqsBroker {
            inner: Arc::new(Inner {
                api,
                namespace: cfg.namespace.clone(),
                urls: Mutex::new(HashMap::new()),
                deleters: Mutex::new(HashMap::new()),
                leases: leases::Leases::default(),
                dedup: cfg
                    .dedup_url
                    .as_deref()
                    .map(|u| DedupStore::new(BACKEND, u, &cfg.namespace))
                    .transpose()?,
            }),
        })
    }

    /// HTTP requests sent to SQS so far (retries included): divide by jobs for the cost per job.
    pub fn api_calls(&self) -> u64 {
        self.inner.api.calls()
    }

    /// The SQS name of a jobfleet queue.
    pub fn queue_name(&self, queue: &str) -> String {
        format!("{}-{queue}", self.inner.namespace)
    }

    /// The SQS name of a jobfleet queue's DLQ.
    pub fn dlq_name(&self, queue: &str) -> String {
        format!("{}-{queue}-dlq", self.inner.namespace)
    }
}

impl Inner {
    fn client(&self) -> &aws_sdk_sqs::Client {
        &self.api.client
    }

    fn forget(&self, queue: &str) {
        lock(&self.urls).remove(queue);
    }

    /// The URLs of `queue`, cached. A queue that does not exist is created with the defaults
    /// when `create` (send/receive on an undeclared queue), else it is `QueueNotFound`.
    async fn urls(&self, queue: &str, create: bool) -> Result<Arc<Urls>> {
        if let Some(u) = lock(&self.urls).get(queue) {
            return Ok(u.clone());
        }
        let Some(main) = self
            .lookup(&format!("{}-{queue}", self.namespace), queue)
            .await?
        else {
            if create {
                return self
                    .declare(&QueueSpec::new(queue).with_visibility(DEFAULT_VISIBILITY))
                    .await;
            }
            return Err(QueueError::QueueNotFound {
                backend: BACKEND,
                queue: queue.to_owned(),
            });
        };
        let dlq = self
            .lookup(&format!("{}-{queue}-dlq", self.namespace), queue)
            .await?;
        let visibility = self
            .client()
            .get_queue_attributes()
            .queue_url(&main)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| self.api.err("GetQueueAttributes", Subject::Queue(queue), e))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.parse().ok())
            .map_or(DEFAULT_VISIBILITY, Duration::from_secs);
        let urls = Arc::new(Urls {
            main,
            dlq,
            visibility,
        });
        lock(&self.urls).insert(queue.to_owned(), urls.clone());
        Ok(urls)
    }

    /// `GetQueueUrl`, `None` when there is no such queue.
    async fn lookup(&self, name: &str, queue: &str) -> Result<Option<String>> {
        match self.client().get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url().map(str::to_owned)),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    is_missing_queue(
                        aws_sdk_sqs::error::ProvideErrorMetadata::code(s).unwrap_or(""),
                    )
                }) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.api.err("GetQueueUrl", Subject::Queue(queue), e)),
        }
    }

    /// Creates the queue and its DLQ (idempotent) and sets the visibility and redrive policy.
    async fn declare(&self, spec: &QueueSpec) -> Result<Arc<Urls>> {
        let q = spec.name.as_str();
        let dlq_name = format!("{}-{q}-dlq", self.namespace);
        let dlq = self
            .create(
                &dlq_name,
                q,
                vec![(
                    QueueAttributeName::MessageRetentionPeriod,
                    DLQ_RETENTION_SECS.to_string(),
                )],
            )
            .await?;
        let arn = self
            .client()
            .get_queue_attributes()
            .queue_url(&dlq)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| self.api.err("GetQueueAttributes", Subject::Queue(q), e))?
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| {
                QueueError::backend(BACKEND, "GetQueueAttributes", Msg("no QueueArn".into()))
            })?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
        });
        let vis = secs_ceil(spec.visibility_timeout, MAX_VISIBILITY_SECS);
        let main = self
            .create(
                &format!("{}-{q}", self.namespace),
                q,
                vec![
                    (QueueAttributeName::VisibilityTimeout, vis.to_string()),
                    (QueueAttributeName::RedrivePolicy, redrive.to_string()),
                ],
            )
            .await?;
        let urls = Arc::new(Urls {
            main,
            dlq: Some(dlq),
            visibility: Duration::from_secs(vis as u64),
        });
        lock(&self.urls).insert(q.to_owned(), urls.clone());
        Ok(urls)
    }

    /// `CreateQueue` with `attrs`; when the queue exists with other values, looks it up and sets
    /// them (SQS refuses a create whose attributes differ from the existing queue's).
    async fn create(
        &self,
        name: &str,
        queue: &str,
        attrs: Vec<(QueueAttributeName, String)>,
    ) -> Result<String> {
        let map: HashMap<_, _> = attrs.into_iter().collect();
        let res = self
            .client()
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(map.clone()))
            .send()
            .await;
        match res {
            Ok(out) => out.queue_url().map(str::to_owned).ok_or_else(|| {
                QueueError::backend(BACKEND, "CreateQueue", Msg("no QueueUrl".into()))
            }),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    is_queue_exists(aws_sdk_sqs::error::ProvideErrorMetadata::code(s).unwrap_or(""))
                }) =>
            {
                let url =
                    self.lookup(name, queue)
                        .await?
                        .ok_or_else(|| QueueError::QueueNotFound {
                            backend: BACKEND,
                            queue: queue.to_owned(),
                        })?;
                self.client()
                    .set_queue_attributes()
                    .queue_url(&url)
                    .set_attributes(Some(map))
                    .send()
                    .await
                    .map_err(|e| self.api.err("SetQueueAttributes", Subject::Queue(queue), e))?;
                Ok(url)
            }
            Err(e) => Err(self.api.err("CreateQueue", Subject::Queue(queue), e)),
        }
    }

    /// The DLQ URL of `queue`, creating the DLQ when a queue made elsewhere has none.
    async fn dlq_url(&self, queue: &str, urls: &Urls) -> Result<String> {
        if let Some(d) = &urls.dlq {
            return Ok(d.clone());
        }
        let url = self
            .create(
                &format!("{}-{queue}-dlq", self.namespace),
                queue,
                vec![(
                    QueueAttributeName::MessageRetentionPeriod,
                    DLQ_RETENTION_SECS.to_string(),
                )],
            )
            .await?;
        lock(&self.urls).insert(
            queue.to_owned(),
            Arc::new(Urls {
                main: urls.main.clone(),
                dlq: Some(url.clone()),
                visibility: urls.visibility,
            }),
        );
        Ok(url)
    }

    /// `SendMessage`, mapping a vanished queue to `QueueNotFound` and dropping it from the cache.
    async fn send_body(
        &self,
        queue: &str,
        url: &str,
        body: String,
        delay: i32,
        attrs: Option<HashMap<String, MessageAttributeValue>>,
    ) -> Result<()> {
        self.client()
            .send_message()
            .queue_url(url)
            .message_body(body)
            .delay_seconds(delay)
            .set_message_attributes(attrs)
            .send()
            .await
            .map_err(|e| {
                self.stale(queue, self.api.err("SendMessage", Subject::Queue(queue), e))
            })?;
        Ok(())
    }

    fn stale(&self, queue: &str, e: QueueError) -> QueueError {
        if matches!(e, QueueError::QueueNotFound { .. }) {
            self.forget(queue);
        }
        e
    }

    /// Deletes through the queue's batcher; falls back to a direct call if the batcher is gone
    /// (e.g. the runtime that spawned it shut down).
    async fn delete(&self, url: &str, handle: &str, id: &str) -> Result<()> {
        let tx = {
            let mut map = lock(&self.deleters);
            match map.get(url) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let tx = acker::spawn(self.api.clone(), url.to_owned());
                    map.insert(url.to_owned(), tx.clone());
                    tx
                }
            }
        };
        let (done, rx) = oneshot::channel();
        let req = acker::DeleteReq {
            handle: handle.to_owned(),
            id: id.to_owned(),
            done,
        };
        if tx.send(req).is_ok()
            && let Ok(res) = rx.await
        {
            return res;
        }
        self.client()
            .delete_message()
            .queue_url(url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| self.api.err("DeleteMessage", Subject::Message(id), e))?;
        Ok(())
    }

    /// `ChangeMessageVisibility` of one received message.
    async fn set_visibility(&self, url: &str, handle: &str, id: &str, secs: i32) -> Result<()> {
        self.client()
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(secs)
            .send()
            .await
            .map_err(|e| {
                self.api
                    .err("ChangeMessageVisibility", Subject::Message(id), e)
            })?;
        Ok(())
    }

    /// `ChangeMessageVisibilityBatch` for many handles; returns the handles SQS refused.
    async fn set_visibility_many(&self, url: &str, items: &[(String, i32)]) -> Result<Vec<String>> {
        let mut refused = Vec::new();
        for chunk in items.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (h, secs))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .visibility_timeout(*secs)
                        .build()
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| QueueError::backend(BACKEND, "ChangeMessageVisibilityBatch", e))?;
            let out = self
                .client()
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    self.api
                        .err("ChangeMessageVisibilityBatch", Subject::Queue(url), e)
                })?;
            for f in out.failed() {
                if let Some((h, _)) = f.id().parse::<usize>().ok().and_then(|i| chunk.get(i)) {
                    refused.push(h.clone());
                }
            }
        }
        Ok(refused)
    }

    /// `SendMessageBatch` of up to 10 bodies; the entries SQS refuses are sent once more, and
    /// if some are still refused the whole call fails (it never reports a refused job as sent).
    async fn send_chunk(&self, queue: &str, url: &str, items: Vec<(String, i32)>) -> Result<()> {
        let mut pending: Vec<(usize, &(String, i32))> = items.iter().enumerate().collect();
        for round in 0..2 {
            let entries = pending
                .iter()
                .map(|(i, (body, delay))| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .delay_seconds(*delay)
                        .build()
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| QueueError::backend(BACKEND, "SendMessageBatch", e))?;
            let out = self
                .client()
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    self.stale(
                        queue,
                        self.api.err("SendMessageBatch", Subject::Queue(queue), e),
                    )
                })?;
            if out.failed().is_empty() {
                return Ok(());
            }
            let failed: HashMap<String, String> = out
                .failed()
                .iter()
                .map(|f| {
                    (
                        f.id().to_owned(),
                        format!("{}: {}", f.code(), f.message().unwrap_or("")),
                    )
                })
                .collect();
            if round == 1 {
                let first = failed.values().next().cloned().unwrap_or_default();
                return Err(QueueError::backend(
                    BACKEND,
                    "SendMessageBatch",
                    Msg(format!(
                        "{} of {} messages to `{queue}` were refused twice (e.g. {first})",
                        failed.len(),
                        items.len()
                    )),
                ));
            }
            tracing::debug!(
                queue,
                refused = failed.len(),
                "SendMessageBatch partly refused; retrying those"
            );
            pending.retain(|(i, _)| failed.contains_key(&i.to_string()));
        }
        Ok(())
    }
}

/// The body and `DelaySeconds` for an envelope. A `run_at` further out than SQS's 15 minutes is
/// sent with the longest delay and kept in the body; receive hides it again until it is due.
fn wire(env: &Envelope) -> (String, i32) {
    let body = String::from_utf8_lossy(&env.to_bytes()).into_owned();
    (body, secs_ceil(env.delay(), MAX_DELAY_SECS))
}

/// How long a received job must stay hidden because its `run_at` is still ahead.
fn not_yet_due(msg: &Message) -> Option<Duration> {
    let env = msg.envelope().ok()?;
    let left = (env.run_at? - Utc::now()).to_std().ok()?;
    // Rounding of DelaySeconds can hand a job out a hair early; that is not worth a call.
    (left > Duration::from_millis(200)).then_some(left)
}

fn string_attr(v: &str) -> Result<MessageAttributeValue> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .map_err(|e| QueueError::backend(BACKEND, "SendMessage", e))
}

#[async_trait]
impl Producer for SqsBroker {
    async fn send(&self, envelope: &Envelope) -> Result<Sent> {
        let sent = DedupStore::send(
            self.inner.dedup.as_ref(),
            BACKEND,
            std::slice::from_ref(envelope),
            |_| async move {
                let urls = self.inner.urls(&envelope.queue, true).await?;
                let (body, delay) = wire(envelope);
                self.inner
                    .send_body(&envelope.queue, &urls.main, body, delay, None)
                    .await
            },
        )
        .await?;
        Ok(sent.first().copied().unwrap_or(Sent::Enqueued))
    }

    /// Jobs with a dedup key are checked against the store first (see [`DedupStore::send`]).
    async fn send_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Sent>> {
        DedupStore::send(self.inner.dedup.as_ref(), BACKEND, envelopes, |todo| {
            self.send_all(todo)
        })
        .await
    }
}

impl SqsBroker {
    async fn send_all(&self, envelopes: Vec<&Envelope>) -> Result<()> {
        // Group by queue, keeping each queue's order, then cut into calls of ≤ 10 and ≤ 256 KiB.
        let mut by_queue: Vec<(&str, Vec<(String, i32)>)> = Vec::new();
        for env in envelopes {
            let item = wire(env);
            match by_queue.iter_mut().find(|(q, _)| *q == env.queue) {
                Some((_, items)) => items.push(item),
                None => by_queue.push((&env.queue, vec![item])),
            }
        }
        let mut calls = Vec::new();
        for (queue, items) in by_queue {
            let urls = self.inner.urls(queue, true).await?;
            let mut chunk: Vec<(String, i32)> = Vec::new();
            let mut bytes = 0;
            for item in items {
                if !chunk.is_empty() && (chunk.len() == BATCH || bytes + item.0.len() > BATCH_BYTES)
                {
                    calls.push((
                        queue.to_owned(),
                        urls.main.clone(),
                        std::mem::take(&mut chunk),
                    ));
                    bytes = 0;
                }
                bytes += item.0.len();
                chunk.push(item);
            }
            if !chunk.is_empty() {
                calls.push((queue.to_owned(), urls.main.clone(), chunk));
            }
        }
        let sends: Vec<_> = calls
            .into_iter()
            .map(|(queue, url, chunk)| {
                let inner = self.inner.clone();
                async move { inner.send_chunk(&queue, &url, chunk).await }
            })
            .collect();
        futures::stream::iter(sends)
            .buffer_unordered(SEND_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Consumer for SqsBroker {
    /// A received job whose dedup key another job holds is deleted and dropped here, so a
    /// duplicate sent natively ends the same way as one refused at send.
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Deliveries> {
        let got = self.receive_raw(queue, max, wait).await?;
        Ok(DedupStore::admit(self.inner.dedup.as_ref(), queue, got).await)
    }
}

impl SqsBroker {
    async fn receive_raw(&self, queue: &str, max: usize, wait: Duration) -> Result<Deliveries> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let urls = self.inner.urls(queue, true).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let asked = tokio::time::Instant::now();
            let left = deadline.saturating_duration_since(asked);
            let out = self
                .inner
                .client()
                .receive_message()
                .queue_url(&urls.main)
                .max_number_of_messages(max.min(BATCH) as i32)
                .wait_time_seconds(secs_ceil(left, MAX_WAIT_SECS))
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| {
                    self.inner.stale(
                        queue,
                        self.inner
                            .api
                            .err("ReceiveMessage", Subject::Queue(queue), e),
                    )
                })?;
            let mut got: Deliveries = Vec::new();
            let mut hide: Vec<(String, i32)> = Vec::new();
            for m in out.messages() {
                let (Some(handle), Some(id)) = (m.receipt_handle(), m.message_id()) else {
                    continue;
                };
                let count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                let msg = Message::new(m.body().unwrap_or_default().as_bytes().to_vec(), count, id);
                let (token, cell) =
                    match self.inner.leases.claim(id, handle, asked, urls.visibility) {
                        leases::Claim::New { token, handle } => (token, handle),
                        leases::Claim::Duplicate { extended } => {
                            tracing::debug!(
                                queue,
                                id,
                                "SQS handed out a message this process holds; not running it twice"
                            );
                            if let Some(rest) = extended {
                                hide.push((
                                    handle.to_owned(),
                                    secs_ceil(rest, MAX_VISIBILITY_SECS),
                                ));
                            }
                            continue;
                        }
                        leases::Claim::Settled => {
                            let inner = self.inner.clone();
                            let (url, handle, id) =
                                (urls.main.clone(), handle.to_owned(), id.to_owned());
                            tokio::spawn(async move {
                                if let Err(e) = inner.delete(&url, &handle, &id).await {
                                    tracing::debug!(id, error = %e, "deleting a stale copy failed");
                                }
                            });
                            continue;
                        }
                    };
                if let Some(left) = not_yet_due(&msg) {
                    self.inner.leases.release(id, token);
                    // A minute short of the cap: SQS counts the 12 h from the receive.
                    hide.push((handle.to_owned(), secs_ceil(left, MAX_VISIBILITY_SECS - 60)));
                    continue;
                }
                got.push(Box::new(SqsDelivery {
                    inner: self.inner.clone(),
                    queue: queue.to_owned(),
                    urls: urls.clone(),
                    message_id: id.to_owned(),
                    token,
                    handle: cell,
                    msg,
                    replaced: AtomicBool::new(false),
                }));
            }
            if !hide.is_empty() {
                // Not fatal: a job we fail to hide shows up again after the queue's visibility
                // timeout and is hidden then.
                match self.inner.set_visibility_many(&urls.main, &hide).await {
                    Ok(refused) if !refused.is_empty() => {
                        tracing::warn!(
                            queue,
                            refused = refused.len(),
                            "could not hide jobs whose run_at is ahead"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(queue, error = %e, "could not hide jobs whose run_at is ahead")
                    }
                    Ok(_) => {}
                }
            }
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
        }
    }
}

impl Inner {
    /// `ApproximateNumberOf{Messages,MessagesNotVisible,MessagesDelayed}` of one queue.
    async fn counts(&self, url: &str, queue: &str) -> Result<(u64, u64, u64)> {
        let out = self
            .client()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| {
                self.stale(
                    queue,
                    self.api.err("GetQueueAttributes", Subject::Queue(queue), e),
                )
            })?;
        let get = |k: QueueAttributeName| -> u64 {
            out.attributes()
                .and_then(|a| a.get(&k))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }
}

#[async_trait]
impl Inspector for SqsBroker {
    async fn depth(&self, queue: &str) -> Result<Depth> {
        let urls = self.inner.urls(queue, false).await?;
        let main = self.inner.counts(&urls.main, queue);
        let dead = async {
            match &urls.dlq {
                // Entries held by a DLQ scan are in flight there and still dead-lettered.
                Some(d) => self.inner.counts(d, queue).await.map(|(a, b, c)| a + b + c),
                None => Ok(0),
            }
        };
        let ((visible, in_flight, delayed), dead_lettered) = futures::try_join!(main, dead)?;
        Ok(Depth {
            visible,
            in_flight,
            delayed,
            dead_lettered,
            // Not a queue attribute: CloudWatch's ApproximateAgeOfOldestMessage has it.
            oldest_age: None,
        })
    }
}

#[async_trait]
impl Broker for SqsBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn api_calls(&self) -> Option<u64> {
        Some(SqsBroker::api_calls(self))
    }

    fn url(&self) -> String {
        self.inner.api.endpoint.clone()
    }

    async fn ping(&self) -> Result<()> {
        self.inner
            .client()
            .list_queues()
            .queue_name_prefix(&self.inner.namespace)
            .max_results(1)
            .send()
            .await
            .map_err(|e| self.inner.api.err("ListQueues", Subject::Queue(""), e))?;
        Ok(())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<()> {
        self.inner.declare(spec).await.map(|_| ())
    }
}
