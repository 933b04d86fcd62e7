//! Redis dead letters: a stream per queue (`ns:q:dlq`) plus an index from entry id to stream
//! id, paged by stream id.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::Value;

use super::keys::Keys;
use super::{RedisBroker, as_bytes, as_string, scripts};
use crate::broker::{DeadLetters, DlqEntry, DlqPage, DlqScan};
use crate::error::{QueueError, Result};

/// One DLQ stream entry as `XRANGE` returns it.
fn dlq_entry(
    queue: &str,
    sid: &str,
    fields: &std::collections::HashMap<String, Value>,
) -> DlqEntry {
    let text = |k: &str| fields.get(k).and_then(as_string).unwrap_or_default();
    let body = fields.get("body").and_then(as_bytes).unwrap_or_default();
    let at = DateTime::parse_from_rfc3339(&text("at"))
        .ok()
        .map(|t| t.with_timezone(&Utc));
    let mut e = DlqEntry::new(queue, body, text("reason"), at, sid, &text("broker_id"));
    // The id the index knows it by, so `dlq_get` and the listing agree.
    let id = text("id");
    if !id.is_empty() {
        e.id = id;
    }
    e
}

impl RedisBroker {
    async fn xrange(
        &self,
        queue: &str,
        keys: &Keys,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<DlqEntry>> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys.dlq)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err_on(keys, "dlq list", e))?;
        Ok(reply
            .ids
            .iter()
            .map(|s| dlq_entry(queue, &s.id, &s.map))
            .collect())
    }
}

fn after(cursor: Option<&str>) -> Result<String> {
    match cursor {
        None => Ok("-".into()),
        Some(c) if is_stream_id(c) => Ok(format!("({c}")),
        Some(c) => Err(QueueError::Config(format!("bad DLQ cursor `{c}`"))),
    }
}

fn is_stream_id(s: &str) -> bool {
    let mut parts = s.splitn(2, '-');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next())
}

#[async_trait]
impl DeadLetters for RedisBroker {
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage> {
        let keys = self.inner.keys(queue);
        let limit = limit.max(1);
        let entries = self
            .xrange(queue, &keys, &after(cursor)?, "+", limit + 1)
            .await?;
        Ok(DlqPage::from_overfetch(entries, limit))
    }

    async fn dlq_get(&self, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
        let keys = self.inner.keys(queue);
        let sid: Option<String> = redis::cmd("HGET")
            .arg(&keys.dlq_index)
            .arg(id)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err_on(&keys, "dlq get", e))?;
        let Some(sid) = sid.filter(|s| is_stream_id(s)) else {
            return Ok(None);
        };
        Ok(self
            .xrange(queue, &keys, &sid, &sid, 1)
            .await?
            .into_iter()
            .next())
    }

    async fn dlq_scan(&self, queue: &str, _hold: Duration) -> Result<Box<dyn DlqScan>> {
        let keys = self.inner.keys(queue);
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&keys.dlq)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err_on(&keys, "dlq scan", e))?;
        Ok(Box::new(RedisScan {
            broker: self.clone(),
            queue: queue.to_owned(),
            keys,
            after: None,
            end: last.ids.first().map(|s| s.id.clone()),
        }))
    }
}

struct RedisScan {
    broker: RedisBroker,
    queue: String,
    keys: Keys,
    after: Option<String>,
    /// The newest entry when the pass started: entries dead-lettered later (a replayed job that
    /// fails again at once) are left for the next pass, so a replay always ends.
    end: Option<String>,
}

#[async_trait]
impl DlqScan for RedisScan {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>> {
        let Some(end) = self.end.clone() else {
            return Ok(Vec::new());
        };
        if self.after.as_deref() == Some(end.as_str()) {
            return Ok(Vec::new());
        }
        let start = after(self.after.as_deref())?;
        let batch = self
            .broker
            .xrange(&self.queue, &self.keys, &start, &end, max.max(1))
            .await?;
        match batch.last() {
            Some(last) => self.after = Some(last.handle.clone()),
            None => self.after = Some(end),
        }
        Ok(batch)
    }

    async fn remove(&mut self, entry: &DlqEntry) -> Result<()> {
        let inner = &self.broker.inner;
        let _: Value = scripts::dlq_remove(&self.keys, &entry.handle, &entry.id)
            .run(&mut inner.conn())
            .await
            .map_err(|e| inner.err_on(&self.keys, "dlq remove", e))?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_stream_ids() {
        assert_eq!(after(None).unwrap(), "-");
        assert_eq!(after(Some("1700000000000-3")).unwrap(), "(1700000000000-3");
        assert!(after(Some("1700000000000")).is_err());
        assert!(after(Some("abc-1")).is_err());
        assert!(after(Some("1-")).is_err());
    }
}
