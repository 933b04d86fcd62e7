//! What a running worker knows about each of its pools, as plain numbers: read by the admin
//! page, `worker queues` and the CloudWatch publisher. Counters are cumulative since start, so a
//! reader that wants "per interval" keeps the previous snapshot and subtracts.

use serde::Serialize;

/// One pool's figures at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolSnapshot {
    /// Queue the pool consumes.
    pub queue: String,
    /// Priority class name.
    pub priority: String,
    /// Slots the control loop wants now.
    pub target: usize,
    /// Slots granted by the shared budget.
    pub granted: usize,
    /// Jobs running now.
    pub running: usize,
    /// Jobs that succeeded since start.
    pub succeeded: u64,
    /// Attempts that failed since start, retried or dead-lettered (the rule is in `ledger.rs`).
    pub failed: u64,
    /// Jobs sent to the DLQ since start.
    pub dead_lettered: u64,
}

/// Anything that can report its pools (the worker; a fake in tests).
pub trait SnapshotSource: Send + Sync {
    /// Figures for every pool.
    fn snapshot(&self) -> Vec<PoolSnapshot>;
}
