//! DLQ replay and purge, written once over [`DlqScan`] so every backend gets the same filters,
//! rate limit, dry run and crash safety; the filter as operators type it ([`FilterSpec`]) and
//! browsing with a cursor or grouped by error ([`list_matching`], [`group_by_error`]), shared
//! by the CLI and the dashboard.
//!
//! Replay writes a batch to the source queue (confirmed by the broker) before it removes those
//! entries from the DLQ, so a replay killed at any point loses nothing: at worst an entry is in
//! both places and runs once more, which at-least-once jobs already allow.

mod browse;
mod spec;

pub use browse::{ErrorGroup, ErrorGroups, MatchPage, group_by_error, list_matching, signature};
pub use spec::{FilterError, FilterSpec, parse_time};

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::Serialize;
use tokio::time::Instant;

use crate::broker::{Broker, DlqEntry};
use crate::error::Result;

/// Which DLQ entries an operation applies to. Empty filter: all of them.
#[derive(Debug, Clone, Default)]
pub struct DlqFilter {
    /// Only this job kind.
    pub kind: Option<String>,
    /// Only entries whose reason or any history error matches.
    pub error: Option<Regex>,
    /// Only entries dead-lettered at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only entries dead-lettered before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only entries that failed at least this many times.
    pub min_attempts: Option<u32>,
    /// Only these entry ids (the dashboard's selection).
    pub ids: Option<BTreeSet<String>>,
}

impl DlqFilter {
    /// Whether `e` passes every condition set. A malformed body (no envelope) passes only filters
    /// that don't look inside the envelope.
    pub fn matches(&self, e: &DlqEntry) -> bool {
        if let Some(ids) = &self.ids
            && !ids.contains(&e.id)
        {
            return false;
        }
        if let Some(kind) = &self.kind
            && e.envelope.as_ref().map(|env| &env.kind) != Some(kind)
        {
            return false;
        }
        if let Some(min) = self.min_attempts {
            let failed = e.envelope.as_ref().map_or(0, |env| env.errors.len() as u32);
            if failed < min {
                return false;
            }
        }
        if let Some(re) = &self.error {
            let in_history = e
                .envelope
                .as_ref()
                .is_some_and(|env| env.errors.iter().any(|r| re.is_match(&r.error)));
            if !re.is_match(&e.reason) && !in_history {
                return false;
            }
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(at) = entry_time(e) else {
                return false;
            };
            if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at >= u) {
                return false;
            }
        }
        true
    }

    /// A one-line description for audit logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(k) = &self.kind {
            parts.push(format!("kind={k}"));
        }
        if let Some(r) = &self.error {
            parts.push(format!("error=/{}/", r.as_str()));
        }
        if let Some(s) = &self.since {
            parts.push(format!("since={}", s.to_rfc3339()));
        }
        if let Some(u) = &self.until {
            parts.push(format!("until={}", u.to_rfc3339()));
        }
        if let Some(m) = &self.min_attempts {
            parts.push(format!("min_attempts={m}"));
        }
        if let Some(ids) = &self.ids {
            let shown: Vec<&str> = ids.iter().take(5).map(String::as_str).collect();
            let more = ids.len().saturating_sub(shown.len());
            parts.push(if more > 0 {
                format!("ids={} (+{more} more)", shown.join(","))
            } else {
                format!("ids={}", shown.join(","))
            });
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(" ")
        }
    }
}

/// When an entry was dead-lettered: the backend's timestamp, else the last failure, else when
/// it was enqueued.
fn entry_time(e: &DlqEntry) -> Option<DateTime<Utc>> {
    e.dead_lettered_at.or_else(|| {
        e.envelope
            .as_ref()
            .and_then(|env| env.errors.last().map(|r| r.at).or(Some(env.enqueued_at)))
    })
}

/// How a replay or purge runs.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Stop after this many matching entries.
    pub limit: Option<u64>,
    /// Count what would happen, change nothing.
    pub dry_run: bool,
    /// At most this many entries per second (replay only).
    pub rate: Option<f64>,
    /// Entries read per round trip.
    pub batch: usize,
    /// How long entries read stay reserved if this process dies mid-way.
    pub hold: Duration,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            limit: None,
            dry_run: false,
            rate: None,
            batch: 100,
            hold: Duration::from_secs(60),
        }
    }
}

/// What a replay or purge did. `replayed` counts purged entries for a purge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    /// Entries looked at.
    pub scanned: u64,
    /// Entries that passed the filter (and the limit).
    pub matched: u64,
    /// Entries moved back to the source queue (or deleted, for a purge); 0 on a dry run.
    pub done: u64,
    /// Entries that matched but can't be replayed (malformed bodies).
    pub skipped: u64,
    /// Entries whose write or delete failed; they stay in the DLQ.
    pub failed: u64,
    /// Whether the observer stopped the run early.
    pub interrupted: bool,
}

/// Watches a replay: progress for a CLI bar, and a hook between write and delete that tests use
/// to stop a replay at the worst moment.
pub trait ScanObserver: Send {
    /// Called after each batch.
    fn progress(&mut self, _report: &ScanReport) {}

    /// Called after `entry` was written to the source queue and before it is removed from the
    /// DLQ. `Break` stops the run there, leaving this entry in both places.
    fn written(&mut self, _entry: &DlqEntry) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// An observer that does nothing.
pub struct NoObserver;
impl ScanObserver for NoObserver {}

/// Moves the entries of `queue`'s DLQ that match `filter` back to `queue`: attempt reset to 0,
/// error history kept, unknown fields kept.
pub async fn replay(
    broker: &dyn Broker,
    queue: &str,
    filter: &DlqFilter,
    opts: &ScanOptions,
    observer: &mut dyn ScanObserver,
) -> Result<ScanReport> {
    run(broker, queue, filter, opts, observer, Action::Replay).await
}

/// Deletes the entries of `queue`'s DLQ that match `filter`.
pub async fn purge(
    broker: &dyn Broker,
    queue: &str,
    filter: &DlqFilter,
    opts: &ScanOptions,
    observer: &mut dyn ScanObserver,
) -> Result<ScanReport> {
    run(broker, queue, filter, opts, observer, Action::Purge).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Purge,
}

async fn run(
    broker: &dyn Broker,
    queue: &str,
    filter: &DlqFilter,
    opts: &ScanOptions,
    observer: &mut dyn ScanObserver,
    action: Action,
) -> Result<ScanReport> {
    let mut report = ScanReport::default();
    let mut scan = broker.dlq_scan(queue, opts.hold).await?;
    let started = Instant::now();
    let batch_size = opts.batch.max(1);
    let limit_reached = |r: &ScanReport| opts.limit.is_some_and(|l| r.matched >= l);
    loop {
        if limit_reached(&report) {
            break;
        }
        let batch = scan.next_batch(batch_size).await?;
        if batch.is_empty() {
            break;
        }
        report.scanned += batch.len() as u64;
        let mut chosen: Vec<DlqEntry> = Vec::new();
        for e in batch {
            if limit_reached(&report) {
                break;
            }
            if !filter.matches(&e) {
                continue;
            }
            report.matched += 1;
            if action == Action::Replay && e.envelope.is_none() {
                report.skipped += 1;
                continue;
            }
            chosen.push(e);
        }
        if !opts.dry_run && !chosen.is_empty() {
            if action == Action::Replay {
                let envelopes: Vec<_> = chosen
                    .iter()
                    .map(|e| {
                        let mut env = e.envelope.as_ref().expect("filtered above").for_replay();
                        env.queue = queue.to_owned();
                        env
                    })
                    .collect();
                match broker.send_batch(&envelopes).await {
                    Err(err) => {
                        tracing::warn!(%queue, error = %err, "replay write failed; entries stay in the DLQ");
                        report.failed += chosen.len() as u64;
                        observer.progress(&report);
                        continue;
                    }
                    // A job with a failure history is never a duplicate, but an entry without
                    // one can be: nothing was written, so it must stay in the DLQ.
                    Ok(sent) => {
                        let mut kept = Vec::with_capacity(chosen.len());
                        for (e, s) in chosen.into_iter().zip(sent) {
                            if s.is_enqueued() {
                                kept.push(e);
                            } else {
                                tracing::warn!(%queue, id = %e.id, "not replayed: its dedup_key is held by a newer job; the entry stays in the DLQ");
                                report.skipped += 1;
                            }
                        }
                        chosen = kept;
                    }
                }
            }
            for e in &chosen {
                if action == Action::Replay && observer.written(e).is_break() {
                    report.interrupted = true;
                    observer.progress(&report);
                    // No finish(): behave like a process that died here.
                    return Ok(report);
                }
                match scan.remove(e).await {
                    Ok(()) => report.done += 1,
                    Err(err) => {
                        tracing::warn!(%queue, id = %e.id, error = %err, "DLQ delete failed; the entry stays (a replayed copy may run twice)");
                        report.failed += 1;
                    }
                }
            }
        }
        observer.progress(&report);
        if let Some(rate) = opts.rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(report.matched as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
    }
    scan.finish().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use serde_json::json;

    fn entry(kind: &str, errors: &[&str], reason: &str) -> DlqEntry {
        let mut env = Envelope::new(kind, "q", json!({}));
        for e in errors {
            env.record_failure(*e, "w");
        }
        DlqEntry::new("q", &env.to_bytes(), reason, Some(Utc::now()), "h", "b")
    }

    #[test]
    fn filter_conditions() {
        let a = entry("a", &["timeout", "timeout"], "attempts exhausted");
        let b = entry("b", &["bad payload"], "permanent: bad payload");
        let junk = DlqEntry::new("q", b"{nope", "body is not valid JSON", None, "h", "b");

        assert!(DlqFilter::default().matches(&junk));
        let by_kind = DlqFilter {
            kind: Some("a".into()),
            ..Default::default()
        };
        assert!(by_kind.matches(&a) && !by_kind.matches(&b) && !by_kind.matches(&junk));
        let by_error = DlqFilter {
            error: Some(Regex::new("time.ut").unwrap()),
            ..Default::default()
        };
        assert!(by_error.matches(&a) && !by_error.matches(&b));
        let by_reason = DlqFilter {
            error: Some(Regex::new("^permanent").unwrap()),
            ..Default::default()
        };
        assert!(by_reason.matches(&b) && !by_reason.matches(&a));
        let min2 = DlqFilter {
            min_attempts: Some(2),
            ..Default::default()
        };
        assert!(min2.matches(&a) && !min2.matches(&b));
        let future = DlqFilter {
            since: Some(Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        };
        assert!(!future.matches(&a));
        let past = DlqFilter {
            until: Some(Utc::now() - chrono::Duration::hours(1)),
            ..Default::default()
        };
        assert!(!past.matches(&a));
        assert!(
            !past.matches(&junk),
            "no timestamp at all: a time filter can't match"
        );
        assert_eq!(by_kind.describe(), "kind=a");
        assert_eq!(DlqFilter::default().describe(), "all");
    }
}
