//! Paused queues: a queue listed here is received from by no worker of the fleet (each stops
//! within one sample interval; jobs already running finish). [`Store::pause`] and
//! [`Store::resume`] write the audit row in the same transaction as the change, so the log and
//! the state never disagree.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Action, Entry};
use crate::{Actor, Error, Result, Store};

/// One paused queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Paused {
    pub queue: String,
    pub paused_at: DateTime<Utc>,
    pub paused_by: String,
    pub reason: String,
}

/// What a pause or resume came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The state changed.
    Done,
    /// It already was so (paused again: the reason and actor are updated).
    Already,
}

impl Store {
    /// Pauses `queue` for the whole fleet. The caller checks that the queue is configured.
    pub async fn pause(&self, actor: &Actor, queue: &str, reason: &str) -> Result<Change> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(Error::db("pause a queue"))?;
        // xmax is set on a row the upsert updated, zero on one it inserted.
        let was: Option<bool> = sqlx::query_scalar(
            "INSERT INTO jobfleet.paused_queues (queue, paused_by, reason) VALUES ($1, $2, $3) \
             ON CONFLICT (queue) DO UPDATE SET paused_by = $2, reason = $3 \
             RETURNING (xmax::text <> '0')",
        )
        .bind(queue)
        .bind(actor.as_str())
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db("pause a queue"))?;
        let change = if was == Some(true) {
            Change::Already
        } else {
            Change::Done
        };
        audit::insert(
            &mut *tx,
            &Entry {
                actor: actor.clone(),
                action: Action::Pause,
                target: queue.to_owned(),
                detail: json!({ "reason": reason }),
                counts: Some(json!({ "changed": change == Change::Done })),
            },
        )
        .await?;
        tx.commit().await.map_err(Error::db("pause a queue"))?;
        Ok(change)
    }

    /// Resumes `queue` for the whole fleet.
    pub async fn resume(&self, actor: &Actor, queue: &str) -> Result<Change> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(Error::db("resume a queue"))?;
        let gone = sqlx::query("DELETE FROM jobfleet.paused_queues WHERE queue = $1")
            .bind(queue)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("resume a queue"))?
            .rows_affected();
        let change = if gone > 0 {
            Change::Done
        } else {
            Change::Already
        };
        audit::insert(
            &mut *tx,
            &Entry {
                actor: actor.clone(),
                action: Action::Resume,
                target: queue.to_owned(),
                detail: json!({}),
                counts: Some(json!({ "changed": change == Change::Done })),
            },
        )
        .await?;
        tx.commit().await.map_err(Error::db("resume a queue"))?;
        Ok(change)
    }

    /// Every paused queue, by name.
    pub async fn paused(&self) -> Result<Vec<Paused>> {
        let rows: Vec<(String, DateTime<Utc>, String, String)> = sqlx::query_as(
            "SELECT queue, paused_at, paused_by, reason FROM jobfleet.paused_queues ORDER BY queue",
        )
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the paused queues"))?;
        Ok(rows
            .into_iter()
            .map(|(queue, paused_at, paused_by, reason)| Paused {
                queue,
                paused_at,
                paused_by,
                reason,
            })
            .collect())
    }
}
