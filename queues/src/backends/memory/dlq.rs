//! The in-memory dead-letter store: listing pages and the replay/purge scan.

use std::time::Duration;

use async_trait::async_trait;

use super::{Dead, MemoryBroker};
use crate::broker::{DeadLetters, DlqEntry, DlqPage, DlqScan};
use crate::error::Result;

fn dlq_entry(queue: &str, seq: u64, d: &Dead) -> DlqEntry {
    DlqEntry::new(
        queue,
        &d.body,
        d.reason.clone(),
        Some(d.at),
        seq.to_string(),
        &d.broker_id,
    )
}

#[async_trait]
impl DeadLetters for MemoryBroker {
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage> {
        let after = DlqPage::numeric_cursor::<u64>(cursor)?;
        let mut st = self.lock();
        let q = st.queue(queue);
        let entries: Vec<DlqEntry> = q
            .dead
            .range(after + 1..)
            .take(limit.saturating_add(1))
            .map(|(seq, d)| dlq_entry(queue, *seq, d))
            .collect();
        Ok(DlqPage::from_overfetch(entries, limit))
    }

    async fn dlq_scan(&self, queue: &str, _hold: Duration) -> Result<Box<dyn DlqScan>> {
        let end = self.lock().next_seq;
        Ok(Box::new(MemoryScan {
            broker: self.clone(),
            queue: queue.to_owned(),
            after: 0,
            end,
        }))
    }
}

struct MemoryScan {
    broker: MemoryBroker,
    queue: String,
    after: u64,
    /// Entries dead-lettered after the scan started are left for the next pass, so a replayed
    /// job that fails again at once can't keep a replay going forever.
    end: u64,
}

#[async_trait]
impl DlqScan for MemoryScan {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>> {
        if self.after >= self.end {
            return Ok(Vec::new());
        }
        let mut st = self.broker.lock();
        let q = st.queue(&self.queue);
        let batch: Vec<DlqEntry> = q
            .dead
            .range(self.after + 1..=self.end)
            .take(max)
            .map(|(seq, d)| dlq_entry(&self.queue, *seq, d))
            .collect();
        if let Some(last) = batch.last() {
            self.after = last.handle.parse().unwrap_or(self.end);
        }
        Ok(batch)
    }

    async fn remove(&mut self, entry: &DlqEntry) -> Result<()> {
        let seq: u64 = DlqPage::numeric_cursor::<u64>(Some(&entry.handle))?;
        self.broker.lock().queue(&self.queue).dead.remove(&seq);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
