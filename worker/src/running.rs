//! The jobs this process is running now, for its registry report: the fleet registry lists them
//! so that "where is job X?" (`worker job`, the dashboard's job page) can name the worker, its
//! host and pid, and since when (docs/decisions.md D78).
//!
//! This sits on the job path, so it costs one short mutex hold at a handler's start and one at
//! its end, one allocation (the id) per job, and no I/O: the report reads it once per sample
//! interval. Queue and kind names are interned, since they repeat and are few.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use fleet::registry::RunningJob;

struct Entry {
    id: String,
    queue: Arc<str>,
    kind: Arc<str>,
    started_at: DateTime<Utc>,
}

#[derive(Default)]
struct Inner {
    /// Keyed by a token, not the job id: one id may run twice here at once (a redelivered twin
    /// after a lost lease, or a producer that reuses ids), and each run ends on its own.
    jobs: HashMap<u64, Entry>,
    next: u64,
    names: HashSet<Arc<str>>,
}

impl Inner {
    fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(s);
        self.names.insert(n.clone());
        n
    }
}

/// The running jobs of one process. Off until [`RunningJobs::enable`]: a worker that reports
/// to no registry (no fleet, in-process tests) pays nothing.
#[derive(Default)]
pub struct RunningJobs {
    enabled: AtomicBool,
    inner: Mutex<Inner>,
}

/// Removes its job from the list when dropped, however the handler's run ended.
pub struct Started<'a> {
    jobs: &'a RunningJobs,
    token: u64,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        self.jobs.lock().jobs.remove(&self.token);
    }
}

impl RunningJobs {
    /// Starts keeping the list (the worker joined a fleet that reads it).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handler of `kind` for job `id` of `queue` starts now; it is listed until the guard
    /// is dropped. `None` while the list is off.
    pub fn start(&self, id: &str, queue: &str, kind: &str) -> Option<Started<'_>> {
        if !self.enabled.load(Ordering::Relaxed) {
            return None;
        }
        let started_at = Utc::now();
        let id = id.to_owned();
        let mut inner = self.lock();
        let entry = Entry {
            id,
            queue: inner.name(queue),
            kind: inner.name(kind),
            started_at,
        };
        let token = inner.next;
        inner.next = inner.next.wrapping_add(1);
        inner.jobs.insert(token, entry);
        Some(Started { jobs: self, token })
    }

    /// How many jobs are listed now.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Whether no job is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The running jobs for a report, oldest first, at most `cap`, and how many were left out.
    /// The oldest are kept since they are the ones an operator most likely looks for.
    pub fn report(&self, cap: usize) -> (Vec<RunningJob>, u64) {
        let inner = self.lock();
        let mut all: Vec<&Entry> = inner.jobs.values().collect();
        let omitted = all.len().saturating_sub(cap);
        if omitted > 0 {
            all.select_nth_unstable_by_key(cap, |e| e.started_at);
            all.truncate(cap);
        }
        all.sort_by_key(|e| e.started_at);
        let listed = all
            .into_iter()
            .map(|e| RunningJob {
                id: e.id.clone(),
                queue: e.queue.to_string(),
                kind: e.kind.to_string(),
                started_at: e.started_at,
            })
            .collect();
        (listed, omitted as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_until_enabled() {
        let r = RunningJobs::default();
        assert!(r.start("a", "q", "k").is_none());
        assert!(r.is_empty());
        r.enable();
        let g = r.start("a", "q", "k");
        assert!(g.is_some());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn listed_while_running_and_gone_when_the_guard_drops() {
        let r = RunningJobs::default();
        r.enable();
        let a = r.start("job-a", "emails", "send").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        // The same id twice: both runs are listed, and each ends on its own.
        let b = r.start("job-b", "emails", "send").unwrap();
        let b2 = r.start("job-b", "reports", "build").unwrap();
        let (listed, omitted) = r.report(10);
        assert_eq!(omitted, 0);
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].id, "job-a", "oldest first");
        assert_eq!(
            (listed[0].queue.as_str(), listed[0].kind.as_str()),
            ("emails", "send")
        );
        drop(b);
        let (listed, _) = r.report(10);
        let ids: Vec<(&str, &str)> = listed
            .iter()
            .map(|j| (j.id.as_str(), j.queue.as_str()))
            .collect();
        assert_eq!(ids, vec![("job-a", "emails"), ("job-b", "reports")]);
        drop((a, b2));
        assert!(r.report(10).0.is_empty());
    }

    #[test]
    fn the_cap_keeps_the_oldest_and_counts_the_rest() {
        let r = RunningJobs::default();
        r.enable();
        let mut guards = Vec::new();
        for i in 0..20 {
            guards.push(r.start(&format!("j{i}"), "q", "k").unwrap());
            // Distinct start times, so "oldest" is well defined.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (listed, omitted) = r.report(5);
        assert_eq!(omitted, 15);
        let ids: Vec<&str> = listed.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids, vec!["j0", "j1", "j2", "j3", "j4"]);
    }
}
