//! Adaptive concurrency: how many slots each pool should have, from its queue's backlog.
//!
//! target = clamp(ceil((visible + in_flight) / jobs_per_slot), min, max). A higher reading is
//! applied at once so a burst is picked up within a sampling interval; a lower one only after
//! it has held for the whole cooldown, so a queue that empties between two bursts keeps its
//! slots instead of flapping. [`Controller`] is the pure rule; [`control_loop`] samples every
//! pool, runs the rule, shares the budget ([`crate::budget`]) and resizes the pools.

use std::sync::Arc;
use std::time::Duration;

use queues::Broker;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::budget::{Demand, allocate};
use crate::flag::until_set;
use crate::pool::Pool;
use runtime::config::QueueConfig;

/// The scaling rule for one pool.
#[derive(Debug, Clone)]
pub struct Controller {
    min: usize,
    max: usize,
    jobs_per_slot: usize,
    cooldown: Duration,
    current: usize,
    /// Since when every reading has been lower than `current`.
    lower_since: Option<Instant>,
}

impl Controller {
    /// A controller starting at `min`.
    pub fn new(q: &QueueConfig, cooldown: Duration) -> Self {
        Controller {
            min: q.min,
            max: q.max.max(q.min),
            jobs_per_slot: q.jobs_per_slot.max(1),
            cooldown,
            current: q.min,
            lower_since: None,
        }
    }

    /// What the backlog alone asks for.
    pub fn desired(&self, backlog: u64) -> usize {
        let per = self.jobs_per_slot as u64;
        let slots = backlog.div_ceil(per).min(usize::MAX as u64) as usize;
        slots.clamp(self.min, self.max)
    }

    /// The target now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Feeds one reading taken at `now`; returns the new target.
    pub fn observe(&mut self, backlog: u64, now: Instant) -> usize {
        let want = self.desired(backlog);
        if want >= self.current {
            self.current = want;
            self.lower_since = None;
            return self.current;
        }
        // Every reading since `since` was below the current target; once that has lasted the
        // cooldown, follow the latest one, so a drained queue is back at min one cooldown after
        // it emptied.
        let since = *self.lower_since.get_or_insert(now);
        if now.duration_since(since) >= self.cooldown {
            self.current = want;
            self.lower_since = None;
        }
        self.current
    }
}

/// Samples every pool's queue each `interval` until `stop` turns true: sets the targets, shares
/// `budget` among them and resizes the pools. A failed depth reading keeps the last target.
pub async fn control_loop(
    broker: Arc<dyn Broker>,
    pools: Vec<Arc<Pool>>,
    budget: usize,
    interval: Duration,
    cooldown: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut controllers: Vec<Controller> = pools
        .iter()
        .map(|p| Controller::new(&p.cfg, cooldown))
        .collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = until_set(&mut stop) => return,
        }
        let now = Instant::now();
        for (pool, ctl) in pools.iter().zip(controllers.iter_mut()) {
            match broker.depth(&pool.queue).await {
                Ok(depth) => {
                    pool.record_depth(&depth);
                    ctl.observe(depth.backlog(), now);
                }
                Err(e) => {
                    tracing::warn!(queue = %pool.queue, error = %e, "cannot read queue depth; keeping the pool size");
                }
            }
        }
        let demands: Vec<Demand> = pools
            .iter()
            .zip(&controllers)
            .map(|(p, c)| Demand {
                priority: p.cfg.priority,
                min: p.cfg.min,
                target: c.current(),
            })
            .collect();
        let granted = allocate(budget, &demands);
        for ((pool, ctl), g) in pools.iter().zip(&controllers).zip(granted) {
            pool.resize(ctl.current(), g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(min: usize, max: usize, per: usize) -> QueueConfig {
        QueueConfig {
            min,
            max,
            jobs_per_slot: per,
            ..QueueConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn up_at_once_down_after_cooldown() {
        let mut c = Controller::new(&q(2, 20, 10), Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(c.current(), 2);
        assert_eq!(c.observe(0, t0), 2);
        assert_eq!(c.observe(95, t0), 10, "ceil(95/10)");
        assert_eq!(c.observe(10_000, t0), 20, "clamped to max");
        let t = |s| t0 + Duration::from_secs(s);
        assert_eq!(c.observe(0, t(1)), 20);
        assert_eq!(c.observe(50, t(20)), 20, "still cooling down");
        assert_eq!(c.observe(0, t(31)), 2, "back to min after the cooldown");
        assert_eq!(c.observe(30, t(32)), 3, "up again at once");
        assert_eq!(c.observe(0, t(40)), 3);
        assert_eq!(
            c.observe(40, t(50)),
            4,
            "a higher reading resets the cooldown"
        );
        assert_eq!(c.observe(0, t(60)), 4);
        assert_eq!(c.observe(0, t(89)), 4);
        assert_eq!(c.observe(0, t(90)), 2);
    }

    #[test]
    fn desired_clamps() {
        let c = Controller::new(&q(1, 4, 3), Duration::ZERO);
        assert_eq!(c.desired(0), 1);
        assert_eq!(c.desired(7), 3);
        assert_eq!(c.desired(u64::MAX), 4);
    }
}
