//! The ticks ledger, `jobfleet.scheduler_ticks`: one row per enqueued tick, keyed by the same
//! dedup key the envelope carries (`name@tick`).
//!
//! A tick is *claimed* (row inserted as `pending`, with the exact envelope) before it is sent
//! and marked `enqueued` after the broker confirmed it. The insert is fenced by the lease: it
//! only succeeds while the database still sees us as the leader, so a replica that lost its
//! lease without noticing can't claim ticks. A `pending` row that stays pending longer than a
//! lease period was left by a crash between claim and confirm; the next leader re-sends that
//! same envelope (same job id, same dedup key).

use chrono::{DateTime, Utc};
use queues::Envelope;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::types::Json;

use crate::SchedulerError;

/// Why a tick was enqueued; stored in the ledger and shown by `scheduler list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// On time.
    Tick,
    /// The latest tick missed during downtime.
    CatchUp,
    /// `run_at_start`.
    Start,
    /// `scheduler trigger`.
    Manual,
}

impl Reason {
    /// The ledger's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Tick => "tick",
            Reason::CatchUp => "catch_up",
            Reason::Start => "start",
            Reason::Manual => "manual",
        }
    }
}

/// What happened to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The row is ours: send, then [`Ledger::mark_enqueued`].
    Claimed,
    /// The tick was already enqueued (by another replica or an earlier run).
    AlreadyEnqueued,
    /// Another claim is in flight, or was left by a crash (re-sent later by the leader).
    Pending,
    /// The database does not see us as the leader.
    NotLeader,
}

/// Leader fencing for claims: the lease row that must be ours.
#[derive(Debug, Clone, Copy)]
pub struct Fence<'a> {
    /// Lease name.
    pub lease: &'a str,
    /// Our holder id.
    pub holder: &'a str,
}

/// The last ledger row of a schedule, for `scheduler list`.
#[derive(Debug, Clone, Serialize)]
pub struct LastEnqueue {
    /// The tick.
    pub tick_at: DateTime<Utc>,
    /// Why.
    pub reason: String,
    /// `pending` or `enqueued`.
    pub state: String,
    /// Envelope id.
    pub job_id: String,
    /// When the broker confirmed it.
    pub enqueued_at: Option<DateTime<Utc>>,
}

/// A pending tick taken over for re-sending.
#[derive(Debug, Clone)]
pub struct StalePending {
    /// Its key.
    pub dedup_key: String,
    /// Its schedule.
    pub schedule: String,
    /// The envelope exactly as first claimed.
    pub envelope: Envelope,
}

/// Access to the ledger table.
#[derive(Debug, Clone)]
pub struct Ledger {
    pool: PgPool,
}

impl Ledger {
    /// The ledger in `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Ledger { pool }
    }

    /// Claims `envelope`'s dedup key for `schedule`'s tick at `tick_at`.
    pub async fn claim(
        &self,
        schedule: &str,
        tick_at: DateTime<Utc>,
        reason: Reason,
        envelope: &Envelope,
        claimed_by: &str,
        fence: Option<Fence<'_>>,
    ) -> Result<Claim, SchedulerError> {
        let key = envelope.dedup_key.as_deref().unwrap_or(&envelope.id);
        let inserted: Option<(String,)> = sqlx::query_as(
            "INSERT INTO jobfleet.scheduler_ticks
                 (dedup_key, schedule, tick_at, reason, job_id, queue, envelope, claimed_by)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8
             WHERE $9::text IS NULL OR EXISTS (
                 SELECT 1 FROM jobfleet.scheduler_leases
                 WHERE name = $9 AND holder = $10 AND expires_at > now())
             ON CONFLICT (dedup_key) DO NOTHING
             RETURNING dedup_key",
        )
        .bind(key)
        .bind(schedule)
        .bind(tick_at)
        .bind(reason.as_str())
        .bind(&envelope.id)
        .bind(&envelope.queue)
        .bind(Json(envelope))
        .bind(claimed_by)
        .bind(fence.map(|f| f.lease))
        .bind(fence.map(|f| f.holder))
        .fetch_optional(&self.pool)
        .await?;
        if inserted.is_some() {
            return Ok(Claim::Claimed);
        }
        let state: Option<(String,)> =
            sqlx::query_as("SELECT state FROM jobfleet.scheduler_ticks WHERE dedup_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match state.as_ref().map(|s| s.0.as_str()) {
            Some("enqueued") => Claim::AlreadyEnqueued,
            Some(_) => Claim::Pending,
            None => Claim::NotLeader,
        })
    }

    /// Records that the broker confirmed the send.
    pub async fn mark_enqueued(&self, dedup_key: &str) -> Result<(), SchedulerError> {
        sqlx::query(
            "UPDATE jobfleet.scheduler_ticks SET state = 'enqueued', enqueued_at = now()
             WHERE dedup_key = $1",
        )
        .bind(dedup_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes over `pending` rows of `schedules` claimed more than `older_than` ago (left by a
    /// crash between claim and confirm), fenced by the lease, and returns their envelopes.
    pub async fn take_stale_pending(
        &self,
        schedules: &[String],
        older_than: std::time::Duration,
        claimed_by: &str,
        fence: Fence<'_>,
    ) -> Result<Vec<StalePending>, SchedulerError> {
        debug_assert_eq!(fence.holder, claimed_by);
        let rows: Vec<(String, String, Json<Envelope>)> = sqlx::query_as(
            "UPDATE jobfleet.scheduler_ticks SET claimed_by = $3, claimed_at = now()
             WHERE state = 'pending' AND schedule = ANY($1)
               AND claimed_at < now() - make_interval(secs => $2)
               AND EXISTS (SELECT 1 FROM jobfleet.scheduler_leases
                           WHERE name = $4 AND holder = $3 AND expires_at > now())
             RETURNING dedup_key, schedule, envelope",
        )
        .bind(schedules)
        .bind(older_than.as_secs_f64())
        .bind(claimed_by)
        .bind(fence.lease)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(dedup_key, schedule, envelope)| StalePending {
                dedup_key,
                schedule,
                envelope: envelope.0,
            })
            .collect())
    }

    /// The latest cron tick (on time or catch-up) recorded for `schedule`: what "missed since"
    /// is measured from.
    pub async fn last_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, SchedulerError> {
        let row: (Option<DateTime<Utc>>,) = sqlx::query_as(
            "SELECT max(tick_at) FROM jobfleet.scheduler_ticks
             WHERE schedule = $1 AND reason IN ('tick', 'catch_up')",
        )
        .bind(schedule)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0)
    }

    /// The most recent ledger row of `schedule`, any reason.
    pub async fn last_enqueue(
        &self,
        schedule: &str,
    ) -> Result<Option<LastEnqueue>, SchedulerError> {
        type Row = (DateTime<Utc>, String, String, String, Option<DateTime<Utc>>);
        let row: Option<Row> = sqlx::query_as(
            "SELECT tick_at, reason, state, job_id, enqueued_at FROM jobfleet.scheduler_ticks
             WHERE schedule = $1 ORDER BY claimed_at DESC, tick_at DESC LIMIT 1",
        )
        .bind(schedule)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(
            |(tick_at, reason, state, job_id, enqueued_at)| LastEnqueue {
                tick_at,
                reason,
                state,
                job_id,
                enqueued_at,
            },
        ))
    }

    /// Drops enqueued rows older than `days`, always keeping each schedule's latest tick (it is
    /// what catch-up measures from).
    pub async fn prune(&self, schedules: &[String], days: i32) -> Result<u64, SchedulerError> {
        let done = sqlx::query(
            "DELETE FROM jobfleet.scheduler_ticks t
             WHERE t.schedule = ANY($1) AND t.state = 'enqueued'
               AND t.tick_at < now() - make_interval(days => $2)
               AND EXISTS (SELECT 1 FROM jobfleet.scheduler_ticks n
                           WHERE n.schedule = t.schedule AND n.reason IN ('tick', 'catch_up')
                             AND n.tick_at > t.tick_at)",
        )
        .bind(schedules)
        .bind(days)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
