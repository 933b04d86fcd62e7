//! The dashboard's own sampling: every few seconds, each configured queue's depth from the
//! broker, whether it is paused, and the pools of the fleet — summed over the workers'
//! registry reports (`fleet::Store::workers`), or, while no worker has registered, read from
//! the worker on the configured admin port — kept for an hour.
//! Charts are drawn from this history; the live overview streams the newest snapshot. One
//! sampler serves every open page, so twenty browsers cost what one does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use queues::Depth;
use runtime::Shutdown;
use serde::Serialize;
use tokio::sync::watch;

use crate::scrape;
use crate::state::AppState;

/// How far back the charts go.
pub const WINDOW: Duration = Duration::from_secs(3600);

/// One queue at one instant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueSample {
    pub at: DateTime<Utc>,
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dead_lettered: u64,
    /// Seconds.
    pub oldest_age: Option<f64>,
    /// From the worker's counters since the previous sample; `None` without a worker answering.
    pub succeeded_per_s: Option<f64>,
    pub failed_per_s: Option<f64>,
    pub pool_target: Option<usize>,
    pub pool_running: Option<usize>,
    /// Paused for the fleet, and by whom; `None` when the control state could not be read.
    pub paused: Option<bool>,
    pub paused_by: Option<String>,
    /// Why the depth could not be read this time (the numbers are then the last known ones).
    pub error: Option<String>,
}

/// The newest sample of every queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Rounds taken so far (0: none yet).
    pub round: u64,
    pub at: Option<DateTime<Utc>>,
    /// Where the pool figures came from this round: `registry` (live workers of the fleet),
    /// `admin port` (the one local worker), or `None`.
    pub pools_from: Option<&'static str>,
    /// Live (not lost) workers in the registry.
    pub workers: usize,
    pub queues: BTreeMap<String, QueueSample>,
}

#[derive(Default)]
struct History {
    queues: BTreeMap<String, VecDeque<QueueSample>>,
    counters: BTreeMap<String, (Instant, f64, f64)>,
}

/// The sample history and the channel the live pages listen on. Cheap to clone.
#[derive(Clone)]
pub struct Samples {
    pub every: Duration,
    history: Arc<RwLock<History>>,
    latest: watch::Sender<Arc<Snapshot>>,
}

impl Samples {
    pub fn new(every: Duration) -> Samples {
        Samples {
            every: every.max(Duration::from_millis(200)),
            history: Arc::default(),
            latest: watch::Sender::new(Arc::default()),
        }
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.latest.borrow().clone()
    }

    /// Wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.latest.subscribe()
    }

    /// The last hour of `queue`, oldest first.
    pub fn history(&self, queue: &str) -> Vec<QueueSample> {
        self.history
            .read()
            .expect("samples lock")
            .queues
            .get(queue)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, round: u64, fleet: &Fleet, samples: BTreeMap<String, QueueSample>) {
        let at = Utc::now();
        {
            let mut h = self.history.write().expect("samples lock");
            let cutoff = at - chrono::Duration::from_std(WINDOW).expect("an hour fits");
            for (q, s) in &samples {
                let ring = h.queues.entry(q.clone()).or_default();
                ring.push_back(s.clone());
                while ring.front().is_some_and(|f| f.at < cutoff) {
                    ring.pop_front();
                }
            }
        }
        self.latest.send_replace(Arc::new(Snapshot {
            round,
            at: Some(at),
            pools_from: fleet.from,
            workers: fleet.live,
            queues: samples,
        }));
    }

    /// Jobs/s of `queue` from the counters `now`, against the previous reading.
    fn rates(&self, queue: &str, succeeded: f64, failed: f64) -> (Option<f64>, Option<f64>) {
        let mut h = self.history.write().expect("samples lock");
        let now = Instant::now();
        let prev = h
            .counters
            .insert(queue.to_owned(), (now, succeeded, failed));
        match prev {
            // A counter that went down is a restarted worker: no rate for this interval.
            Some((t, s, f)) if succeeded >= s && failed >= f => {
                let secs = now.duration_since(t).as_secs_f64().max(0.001);
                (Some((succeeded - s) / secs), Some((failed - f) / secs))
            }
            _ => (None, None),
        }
    }
}

/// The pools of one round, by queue.
#[derive(Default)]
struct Fleet {
    from: Option<&'static str>,
    live: usize,
    target: BTreeMap<String, usize>,
    running: BTreeMap<String, usize>,
    succeeded: BTreeMap<String, f64>,
    failed: BTreeMap<String, f64>,
    paused: Option<BTreeMap<String, String>>,
}

async fn fleet(st: &AppState) -> Fleet {
    let mut f = Fleet::default();
    match st.store.paused().await {
        Ok(list) => f.paused = Some(list.into_iter().map(|p| (p.queue, p.paused_by)).collect()),
        Err(e) => tracing::warn!(error = %e, "paused queues not readable"),
    }
    let workers = match st.store.workers().await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "worker registry not readable");
            Vec::new()
        }
    };
    let live: Vec<_> = workers
        .iter()
        .filter(|w| w.state != fleet::registry::WorkerState::Lost)
        .collect();
    f.live = live.len();
    if !live.is_empty() {
        f.from = Some("registry");
        for w in &live {
            for p in &w.pools {
                *f.target.entry(p.queue.clone()).or_default() += p.target;
                *f.running.entry(p.queue.clone()).or_default() += p.running;
            }
        }
        // Counters of every registered worker, lost ones too, so a worker that leaves does
        // not look like a negative rate: only its last report stays in the sum.
        for w in &workers {
            for p in &w.pools {
                *f.succeeded.entry(p.queue.clone()).or_default() += p.succeeded as f64;
                *f.failed.entry(p.queue.clone()).or_default() += p.failed as f64;
            }
        }
    } else if let Some(m) = scrape::fetch(st.cfg.worker.admin_addr).await {
        f.from = Some("admin port");
        (f.target, f.running, f.succeeded, f.failed) =
            (m.pool_target, m.pool_running, m.succeeded, m.failed);
    }
    f
}

/// One round: every configured queue's depth, paused state and pools.
pub async fn sample_once(st: &AppState, round: u64) {
    let fleet = fleet(st).await;
    let previous = st.samples.latest();
    let mut out = BTreeMap::new();
    for name in st.cfg.queues.keys() {
        let depth = tokio::time::timeout(Duration::from_secs(5), st.broker.depth(name)).await;
        let mut s = match depth {
            Ok(Ok(d)) => from_depth(d),
            Ok(Err(e)) => stale(previous.queues.get(name), e.to_string()),
            Err(_) => stale(
                previous.queues.get(name),
                "depth read timed out (5 s)".into(),
            ),
        };
        if fleet.from.is_some() {
            s.pool_target = fleet.target.get(name).copied();
            s.pool_running = fleet.running.get(name).copied();
            let succeeded = fleet.succeeded.get(name).copied().unwrap_or(0.0);
            let failed = fleet.failed.get(name).copied().unwrap_or(0.0);
            (s.succeeded_per_s, s.failed_per_s) = st.samples.rates(name, succeeded, failed);
        } else {
            (
                s.pool_target,
                s.pool_running,
                s.succeeded_per_s,
                s.failed_per_s,
            ) = (None, None, None, None);
        }
        s.paused = fleet.paused.as_ref().map(|p| p.contains_key(name));
        s.paused_by = fleet.paused.as_ref().and_then(|p| p.get(name).cloned());
        out.insert(name.clone(), s);
    }
    st.samples.record(round, &fleet, out);
}

fn from_depth(d: Depth) -> QueueSample {
    QueueSample {
        at: Utc::now(),
        visible: d.visible,
        in_flight: d.in_flight,
        delayed: d.delayed,
        dead_lettered: d.dead_lettered,
        oldest_age: d.oldest_age.map(|a| a.as_secs_f64()),
        ..Default::default()
    }
}

fn stale(prev: Option<&QueueSample>, error: String) -> QueueSample {
    QueueSample {
        at: Utc::now(),
        error: Some(error),
        ..prev.cloned().unwrap_or_default()
    }
}

/// Samples until `shutdown`.
pub async fn run(st: AppState, shutdown: Shutdown) {
    let mut round = 0;
    loop {
        round += 1;
        sample_once(&st, round).await;
        tokio::select! {
            _ = tokio::time::sleep(st.samples.every) => {}
            _ = shutdown.wait() => return,
        }
    }
}
