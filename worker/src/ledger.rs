//! The one place jobs are counted. Every settled delivery goes through [`Ledger::record`], which
//! feeds both the Prometheus counters (`jobfleet_jobs_*_total`) and the pool's own figures
//! (read by the admin page, `worker queues` and CloudWatch), by one rule: a delivery counts
//! once it is settled, and "failed" means an attempt failed ([`Outcome::is_failed_attempt`]).
//! A delivery left unsettled (lease lost, a settle write failed) counts nothing here: it is
//! delivered again and counted then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
        if settled.failed() {
            self.failed.fetch_add(1, Ordering::SeqCst);
            count("jobfleet_jobs_failed_total", queue, kind);
        }
        match settled {
            Settled::Succeeded { .. } => {
                self.succeeded.fetch_add(1, Ordering::SeqCst);
                count("jobfleet_jobs_succeeded_total", queue, kind);
            }
            Settled::Retried { .. } => count("jobfleet_jobs_retried_total", queue, kind),
            Settled::DeadLettered { .. } => {
                self.dead_lettered.fetch_add(1, Ordering::SeqCst);
                count("jobfleet_jobs_dead_lettered_total", queue, kind);
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

/// A handler is about to run (before it is known how it ends).
pub fn started(queue: &str, kind: &str) {
    count("jobfleet_jobs_started_total", queue, kind);
}

/// A handler finished (by itself or by the timeout) after `elapsed`.
pub fn ran(queue: &str, kind: &str, elapsed: Duration) {
    metrics::histogram!("jobfleet_job_duration_seconds", "queue" => queue.to_owned(), "kind" => kind.to_owned())
        .record(elapsed.as_secs_f64());
}

fn count(name: &'static str, queue: &str, kind: &str) {
    metrics::counter!(name, "queue" => queue.to_owned(), "kind" => kind.to_owned()).increment(1);
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
