//! The worker's side of the control state: a [`Control`] handle the job path reads without any
//! I/O (is this queue paused? is this job cancelled?), and [`Refresher`], the one background
//! task that, every sample interval, reports this process to the registry, writes the cancel
//! requests it met and reads the paused queues and pending cancels into a new snapshot. When
//! the database does not answer, the last snapshot stays in force: the refresher says so once
//! in the log, in [`Control::status`] (for `/readyz`) and in the `jobfleet_control_state_up`
//! gauge, and picks up the changes when it answers again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::cancel::CancelRequest;
use crate::pause::Paused;
use crate::registry::{Registration, Report};
use crate::{Result, Store};

/// Gauge: 1 while the last refresh of the control state succeeded, 0 while the worker runs on
/// an older snapshot.
pub const UP_METRIC: &str = "jobfleet_control_state_up";
/// Gauge: seconds since the snapshot in force was read.
pub const AGE_METRIC: &str = "jobfleet_control_state_age_seconds";
/// Gauge per configured queue: 1 while paused.
pub const PAUSED_METRIC: &str = "jobfleet_queue_paused";

/// What the fleet's control state said at the last successful read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlState {
    pub paused: BTreeMap<String, Paused>,
    pub cancels: HashMap<(String, String), CancelRequest>,
}

/// Why the last refresh failed, and since when it has been failing.
#[derive(Debug, Clone)]
struct Down {
    since: DateTime<Utc>,
    error: String,
}

/// A cancel request met by this process, by its key and the time it was asked (a renewed
/// request is a new one).
type Met = (String, String, DateTime<Utc>);

#[derive(Default)]
struct Local {
    /// Met here: no longer matched, even before the database has heard of it.
    met: HashSet<Met>,
    /// Met here and not yet written to the database.
    unwritten: Vec<Met>,
    down: Option<Down>,
    read_at: Option<DateTime<Utc>>,
}

/// The snapshot in force, cheap to clone; every clone sees every refresh.
#[derive(Clone)]
pub struct Control {
    tx: Arc<watch::Sender<Arc<ControlState>>>,
    rx: watch::Receiver<Arc<ControlState>>,
    local: Arc<Mutex<Local>>,
}

impl Default for Control {
    fn default() -> Self {
        Control::detached()
    }
}

impl Control {
    /// Nothing paused, nothing cancelled, until a [`Refresher`] says otherwise (and for ever
    /// without one: in-process tests, `worker demo`).
    pub fn detached() -> Control {
        let (tx, rx) = watch::channel(Arc::new(ControlState::default()));
        Control {
            tx: Arc::new(tx),
            rx,
            local: Arc::default(),
        }
    }

    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot in force.
    pub fn state(&self) -> Arc<ControlState> {
        self.rx.borrow().clone()
    }

    /// Whether `queue` is paused.
    pub fn is_paused(&self, queue: &str) -> bool {
        self.rx.borrow().paused.contains_key(queue)
    }

    /// The pending cancel request for this job, unless this process already met it.
    pub fn cancel_for(&self, queue: &str, job_id: &str) -> Option<CancelRequest> {
        let req = self
            .rx
            .borrow()
            .cancels
            .get(&(queue.to_owned(), job_id.to_owned()))
            .cloned()?;
        let met = (req.queue.clone(), req.job_id.clone(), req.requested_at);
        (!self.local().met.contains(&met)).then_some(req)
    }

    /// Records that this process dead-lettered the job of `req`: it is matched no more here,
    /// and the next refresh marks it done for the fleet.
    pub fn met(&self, req: &CancelRequest) {
        let met = (req.queue.clone(), req.job_id.clone(), req.requested_at);
        let mut local = self.local();
        if local.met.insert(met.clone()) {
            local.unwritten.push(met);
        }
    }

    /// Resolves at the next change of the snapshot.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender lives in `self`: this cannot happen; never spin if it did.
            std::future::pending::<()>().await;
        }
    }

    /// Resolves once this job has a cancel request (immediately if it has one now).
    pub async fn cancelled(&mut self, queue: &str, job_id: &str) -> CancelRequest {
        loop {
            self.rx.mark_unchanged();
            if let Some(r) = self.cancel_for(queue, job_id) {
                return r;
            }
            self.changed().await;
        }
    }

    /// `Err` with the detail while the control state cannot be read (the snapshot in force is
    /// older); `Ok` while it answers.
    pub fn status(&self) -> std::result::Result<(), String> {
        let local = self.local();
        match &local.down {
            None => Ok(()),
            Some(d) => Err(format!(
                "fleet control state does not answer since {}: {}; running with the state read at {}",
                d.since.format("%H:%M:%SZ"),
                d.error,
                local.read_at.map_or("start-up (none read)".into(), |t| t
                    .format("%H:%M:%SZ")
                    .to_string()),
            )),
        }
    }

    /// Installs a state read from the database; waiters wake only when it differs.
    fn install(&self, state: ControlState) {
        {
            let mut local = self.local();
            local.read_at = Some(Utc::now());
            // A met request the database no longer lists as pending is settled for good;
            // one still listed stays filtered (its "done" may not be written yet).
            let pending: HashSet<Met> = state
                .cancels
                .values()
                .map(|r| (r.queue.clone(), r.job_id.clone(), r.requested_at))
                .collect();
            let unwritten: HashSet<Met> = local.unwritten.iter().cloned().collect();
            local
                .met
                .retain(|m| pending.contains(m) || unwritten.contains(m));
        }
        self.tx.send_if_modified(|cur| {
            if **cur == state {
                return false;
            }
            *cur = Arc::new(state);
            true
        });
    }
}

/// Keeps a [`Control`] fresh for one `worker run` and its registry row up to date.
pub struct Refresher<R> {
    pub store: Store,
    pub control: Control,
    pub registration: Registration,
    /// The process's figures, read at each refresh.
    pub report: R,
    /// The configured queues, for the paused gauge.
    pub queues: Vec<String>,
    /// Bound of one refresh (a black-holed database must not stall the loop for long).
    pub timeout: Duration,
}

impl<R: Fn() -> Report + Send + Sync> Refresher<R> {
    /// One refresh: report, write the met cancels, read the state. On failure the snapshot
    /// in force stays and the condition is logged (once), gauged and shown by
    /// [`Control::status`].
    pub async fn refresh(&self) -> Result<(), String> {
        let outcome = match tokio::time::timeout(self.timeout, self.try_refresh()).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}", humantime_ms(self.timeout))),
        };
        let read_at = {
            let local = self.control.local();
            local.read_at
        };
        match outcome {
            Ok(state) => {
                let was_down = self.control.local().down.take();
                if let Some(d) = was_down {
                    tracing::info!(since = %d.since, "fleet control state answers again; pauses and cancels are current");
                }
                for q in &self.queues {
                    let v = if state.paused.contains_key(q) {
                        1.0
                    } else {
                        0.0
                    };
                    metrics::gauge!(PAUSED_METRIC, "queue" => q.clone()).set(v);
                }
                self.control.install(state);
                metrics::gauge!(UP_METRIC).set(1.0);
                metrics::gauge!(AGE_METRIC).set(0.0);
                Ok(())
            }
            Err(error) => {
                let mut local = self.control.local();
                if local.down.is_none() {
                    tracing::warn!(%error, paused = ?self.control.state().paused.keys().collect::<Vec<_>>(),
                        "fleet control state does not answer; running with the last state read (jobs keep flowing, pause/cancel changes wait until it is back)");
                    local.down = Some(Down {
                        since: Utc::now(),
                        error: error.clone(),
                    });
                } else if let Some(d) = local.down.as_mut() {
                    d.error = error.clone();
                }
                metrics::gauge!(UP_METRIC).set(0.0);
                if let Some(t) = read_at {
                    let age = (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0;
                    metrics::gauge!(AGE_METRIC).set(age);
                }
                Err(error)
            }
        }
    }

    async fn try_refresh(&self) -> Result<ControlState> {
        self.store
            .report(&self.registration, &(self.report)())
            .await?;
        let unwritten: Vec<Met> = std::mem::take(&mut self.control.local().unwritten);
        if !unwritten.is_empty() {
            let keys: Vec<(String, String)> = unwritten
                .iter()
                .map(|(q, j, _)| (q.clone(), j.clone()))
                .collect();
            if let Err(e) = self
                .store
                .consume_cancels(&self.registration.worker_id, &keys)
                .await
            {
                self.control.local().unwritten.extend(unwritten);
                return Err(e);
            }
        }
        let paused = self.store.paused().await?;
        let cancels = self.store.pending_cancels().await?;
        Ok(ControlState {
            paused: paused.into_iter().map(|p| (p.queue.clone(), p)).collect(),
            cancels: cancels
                .into_iter()
                .map(|c| ((c.queue.clone(), c.job_id.clone()), c))
                .collect(),
        })
    }

    /// Refreshes every `interval` until `stop` resolves, then removes the registry row (a clean
    /// exit), bounded by the timeout.
    pub async fn run(self, interval: Duration, stop: impl Future<Output = ()> + Send) {
        let looping = async {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = self.refresh().await;
            }
        };
        tokio::select! {
            () = looping => {}
            () = stop => {}
        }
        // What was met during the drain must still reach the database.
        if !self.control.local().unwritten.is_empty() {
            let _ = self.refresh().await;
        }
        let leave = self.store.deregister(self.registration.instance);
        match tokio::time::timeout(self.timeout, leave).await {
            Ok(Ok(())) => tracing::debug!("left the worker registry"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not leave the worker registry; the entry shows as lost")
            }
            Err(_) => tracing::warn!(
                "could not leave the worker registry in time; the entry shows as lost"
            ),
        }
    }
}

fn humantime_ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
