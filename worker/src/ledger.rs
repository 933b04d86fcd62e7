//! The one place jobs are counted. Every settled delivery goes through [`Ledger::record`], which
//! feeds both the Prometheus counters (`jobfleet_jobs_*_total`) and the pool's own figures
//! (read by the admin page, `worker queues` and CloudWatch), by one rule: a delivery counts
//! once it is settled, and "failed" means an attempt failed ([`Outcome::is_failed_attempt`]).
//! A delivery left unsettled (lease lost, a settle write failed) counts nothing here: it is
//! delivered again and counted then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram};

use crate::verdict::Outcome;

/// Metric label for a body that is not an envelope (no kind to name).
pub const MALFORMED_LABEL: &str = "(malformed)";
/// Metric label for a kind this worker does not run: an arbitrary string from a message must
/// not become a label value (unbounded cardinality).
pub const UNKNOWN_LABEL: &str = "(unknown)";

/// How a delivery ended, with the `kind` label it is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Ran and acked.
    Succeeded { kind: String },
    /// Failed and put back with a delay.
    Retried { kind: String },
    /// Moved to the DLQ; `failed` when an attempt was made and failed.
    DeadLettered { kind: String, failed: bool },
    /// Handed back unrun or cut off on shutdown.
    HandedBack,
    /// Put back unrun by a fleet-wide limit (counted in `jobfleet_limit_held_back_total`).
    HeldBack,
    /// Left alone: the lease was lost, or settling failed and the broker will redeliver it.
    Abandoned,
}

impl Settled {
    /// Whether this counts as a failed attempt.
    pub fn failed(&self) -> bool {
        match self {
            Settled::Retried { .. } => true,
            Settled::DeadLettered { failed, .. } => *failed,
            Settled::Succeeded { .. }
            | Settled::HandedBack
            | Settled::HeldBack
            | Settled::Abandoned => false,
        }
    }

    /// `DeadLettered`, with `failed` taken from the outcome by the one rule.
    pub fn dead_lettered(kind: &str, outcome: &Outcome) -> Settled {
        Settled::DeadLettered {
            kind: kind.to_owned(),
            failed: outcome.is_failed_attempt(),
        }
    }
}

/// One pool's cumulative counts since start.
#[derive(Debug, Default)]
pub struct Ledger {
    succeeded: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
}

impl Ledger {
    /// Counts one settled delivery of `queue` in the metrics and in this ledger.
    pub fn record(&self, queue: &str, settled: &Settled) {
        let kind = match settled {
            Settled::Succeeded { kind }
            | Settled::Retried { kind }
            | Settled::DeadLettered { kind, .. } => kind,
            Settled::HandedBack | Settled::HeldBack | Settled::Abandoned => return,
        };
        let m = handles(queue, kind);
        if settled.failed() {
            self.failed.fetch_add(1, Ordering::SeqCst);
            m.failed.increment(1);
        }
        match settled {
            Settled::Succeeded { .. } => {
                self.succeeded.fetch_add(1, Ordering::SeqCst);
                m.succeeded.increment(1);
            }
            Settled::Retried { .. } => m.retried.increment(1),
            Settled::DeadLettered { .. } => {
                self.dead_lettered.fetch_add(1, Ordering::SeqCst);
                m.dead_lettered.increment(1);
            }
            Settled::HandedBack | Settled::HeldBack | Settled::Abandoned => {}
        }
    }

    /// Jobs acked since start.
    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Ordering::SeqCst)
    }

    /// Failed attempts since start (retried or dead-lettered).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }

    /// Jobs moved to the DLQ since start.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::SeqCst)
    }
}

/// A handler is about to run (before it is known how it ends), for a job its producer
/// enqueued at `enqueued_at`: counted, and its wait in the queue recorded.
pub fn started(queue: &str, kind: &str, enqueued_at: DateTime<Utc>) {
    let m = handles(queue, kind);
    m.started.increment(1);
    // A producer clock ahead of ours would make the wait negative: count it as no wait.
    let waited = (Utc::now() - enqueued_at).to_std().unwrap_or_default();
    m.wait.record(waited.as_secs_f64());
}

/// A handler finished (by itself or by the timeout) after `elapsed`.
pub fn ran(queue: &str, kind: &str, elapsed: Duration) {
    handles(queue, kind).duration.record(elapsed.as_secs_f64());
}

/// The metric handles of one (queue, kind): registered once, then each count is an atomic
/// add. Registering on every count (the `counter!` macro with owned label strings) cost two
/// allocations and a registry lookup per metric per job, several times per job.
struct Handles {
    started: Counter,
    succeeded: Counter,
    failed: Counter,
    retried: Counter,
    dead_lettered: Counter,
    duration: Histogram,
    wait: Histogram,
}

impl Handles {
    fn new(queue: &str, kind: &str) -> Handles {
        let labels = [("queue", queue.to_owned()), ("kind", kind.to_owned())];
        Handles {
            started: metrics::counter!("jobfleet_jobs_started_total", &labels),
            succeeded: metrics::counter!("jobfleet_jobs_succeeded_total", &labels),
            failed: metrics::counter!("jobfleet_jobs_failed_total", &labels),
            retried: metrics::counter!("jobfleet_jobs_retried_total", &labels),
            dead_lettered: metrics::counter!("jobfleet_jobs_dead_lettered_total", &labels),
            duration: metrics::histogram!("jobfleet_job_duration_seconds", &labels),
            wait: metrics::histogram!("jobfleet_job_wait_seconds", &labels),
        }
    }
}

type ByKind = HashMap<String, Arc<Handles>>;

/// Handles by queue, then kind. Kinds are the registered ones plus the two fixed labels, so
/// this stays small. Filled on first use, after the process installed its recorder.
static HANDLES: LazyLock<Mutex<HashMap<String, ByKind>>> = LazyLock::new(Default::default);

fn handles(queue: &str, kind: &str) -> Arc<Handles> {
    let mut all = HANDLES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = all.get(queue).and_then(|k| k.get(kind)) {
        return h.clone();
    }
    let h = Arc::new(Handles::new(queue, kind));
    all.entry(queue.to_owned())
        .or_default()
        .insert(kind.to_owned(), h.clone());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> String {
        "k".into()
    }

    #[test]
    fn one_rule_for_failed_in_the_pool_figures() {
        let l = Ledger::default();
        for s in [
            Settled::Succeeded { kind: kind() },
            Settled::Retried { kind: kind() },
            Settled::Retried { kind: kind() },
            Settled::DeadLettered {
                kind: kind(),
                failed: true,
            },
            Settled::DeadLettered {
                kind: UNKNOWN_LABEL.into(),
                failed: false,
            },
            Settled::HandedBack,
            Settled::Abandoned,
        ] {
            l.record("q", &s);
        }
        assert_eq!((l.succeeded(), l.failed(), l.dead_lettered()), (1, 3, 2));
    }

    #[test]
    fn only_failed_attempts_are_failures() {
        use jobs::JobError;
        let dl = |o: Outcome| Settled::dead_lettered("k", &o).failed();
        assert!(dl(Outcome::Failed(JobError::Permanent("x".into()))));
        assert!(dl(Outcome::Invalid(JobError::Permanent("x".into()))));
        assert!(dl(Outcome::Panicked("x".into())));
        assert!(!dl(Outcome::Malformed("x".into())));
        assert!(!dl(Outcome::CrashLoop { receives: 9 }));
        assert!(!dl(Outcome::UnknownKind {
            kind: "x".into(),
            known: vec![]
        }));
    }
}
