//! The DLQ side: listing, lookup and the scan that replay and purge run on.
//!
//! AMQP cannot browse a queue without taking its messages, so every pass takes messages with
//! `basic.get` (manual ack) on a channel of its own and gives back what it does not delete by
//! closing that channel; the broker puts them back in their original place (the DLQ is a
//! classic queue). A pass is bounded by the count at its start, so it always ends. While a pass
//! holds entries, other listings do not see them; if the process dies, the connection drop
//! returns them at once.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lapin::Channel;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::ChannelId;
use tokio::time::Instant;

use super::topology::{self, H_BROKER_ID, H_DEAD_AT, H_REASON};
use super::{Inner, RabbitBroker, is_soft};
use crate::broker::{DeadLetters, DlqEntry, DlqPage, DlqScan};
use crate::error::{QueueError, Result};

#[async_trait]
impl DeadLetters for RabbitBroker {
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage> {
        list(&self.inner, queue, limit, cursor).await
    }

    async fn dlq_get(&self, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
        get(&self.inner, queue, id).await
    }

    async fn dlq_scan(&self, queue: &str, hold: Duration) -> Result<Box<dyn DlqScan>> {
        scan(&self.inner, queue, hold).await
    }
}

fn entry(queue: &str, d: &AmqpDelivery) -> DlqEntry {
    let h = d.properties.headers().as_ref();
    let reason = topology::header_str(h, H_REASON)
        .or_else(|| {
            // Dead-lettered by the broker itself (a policy's delivery limit or TTL).
            topology::header_str(h, "x-first-death-reason")
                .map(|r| format!("dead-lettered by the broker: {r}"))
        })
        .unwrap_or_else(|| "no reason recorded".to_owned());
    let at = topology::header_str(h, H_DEAD_AT)
        .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            d.properties
                .timestamp()
                .and_then(|t| DateTime::<Utc>::from_timestamp(i64::try_from(t).ok()?, 0))
        });
    let broker_id = topology::header_str(h, H_BROKER_ID)
        .or_else(|| {
            d.properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
        })
        .unwrap_or_else(|| topology::body_id(&d.data));
    DlqEntry::new(
        queue,
        &d.data,
        reason,
        at,
        d.delivery_tag.to_string(),
        &broker_id,
    )
}

/// Takes the next DLQ message on `ch`; `None` when the DLQ is empty or does not exist.
async fn take(inner: &Inner, ch: &Channel, dlq: &str) -> Result<Option<AmqpDelivery>> {
    match ch
        .basic_get(dlq.into(), BasicGetOptions { no_ack: false })
        .await
    {
        Ok(m) => Ok(m.map(|m| m.delivery)),
        Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => Ok(None),
        Err(e) => Err(inner.err("basic.get", e)),
    }
}

/// Gives back everything `ch` holds (the broker requeues unacked messages of a closed channel).
async fn release(ch: &Channel) {
    if ch.status().connected() {
        let _ = ch.close(200, "jobfleet: DLQ pass done".into()).await;
    }
}

/// A listing in progress: the channel holding the entries before the cursor (taken, unacked)
/// and the first entry of the next page. The cursor stays a plain offset, valid in any process;
/// a session only saves the next page of this process from skipping the first `offset`
/// entries again, which is what makes paging through 100k entries linear instead of quadratic.
pub(crate) struct ListSession {
    ch: Channel,
    /// Entries before `pending`.
    position: usize,
    pending: Option<AmqpDelivery>,
    last_used: Instant,
}

/// An unused listing gives its entries back after this.
const SESSION_IDLE: Duration = Duration::from_secs(30);

pub(crate) async fn list(
    inner: &Arc<Inner>,
    queue: &str,
    limit: usize,
    cursor: Option<&str>,
) -> Result<DlqPage> {
    let offset: usize = DlqPage::numeric_cursor(cursor)?;
    if limit == 0 {
        return Ok(DlqPage::default());
    }
    let dlq = inner.names.dlq(queue);
    let mut sessions = inner.list_sessions.lock().await;
    let mut s = match sessions.remove(queue) {
        Some(s) if s.position == offset && s.ch.status().connected() => s,
        other => {
            if let Some(old) = other {
                release(&old.ch).await;
            }
            ListSession {
                ch: inner.channel().await?,
                position: 0,
                pending: None,
                last_used: Instant::now(),
            }
        }
    };
    let res = page(inner, &dlq, queue, &mut s, offset, limit).await;
    match res {
        Ok((entries, more)) if more => {
            s.last_used = Instant::now();
            let id = s.ch.id();
            sessions.insert(queue.to_owned(), s);
            tokio::spawn(expire_session(Arc::downgrade(inner), queue.to_owned(), id));
            Ok(DlqPage {
                next_cursor: Some((offset + entries.len()).to_string()),
                entries,
            })
        }
        Ok((entries, _)) => {
            release(&s.ch).await;
            Ok(DlqPage {
                entries,
                next_cursor: None,
            })
        }
        Err(e) => {
            release(&s.ch).await;
            Err(e)
        }
    }
}

/// Moves `s` to `offset` (skipping entries on a fresh session), takes up to `limit` entries
/// and one more to know whether another page follows (kept as `pending`).
async fn page(
    inner: &Inner,
    dlq: &str,
    queue: &str,
    s: &mut ListSession,
    offset: usize,
    limit: usize,
) -> Result<(Vec<DlqEntry>, bool)> {
    while s.position < offset {
        if s.pending.take().is_none() && take(inner, &s.ch, dlq).await?.is_none() {
            return Ok((Vec::new(), false));
        }
        s.position += 1;
    }
    let mut entries = Vec::new();
    while entries.len() < limit {
        let next = match s.pending.take() {
            Some(d) => Some(d),
            None => take(inner, &s.ch, dlq).await?,
        };
        let Some(d) = next else {
            return Ok((entries, false));
        };
        entries.push(entry(queue, &d));
        s.position += 1;
    }
    s.pending = take(inner, &s.ch, dlq).await?;
    Ok((entries, s.pending.is_some()))
}

async fn expire_session(inner: Weak<Inner>, queue: String, id: ChannelId) {
    loop {
        tokio::time::sleep(SESSION_IDLE).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut sessions = inner.list_sessions.lock().await;
        match sessions.get(&queue) {
            Some(s) if s.ch.id() == id => {
                if s.last_used.elapsed() >= SESSION_IDLE {
                    if let Some(s) = sessions.remove(&queue) {
                        release(&s.ch).await;
                    }
                    return;
                }
            }
            _ => return,
        }
    }
}

/// Gives back what a listing of `queue` holds, so a replay, purge or lookup sees every entry.
async fn end_listing(inner: &Inner, queue: &str) {
    if let Some(s) = inner.list_sessions.lock().await.remove(queue) {
        release(&s.ch).await;
    }
}

pub(crate) async fn get(inner: &Inner, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
    end_listing(inner, queue).await;
    let dlq = inner.names.dlq(queue);
    let mut ch = inner.channel().await?;
    let count = inner.ready_count(&mut ch, &dlq).await?;
    let mut found = None;
    let mut res = Ok(());
    for _ in 0..count {
        match take(inner, &ch, &dlq).await {
            Ok(Some(d)) => {
                let e = entry(queue, &d);
                if e.id == id {
                    found = Some(e);
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    release(&ch).await;
    res.map(|()| found)
}

pub(crate) async fn scan(
    inner: &Arc<Inner>,
    queue: &str,
    _hold: Duration,
) -> Result<Box<dyn DlqScan>> {
    end_listing(inner, queue).await;
    let dlq = inner.names.dlq(queue);
    let mut ch = inner.channel().await?;
    let remaining = inner.ready_count(&mut ch, &dlq).await?;
    Ok(Box::new(RabbitScan {
        inner: inner.clone(),
        queue: queue.to_owned(),
        dlq,
        ch: Some(ch),
        remaining,
    }))
}

struct RabbitScan {
    inner: Arc<Inner>,
    queue: String,
    dlq: String,
    /// `None` once finished.
    ch: Option<Channel>,
    /// Messages left of those in the DLQ when the pass started: what it still may take.
    remaining: u64,
}

impl RabbitScan {
    fn channel(&self) -> Result<&Channel> {
        self.ch
            .as_ref()
            .ok_or_else(|| QueueError::Config("DLQ scan used after finish".to_owned()))
    }
}

#[async_trait]
impl DlqScan for RabbitScan {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>> {
        let mut out = Vec::new();
        while out.len() < max && self.remaining > 0 {
            let d = take(&self.inner, self.channel()?, &self.dlq).await?;
            match d {
                Some(d) => {
                    self.remaining -= 1;
                    out.push(entry(&self.queue, &d));
                }
                None => self.remaining = 0,
            }
        }
        Ok(out)
    }

    async fn remove(&mut self, e: &DlqEntry) -> Result<()> {
        let tag: u64 = e
            .handle
            .parse()
            .map_err(|_| QueueError::Config(format!("bad DLQ handle `{}`", e.handle)))?;
        self.channel()?
            .basic_ack(tag, BasicAckOptions::default())
            .await
            .map_err(|err| self.inner.err("basic.ack", err))
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        if let Some(ch) = self.ch.take() {
            release(&ch).await;
        }
        Ok(())
    }
}

impl Drop for RabbitScan {
    fn drop(&mut self) {
        // Dropped mid-pass (an interrupted replay): give the entries back now rather than when
        // the connection closes. Dropping the last handle closes the channel too; this makes
        // it prompt and explicit.
        if let (Some(ch), Ok(rt)) = (self.ch.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { release(&ch).await });
        }
    }
}
