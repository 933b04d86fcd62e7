//! The SQL of the limits: the operator's overrides (read every sample interval, written by
//! `worker limit` together with its audit row), and one worker's lease tick on a scope: give
//! back unused tokens, take a batch, renew its slot lease, all under the scope's row lock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use runtime::config::{LimitConfig, Rate};
use serde::Serialize;

use super::Scope;
use super::alloc::{self, Peer};
use crate::audit::{Action, Entry};
use crate::{Actor, Error, Result, Store};

/// An operator's run-time override of one scope's limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Override {
    pub scope: Scope,
    /// Replaces the config file's rate when set.
    pub rate: Option<Rate>,
    /// Replaces the config file's concurrency when set.
    pub concurrency: Option<u32>,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

/// What a worker asks of a scope in one lease tick.
#[derive(Debug, Clone)]
pub(crate) struct TickRequest<'a> {
    pub scope: &'a Scope,
    pub worker_id: &'a str,
    pub limit: LimitConfig,
    pub tick: Duration,
    pub lease_ttl: Duration,
    /// Tokens taken earlier and not used: back into the bucket.
    pub give_back: u32,
    pub want_tokens: u32,
    pub running: u32,
    pub want_slots: u32,
}

/// What it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TickReply {
    pub tokens: u32,
    pub slots: u32,
    /// Workers holding a live lease on the scope, this one included.
    pub workers: u32,
}

type OverrideRow = (String, Option<String>, Option<i32>, String, DateTime<Utc>);

impl Store {
    /// Every override this binary can read. A row it cannot (a newer binary's scope or rate
    /// shape) is skipped with a warning rather than failing the whole read.
    pub async fn limit_overrides(&self) -> Result<Vec<Override>> {
        let rows: Vec<OverrideRow> = sqlx::query_as(
            "SELECT scope, rate, concurrency, set_by, set_at FROM jobfleet.limit_overrides \
             ORDER BY scope",
        )
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the limit overrides"))?;
        Ok(rows
            .into_iter()
            .filter_map(|(scope, rate, concurrency, set_by, set_at)| {
                let Some(s) = Scope::from_key(&scope) else {
                    tracing::warn!(%scope, "limit override of an unknown scope shape; ignored");
                    return None;
                };
                let rate = match rate.map(|r| r.parse::<Rate>()).transpose() {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(%scope, error = %e, "limit override unreadable; ignored");
                        return None;
                    }
                };
                Some(Override {
                    scope: s,
                    rate,
                    concurrency: concurrency.map(|c| c.max(1) as u32),
                    set_by,
                    set_at,
                })
            })
            .collect())
    }

    /// Sets the override of `scope` (the fields given; a field left out keeps the override's
    /// earlier value) and writes the audit row, in one transaction: both or neither.
    pub async fn set_limit(
        &self,
        scope: &Scope,
        rate: Option<Rate>,
        concurrency: Option<u32>,
        actor: &Actor,
    ) -> Result<Override> {
        if rate.is_none() && concurrency.is_none() {
            return Err(Error::Invalid(format!(
                "nothing to set for {scope}: give --rate and/or --concurrency, or --clear"
            )));
        }
        let concurrency = concurrency
            .map(|c| i32::try_from(c).ok().filter(|c| *c > 0))
            .map(|c| {
                c.ok_or_else(|| {
                    Error::Invalid(format!(
                        "concurrency for {scope} must be between 1 and {}",
                        i32::MAX
                    ))
                })
            })
            .transpose()?;
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(Error::db("set a limit"))?;
        let row: OverrideRow = sqlx::query_as(
            "INSERT INTO jobfleet.limit_overrides (scope, rate, concurrency, set_by) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (scope) DO UPDATE SET \
               rate = COALESCE(EXCLUDED.rate, limit_overrides.rate), \
               concurrency = COALESCE(EXCLUDED.concurrency, limit_overrides.concurrency), \
               set_by = EXCLUDED.set_by, set_at = now() \
             RETURNING scope, rate, concurrency, set_by, set_at",
        )
        .bind(scope.key())
        .bind(rate.map(|r| r.to_string()))
        .bind(concurrency)
        .bind(actor.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db("set a limit"))?;
        let entry = Entry {
            actor: actor.clone(),
            action: Action::LimitSet,
            target: scope.key(),
            detail: serde_json::json!({
                "rate": rate.map(|r| r.to_string()),
                "concurrency": concurrency,
                "now": { "rate": row.1, "concurrency": row.2 },
            }),
            counts: None,
        };
        Store::audit_with(&mut *tx, &entry).await?;
        tx.commit().await.map_err(Error::db("set a limit"))?;
        Ok(Override {
            scope: scope.clone(),
            rate: row.1.and_then(|r| r.parse().ok()),
            concurrency: row.2.map(|c| c as u32),
            set_by: row.3,
            set_at: row.4,
        })
    }

    /// Removes the override of `scope` (the config file's limit applies again) and writes the
    /// audit row, in one transaction. Returns the override removed, if there was one.
    pub async fn clear_limit(&self, scope: &Scope, actor: &Actor) -> Result<Option<Override>> {
        let mut tx = self
            .pool()
            .begin()
            .await
            .map_err(Error::db("clear a limit"))?;
        let row: Option<OverrideRow> = sqlx::query_as(
            "DELETE FROM jobfleet.limit_overrides WHERE scope = $1 \
             RETURNING scope, rate, concurrency, set_by, set_at",
        )
        .bind(scope.key())
        .fetch_optional(&mut *tx)
        .await
        .map_err(Error::db("clear a limit"))?;
        let entry = Entry {
            actor: actor.clone(),
            action: Action::LimitClear,
            target: scope.key(),
            detail: serde_json::json!({
                "removed": row.as_ref().map(|r| serde_json::json!({"rate": r.1, "concurrency": r.2})),
            }),
            counts: None,
        };
        Store::audit_with(&mut *tx, &entry).await?;
        tx.commit().await.map_err(Error::db("clear a limit"))?;
        Ok(row.map(|(_, rate, concurrency, set_by, set_at)| Override {
            scope: scope.clone(),
            rate: rate.and_then(|r| r.parse().ok()),
            concurrency: concurrency.map(|c| c as u32),
            set_by,
            set_at,
        }))
    }

    /// Slots held and workers with a live lease, per scope key: what `worker limits` shows
    /// beside each limit.
    pub async fn limit_usage(&self) -> Result<Vec<(String, i64, i64)>> {
        sqlx::query_as(
            "SELECT scope, COALESCE(sum(held), 0)::int8, count(*) FROM jobfleet.limit_leases \
             WHERE expires_at > clock_timestamp() GROUP BY scope ORDER BY scope",
        )
        .fetch_all(self.pool())
        .await
        .map_err(Error::db("read the limit leases"))
    }

    /// One lease tick of one worker on one scope. The bucket row's lock serialises the ticks
    /// of a scope across the fleet, so grants are computed from a consistent picture.
    pub(crate) async fn limit_tick(&self, r: &TickRequest<'_>) -> Result<TickReply> {
        let what = "lease a limit";
        let key = r.scope.key();
        let mut tx = self.pool().begin().await.map_err(Error::db(what))?;
        sqlx::query(
            "INSERT INTO jobfleet.limit_buckets (scope) VALUES ($1) ON CONFLICT (scope) DO NOTHING",
        )
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(what))?;
        let (tokens, elapsed): (f64, f64) = sqlx::query_as(
            "SELECT tokens, EXTRACT(EPOCH FROM clock_timestamp() - refilled_at)::float8 \
             FROM jobfleet.limit_buckets WHERE scope = $1 FOR UPDATE",
        )
        .bind(&key)
        .fetch_one(&mut *tx)
        .await
        .map_err(Error::db(what))?;
        let got = match r.limit.rate {
            Some(rate) => {
                let per_sec = rate.per_sec();
                let burst = alloc::burst(per_sec, r.tick);
                let have = alloc::refill(tokens + r.give_back as f64, elapsed, per_sec, burst);
                let got = alloc::take(have, r.want_tokens);
                sqlx::query(
                    "UPDATE jobfleet.limit_buckets SET tokens = $2, refilled_at = clock_timestamp() \
                     WHERE scope = $1",
                )
                .bind(&key)
                .bind(have - got as f64)
                .execute(&mut *tx)
                .await
                .map_err(Error::db(what))?;
                got
            }
            None => 0,
        };
        sqlx::query(
            "DELETE FROM jobfleet.limit_leases WHERE scope = $1 AND expires_at < clock_timestamp()",
        )
        .bind(&key)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(what))?;
        let peers: Vec<(i32, i32)> = sqlx::query_as(
            "SELECT held, wanted FROM jobfleet.limit_leases WHERE scope = $1 AND worker_id <> $2",
        )
        .bind(&key)
        .bind(r.worker_id)
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::db(what))?;
        let peers: Vec<Peer> = peers
            .into_iter()
            .map(|(held, wanted)| Peer {
                held: held.max(0) as u32,
                wanted: wanted.max(0) as u32,
            })
            .collect();
        let (slots, held) = match r.limit.concurrency {
            Some(limit) => {
                let g = alloc::grant_slots(limit, r.running, r.want_slots, &peers);
                (g.slots, g.held)
            }
            None => (0, 0),
        };
        sqlx::query(
            "INSERT INTO jobfleet.limit_leases (scope, worker_id, held, wanted, expires_at) \
             VALUES ($1, $2, $3, $4, clock_timestamp() + $5 * interval '1 millisecond') \
             ON CONFLICT (scope, worker_id) DO UPDATE SET held = EXCLUDED.held, \
               wanted = EXCLUDED.wanted, expires_at = EXCLUDED.expires_at",
        )
        .bind(&key)
        .bind(r.worker_id)
        .bind(held.min(i32::MAX as u32) as i32)
        .bind(r.want_slots.min(i32::MAX as u32) as i32)
        .bind(r.lease_ttl.as_millis().min(i64::MAX as u128) as i64)
        .execute(&mut *tx)
        .await
        .map_err(Error::db(what))?;
        tx.commit().await.map_err(Error::db(what))?;
        Ok(TickReply {
            tokens: got,
            slots,
            workers: peers.len() as u32 + 1,
        })
    }

    /// Drops a worker's leases (clean exit): its slots are free at once, not after expiry.
    /// Its unused tokens are simply lost: at most one tick's worth.
    pub(crate) async fn limit_release(&self, worker_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM jobfleet.limit_leases WHERE worker_id = $1")
            .bind(worker_id)
            .execute(self.pool())
            .await
            .map_err(Error::db("release the limit leases"))?;
        Ok(())
    }
}
