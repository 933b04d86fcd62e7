//! In-process backend for unit tests and demos. It keeps the same semantics as the real brokers
//! (visibility timeouts, delays, DLQ, long polling) and passes the same conformance suite, but
//! holds everything in memory: nothing survives the process. Timers use tokio's clock, so tests
//! of the worker's control loop can run it under paused time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, DeadLetters, Delivery, Depth, DlqEntry, DlqPage, DlqScan,
    Inspector, Message, Producer, QueueSpec,
};
use crate::envelope::Envelope;
use crate::error::{QueueError, Result};

const BACKEND: &str = "memory";

/// The in-memory broker. Cloning shares the same queues.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    next_seq: u64,
}

struct Stored {
    seq: u64,
    body: Bytes,
    receive_count: u32,
    enqueued: Instant,
}

struct Dead {
    body: Bytes,
    reason: String,
    at: DateTime<Utc>,
    broker_id: String,
}

struct Queue {
    visibility: Duration,
    ready: VecDeque<Stored>,
    delayed: Vec<(Instant, Stored)>,
    in_flight: HashMap<u64, (Instant, Stored)>,
    dead: BTreeMap<u64, Dead>,
    notify: Arc<Notify>,
    next_lease: u64,
}

impl Queue {
    fn new(visibility: Duration) -> Self {
        Queue {
            visibility,
            ready: VecDeque::new(),
            delayed: Vec::new(),
            in_flight: HashMap::new(),
            dead: BTreeMap::new(),
            notify: Arc::new(Notify::new()),
            next_lease: 0,
        }
    }

    /// Moves due delayed messages and expired leases to `ready`.
    fn promote(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.delayed.len() {
            if self.delayed[i].0 <= now {
                let (_, m) = self.delayed.swap_remove(i);
                self.ready.push_back(m);
            } else {
                i += 1;
            }
        }
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(lease, _)| *lease)
            .collect();
        for lease in expired {
            if let Some((_, m)) = self.in_flight.remove(&lease) {
                self.ready.push_back(m);
            }
        }
    }

    /// The next instant something becomes visible by itself.
    fn next_wakeup(&self) -> Option<Instant> {
        let delayed = self.delayed.iter().map(|(at, _)| *at);
        let leases = self.in_flight.values().map(|(at, _)| *at);
        delayed.chain(leases).min()
    }

    fn put(&mut self, m: Stored, delay: Duration, now: Instant) {
        if delay.is_zero() {
            self.ready.push_back(m);
        } else {
            self.delayed.push((now + delay, m));
        }
        self.notify.notify_waiters();
    }
}

impl State {
    fn queue(&mut self, name: &str) -> &mut Queue {
        self.queues
            .entry(name.to_owned())
            .or_insert_with(|| Queue::new(DEFAULT_VISIBILITY))
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn store(&mut self, body: Bytes) -> Stored {
        Stored {
            seq: self.seq(),
            body,
            receive_count: 0,
            enqueued: Instant::now(),
        }
    }
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a bug in this module; the data is
        // still consistent (every mutation is a single move), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a raw body on `queue` as a foreign client would (tests of malformed input).
    pub fn push_raw(&self, queue: &str, body: &[u8]) {
        let mut st = self.lock();
        let m = st.store(Bytes::copy_from_slice(body));
        st.queue(queue).put(m, Duration::ZERO, Instant::now());
    }

    fn lease_op<T>(
        &self,
        queue: &str,
        lease: u64,
        op: impl FnOnce(&mut State, Stored) -> T,
    ) -> Result<T> {
        let mut st = self.lock();
        let q = st.queue(queue);
        q.promote(Instant::now());
        let (_, m) = q.in_flight.remove(&lease).ok_or(QueueError::LeaseLost {
            backend: BACKEND,
            id: lease.to_string(),
        })?;
        Ok(op(&mut st, m))
    }
}

#[async_trait]
impl Producer for MemoryBroker {
    async fn send(&self, envelope: &Envelope) -> Result<()> {
        crate::validate_queue_name(&envelope.queue)?;
        let mut st = self.lock();
        let m = st.store(Bytes::from(envelope.to_bytes()));
        st.queue(&envelope.queue)
            .put(m, envelope.delay(), Instant::now());
        Ok(())
    }
}

#[async_trait]
impl Consumer for MemoryBroker {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Box<dyn Delivery>>> {
        let deadline = Instant::now() + wait;
        loop {
            let notify;
            let wake;
            {
                let mut st = self.lock();
                let now = Instant::now();
                let q = st.queue(queue);
                q.promote(now);
                let mut out: Vec<Box<dyn Delivery>> = Vec::new();
                while out.len() < max {
                    let Some(mut m) = q.ready.pop_front() else {
                        break;
                    };
                    m.receive_count += 1;
                    q.next_lease += 1;
                    let lease = q.next_lease;
                    let msg = Message::new(m.body.clone(), m.receive_count, m.seq.to_string());
                    q.in_flight.insert(lease, (now + q.visibility, m));
                    out.push(Box::new(MemoryDelivery {
                        broker: self.clone(),
                        queue: queue.to_owned(),
                        lease,
                        msg,
                    }));
                }
                if !out.is_empty() || now >= deadline {
                    return Ok(out);
                }
                notify = q.notify.clone();
                wake = q.next_wakeup().map_or(deadline, |w| w.min(deadline));
            }
            let notified = notify.notified();
            tokio::pin!(notified);
            // Register before re-checking so a send between the check and the await still wakes us.
            notified.as_mut().enable();
            if self.lock().queue(queue).ready.is_empty() {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(wake) => {}
                }
            }
        }
    }
}

#[async_trait]
impl Inspector for MemoryBroker {
    async fn depth(&self, queue: &str) -> Result<Depth> {
        let mut st = self.lock();
        let now = Instant::now();
        let q = st.queue(queue);
        q.promote(now);
        Ok(Depth {
            visible: q.ready.len() as u64,
            in_flight: q.in_flight.len() as u64,
            delayed: q.delayed.len() as u64,
            dead_lettered: q.dead.len() as u64,
            oldest_age: q.ready.iter().map(|m| now - m.enqueued).max(),
        })
    }
}

fn dlq_entry(queue: &str, seq: u64, d: &Dead) -> DlqEntry {
    DlqEntry::new(
        queue,
        &d.body,
        d.reason.clone(),
        Some(d.at),
        seq.to_string(),
        &d.broker_id,
    )
}

#[async_trait]
impl DeadLetters for MemoryBroker {
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage> {
        let after = DlqPage::numeric_cursor::<u64>(cursor)?;
        let mut st = self.lock();
        let q = st.queue(queue);
        let entries: Vec<DlqEntry> = q
            .dead
            .range(after + 1..)
            .take(limit.saturating_add(1))
            .map(|(seq, d)| dlq_entry(queue, *seq, d))
            .collect();
        Ok(DlqPage::from_overfetch(entries, limit))
    }

    async fn dlq_scan(&self, queue: &str, _hold: Duration) -> Result<Box<dyn DlqScan>> {
        let end = self.lock().next_seq;
        Ok(Box::new(MemoryScan {
            broker: self.clone(),
            queue: queue.to_owned(),
            after: 0,
            end,
        }))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn url(&self) -> String {
        "memory://".into()
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<()> {
        crate::validate_queue_name(&spec.name)?;
        self.lock().queue(&spec.name).visibility = spec.visibility_timeout;
        Ok(())
    }
}

struct MemoryDelivery {
    broker: MemoryBroker,
    queue: String,
    lease: u64,
    msg: Message,
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

struct MemoryScan {
    broker: MemoryBroker,
    queue: String,
    after: u64,
    /// Entries dead-lettered after the scan started are left for the next pass, so a replayed
    /// job that fails again at once can't keep a replay going forever.
    end: u64,
}

#[async_trait]
impl DlqScan for MemoryScan {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>> {
        if self.after >= self.end {
            return Ok(Vec::new());
        }
        let mut st = self.broker.lock();
        let q = st.queue(&self.queue);
        let batch: Vec<DlqEntry> = q
            .dead
            .range(self.after + 1..=self.end)
            .take(max)
            .map(|(seq, d)| dlq_entry(&self.queue, *seq, d))
            .collect();
        if let Some(last) = batch.last() {
            self.after = last.handle.parse().unwrap_or(self.end);
        }
        Ok(batch)
    }

    async fn remove(&mut self, entry: &DlqEntry) -> Result<()> {
        let seq: u64 = DlqPage::numeric_cursor::<u64>(Some(&entry.handle))?;
        self.broker.lock().queue(&self.queue).dead.remove(&seq);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
