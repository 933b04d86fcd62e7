//! Leader election: one row per scheduler group in `jobfleet.scheduler_leases`.
//!
//! Acquiring and renewing are the same single statement, an upsert that only takes the row
//! when it is expired or already ours, so two replicas can never both succeed for the same
//! period. Expiry is judged by the database clock (`now()`), so replicas' clocks don't have to
//! agree. Locally a replica trusts its leadership only until the lease it last renewed would run
//! out, measured from *before* the renew was sent, so a replica cut off from the database stops
//! enqueueing before anyone else can take over.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::SchedulerError;

/// A lease on `name`, held (or wanted) by `holder`.
#[derive(Debug, Clone)]
pub struct Lease {
    pool: PgPool,
    name: String,
    holder: String,
    duration: Duration,
}

/// Outcome of one acquire/renew attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// We hold it until (locally) this instant.
    Held { until: Instant },
    /// Someone else holds it.
    NotHeld,
}

impl Lease {
    /// A lease handle; nothing is written until [`Lease::try_acquire`].
    pub fn new(
        pool: PgPool,
        name: impl Into<String>,
        holder: impl Into<String>,
        duration: Duration,
    ) -> Self {
        Lease {
            pool,
            name: name.into(),
            holder: holder.into(),
            duration,
        }
    }

    /// The lease's key (one per scheduler group).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who we are.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Lease length.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Takes the lease if it is free or expired, or extends it if it is ours.
    pub async fn try_acquire(&self) -> Result<LeaseState, SchedulerError> {
        let sent = Instant::now();
        let row: Option<(String,)> = sqlx::query_as(
            "INSERT INTO jobfleet.scheduler_leases AS l
                 (name, holder, acquired_at, renewed_at, expires_at)
             VALUES ($1, $2, now(), now(), now() + make_interval(secs => $3))
             ON CONFLICT (name) DO UPDATE SET
                 holder = EXCLUDED.holder,
                 acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at >= now()
                                    THEN l.acquired_at ELSE now() END,
                 renewed_at = now(),
                 expires_at = EXCLUDED.expires_at
             WHERE l.holder = EXCLUDED.holder OR l.expires_at < now()
             RETURNING l.holder",
        )
        .bind(&self.name)
        .bind(&self.holder)
        .bind(self.duration.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(_) => LeaseState::Held {
                until: sent + self.duration,
            },
            None => LeaseState::NotHeld,
        })
    }

    /// Gives the lease up (on SIGTERM) so another replica can take it at its next attempt
    /// instead of waiting for expiry. Does nothing when we don't hold it.
    pub async fn release(&self) -> Result<(), SchedulerError> {
        sqlx::query("DELETE FROM jobfleet.scheduler_leases WHERE name = $1 AND holder = $2")
            .bind(&self.name)
            .bind(&self.holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The current holder, if the lease is live (for `scheduler list` and logs).
    pub async fn current_holder(&self) -> Result<Option<String>, SchedulerError> {
        let row: Option<(String,)> = sqlx::query_as(
            "SELECT holder FROM jobfleet.scheduler_leases WHERE name = $1 AND expires_at >= now()",
        )
        .bind(&self.name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.0))
    }
}
