//! In-process backend for unit tests and demos. It keeps the same semantics as the real brokers
//! (visibility timeouts, delays, DLQ, long polling) and passes the same conformance suite, but
//! holds everything in memory: nothing survives the process. Timers use tokio's clock, so tests
//! of the worker's control loop can run it under paused time.

mod delivery;
mod dlq;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backends::util;
use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, Deliveries, Depth, Inspector, Message, Producer,
    QueueSpec, Sent,
};
use crate::envelope::Envelope;
use crate::error::{QueueError, Result};
use delivery::MemoryDelivery;

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
    /// Taken `dedup_key`s: until when. Expired entries are dropped lazily.
    dedup: HashMap<String, Instant>,
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
            dedup: HashMap::new(),
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
        util::lock(&self.state)
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
    async fn send(&self, envelope: &Envelope) -> Result<Sent> {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some((key, window)) = envelope.dedup() {
            let q = st.queue(&envelope.queue);
            if q.dedup.get(key).is_some_and(|until| *until > now) {
                return Ok(Sent::Duplicate);
            }
            if q.dedup.len() > 10_000 {
                q.dedup.retain(|_, until| *until > now);
            }
            q.dedup.insert(key.to_owned(), now + window);
        }
        let m = st.store(Bytes::from(envelope.to_bytes()));
        st.queue(&envelope.queue).put(m, envelope.delay(), now);
        Ok(Sent::Enqueued)
    }
}

#[async_trait]
impl Consumer for MemoryBroker {
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Deliveries> {
        let deadline = Instant::now() + wait;
        loop {
            let notify;
            let wake;
            {
                let mut st = self.lock();
                let now = Instant::now();
                let q = st.queue(queue);
                q.promote(now);
                let mut out: Deliveries = Vec::new();
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
        self.lock().queue(&spec.name).visibility = spec.visibility_timeout;
        Ok(())
    }
}
