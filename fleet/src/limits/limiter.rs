//! The [`Limiter`]: the handle a worker's job path takes permits from, and the background task
//! that keeps it supplied. A job asks [`Limiter::admit`] before its handler starts; with no limit
//! on its kind or queue that is one atomic load. Under a limit it takes a local token (rate)
//! and a local slot (concurrency), waiting up to a short hold for them; if none comes it is
//! held back and the caller puts it back on the queue without counting an attempt.
//!
//! The local tokens and slots come from the fleet's shared state in PostgreSQL, one lease tick
//! per limited scope every [`Timing::tick`]: the unused tokens go back to the bucket, a batch
//! as large as the local demand is taken, and the slot lease is renewed. The operator's
//! overrides are re-read every [`Timing::refresh`] (the sample interval). When the database is
//! away the limiter keeps the last limits and slots it had and refills its tokens locally at
//! its share of the rate (the rate over the workers it last saw), and says so in the log and in
//! `jobfleet_limits_synced`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use runtime::config::{LimitConfig, LimitsConfig};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::alloc;
use super::store::TickRequest;
use super::{Override, Scope, effective};
use crate::Store;

/// How often the limiter talks to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// One lease tick per limited scope: tokens and slots.
    pub tick: Duration,
    /// Re-reading the operator's overrides: a change is in force within this.
    pub refresh: Duration,
    /// A lease not renewed for this long no longer counts (a crashed worker's slots return).
    pub lease_ttl: Duration,
}

impl Timing {
    /// From the worker's `sample_interval`: overrides every interval, leases a quarter of it
    /// (between 100 ms and 500 ms, so a rate is spread evenly enough over a second), leases
    /// lost after three intervals.
    pub fn from_sample_interval(sample_interval: Duration) -> Timing {
        let tick =
            (sample_interval / 4).clamp(Duration::from_millis(100), Duration::from_millis(500));
        Timing {
            tick,
            refresh: sample_interval,
            lease_ttl: (sample_interval * 3).max(tick * 3),
        }
    }
}

/// Whether a job may start now.
pub enum Admission {
    /// It may; keep the permit until the handler has ended.
    Go(Permit),
    /// No permit came within the hold: put the job back, visible again after `retry_after`,
    /// without counting an attempt.
    HeldBack { scope: Scope, retry_after: Duration },
}

/// A job's right to run: the concurrency slots it holds, given back on drop.
#[must_use = "the slots are given back when the permit is dropped"]
pub struct Permit {
    slots: Vec<Arc<Scoped>>,
}

impl Permit {
    fn none() -> Permit {
        Permit { slots: Vec::new() }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        for s in self.slots.drain(..) {
            s.lock().running -= 1;
            s.changed.notify_waiters();
        }
    }
}

/// The fleet-wide limits as one process applies them. Cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: no control plane; the configured limits hold per process.
    store: Option<Store>,
    config: LimitsConfig,
    worker_id: String,
    timing: Timing,
    /// Whether any limit is in force: the whole cost of the job path when none is.
    any: AtomicBool,
    scopes: RwLock<Arc<Scopes>>,
    /// A job started waiting: the tick loop runs early.
    demand: Notify,
    synced: AtomicBool,
    /// The overrides were read once (or there are none to read): until then a job waits up
    /// to its hold, so the first jobs after a start cannot slip past a limit.
    loaded: AtomicBool,
    loaded_changed: Notify,
}

#[derive(Default)]
struct Scopes {
    kinds: HashMap<String, Arc<Scoped>>,
    queues: HashMap<String, Arc<Scoped>>,
}

/// One limited scope in this process.
struct Scoped {
    scope: Scope,
    state: Mutex<Local>,
    /// A token or slot came, a slot was freed, or the limit changed.
    changed: Notify,
}

#[derive(Default)]
struct Local {
    limit: LimitConfig,
    /// The limit was lifted: waiters go.
    removed: bool,
    tokens: u32,
    /// Fractions of a token refilled locally (no control plane, or the database away).
    fraction: f64,
    granted: u32,
    running: u32,
    waiting: u32,
    /// Admitted since the last tick: the demand estimate for the next batch.
    admitted: u32,
    /// Workers sharing the scope at the last tick (the fallback share of the rate).
    workers: u32,
    /// A tick reached the control state at least once: there is a fleet grant to keep.
    synced_once: bool,
    /// This process's starts per second, smoothed.
    current_rate: f64,
}

enum Take {
    /// The permit parts were taken (`slot`: a concurrency slot, to give back on drop).
    Taken {
        slot: bool,
    },
    /// The scope's limit was lifted meanwhile.
    Lifted,
    Blocked,
}

impl Scoped {
    fn new(scope: Scope, limit: LimitConfig) -> Scoped {
        Scoped {
            scope,
            state: Mutex::new(Local {
                limit,
                workers: 1,
                ..Local::default()
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn try_take(&self) -> Take {
        let mut l = self.lock();
        if l.removed {
            return Take::Lifted;
        }
        let slot = l.limit.concurrency.is_some();
        let token = l.limit.rate.is_some();
        if (slot && l.running >= l.granted) || (token && l.tokens == 0) {
            return Take::Blocked;
        }
        if token {
            l.tokens -= 1;
        }
        if slot {
            l.running += 1;
        }
        l.admitted += 1;
        Take::Taken { slot }
    }

    /// Undoes a [`Scoped::try_take`] when a later scope of the same job blocked.
    fn untake(&self, slot: bool) {
        let mut l = self.lock();
        if l.limit.rate.is_some() {
            l.tokens += 1;
        }
        if slot {
            l.running -= 1;
        }
        l.admitted = l.admitted.saturating_sub(1);
        drop(l);
        self.changed.notify_waiters();
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("scope", self.scope.class().to_owned()),
            ("name", self.scope.name().to_owned()),
        ]
    }
}

/// Counts a job as waiting on a scope while it lives.
struct Waiting(Arc<Scoped>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

impl Limiter {
    /// No limits and no control plane: every job goes at once.
    pub fn off() -> Limiter {
        Limiter::build(
            None,
            LimitsConfig::default(),
            String::new(),
            Timing::from_sample_interval(Duration::from_secs(2)),
        )
    }

    /// The configured limits, and the overrides, leased from `store` (the fleet-wide mode).
    /// With `store` absent (`[fleet] enabled = false`) the configured limits hold per process.
    /// Nothing is enforced until [`Limiter::run`] has read the limits once.
    pub fn new(
        store: Option<Store>,
        config: LimitsConfig,
        worker_id: impl Into<String>,
        timing: Timing,
    ) -> Limiter {
        Limiter::build(store, config, worker_id.into(), timing)
    }

    fn build(
        store: Option<Store>,
        config: LimitsConfig,
        worker_id: String,
        timing: Timing,
    ) -> Limiter {
        let loaded = store.is_none();
        let l = Limiter {
            inner: Arc::new(Inner {
                store,
                config,
                worker_id,
                timing,
                any: AtomicBool::new(false),
                scopes: RwLock::new(Arc::new(Scopes::default())),
                demand: Notify::new(),
                synced: AtomicBool::new(true),
                loaded: AtomicBool::new(loaded),
                loaded_changed: Notify::new(),
            }),
        };
        // The configured limits hold from the first job on, before the loop has run.
        l.apply(effective(&l.inner.config, &[]));
        l
    }

    /// The timing it runs on.
    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// Whether the last exchange with the control state succeeded (always true without one).
    pub fn synced(&self) -> bool {
        self.inner.synced.load(Ordering::Relaxed)
    }

    /// The limits in force in this process now, by scope.
    pub fn in_force(&self) -> BTreeMap<Scope, LimitConfig> {
        let scopes = self.snapshot();
        scopes
            .kinds
            .values()
            .chain(scopes.queues.values())
            .map(|s| (s.scope.clone(), s.lock().limit))
            .collect()
    }

    fn snapshot(&self) -> Arc<Scopes> {
        self.inner
            .scopes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the permits a job of `kind` from `queue` needs, waiting up to `hold` for them.
    pub async fn admit(&self, queue: &str, kind: &str, hold: Duration) -> Admission {
        if !self.inner.loaded.load(Ordering::Acquire) {
            let n = self.inner.loaded_changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.inner.loaded.load(Ordering::Acquire) {
                // Still not read after the hold (database away at start): the configured
                // limits, applied at construction, are what holds.
                let _ = tokio::time::timeout(hold, n).await;
            }
        }
        if !self.inner.any.load(Ordering::Acquire) {
            return Admission::Go(Permit::none());
        }
        let scopes = self.snapshot();
        let list: Vec<Arc<Scoped>> = [scopes.kinds.get(kind), scopes.queues.get(queue)]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if list.is_empty() {
            return Admission::Go(Permit::none());
        }
        let deadline = Instant::now() + hold;
        let mut waiting: Vec<Waiting> = Vec::new();
        loop {
            let notified: Vec<_> = list.iter().map(|s| s.changed.notified()).collect();
            let mut notified: Vec<_> = notified.into_iter().map(Box::pin).collect();
            for n in &mut notified {
                n.as_mut().enable();
            }
            let mut taken: Vec<(usize, bool)> = Vec::new();
            let mut blocked = None;
            for (i, s) in list.iter().enumerate() {
                match s.try_take() {
                    Take::Taken { slot } => taken.push((i, slot)),
                    Take::Lifted => {}
                    Take::Blocked => {
                        blocked = Some(i);
                        break;
                    }
                }
            }
            let Some(b) = blocked else {
                let slots = taken
                    .into_iter()
                    .filter(|(_, slot)| *slot)
                    .map(|(i, _)| list[i].clone())
                    .collect();
                return Admission::Go(Permit { slots });
            };
            for (i, slot) in taken {
                list[i].untake(slot);
            }
            let s = &list[b];
            if !waiting.iter().any(|w| Arc::ptr_eq(&w.0, s)) {
                s.lock().waiting += 1;
                waiting.push(Waiting(s.clone()));
                self.inner.demand.notify_one();
            }
            let n = notified.swap_remove(b);
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                metrics::counter!("jobfleet_limit_held_back_total", &s.labels()).increment(1);
                let jitter = 0.5 + rand::random::<f64>();
                return Admission::HeldBack {
                    scope: s.scope.clone(),
                    retry_after: self.inner.timing.refresh.mul_f64(jitter),
                };
            }
        }
    }

    /// Keeps the limits current and the permits supplied until `stop` resolves, then gives
    /// this worker's slot leases back. Spawn it once per process.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let t = self.inner.timing;
        let mut refreshed: Option<Instant> = None;
        let mut ticked = Instant::now();
        loop {
            if refreshed.is_none_or(|at| at.elapsed() >= t.refresh) {
                self.refresh().await;
                refreshed = Some(Instant::now());
            }
            let elapsed = ticked.elapsed();
            ticked = Instant::now();
            if self.inner.any.load(Ordering::Acquire) {
                self.tick(elapsed).await;
            }
            let limited = self.inner.any.load(Ordering::Acquire);
            let early = tokio::select! {
                _ = tokio::time::sleep_until(ticked + t.tick) => false,
                _ = self.inner.demand.notified(), if limited => true,
                _ = &mut stop => break,
            };
            if early {
                // A job is waiting: lease now, but no more often than every quarter tick.
                tokio::select! {
                    _ = tokio::time::sleep_until(ticked + t.tick / 4) => {}
                    _ = &mut stop => break,
                }
            }
        }
        if let Some(store) = &self.inner.store {
            match tokio::time::timeout(
                Duration::from_secs(2),
                store.limit_release(&self.inner.worker_id),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "limit leases not released; they expire on their own")
                }
                Err(_) => {
                    tracing::warn!("limit leases not released in time; they expire on their own")
                }
            }
        }
    }

    fn set_synced(&self, ok: bool, error: Option<&crate::Error>) {
        let was = self.inner.synced.swap(ok, Ordering::Relaxed);
        metrics::gauge!("jobfleet_limits_synced").set(if ok { 1.0 } else { 0.0 });
        match (was, ok, error) {
            (true, false, Some(e)) => tracing::warn!(
                error = %e,
                "fleet limits: control state unreachable; keeping the last limits and slots, refilling tokens at this worker's share of each rate"
            ),
            (false, true, _) => tracing::info!("fleet limits: control state reachable again"),
            _ => {}
        }
    }

    /// Re-reads the overrides and applies the limits in force.
    async fn refresh(&self) {
        let overrides: Vec<Override> = match &self.inner.store {
            None => Vec::new(),
            Some(store) => match store.limit_overrides().await {
                Ok(o) => o,
                Err(e) => {
                    self.set_synced(false, Some(&e));
                    return;
                }
            },
        };
        self.apply(effective(&self.inner.config, &overrides));
        if !self.inner.loaded.swap(true, Ordering::AcqRel) {
            self.inner.loaded_changed.notify_waiters();
        }
    }

    fn apply(&self, limits: BTreeMap<Scope, LimitConfig>) {
        let old = self.snapshot();
        let mut next = Scopes::default();
        for (scope, limit) in &limits {
            let existing = match scope {
                Scope::Kind(k) => old.kinds.get(k),
                Scope::Queue(q) => old.queues.get(q),
            };
            let s = match existing {
                Some(s) => {
                    let mut l = s.lock();
                    if l.limit != *limit {
                        tracing::info!(%scope, from = ?l.limit, to = ?limit, "limit changed");
                        if self.inner.store.is_none() {
                            l.granted = limit.concurrency.unwrap_or(0);
                        }
                        l.limit = *limit;
                        drop(l);
                        s.changed.notify_waiters();
                    }
                    s.clone()
                }
                None => {
                    tracing::info!(%scope, limit = ?limit, "limit in force");
                    let s = Arc::new(Scoped::new(scope.clone(), *limit));
                    if self.inner.store.is_none() {
                        s.lock().granted = limit.concurrency.unwrap_or(0);
                    }
                    s
                }
            };
            let labels = s.labels();
            metrics::gauge!("jobfleet_limit_rate", &labels)
                .set(limit.rate.map_or(0.0, |r| r.per_sec()));
            metrics::gauge!("jobfleet_limit_concurrency", &labels)
                .set(limit.concurrency.map_or(0.0, f64::from));
            match scope {
                Scope::Kind(k) => next.kinds.insert(k.clone(), s),
                Scope::Queue(q) => next.queues.insert(q.clone(), s),
            };
        }
        for s in old.kinds.values().chain(old.queues.values()) {
            if !limits.contains_key(&s.scope) {
                tracing::info!(scope = %s.scope, "limit lifted");
                s.lock().removed = true;
                s.changed.notify_waiters();
                let labels = s.labels();
                metrics::gauge!("jobfleet_limit_rate", &labels).set(0.0);
                metrics::gauge!("jobfleet_limit_concurrency", &labels).set(0.0);
            }
        }
        self.inner.any.store(!limits.is_empty(), Ordering::Release);
        *self.inner.scopes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    /// One lease tick on every limited scope.
    async fn tick(&self, elapsed: Duration) {
        let scopes = self.snapshot();
        let t = self.inner.timing;
        let mut all_ok = true;
        for s in scopes.kinds.values().chain(scopes.queues.values()) {
            let (limit, give_back, want_tokens, running, want_slots) = {
                let mut l = s.lock();
                let secs = elapsed.as_secs_f64().max(1e-3);
                let alpha = (secs / t.refresh.as_secs_f64().max(secs)).min(1.0);
                l.current_rate += alpha * (l.admitted as f64 / secs - l.current_rate);
                let burst = l
                    .limit
                    .rate
                    .map_or(0, |r| alloc::burst(r.per_sec(), t.tick).ceil() as u32);
                // Twice the last tick's starts: a batch that runs out mid-tick makes jobs wait
                // for the next one, and what is left over goes back to the bucket anyway.
                let want = (l.waiting + 2 * l.admitted).min(burst);
                l.admitted = 0;
                let give_back = if self.inner.store.is_some() {
                    std::mem::take(&mut l.tokens)
                } else {
                    0
                };
                (l.limit, give_back, want, l.running, l.running + l.waiting)
            };
            let reply = match &self.inner.store {
                None => None,
                Some(store) => {
                    let req = TickRequest {
                        scope: &s.scope,
                        worker_id: &self.inner.worker_id,
                        limit,
                        tick: t.tick,
                        lease_ttl: t.lease_ttl,
                        give_back,
                        want_tokens,
                        running,
                        want_slots,
                    };
                    match store.limit_tick(&req).await {
                        Ok(r) => Some(r),
                        Err(e) => {
                            if all_ok {
                                self.set_synced(false, Some(&e));
                            }
                            all_ok = false;
                            None
                        }
                    }
                }
            };
            let mut l = s.lock();
            match reply {
                Some(r) => {
                    l.tokens += r.tokens;
                    l.granted = r.slots;
                    l.workers = r.workers.max(1);
                    l.synced_once = true;
                }
                None => {
                    // No control plane, or it is away: this process's share, refilled here.
                    l.tokens += give_back;
                    if let Some(rate) = limit.rate {
                        let share = rate.per_sec() / l.workers.max(1) as f64;
                        let cap = (alloc::burst(rate.per_sec(), t.tick) / l.workers.max(1) as f64)
                            .max(1.0);
                        let have = alloc::refill(
                            l.tokens as f64 + l.fraction,
                            elapsed.as_secs_f64(),
                            share,
                            cap,
                        );
                        l.tokens = have.floor() as u32;
                        l.fraction = have - have.floor();
                    }
                    // Without a grant ever read (the database away since the start), the
                    // process's share of the cap, as for the rate.
                    if self.inner.store.is_none() || !l.synced_once {
                        let share = limit.concurrency.unwrap_or(0) / l.workers.max(1);
                        l.granted = share.max(1);
                    }
                }
            }
            let labels = s.labels();
            metrics::gauge!("jobfleet_limit_current_rate", &labels).set(l.current_rate);
            metrics::gauge!("jobfleet_limit_slots_granted", &labels).set(l.granted as f64);
            metrics::gauge!("jobfleet_limit_waiting", &labels).set(l.waiting as f64);
            drop(l);
            s.changed.notify_waiters();
        }
        if all_ok && self.inner.store.is_some() {
            self.set_synced(true, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(text: &str) -> LimitsConfig {
        toml::from_str(text).unwrap()
    }

    fn local(text: &str, sample: Duration) -> Limiter {
        Limiter::new(
            None,
            limits(text),
            "w",
            Timing::from_sample_interval(sample),
        )
    }

    #[tokio::test]
    async fn no_limit_admits_at_once() {
        let l = Limiter::off();
        assert!(matches!(
            l.admit("q", "k", Duration::ZERO).await,
            Admission::Go(_)
        ));
        let l = local("[other]\nconcurrency = 1\n", Duration::from_secs(1));
        l.refresh().await;
        assert!(matches!(
            l.admit("q", "k", Duration::ZERO).await,
            Admission::Go(_)
        ));
    }

    /// Per process (no control plane): a concurrency cap of 2 admits two, holds the third
    /// back, and admits it once a permit is dropped.
    #[tokio::test]
    async fn concurrency_cap_holds_back_and_frees_on_drop() {
        let l = local("[k]\nconcurrency = 2\n", Duration::from_secs(1));
        l.refresh().await;
        let hold = Duration::from_millis(50);
        let a = l.admit("q", "k", hold).await;
        let b = l.admit("q", "k", hold).await;
        assert!(matches!((&a, &b), (Admission::Go(_), Admission::Go(_))));
        match l.admit("q", "k", hold).await {
            Admission::HeldBack { scope, retry_after } => {
                assert_eq!(scope, Scope::Kind("k".into()));
                assert!(retry_after >= Duration::from_millis(500), "{retry_after:?}");
            }
            Admission::Go(_) => panic!("a third job ran under a cap of 2"),
        }
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move {
                matches!(
                    l.admit("q", "k", Duration::from_secs(5)).await,
                    Admission::Go(_)
                )
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        assert!(
            waiter.await.unwrap(),
            "the freed slot went to the waiting job"
        );
    }

    /// Per process: a rate of 20/s admits about 20 a second (plus the first burst).
    #[tokio::test]
    async fn local_rate_is_kept() {
        let l = local("[k]\nrate = \"20/s\"\n", Duration::from_millis(400));
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(l.clone().run({
            let stop = stop.clone();
            async move { stop.notified().await }
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let start = Instant::now();
        let mut admitted = 0;
        while start.elapsed() < Duration::from_secs(2) {
            if let Admission::Go(_) = l.admit("q", "k", Duration::from_millis(200)).await {
                admitted += 1;
            }
        }
        stop.notify_one();
        task.await.unwrap();
        // 2 s at 20/s, plus at most one burst (2 ticks of 100 ms = 4).
        assert!((34..=46).contains(&admitted), "{admitted}");
    }

    /// A job of a limited kind on a limited queue needs both; a blocked queue does not use up
    /// the kind's token.
    #[tokio::test]
    async fn kind_and_queue_limits_both_apply() {
        let l = local(
            "[k]\nconcurrency = 5\n[queue.q]\nconcurrency = 1\n",
            Duration::from_secs(1),
        );
        l.refresh().await;
        let hold = Duration::from_millis(20);
        let first = l.admit("q", "k", hold).await;
        assert!(matches!(first, Admission::Go(_)));
        assert!(matches!(
            l.admit("q", "k", hold).await,
            Admission::HeldBack {
                scope: Scope::Queue(_),
                ..
            }
        ));
        // Other queue: only the kind's cap applies, and the held-back job gave its slot back.
        let mut held = Vec::new();
        for _ in 0..4 {
            let a = l.admit("r", "k", hold).await;
            assert!(matches!(a, Admission::Go(_)));
            held.push(a);
        }
        assert!(matches!(
            l.admit("r", "k", hold).await,
            Admission::HeldBack {
                scope: Scope::Kind(_),
                ..
            }
        ));
    }
}
