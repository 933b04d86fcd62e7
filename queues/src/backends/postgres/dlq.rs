//! PostgreSQL dead letters: rows of `jobfleet.dead_letters`, paged and scanned by id.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::PgBroker;
use crate::broker::{DeadLetters, DlqEntry, DlqPage, DlqScan};
use crate::error::Result;

fn dlq_row(row: &sqlx::postgres::PgRow) -> std::result::Result<DlqEntry, sqlx::Error> {
    let id: i64 = row.try_get("id")?;
    let queue: String = row.try_get("queue")?;
    let body: String = row.try_get("body")?;
    let reason: String = row.try_get("reason")?;
    let at: DateTime<Utc> = row.try_get("dead_lettered_at")?;
    let broker_id: String = row.try_get("broker_id")?;
    Ok(DlqEntry::new(
        queue,
        body.as_bytes(),
        reason,
        Some(at),
        id.to_string(),
        &broker_id,
    ))
}

impl PgBroker {
    async fn dlq_after(
        &self,
        queue: &str,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<DlqEntry>> {
        let rows = sqlx::query(
            "SELECT id, queue, body, reason, dead_lettered_at, broker_id \
             FROM jobfleet.dead_letters \
             WHERE ns = $1 AND queue = $2 AND id > $3 AND id <= $4 ORDER BY id LIMIT $5",
        )
        .bind(&self.inner.ns)
        .bind(queue)
        .bind(after)
        .bind(upto)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(|e| self.err("dlq list", e))?;
        rows.iter()
            .map(|r| dlq_row(r).map_err(|e| self.err("dlq list", e)))
            .collect()
    }
}

#[async_trait]
impl DeadLetters for PgBroker {
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage> {
        let after = DlqPage::numeric_cursor::<i64>(cursor)?;
        let limit = limit.max(1);
        let entries = self.dlq_after(queue, after, i64::MAX, limit + 1).await?;
        Ok(DlqPage::from_overfetch(entries, limit))
    }

    async fn dlq_get(&self, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
        let row = sqlx::query(
            "SELECT id, queue, body, reason, dead_lettered_at, broker_id FROM jobfleet.dead_letters \
             WHERE ns = $1 AND queue = $2 AND entry_id = $3 ORDER BY id LIMIT 1",
        )
        .bind(&self.inner.ns)
        .bind(queue)
        .bind(id)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(|e| self.err("dlq get", e))?;
        row.map(|r| dlq_row(&r).map_err(|e| self.err("dlq get", e)))
            .transpose()
    }

    async fn dlq_scan(&self, queue: &str, _hold: Duration) -> Result<Box<dyn DlqScan>> {
        // Rows are read, not taken, so nothing needs holding. The pass ends at the highest id
        // present now: entries dead-lettered during a replay wait for the next pass.
        let end: Option<i64> = sqlx::query_scalar(
            "SELECT max(id) FROM jobfleet.dead_letters WHERE ns = $1 AND queue = $2",
        )
        .bind(&self.inner.ns)
        .bind(queue)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(|e| self.err("dlq scan", e))?;
        Ok(Box::new(PgScan {
            broker: self.clone(),
            queue: queue.to_owned(),
            after: 0,
            end: end.unwrap_or(0),
        }))
    }
}

struct PgScan {
    broker: PgBroker,
    queue: String,
    after: i64,
    end: i64,
}

#[async_trait]
impl DlqScan for PgScan {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>> {
        if self.after >= self.end {
            return Ok(Vec::new());
        }
        let batch = self
            .broker
            .dlq_after(&self.queue, self.after, self.end, max.max(1))
            .await?;
        self.after = match batch.last() {
            Some(last) => last.handle.parse().unwrap_or(self.end),
            None => self.end,
        };
        Ok(batch)
    }

    async fn remove(&mut self, entry: &DlqEntry) -> Result<()> {
        let id = DlqPage::numeric_cursor::<i64>(Some(&entry.handle))?;
        sqlx::query("DELETE FROM jobfleet.dead_letters WHERE id = $1 AND ns = $2")
            .bind(id)
            .bind(&self.broker.inner.ns)
            .execute(&self.broker.inner.pool)
            .await
            .map_err(|e| self.broker.err("dlq remove", e))?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
