//! Reading a DLQ on SQS, which cannot browse: every read is a receive that hides what it read.
//! A [`Scan`] receives entries with the visibility set to the caller's `hold`, hands them out,
//! deletes the ones removed and gives the rest back (visibility 0) when it finishes. If the
//! process dies first, the entries come back by themselves when `hold` lapses.
//!
//! A pass ends when it has read as many entries as the DLQ held when it started (plus a little
//! slack, the count is approximate), when a receive finds nothing, or when an entry it already
//! read shows up again (its hold lapsed): so a pass always ends, even if replayed jobs fail and
//! are dead-lettered again while it runs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, Utc};

use super::api::{BACKEND, Subject, secs_ceil};
use super::{ATTR_AT, ATTR_REASON, BATCH, Inner, MAX_VISIBILITY_SECS, SqsBroker};
use crate::broker::{DeadLetters, DlqEntry, DlqPage, DlqScan};
use crate::error::{QueueError, Result};

#[async_trait]
impl DeadLetters for SqsBroker {
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage> {
        list(&self.inner, queue, limit, cursor).await
    }

    async fn dlq_get(&self, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
        get(&self.inner, queue, id).await
    }

    async fn dlq_scan(&self, queue: &str, hold: Duration) -> Result<Box<dyn DlqScan>> {
        Ok(Box::new(
            Scan::start(self.inner.clone(), queue, hold).await?,
        ))
    }
}

/// How long a listing or a lookup hides what it reads if it dies before giving it back.
const BROWSE_HOLD: Duration = Duration::from_secs(30);
/// Reason shown for entries SQS moved itself (redrive policy), which carry no jobfleet reason.
const REDRIVEN: &str = "received too many times without being settled (SQS redrive policy: the worker probably crashed while running it)";

pub(crate) struct Scan {
    inner: Arc<Inner>,
    queue: String,
    url: Option<String>,
    hold: i32,
    /// Entries the DLQ held at the start.
    expected: u64,
    /// Reads allowed in this pass.
    budget: u64,
    read: u64,
    seen: HashSet<String>,
    /// Receipt handles handed out and not removed: given back by `finish`.
    held: Vec<String>,
    done: bool,
}

impl Scan {
    pub(crate) async fn start(inner: Arc<Inner>, queue: &str, hold: Duration) -> Result<Scan> {
        let urls = inner.urls(queue, false).await?;
        let mut expected = 0;
        if let Some(url) = &urls.dlq {
            let out = inner
                .client()
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .send()
                .await
                .map_err(|e| {
                    inner
                        .api
                        .err("GetQueueAttributes", Subject::Queue(queue), e)
                })?;
            expected = out
                .attributes()
                .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
        Ok(Scan {
            url: urls.dlq.clone(),
            inner,
            queue: queue.to_owned(),
            hold: secs_ceil(hold, MAX_VISIBILITY_SECS).max(1),
            expected,
            budget: expected + expected / 10 + BATCH as u64,
            read: 0,
            seen: HashSet::new(),
            held: Vec::new(),
            done: false,
        })
    }

    fn entry(&self, m: &aws_sdk_sqs::types::Message, handle: &str, id: &str) -> DlqEntry {
        let attr = |k: &str| {
            m.message_attributes()
                .and_then(|a| a.get(k))
                .and_then(|v| v.string_value())
                .map(str::to_owned)
        };
        let reason = attr(ATTR_REASON).unwrap_or_else(|| REDRIVEN.to_owned());
        let at = attr(ATTR_AT)
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc));
        DlqEntry::new(
            self.queue.clone(),
            m.body().unwrap_or_default().as_bytes(),
            reason,
            at,
            handle,
            id,
        )
    }

    /// Gives back handles without deleting them.
    async fn release(&self, handles: &[String]) -> Result<()> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        let items: Vec<(String, i32)> = handles.iter().map(|h| (h.clone(), 0)).collect();
        // A refused release is harmless: the entry comes back when its hold lapses.
        self.inner
            .set_visibility_many(url, &items)
            .await
            .map(|_| ())
    }
}

/// Message timestamp (ms since the epoch) to order a page.
fn sent_ms(m: &aws_sdk_sqs::types::Message) -> u64 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[async_trait]
impl DlqScan for Scan {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>> {
        let Some(url) = self.url.clone() else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(u64, DlqEntry)> = Vec::new();
        let mut again = Vec::new();
        while out.len() < max && !self.done {
            let want = (max - out.len()).min(BATCH) as u64;
            let want = want.min(self.budget.saturating_sub(self.read));
            if want == 0 {
                self.done = true;
                break;
            }
            // While entries are still expected, long-poll a second so SQS looks on every
            // server; past the count only a quick look for stragglers.
            let wait = if self.read < self.expected { 1 } else { 0 };
            let res = self
                .inner
                .client()
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(want as i32)
                .visibility_timeout(self.hold)
                .wait_time_seconds(wait)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
                .await
                .map_err(|e| {
                    self.inner
                        .api
                        .err("ReceiveMessage", Subject::Queue(&self.queue), e)
                })?;
            if res.messages().is_empty() {
                self.done = true;
                break;
            }
            for m in res.messages() {
                let (Some(handle), Some(id)) = (m.receipt_handle(), m.message_id()) else {
                    continue;
                };
                if !self.seen.insert(id.to_owned()) {
                    again.push(handle.to_owned());
                    self.done = true;
                    continue;
                }
                self.read += 1;
                self.held.push(handle.to_owned());
                out.push((sent_ms(m), self.entry(m, handle, id)));
            }
        }
        if !again.is_empty() {
            self.release(&again).await?;
        }
        out.sort_by_key(|(at, _)| *at);
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    async fn remove(&mut self, entry: &DlqEntry) -> Result<()> {
        let url = self.url.clone().ok_or_else(|| QueueError::QueueNotFound {
            backend: BACKEND,
            queue: format!("{}-dlq", self.queue),
        })?;
        self.inner
            .client()
            .delete_message()
            .queue_url(&url)
            .receipt_handle(&entry.handle)
            .send()
            .await
            .map_err(|e| {
                self.inner
                    .api
                    .err("DeleteMessage", Subject::Message(&entry.id), e)
            })?;
        self.held.retain(|h| h != &entry.handle);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.release(&self.held).await
    }
}

/// One page of a DLQ listing. The cursor is an offset: the page reads `offset + limit + 1`
/// entries, gives them all back, and returns the slice. SQS has no order, so pages are exact
/// only while the DLQ does not change between them (fine for an operator reading pages; use
/// a scan to act on every entry).
pub(crate) async fn list(
    inner: &Arc<Inner>,
    queue: &str,
    limit: usize,
    cursor: Option<&str>,
) -> Result<DlqPage> {
    let offset: usize = DlqPage::numeric_cursor(cursor)?;
    let mut scan = Scan::start(inner.clone(), queue, BROWSE_HOLD).await?;
    let mut entries = Vec::new();
    let want = offset + limit + 1;
    let result = async {
        while entries.len() < want {
            let batch = scan.next_batch(want - entries.len()).await?;
            if batch.is_empty() {
                break;
            }
            entries.extend(batch);
        }
        Ok::<_, QueueError>(())
    }
    .await;
    Box::new(scan).finish().await?;
    result?;
    let more = entries.len() > offset + limit;
    let page: Vec<DlqEntry> = entries.into_iter().skip(offset).take(limit).collect();
    Ok(DlqPage {
        next_cursor: more.then(|| (offset + limit).to_string()),
        entries: page,
    })
}

/// One entry by id: a full pass, everything given back.
pub(crate) async fn get(inner: &Arc<Inner>, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
    let mut scan = Scan::start(inner.clone(), queue, BROWSE_HOLD).await?;
    let found = async {
        loop {
            let batch = scan.next_batch(100).await?;
            if batch.is_empty() {
                return Ok::<_, QueueError>(None);
            }
            if let Some(e) = batch.into_iter().find(|e| e.id == id) {
                return Ok(Some(e));
            }
        }
    }
    .await;
    Box::new(scan).finish().await?;
    found
}
