//! The receipts this process holds, by SQS MessageId, so one process never runs a job twice at
//! once. SQS standard queues may hand out a message again while it is still invisible (AWS:
//! rarely, when a server holding a copy was unavailable; moto: whenever two `ReceiveMessage`
//! calls race, it has no lock). A copy that arrives while this process holds an unexpired lease
//! on the same message is not handed out again: its newer receipt handle replaces the held one
//! (SQS only honours the newest handle). A copy of a message this process settled a moment ago
//! is deleted again. Across processes nothing can be done: jobs stay idempotent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::backends::util::lock;

/// How long a settled MessageId is remembered, and how many at most.
const RECENT_TTL: Duration = Duration::from_secs(15 * 60);
const RECENT_MAX: usize = 50_000;

/// The receipt handle of a held message; replaced when SQS hands out a newer one.
pub(crate) type Handle = Arc<Mutex<String>>;

struct Lease {
    token: u64,
    handle: Handle,
    until: Instant,
}

/// What to do with a received copy.
pub(crate) enum Claim {
    /// Hand it out.
    New { token: u64, handle: Handle },
    /// Already held here: not handed out. `extended` is how much longer than the queue's
    /// visibility the holder asked for (the new receive cut it back), to re-apply.
    Duplicate { extended: Option<Duration> },
    /// Settled here a moment ago: delete this copy too.
    Settled,
}

/// MessageIds settled here lately, with when, oldest first.
type Recent = (HashSet<String>, VecDeque<(Instant, String)>);

#[derive(Default)]
pub(crate) struct Leases {
    held: Mutex<HashMap<String, Lease>>,
    recent: Mutex<Recent>,
    next: AtomicU64,
}

impl Leases {
    /// Registers a copy received by a call that started at `asked` on a queue whose visibility
    /// is `vis` (the lease can't end before `asked + vis`).
    pub fn claim(&self, id: &str, receipt: &str, asked: Instant, vis: Duration) -> Claim {
        if lock(&self.recent).0.contains(id) {
            return Claim::Settled;
        }
        let now = Instant::now();
        let mut held = lock(&self.held);
        if let Some(l) = held.get_mut(id)
            && l.until > now
        {
            *lock(&l.handle) = receipt.to_owned();
            let cut = asked + vis;
            let extended = (l.until > cut + Duration::from_secs(1)).then(|| l.until - now);
            l.until = l.until.max(cut);
            return Claim::Duplicate { extended };
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let handle: Handle = Arc::new(Mutex::new(receipt.to_owned()));
        held.insert(
            id.to_owned(),
            Lease {
                token,
                handle: handle.clone(),
                until: asked + vis,
            },
        );
        Claim::New { token, handle }
    }

    /// The holder extended its lease to `until`.
    pub fn extended(&self, id: &str, token: u64, until: Instant) {
        if let Some(l) = lock(&self.held).get_mut(id).filter(|l| l.token == token) {
            l.until = until;
        }
    }

    /// The holder let go (nack, or dropped without settling): later copies are new deliveries.
    pub fn release(&self, id: &str, token: u64) {
        let mut held = lock(&self.held);
        if held.get(id).is_some_and(|l| l.token == token) {
            held.remove(id);
        }
    }

    /// The holder settled the message (deleted it from the queue).
    pub fn settled(&self, id: &str, token: u64) {
        self.release(id, token);
        let now = Instant::now();
        let mut recent = lock(&self.recent);
        let (set, order) = &mut *recent;
        while let Some((at, old)) = order.front() {
            if now.duration_since(*at) < RECENT_TTL && order.len() < RECENT_MAX {
                break;
            }
            set.remove(old);
            order.pop_front();
        }
        if set.insert(id.to_owned()) {
            order.push_back((now, id.to_owned()));
        }
    }
}
