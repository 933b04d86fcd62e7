//! The operator audit log: who paused, resumed, cancelled, changed a limit, replayed or purged
//! what, when, with which filter, and what it came to. Every front end (CLI, dashboard) writes
//! through [`Store::audit`], so `worker audit` and the dashboard's audit page read one history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Actor, Error, Result, Store};

/// The kinds of operator action the log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Cancel,
    LimitSet,
    LimitClear,
    DlqReplay,
    DlqPurge,
}

impl Action {
    /// The name stored in the `action` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Cancel => "cancel",
            Action::LimitSet => "limit_set",
            Action::LimitClear => "limit_clear",
            Action::DlqReplay => "dlq_replay",
            Action::DlqPurge => "dlq_purge",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        [
            Action::Pause,
            Action::Resume,
            Action::Cancel,
            Action::LimitSet,
            Action::LimitClear,
            Action::DlqReplay,
            Action::DlqPurge,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// One action about to be recorded.
#[derive(Debug, Clone)]
pub struct Entry {
    pub actor: Actor,
    pub action: Action,
    /// What it was done to: a queue, `queue/job id`, a kind.
    pub target: String,
    /// The request as given (filter, reason, new limits).
    pub detail: Value,
    /// What it came to, when known at the time of writing.
    pub counts: Option<Value>,
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// An [`Action`] name; kept as text so rows written by a newer binary still read.
    pub action: String,
    pub target: String,
    pub detail: Value,
    pub counts: Option<Value>,
}

impl Record {
    /// The action, if this binary knows it.
    pub fn known_action(&self) -> Option<Action> {
        Action::parse(&self.action)
    }
}

impl Store {
    /// Appends one action; returns its id, so a long action (a replay) can fill in its counts
    /// when it ends with [`Store::audit_counts`].
    pub async fn audit(&self, entry: &Entry) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO jobfleet.audit_log (actor, action, target, detail, counts) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(entry.actor.as_str())
        .bind(entry.action.as_str())
        .bind(&entry.target)
        .bind(&entry.detail)
        .bind(&entry.counts)
        .fetch_one(self.pool())
        .await
        .map_err(Error::db("write the audit log"))
    }

    /// Records what an action came to once it has ended.
    pub async fn audit_counts(&self, id: i64, counts: &Value) -> Result<()> {
        sqlx::query("UPDATE jobfleet.audit_log SET counts = $2 WHERE id = $1")
            .bind(id)
            .bind(counts)
            .execute(self.pool())
            .await
            .map_err(Error::db("write the audit log"))?;
        Ok(())
    }

    /// Actions at or after `since` (all when `None`), newest first, at most `limit`.
    pub async fn audit_since(
        &self,
        since: Option<DateTime<Utc>>,
        limit: i64,
    ) -> Result<Vec<Record>> {
        let rows: Vec<(
            i64,
            DateTime<Utc>,
            String,
            String,
            String,
            Value,
            Option<Value>,
        )> = sqlx::query_as(
            "SELECT id, at, actor, action, target, detail, counts FROM jobfleet.audit_log \
                 WHERE $1::timestamptz IS NULL OR at >= $1 ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the audit log"))?;
        Ok(rows
            .into_iter()
            .map(|(id, at, actor, action, target, detail, counts)| Record {
                id,
                at,
                actor,
                action,
                target,
                detail,
                counts,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_reads_back_from_its_name() {
        for a in [
            Action::Pause,
            Action::Resume,
            Action::Cancel,
            Action::LimitSet,
            Action::LimitClear,
            Action::DlqReplay,
            Action::DlqPurge,
        ] {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("reboot"), None);
    }
}
