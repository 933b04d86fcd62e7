//! Receiving: one `basic.consume` per queue (on its own channel, with prefetch) feeding a local
//! buffer that `receive` long-polls, and the lease of each handed-out delivery.
//!
//! RabbitMQ has no visibility timeout: a delivery stays with its consumer until it is settled or
//! the channel closes. The lease emulates it: a timer per delivery requeues it (`basic.nack`
//! with requeue) when it is neither settled nor extended in time; settling it after that fails
//! with `LeaseLost`. Quorum queues count those returns in `x-delivery-count`, which is where
//! `receive_count` comes from.
//!
//! A retired consumer's channel is closed only [`LINGER`] after its last ack: RabbitMQ 3.10's
//! quorum queues can apply the close before acks sent after `basic.cancel` and return messages
//! that were acked (see [`linger`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::Channel;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::delivery::hand_out;
use super::topology::{self, H_DELIVERY_COUNT, H_NOT_BEFORE, H_RECEIVE_COUNT};
use super::{Inner, Outgoing};
use crate::backends::util::{self, lock};
use crate::broker::Deliveries;
use crate::error::Result;

/// A queue's consumer stops after this long without a `receive` call (see [`watch_idle`]).
const IDLE: Duration = Duration::from_secs(3);

/// How long a cancelled consumer's channel stays open after an ack on it (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);

/// Keeps `channel` open for [`LINGER`] more. Acks sent on a channel whose consumer was cancelled
/// are settled by a quorum queue only some time later, and a close that reaches the queue first
/// returns the acked messages to it, so they run again. With RabbitMQ 3.10, pika acking 100
/// deliveries after `basic.cancel` and closing at once got 62-67 of them back in 19 of 30
/// tries, and none in 30 tries with a 200 ms pause before the close (a `basic.qos` round trip
/// in between was not enough: 14 of 30). lapin closes a channel when its last handle drops,
/// so holding one handle is what delays the close.
pub(super) fn linger(channel: Channel) {
    tokio::spawn(async move {
        tokio::time::sleep(LINGER).await;
        drop(channel);
    });
}

/// The consumer of one queue in this process.
pub(crate) struct QueueConsumer {
    channel: Channel,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<AmqpDelivery>>,
    /// Received from the broker, not yet handed out: visible work, held here.
    buffered: Arc<AtomicU64>,
    /// Arrived before their `not-before` and being sent round another delay bucket.
    hopping: Arc<AtomicU64>,
    task: AbortHandle,
    tag: ShortString,
    /// Set once `basic.cancel` is sent: acks on this channel from then on must [`linger`].
    cancelled: Arc<AtomicBool>,
    /// Receivers inside `receive` now, and when one last came: what the idle check reads.
    /// Both change only under the consumers-map lock, which the idle check also holds.
    waiting: AtomicUsize,
    last_used: Mutex<Instant>,
}

impl QueueConsumer {
    fn alive(&self) -> bool {
        self.channel.status().connected() && !self.task.is_finished()
    }
}

/// Decrements `waiting` however `receive` ends (timeouts drop the future).
struct Waiting(Arc<QueueConsumer>);

impl Drop for Waiting {
    fn drop(&mut self) {
        *lock(&self.0.last_used) = Instant::now();
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for QueueConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn buffered(inner: &Inner, queue: &str) -> u64 {
    inner
        .consumers
        .lock()
        .await
        .get(queue)
        .map_or(0, |c| c.buffered.load(Ordering::Relaxed))
}

pub(crate) async fn hopping(inner: &Inner, queue: &str) -> u64 {
    inner
        .consumers
        .lock()
        .await
        .get(queue)
        .map_or(0, |c| c.hopping.load(Ordering::Relaxed))
}

async fn consumer(inner: &Arc<Inner>, queue: &str) -> Result<Waiting> {
    let mut map = inner.consumers.lock().await;
    let c = match map.get(queue) {
        Some(c) if c.alive() => c.clone(),
        _ => {
            map.remove(queue);
            let c = Arc::new(start(inner, queue).await?);
            map.insert(queue.to_owned(), c.clone());
            tokio::spawn(watch_idle(
                Arc::downgrade(inner),
                queue.to_owned(),
                Arc::downgrade(&c),
            ));
            c
        }
    };
    c.waiting.fetch_add(1, Ordering::SeqCst);
    *lock(&c.last_used) = Instant::now();
    Ok(Waiting(c))
}

/// Stops a consumer nobody has asked for messages for [`IDLE`]: otherwise its prefetched
/// buffer would sit here while other processes (or this one, later) wait for work.
async fn watch_idle(inner: Weak<Inner>, queue: String, qc: Weak<QueueConsumer>) {
    loop {
        tokio::time::sleep(IDLE / 3).await;
        let (Some(inner), Some(qc)) = (inner.upgrade(), qc.upgrade()) else {
            return;
        };
        {
            let mut map = inner.consumers.lock().await;
            if !map.get(&queue).is_some_and(|c| Arc::ptr_eq(c, &qc)) {
                return;
            }
            let idle =
                qc.waiting.load(Ordering::SeqCst) == 0 && lock(&qc.last_used).elapsed() >= IDLE;
            if !idle {
                continue;
            }
            map.remove(&queue);
        }
        retire(&inner, &queue, qc).await;
        return;
    }
}

/// Cancels the consumer and gives its buffered (never handed out) messages back. They are
/// republished with their delivery count carried in a header and then acked, so giving them
/// back does not count as a delivery; if that write fails they are requeued instead.
/// Deliveries already handed out keep the channel open until they are settled.
async fn retire(inner: &Inner, queue: &str, qc: Arc<QueueConsumer>) {
    tracing::debug!(%queue, channel = qc.channel.id(), "retiring an idle consumer");
    qc.cancelled.store(true, Ordering::SeqCst);
    let _ = qc
        .channel
        .basic_cancel(qc.tag.clone(), BasicCancelOptions::default())
        .await;
    let mut left = Vec::new();
    {
        let mut rx = qc.rx.lock().await;
        // The stream ends after cancel-ok; wait for it so late deliveries are returned too.
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            left.push(d);
        }
    }
    qc.buffered.store(0, Ordering::Relaxed);
    if left.is_empty() {
        return;
    }
    let tags: Vec<u64> = left.iter().map(|d| d.delivery_tag).collect();
    let out: Vec<Outgoing> = left
        .into_iter()
        .map(|d| {
            let prior = prior_deliveries(&d);
            inner.delayed(queue, d.data, d.properties, Duration::ZERO, prior)
        })
        .collect();
    let written = inner.publish_all(&out).await;
    tracing::debug!(%queue, channel = qc.channel.id(), given_back = tags.len(), ok = written.is_ok(), "idle consumer retired");
    for tag in tags {
        let _ = match written {
            Ok(()) => qc.channel.basic_ack(tag, BasicAckOptions::default()).await,
            Err(_) => qc.channel.basic_nack(tag, requeue()).await,
        };
    }
    linger(qc.channel.clone());
}

async fn forget(inner: &Inner, queue: &str, dead: &Arc<QueueConsumer>) {
    let mut map = inner.consumers.lock().await;
    if map.get(queue).is_some_and(|c| Arc::ptr_eq(c, dead)) {
        map.remove(queue);
        // The queue may have been deleted under us: declare it again on the next use.
        lock(&inner.declared).remove(&inner.names.main(queue));
    }
}

async fn start(inner: &Arc<Inner>, queue: &str) -> Result<QueueConsumer> {
    let conn = inner.conn().await?;
    inner.ensure_queue(&conn, queue).await?;
    let channel = inner.channel().await?;
    channel
        .basic_qos(inner.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| inner.err("basic.qos", e))?;
    let stream = channel
        .basic_consume(
            inner.names.main(queue).into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| inner.err("basic.consume", e))?;
    let tag = stream.tag();
    tracing::debug!(%queue, channel = channel.id(), "consumer started");
    let (tx, rx) = mpsc::unbounded_channel();
    let buffered = Arc::new(AtomicU64::new(0));
    let hopping = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(forward(
        Arc::downgrade(inner),
        queue.to_owned(),
        channel.clone(),
        stream,
        tx,
        buffered.clone(),
        hopping.clone(),
    ));
    Ok(QueueConsumer {
        channel,
        rx: tokio::sync::Mutex::new(rx),
        buffered,
        hopping,
        task: task.abort_handle(),
        tag,
        cancelled: Arc::new(AtomicBool::new(false)),
        waiting: AtomicUsize::new(0),
        last_used: Mutex::new(Instant::now()),
    })
}

/// Moves deliveries from lapin's stream into the buffer; messages that arrive before their
/// `not-before` (a long delay split into hops) go round another bucket instead.
async fn forward(
    inner: Weak<Inner>,
    queue: String,
    channel: Channel,
    mut stream: lapin::Consumer,
    tx: mpsc::UnboundedSender<AmqpDelivery>,
    buffered: Arc<AtomicU64>,
    hopping: Arc<AtomicU64>,
) {
    while let Some(item) = stream.next().await {
        let d = match item {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "rabbitmq consumer stopped; the next receive reconnects");
                break;
            }
        };
        if let Some(inner) = inner.upgrade() {
            inner.saw_delivery(&queue, &d);
        }
        let remaining_ms = not_before(&d).map_or(0, |nb| nb - Utc::now().timestamp_millis());
        if remaining_ms > util::millis_i64(topology::HOP_SLACK) {
            let Some(inner) = inner.upgrade() else { break };
            hopping.fetch_add(1, Ordering::Relaxed);
            let remaining = Duration::from_millis(remaining_ms.unsigned_abs());
            let (q, ch, h) = (queue.clone(), channel.clone(), hopping.clone());
            tokio::spawn(async move {
                hop(&inner, &q, &ch, d, remaining).await;
                h.fetch_sub(1, Ordering::Relaxed);
            });
            continue;
        }
        buffered.fetch_add(1, Ordering::Relaxed);
        if tx.send(d).is_err() {
            break;
        }
    }
}

/// When a delivery is due (ms since the epoch), if it says. jobfleet's own delayed copies carry
/// the header; a job another client published straight to the queue with a future `run_at` is
/// held back by its body (parsed only for foreign messages, which lack our `app_id`).
fn not_before(d: &AmqpDelivery) -> Option<i64> {
    if let Some(nb) = topology::header_u64(d.properties.headers().as_ref(), H_NOT_BEFORE) {
        return i64::try_from(nb).ok();
    }
    let ours = d
        .properties
        .app_id()
        .as_ref()
        .is_some_and(|a| a.as_str() == topology::APP_ID);
    if ours {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct RunAt {
        run_at: Option<chrono::DateTime<Utc>>,
    }
    // A body that doesn't parse is handed out as it is, and dead-lettered by the worker.
    let r: RunAt = serde_json::from_slice(&d.data).ok()?;
    r.run_at.map(|t| t.timestamp_millis())
}

/// Sends an early arrival round the next delay bucket (confirmed) and only then acks it here.
async fn hop(inner: &Inner, queue: &str, ch: &Channel, d: AmqpDelivery, remaining: Duration) {
    let prior = prior_deliveries(&d);
    let tag = d.delivery_tag;
    let out = inner.delayed(queue, d.data, d.properties, remaining, prior);
    match inner.publish_all(std::slice::from_ref(&out)).await {
        Ok(()) => {
            let _ = ch.basic_ack(tag, BasicAckOptions::default()).await;
            // The consumer may have been retired while this hop was written.
            linger(ch.clone());
        }
        Err(e) => {
            tracing::warn!(%queue, error = %e, "could not re-delay an early message; requeueing it");
            // Don't spin on a broker that refuses writes.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = ch.basic_nack(tag, requeue()).await;
        }
    }
}

/// Deliveries this body had before the current one.
pub(super) fn prior_deliveries(d: &AmqpDelivery) -> u64 {
    let h = d.properties.headers().as_ref();
    let carried = topology::header_u64(h, H_RECEIVE_COUNT).unwrap_or(0);
    // Classic queues (created by hand) have no counter, only the redelivered flag.
    let returned = topology::header_u64(h, H_DELIVERY_COUNT).unwrap_or(u64::from(d.redelivered));
    carried.saturating_add(returned)
}

pub(super) fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

pub(crate) async fn receive(
    inner: &Arc<Inner>,
    queue: &str,
    max: usize,
    wait: Duration,
) -> Result<Deliveries> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + wait;
    loop {
        let guard = consumer(inner, queue).await?;
        let qc = &guard.0;
        let Ok(mut rx) = tokio::time::timeout_at(deadline, qc.rx.lock()).await else {
            return Ok(Vec::new());
        };
        let first = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(Some(d)) => d,
            Ok(None) => {
                // The consumer's channel or connection went away: start a new one (the next
                // round reconnects, or reports the broker unavailable).
                drop(rx);
                forget(inner, queue, qc).await;
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                continue;
            }
        };
        let mut got = vec![first];
        while got.len() < max {
            match rx.try_recv() {
                Ok(d) => got.push(d),
                Err(_) => break,
            }
        }
        drop(rx);
        qc.buffered.fetch_sub(got.len() as u64, Ordering::Relaxed);
        let vis = inner.visibility(queue);
        let in_flight = inner.in_flight(queue);
        return Ok(got
            .into_iter()
            .map(|d| hand_out(inner, queue, &qc.channel, &qc.cancelled, d, vis, &in_flight))
            .collect());
    }
}
