//! One pool per queue: a receive loop that long-polls for as many jobs as it has free slots and
//! runs each in its own task. The slot count is set at run time by the control loop
//! ([`Pool::resize`]); shrinking never interrupts a running job, it only stops new receives
//! until enough jobs have finished. A queue paused for the fleet ([`fleet::Control`]) is not
//! received from; what a receive under way when the pause is seen brings is handed back unrun.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fleet::Control;
use metrics::Gauge;
use queues::{Broker, Depth, QueueError, QueueSpec};
use tokio::sync::{Notify, watch};

use crate::flag::until_set;
use crate::ledger::Ledger;
use crate::runner::Runner;
use crate::stats::PoolSnapshot;
use runtime::config::QueueConfig;

/// Pause after a failed receive, so a broker outage is not hammered in a loop.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Longest a receive waits for more slots to free up (D90): short against any real job,
/// long enough for a burst of short jobs to finish together and be refilled by one receive.
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// What all pools of a process share: the budget and the jobs running against it.
pub struct Shared {
    budget: usize,
    running: AtomicUsize,
    /// Woken when any slot frees up or any pool is resized.
    changed: Notify,
}

impl Shared {
    /// A budget of `budget` concurrent jobs for the whole process.
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Shared {
            budget,
            running: AtomicUsize::new(0),
            changed: Notify::new(),
        })
    }
}

/// One queue's pool and its live figures.
pub struct Pool {
    /// The queue it consumes.
    pub queue: String,
    /// Its settings.
    pub cfg: QueueConfig,
    target: AtomicUsize,
    granted: AtomicUsize,
    running: AtomicUsize,
    ledger: Ledger,
    receiving: AtomicBool,
    /// The error of the last receive when it failed, until one succeeds: this queue's broker
    /// (or its cluster shard) is out of reach while the others may be fine.
    receive_error: Mutex<Option<String>>,
    /// Whether the queue is declared on the broker; receives wait for it.
    declared: AtomicBool,
    shared: Arc<Shared>,
    /// `jobfleet_pool_running`, set twice per job: registered once (on first use, after the
    /// process installed its recorder) rather than on every set.
    running_gauge: OnceLock<Gauge>,
}

impl Pool {
    /// A pool holding its `min` slots until the control loop says otherwise.
    pub fn new(queue: impl Into<String>, cfg: QueueConfig, shared: Arc<Shared>) -> Self {
        let min = cfg.min;
        Pool {
            queue: queue.into(),
            cfg,
            target: AtomicUsize::new(min),
            granted: AtomicUsize::new(min),
            running: AtomicUsize::new(0),
            ledger: Ledger::default(),
            receiving: AtomicBool::new(false),
            receive_error: Mutex::new(None),
            declared: AtomicBool::new(false),
            shared,
            running_gauge: OnceLock::new(),
        }
    }

    /// Sets the control loop's target and the slots the budget granted.
    pub fn resize(&self, target: usize, granted: usize) {
        self.target.store(target, Ordering::SeqCst);
        let old = self.granted.swap(granted, Ordering::SeqCst);
        let labels = [("queue", self.queue.clone())];
        metrics::gauge!("jobfleet_pool_target", &labels).set(target as f64);
        metrics::gauge!("jobfleet_pool_granted", &labels).set(granted as f64);
        if granted != old {
            tracing::debug!(queue = %self.queue, target, granted, old, "pool resized");
            self.shared.changed.notify_waiters();
        }
    }

    /// Publishes a depth reading as gauges.
    pub fn record_depth(&self, d: &Depth) {
        for (state, v) in [
            ("visible", d.visible),
            ("in_flight", d.in_flight),
            ("delayed", d.delayed),
            ("dead_lettered", d.dead_lettered),
        ] {
            metrics::gauge!("jobfleet_queue_depth", "queue" => self.queue.clone(), "state" => state)
                .set(v as f64);
        }
        if let Some(age) = d.oldest_age {
            metrics::gauge!("jobfleet_queue_oldest_age_seconds", "queue" => self.queue.clone())
                .set(age.as_secs_f64());
        }
    }

    fn running_gauge(&self) -> &Gauge {
        self.running_gauge
            .get_or_init(|| metrics::gauge!("jobfleet_pool_running", "queue" => self.queue.clone()))
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Whether the receive loop is up (for `/readyz`).
    pub fn is_receiving(&self) -> bool {
        self.receiving.load(Ordering::SeqCst)
    }

    /// Declares the queue (its visibility timeout) unless that was done. A broker that is out
    /// of reach for this queue (a Redis Cluster shard without a master) leaves it undeclared,
    /// the error shown in `/readyz`; the receive loop tries again before its first receive.
    pub async fn ensure_declared(&self, broker: &dyn Broker) -> Result<(), QueueError> {
        if self.declared.load(Ordering::SeqCst) {
            return Ok(());
        }
        let spec = QueueSpec::new(self.queue.clone()).with_visibility(self.cfg.visibility_timeout);
        match broker.declare(&spec).await {
            Ok(()) => {
                self.declared.store(true, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.set_receive_error(Some(format!("cannot declare it: {e}")));
                Err(e)
            }
        }
    }

    /// Why receiving fails, while it does (for `/readyz`).
    pub fn receive_error(&self) -> Option<String> {
        self.receive_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_receive_error(&self, e: Option<String>) {
        *self.receive_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// The pool's figures.
    pub fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            queue: self.queue.clone(),
            priority: self.cfg.priority.as_str().to_owned(),
            target: self.target.load(Ordering::SeqCst),
            granted: self.granted.load(Ordering::SeqCst),
            running: self.running(),
            succeeded: self.ledger.succeeded(),
            failed: self.ledger.failed(),
            dead_lettered: self.ledger.dead_lettered(),
        }
    }

    /// Waits until no job of this pool is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Slots this pool may fill now. The process-wide cap matters while another pool shrinks:
    /// its extra jobs run on, and their slots are only given to others as they finish.
    fn free_slots(&self) -> usize {
        let own = self
            .granted
            .load(Ordering::SeqCst)
            .saturating_sub(self.running());
        let process = self
            .shared
            .budget
            .saturating_sub(self.shared.running.load(Ordering::SeqCst));
        own.min(process)
    }

    /// Lets a few more slots free up before a receive, so short jobs are fetched in batches
    /// instead of one receive per finished job: waits until a quarter of the granted slots are
    /// free, no job of this pool is running, or [`GATHER_WAIT`] has passed, whichever is first.
    /// Returns the slots free then (0 only when the stop came or another pool took the budget).
    async fn gather_slots(&self, stop: &mut watch::Receiver<bool>) -> usize {
        let enough = (self.granted.load(Ordering::SeqCst) / 4).max(1);
        let deadline = tokio::time::Instant::now() + GATHER_WAIT;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let free = self.free_slots();
            if free >= enough || self.running() == 0 {
                return free;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.free_slots(),
                _ = until_set(stop) => return 0,
            }
        }
    }

    /// Receives and starts jobs until `stop` turns true. A receive already under way when the
    /// stop comes is finished, and whatever it brought is handed back at once (nack without
    /// delay) rather than dropped: dropping it would hide those jobs for a visibility timeout.
    /// The same goes for a pause of the queue in `control`: no receive while it lasts, and no
    /// job started once it is seen. Jobs keep running after this returns; `abort` tells them
    /// to hand back and stop.
    pub async fn receive_loop(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        runner: Arc<Runner>,
        receive_wait: Duration,
        mut stop: watch::Receiver<bool>,
        abort: watch::Receiver<bool>,
        mut control: Control,
    ) {
        self.receiving.store(true, Ordering::SeqCst);
        let mut was_paused = false;
        loop {
            if *stop.borrow() {
                break;
            }
            if control.is_paused(&self.queue) {
                if !was_paused {
                    tracing::info!(queue = %self.queue, "queue paused for the fleet: receiving nothing until it is resumed");
                    was_paused = true;
                }
                tokio::select! {
                    _ = control.changed() => {}
                    _ = until_set(&mut stop) => break,
                }
                continue;
            }
            if was_paused {
                tracing::info!(queue = %self.queue, "queue resumed: receiving again");
                was_paused = false;
            }
            let free = self.free_slots();
            if free == 0 {
                let notified = self.shared.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.free_slots() == 0 {
                    tokio::select! {
                        _ = notified => {}
                        _ = until_set(&mut stop) => break,
                    }
                }
                continue;
            }
            if let Err(e) = self.ensure_declared(&*broker).await {
                tracing::warn!(queue = %self.queue, error = %e, "declare failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RECEIVE_ERROR_PAUSE) => {}
                    _ = until_set(&mut stop) => break,
                }
                continue;
            }
            let free = self.gather_slots(&mut stop).await;
            if free == 0 {
                continue;
            }
            let batch = match broker.receive(&self.queue, free, receive_wait).await {
                Ok(b) => {
                    self.set_receive_error(None);
                    b
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "receive failed; retrying");
                    self.set_receive_error(Some(e.to_string()));
                    tokio::select! {
                        _ = tokio::time::sleep(RECEIVE_ERROR_PAUSE) => {}
                        _ = until_set(&mut stop) => break,
                    }
                    continue;
                }
            };
            let stopping = *stop.borrow();
            if stopping || control.is_paused(&self.queue) {
                let why = if stopping { "shutdown" } else { "pause" };
                for d in batch {
                    if let Err(e) = d.nack(Duration::ZERO).await {
                        tracing::warn!(queue = %self.queue, id = %d.message().id(), error = %e, "hand-back on {why} failed; the job returns after its visibility timeout");
                    }
                }
                if stopping {
                    break;
                }
                continue;
            }
            for delivery in batch {
                self.running.fetch_add(1, Ordering::SeqCst);
                self.shared.running.fetch_add(1, Ordering::SeqCst);
                self.running_gauge().set(self.running() as f64);
                let pool = self.clone();
                let runner = runner.clone();
                let abort = abort.clone();
                tokio::spawn(async move {
                    let _slot = SlotGuard(pool.clone());
                    let settled = runner
                        .run(&pool.queue, pool.cfg.visibility_timeout, delivery, abort)
                        .await;
                    pool.ledger.record(&pool.queue, &settled);
                });
            }
        }
        self.receiving.store(false, Ordering::SeqCst);
    }
}

/// Frees the slot when the job's task ends, however it ends.
struct SlotGuard(Arc<Pool>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let now = self.0.running.fetch_sub(1, Ordering::SeqCst) - 1;
        self.0.shared.running.fetch_sub(1, Ordering::SeqCst);
        self.0.running_gauge().set(now as f64);
        self.0.shared.changed.notify_waiters();
    }
}
