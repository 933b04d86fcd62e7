//! The scheduler core: decides which tick to enqueue and enqueues it exactly once per dedup
//! key. Every entry point takes `now` as a parameter, so tests drive it with any clock; the
//! runner passes `Utc::now()`.
//!
//! Rules, per schedule, at `now`:
//! - on time: every fire time in `(now - grace, now]` (grace = 2 × lease) not yet settled is
//!   enqueued. A failover gap is shorter than that, so ticks that fell while no replica led are
//!   still enqueued by the new leader, whatever the catch-up policy. For a brand-new schedule
//!   (no tick in the ledger) the window starts no earlier than this process did: there was no
//!   failover to cover, and back-dating its first ticks would fire it for times before any
//!   scheduler knew it.
//! - late (after downtime): for the latest fire time `tick <= now`, with `catch_up = latest`,
//!   enqueue it once (one job for the latest missed tick, never one per missed tick) if the
//!   ledger shows the schedule ran before; with `skip`, count it as missed and move on. A
//!   brand-new schedule has no history, so it starts at its next tick instead of firing at once.
//!
//! Each tick's dedup key is `name@<tick RFC 3339 UTC>`; the ledger claim on that key is what
//! makes it once-only across replicas and restarts (see [`crate::ledger`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, DurationRound, SecondsFormat, Utc};
use queues::{Envelope, Producer, Sent};
use runtime::config::CatchUp;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::SchedulerError;
use crate::lease::{Lease, LeaseState};
use crate::ledger::{Claim, Fence, LastEnqueue, Ledger, Reason};
use crate::schedule::CompiledSchedule;

/// Metric: ticks this replica enqueued, by schedule.
pub const METRIC_ENQUEUED: &str = "jobfleet_scheduler_ticks_enqueued_total";
/// Metric: ticks found already enqueued (another replica, a restart), by schedule.
pub const METRIC_DUPLICATE: &str = "jobfleet_scheduler_ticks_duplicate_total";
/// Metric: late ticks dropped by `catch_up = skip`, by schedule.
pub const METRIC_MISSED: &str = "jobfleet_scheduler_ticks_missed_total";
/// Metric: 1 while this replica is the leader.
pub const METRIC_LEADER: &str = "jobfleet_scheduler_leader";

/// Ledger rows older than this are pruned (each schedule's latest tick is always kept).
const LEDGER_RETENTION_DAYS: i32 = 30;

/// Upper bound of on-time ticks one pass enqueues (a schedule firing every second with a long
/// lease); the rest follow on the next pass.
const MAX_TICKS_PER_PASS: usize = 256;

/// What one attempt to enqueue a tick did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// Sent; the job id.
    Enqueued(String),
    /// Already enqueued before.
    Duplicate,
    /// Claimed by someone else and not yet confirmed.
    Pending,
    /// Not the leader: nothing done.
    NotLeader,
    /// Nothing due (no tick yet, or a late tick with `skip` / no history).
    NothingDue,
}

/// What `scheduler trigger` tells the operator.
impl std::fmt::Display for Fired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fired::Enqueued(id) => write!(f, "enqueued as job {id}"),
            Fired::Duplicate => f.write_str("already enqueued"),
            Fired::Pending => f.write_str("another claim on it is still pending"),
            Fired::NotLeader => f.write_str("this replica is not the leader"),
            Fired::NothingDue => f.write_str("nothing due"),
        }
    }
}

/// Per-core settings.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    /// Lease key: replicas with the same key elect one leader among them.
    pub lease_name: String,
    /// This replica's id (host/pid/random by default).
    pub holder: String,
    /// Lease length.
    pub lease: Duration,
    /// When this process started: a brand-new schedule's first tick is the next one after it.
    pub started_at: DateTime<Utc>,
}

impl CoreOptions {
    /// Options with a generated holder id.
    pub fn new(lease_name: impl Into<String>, lease: Duration) -> Self {
        CoreOptions {
            lease_name: lease_name.into(),
            holder: default_holder(),
            lease,
            started_at: Utc::now(),
        }
    }
}

/// `host/pid/random`: unique per process even when two run on one host.
pub fn default_holder() -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{}/{}", runtime::host::process_id(), &rand[..8])
}

/// The core. Share it as `Arc<Core>`.
pub struct Core {
    schedules: Vec<CompiledSchedule>,
    names: Vec<String>,
    ledger: Ledger,
    lease: Lease,
    started_at: DateTime<Utc>,
    producer: Arc<dyn Producer>,
    leader_until: Mutex<Option<Instant>>,
    /// Latest tick per schedule this process already settled (enqueued or found enqueued), so
    /// the periodic reconcile does not hit the database for ticks it has handled.
    settled: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Late ticks already counted as missed, so the metric counts each once.
    missed: Mutex<HashMap<String, DateTime<Utc>>>,
    started: std::sync::atomic::AtomicBool,
    /// One enqueue decision at a time: the cron callback and the reconcile loop may both look
    /// at the same tick.
    fire_lock: tokio::sync::Mutex<()>,
}

impl Core {
    /// A core over `schedules`, electing with `opts` in `pool`, sending with `producer`.
    pub fn new(
        schedules: Vec<CompiledSchedule>,
        pool: PgPool,
        producer: Arc<dyn Producer>,
        opts: CoreOptions,
    ) -> Self {
        let names = schedules.iter().map(|s| s.name().to_owned()).collect();
        Core {
            schedules,
            names,
            ledger: Ledger::new(pool.clone()),
            lease: Lease::new(pool, opts.lease_name, opts.holder, opts.lease),
            started_at: opts.started_at,
            producer,
            leader_until: Mutex::new(None),
            settled: Mutex::new(HashMap::new()),
            missed: Mutex::new(HashMap::new()),
            started: std::sync::atomic::AtomicBool::new(false),
            fire_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The schedules.
    pub fn schedules(&self) -> &[CompiledSchedule] {
        &self.schedules
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Whether this replica may enqueue right now.
    pub fn is_leader(&self) -> bool {
        self.leader_until
            .lock()
            .expect("not poisoned")
            .is_some_and(|until| Instant::now() < until)
    }

    fn grace(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.lease.duration() * 2).unwrap_or(chrono::Duration::MAX)
    }

    fn fence(&self) -> Fence<'_> {
        Fence {
            lease: self.lease.name(),
            holder: self.lease.holder(),
        }
    }

    /// Acquires or renews the lease; returns whether we lead. On a database error leadership
    /// simply runs out at the local deadline.
    pub async fn lease_step(&self) -> Result<bool, SchedulerError> {
        let was = self.is_leader();
        let state = self.lease.try_acquire().await;
        let until = match &state {
            Ok(LeaseState::Held { until }) => Some(*until),
            Ok(LeaseState::NotHeld) => None,
            Err(_) => *self.leader_until.lock().expect("not poisoned"),
        };
        *self.leader_until.lock().expect("not poisoned") = until;
        let now_leader = self.is_leader();
        metrics::gauge!(METRIC_LEADER).set(if now_leader { 1.0 } else { 0.0 });
        if now_leader && !was {
            tracing::info!(
                lease = self.lease.name(),
                holder = self.lease.holder(),
                "became leader"
            );
        } else if was && !now_leader {
            tracing::warn!(lease = self.lease.name(), "lost leadership");
        }
        state.map(|_| now_leader)
    }

    /// Gives up leadership (SIGTERM): stop enqueueing, then delete the lease row so another
    /// replica takes over at its next renew instead of after expiry.
    pub async fn release(&self) -> Result<(), SchedulerError> {
        *self.leader_until.lock().expect("not poisoned") = None;
        metrics::gauge!(METRIC_LEADER).set(0.0);
        // Let an enqueue that already claimed its tick finish sending it, so a clean shutdown
        // leaves nothing pending for the next leader to re-send.
        let _in_flight = self.fire_lock.lock().await;
        self.lease.release().await
    }

    /// Everything a leader does periodically at `now`: re-send ticks a crashed leader left
    /// pending, enqueue each schedule's due tick (on time or catch-up), and the start-up jobs
    /// once per process. Does nothing when not leader.
    pub async fn reconcile(&self, now: DateTime<Utc>) -> Result<(), SchedulerError> {
        if !self.is_leader() {
            return Ok(());
        }
        let first = !self.started.load(std::sync::atomic::Ordering::SeqCst);
        self.resend_pending().await?;
        for s in &self.schedules {
            self.due(s, now).await?;
        }
        if first {
            for s in self.schedules.iter().filter(|s| s.spec.run_at_start) {
                self.fire_start(s, now).await?;
            }
            let pruned = self
                .ledger
                .prune(&self.names, LEDGER_RETENTION_DAYS)
                .await?;
            if pruned > 0 {
                tracing::debug!(pruned, "pruned old ledger rows");
            }
            self.started
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// Called by the cron job of `name` when it fires at `now`.
    pub async fn on_tick(&self, name: &str, now: DateTime<Utc>) -> Result<Fired, SchedulerError> {
        if !self.is_leader() {
            return Ok(Fired::NotLeader);
        }
        let s = self.find(name)?;
        self.due(s, now).await
    }

    fn find(&self, name: &str) -> Result<&CompiledSchedule, SchedulerError> {
        self.schedules
            .iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| SchedulerError::UnknownSchedule(name.to_owned()))
    }

    /// Decides and enqueues the due tick of `s` at `now`.
    async fn due(&self, s: &CompiledSchedule, now: DateTime<Utc>) -> Result<Fired, SchedulerError> {
        let _guard = self.fire_lock.lock().await;
        let Some(tick) = s.latest_at_or_before(now) else {
            return Ok(Fired::NothingDue);
        };
        let settled = self
            .settled
            .lock()
            .expect("not poisoned")
            .get(s.name())
            .copied();
        if settled.is_some_and(|t| t >= tick) {
            return Ok(Fired::NothingDue);
        }
        // Every tick within the on-time window is enqueued, not just the latest: a failover
        // gap can span several ticks of a schedule that fires more often than the lease.
        let floor = now - self.grace();
        let window_start = match settled {
            Some(t) if t > floor => t,
            // Only in the first 2 × lease after start can the difference matter, so only then
            // is the ledger asked.
            _ if self.started_at > floor && self.ledger.last_tick(s.name()).await?.is_none() => {
                self.started_at
            }
            _ => floor,
        };
        let on_time = s.between(window_start, now, MAX_TICKS_PER_PASS);
        if !on_time.is_empty() {
            let mut last = Fired::NothingDue;
            for t in on_time {
                last = self
                    .fire(
                        s,
                        t,
                        Reason::Tick,
                        tick_key(s.name(), t),
                        Some(self.fence()),
                    )
                    .await?;
                match last {
                    Fired::Enqueued(_) | Fired::Duplicate => self.settle(s.name(), t),
                    // Not leader, or another claim in flight: stop here, a later pass resumes.
                    _ => break,
                }
            }
            return Ok(last);
        }
        // The latest tick is late: the scheduler was down when it fell.
        let last = self.ledger.last_tick(s.name()).await?;
        let missed = last.is_some_and(|l| l < tick);
        match (s.catch_up(), missed) {
            (CatchUp::Latest, true) => {}
            (_, false) => {
                // Already enqueued (last >= tick) or no history: nothing to catch up.
                self.settle(s.name(), tick);
                return Ok(Fired::NothingDue);
            }
            (CatchUp::Skip, true) => {
                let mut m = self.missed.lock().expect("not poisoned");
                if m.get(s.name()) != Some(&tick) {
                    m.insert(s.name().to_owned(), tick);
                    metrics::counter!(METRIC_MISSED, "schedule" => s.name().to_owned())
                        .increment(1);
                    tracing::info!(schedule = s.name(), %tick, "skipping missed tick (catch_up = skip)");
                }
                return Ok(Fired::NothingDue);
            }
        }
        let fired = self
            .fire(
                s,
                tick,
                Reason::CatchUp,
                tick_key(s.name(), tick),
                Some(self.fence()),
            )
            .await?;
        if matches!(fired, Fired::Enqueued(_) | Fired::Duplicate) {
            self.settle(s.name(), tick);
        }
        Ok(fired)
    }

    fn settle(&self, name: &str, tick: DateTime<Utc>) {
        self.settled
            .lock()
            .expect("not poisoned")
            .insert(name.to_owned(), tick);
    }

    async fn fire_start(
        &self,
        s: &CompiledSchedule,
        now: DateTime<Utc>,
    ) -> Result<Fired, SchedulerError> {
        let _guard = self.fire_lock.lock().await;
        let minute = now
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(now);
        let key = format!("{}@start@{}", s.name(), rfc3339(minute));
        self.fire(s, minute, Reason::Start, key, Some(self.fence()))
            .await
    }

    /// `scheduler trigger`: enqueue `name` now, once, whether or not this process leads. The
    /// payload is rendered for the schedule's latest tick (so a manual rollup covers the most
    /// recent window), the dedup key is `name@manual@<now>`.
    pub async fn trigger(&self, name: &str, now: DateTime<Utc>) -> Result<Fired, SchedulerError> {
        let s = self.find(name)?;
        let tick = s.latest_at_or_before(now).unwrap_or(now);
        let key = format!(
            "{}@manual@{}",
            s.name(),
            now.to_rfc3339_opts(SecondsFormat::Millis, true)
        );
        self.fire(s, tick, Reason::Manual, key, None).await
    }

    /// Claim, send, confirm.
    async fn fire(
        &self,
        s: &CompiledSchedule,
        tick: DateTime<Utc>,
        reason: Reason,
        key: String,
        fence: Option<Fence<'_>>,
    ) -> Result<Fired, SchedulerError> {
        let payload = s
            .payload_at(tick)
            .map_err(|e| SchedulerError::InvalidSchedule {
                name: s.name().to_owned(),
                message: e.to_string(),
            })?;
        let env = Envelope::new(&s.spec.kind, &s.queue, payload).with_dedup_key(&key);
        let claim = self
            .ledger
            .claim(s.name(), tick, reason, &env, self.lease.holder(), fence)
            .await?;
        match claim {
            Claim::Claimed => {}
            Claim::AlreadyEnqueued => {
                metrics::counter!(METRIC_DUPLICATE, "schedule" => s.name().to_owned()).increment(1);
                tracing::debug!(schedule = s.name(), key, "tick already enqueued");
                return Ok(Fired::Duplicate);
            }
            Claim::Pending => return Ok(Fired::Pending),
            Claim::NotLeader => {
                // The database disagrees with our local view: stop acting as leader now.
                *self.leader_until.lock().expect("not poisoned") = None;
                metrics::gauge!(METRIC_LEADER).set(0.0);
                return Ok(Fired::NotLeader);
            }
        }
        if self.producer.send(&env).await? == Sent::Duplicate {
            // The broker's own check on the tick's key: its job is already queued.
            tracing::info!(
                schedule = s.name(),
                key,
                "the broker already holds this tick's job"
            );
        }
        self.ledger.mark_enqueued(&key).await?;
        metrics::counter!(METRIC_ENQUEUED, "schedule" => s.name().to_owned()).increment(1);
        tracing::info!(schedule = s.name(), key, job_id = %env.id, queue = %env.queue, reason = reason.as_str(), "enqueued");
        Ok(Fired::Enqueued(env.id))
    }

    /// Re-sends ticks a crashed leader claimed but never confirmed.
    async fn resend_pending(&self) -> Result<(), SchedulerError> {
        let stale = self
            .ledger
            .take_stale_pending(
                &self.names,
                self.lease.duration(),
                self.lease.holder(),
                self.fence(),
            )
            .await?;
        for p in stale {
            tracing::warn!(schedule = %p.schedule, key = %p.dedup_key, "re-sending a tick left pending by a crash");
            if self.producer.send(&p.envelope).await? == Sent::Duplicate {
                // The crashed leader's send had gone through after all: not queued twice.
                tracing::info!(schedule = %p.schedule, key = %p.dedup_key, "the broker already holds this tick's job");
            }
            self.ledger.mark_enqueued(&p.dedup_key).await?;
            metrics::counter!(METRIC_ENQUEUED, "schedule" => p.schedule).increment(1);
        }
        Ok(())
    }

    /// For `scheduler list`: each schedule with its next `n` fire times after `now` and its
    /// last ledger row.
    pub async fn overview(
        &self,
        now: DateTime<Utc>,
        n: usize,
    ) -> Result<Vec<ScheduleOverview>, SchedulerError> {
        let mut out = Vec::with_capacity(self.schedules.len());
        for s in &self.schedules {
            out.push(ScheduleOverview {
                name: s.name().to_owned(),
                cron: s.spec.cron.clone(),
                timezone: s.spec.timezone.clone(),
                kind: s.spec.kind.clone(),
                queue: s.queue.clone(),
                catch_up: match s.catch_up() {
                    CatchUp::Skip => "skip",
                    CatchUp::Latest => "latest",
                },
                run_at_start: s.spec.run_at_start,
                next: s.next_after(now, n),
                last: self.ledger.last_enqueue(s.name()).await?,
            });
        }
        Ok(out)
    }
}

/// One row of `scheduler list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScheduleOverview {
    /// Name.
    pub name: String,
    /// Expression as configured.
    pub cron: String,
    /// Time zone.
    pub timezone: String,
    /// Job kind.
    pub kind: String,
    /// Target queue.
    pub queue: String,
    /// `skip` or `latest`.
    pub catch_up: &'static str,
    /// Enqueued at start-up too.
    pub run_at_start: bool,
    /// Next fire times.
    pub next: Vec<DateTime<Utc>>,
    /// Last ledger row.
    pub last: Option<LastEnqueue>,
}

/// The dedup key of a cron tick: `name@<tick, RFC 3339 UTC>`.
pub fn tick_key(name: &str, tick: DateTime<Utc>) -> String {
    format!("{name}@{}", rfc3339(tick))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
