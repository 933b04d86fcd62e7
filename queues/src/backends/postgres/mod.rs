//! PostgreSQL backend: queues as rows in `jobfleet.messages`, taken with
//! `FOR UPDATE SKIP LOCKED`, so an API that already has PostgreSQL needs no other broker and can
//! enqueue inside its own transaction (the job exists if and only if the transaction commits).
//!
//! Tables are created by `migrations/0001_queue.sql` (applied here at connect when missing, and
//! by `worker migrate`); `docs/backends/postgres.md` describes them and the plain SQL another
//! language uses to enqueue. Long polling uses `LISTEN jobfleet_queues` (an INSERT trigger
//! notifies with `<ns>:<queue>`) plus a timer set to the queue's next `visible_at`, so an idle
//! consumer makes no queries between events.
//!
//! `broker.namespace` is the `ns` column of every table: deployments sharing one database see
//! only their own queues.
//!
//! Unique jobs: a `BEFORE INSERT` trigger (`migrations/0150_unique_jobs.sql`) takes a body's
//! `dedup_key` in the inserting transaction and drops the row of a duplicate, so `INSERT …
//! RETURNING id` returning no row is how this backend, and any other client, learns it.

mod acks;
mod delivery;
mod dlq;
mod notify;
mod schema;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::backends::util;
use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, Deliveries, Depth, Inspector, Message, Producer,
    QueueSpec, Sent,
};
use crate::config::BrokerConfig;
use crate::envelope::Envelope;
use crate::error::{QueueError, Result};
use crate::queue_name::QueueName;
use acks::{AckRequest, ack_loop};
use delivery::PgDelivery;
use notify::{AbortOnDrop, Wakers, listen_loop};
use schema::{ensure_schema, warn_without_autovacuum};

const BACKEND: &str = "postgres";

/// The NOTIFY channel the INSERT trigger of `jobfleet.messages` uses.
pub const CHANNEL: &str = "jobfleet_queues";

/// Pool size when `connect` makes its own pool: 1 for the listener plus room for a worker's
/// consumers, settles and heartbeats.
const POOL_SIZE: u32 = 16;

/// How long `connect` (and any operation waiting for a connection) tries before giving up: an
/// address where nothing answers must fail quickly with a clear error, not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// While the listener is down, notifications can be lost: long polls then re-check this often.
const DEGRADED_RECHECK: Duration = Duration::from_secs(1);

/// Re-check delay when a due row was skipped because another transaction had it locked.
const LOCKED_RECHECK: Duration = Duration::from_millis(20);

/// Enqueue one message, from any client. `$4` (run at) may be NULL for "now"; a time in the past
/// is clamped to now so it does not jump ahead of older work.
const INSERT_SQL: &str = "INSERT INTO jobfleet.messages (ns, queue, body, visible_at) \
     VALUES ($1, $2, $3, GREATEST(COALESCE($4, now()), now())) RETURNING id";

const INSERT_BATCH_SQL: &str = "INSERT INTO jobfleet.messages (ns, queue, body, visible_at) \
     SELECT $1, t.queue, t.body, GREATEST(COALESCE(t.run_at, now()), now()) \
     FROM UNNEST($2::text[], $3::text[], $4::timestamptz[]) WITH ORDINALITY AS t(queue, body, run_at, n) \
     ORDER BY t.n";

/// [`INSERT_BATCH_SQL`] for a batch with dedup keys: the rows the `messages_dedup` trigger let
/// through come back, to tell which envelopes were duplicates.
const INSERT_BATCH_RETURNING_SQL: &str = "INSERT INTO jobfleet.messages (ns, queue, body, visible_at) \
     SELECT $1, t.queue, t.body, GREATEST(COALESCE(t.run_at, now()), now()) \
     FROM UNNEST($2::text[], $3::text[], $4::timestamptz[]) WITH ORDINALITY AS t(queue, body, run_at, n) \
     ORDER BY t.n RETURNING body";

/// Leases up to `$3` due rows of one queue in a single statement. The CTE is MATERIALIZED so
/// the LIMIT + SKIP LOCKED subquery runs exactly once.
const RECEIVE_SQL: &str = "WITH vis AS ( \
       SELECT COALESCE((SELECT visibility_ms FROM jobfleet.queues WHERE ns = $1 AND queue = $2), $5) AS ms \
     ), picked AS MATERIALIZED ( \
       SELECT id FROM jobfleet.messages \
       WHERE ns = $1 AND queue = $2 AND visible_at <= now() \
       ORDER BY visible_at, id LIMIT $3 FOR UPDATE SKIP LOCKED \
     ) \
     UPDATE jobfleet.messages m \
     SET lease = $4, visible_at = now() + vis.ms * interval '1 millisecond', \
         receive_count = m.receive_count + 1 \
     FROM picked, vis WHERE m.id = picked.id \
     RETURNING m.id, m.body, m.receive_count";

/// The PostgreSQL broker. Cloning shares the pool and the listener.
#[derive(Clone)]
pub struct PgBroker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    ns: String,
    url: String,
    wakers: Arc<Wakers>,
    acks: mpsc::UnboundedSender<AckRequest>,
    _listener: AbortOnDrop,
}

/// Whether a sqlx error means the database could not be reached (vs. it answered with an error).
fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P01-03: admin/crash shutdown, cannot connect now.
            c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

impl PgBroker {
    /// Connects with a pool of its own, applies the queue tables if missing, and starts the
    /// listener. Fails within a few seconds when nothing answers at the URL.
    pub async fn connect(cfg: &BrokerConfig) -> Result<PgBroker> {
        cfg.validate()?;
        let url = cfg.url_or_default().to_owned();
        let opts = PgConnectOptions::from_str(&url)
            .map_err(|e| QueueError::Config(format!("broker.url is not a PostgreSQL URL: {e}")))?
            .application_name("jobfleet-queues");
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts)
            .await
            .map_err(|e| QueueError::unavailable(BACKEND, &url, e))?;
        Self::build(pool, &cfg.namespace, url).await
    }

    /// Uses an application's existing pool (one connection of it stays checked out for
    /// `LISTEN`). Applies the queue tables if missing. `namespace` is the `ns` column value, as
    /// `broker.namespace` would be (`"jobfleet"` by default).
    pub async fn from_pool(pool: PgPool, namespace: &str) -> Result<PgBroker> {
        let mut cfg = BrokerConfig::new(crate::BackendKind::Postgres, "postgres://");
        cfg.namespace = namespace.to_owned();
        cfg.url = None;
        cfg.validate()?;
        let o = pool.connect_options();
        let url = format!(
            "postgres://{}@{}:{}/{}",
            o.get_username(),
            o.get_host(),
            o.get_port(),
            o.get_database().unwrap_or_default()
        );
        Self::build(pool, namespace, url).await
    }

    async fn build(pool: PgPool, ns: &str, url: String) -> Result<PgBroker> {
        ensure_schema(&pool, &url).await?;
        warn_without_autovacuum(&pool, &url).await;
        let wakers = Arc::new(Wakers::default());
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|e| map_err(&url, "listen", e))?;
        listener
            .listen(CHANNEL)
            .await
            .map_err(|e| map_err(&url, "listen", e))?;
        wakers.healthy.store(true, Ordering::Relaxed);
        let task = tokio::spawn(listen_loop(listener, ns.to_owned(), wakers.clone()));
        let (acks, ack_rx) = mpsc::unbounded_channel();
        // Ends by itself once the last broker clone (and so the last sender) is dropped.
        tokio::spawn(ack_loop(pool.clone(), url.clone(), ack_rx));
        Ok(PgBroker {
            inner: Arc::new(Inner {
                pool,
                ns: ns.to_owned(),
                url,
                wakers,
                acks,
                _listener: AbortOnDrop(task),
            }),
        })
    }

    /// Enqueues `env` on the caller's connection or transaction, in this broker's namespace:
    /// see [`send_in`].
    pub async fn send_in(&self, conn: &mut PgConnection, env: &Envelope) -> Result<Sent> {
        send_in(conn, &self.inner.ns, env).await
    }

    /// The pool this broker uses (for an application that wants to share it).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The namespace (`ns` column) this broker reads and writes.
    pub fn namespace(&self) -> &str {
        &self.inner.ns
    }

    fn err(&self, op: &'static str, e: sqlx::Error) -> QueueError {
        map_err(&self.inner.url, op, e)
    }

    /// Next `visible_at` of any row of `queue`: when a delayed job becomes due or a lease
    /// expires. Only asked after an empty receive, to arm the consumer's timer.
    /// Measured on the database clock, so a skewed client clock neither spins nor oversleeps.
    async fn next_visible(&self, queue: &str) -> Result<Option<Duration>> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM min(visible_at) - clock_timestamp())::float8 \
             FROM jobfleet.messages WHERE ns = $1 AND queue = $2",
        )
        .bind(&self.inner.ns)
        .bind(queue)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(|e| self.err("receive", e))?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9))))
    }

    async fn take(&self, queue: &str, max: usize) -> Result<Deliveries> {
        let lease = Uuid::new_v4();
        let rows = sqlx::query(RECEIVE_SQL)
            .bind(&self.inner.ns)
            .bind(queue)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .bind(lease)
            .bind(util::millis_i64(DEFAULT_VISIBILITY))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.err("receive", e))?;
        let mut out: Deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id").map_err(|e| self.err("receive", e))?;
            let body: String = row.try_get("body").map_err(|e| self.err("receive", e))?;
            let count: i32 = row
                .try_get("receive_count")
                .map_err(|e| self.err("receive", e))?;
            out.push(Box::new(PgDelivery {
                broker: self.clone(),
                id,
                lease,
                msg: Message::new(
                    body.into_bytes(),
                    u32::try_from(count).unwrap_or(1),
                    id.to_string(),
                ),
            }));
        }
        // Rows come back in no particular order from UPDATE … RETURNING; hand them out FIFO.
        out.sort_by_key(|d| d.message().broker_id().parse::<i64>().unwrap_or(i64::MAX));
        Ok(out)
    }
}

fn map_err(url: &str, op: &'static str, e: sqlx::Error) -> QueueError {
    util::client_error(BACKEND, url, op, is_connection_error(&e), e)
}

/// Writes `env` on `conn`: inside the caller's transaction when `conn` is one, so the job is
/// enqueued exactly when that transaction commits (consumers are woken at commit). `namespace`
/// is the broker's `ns` (`"jobfleet"` by default).
///
/// A duplicate ([`Sent::Duplicate`]) writes nothing and leaves the transaction usable; its key
/// is taken when (and only if) the transaction commits.
pub async fn send_in(conn: &mut PgConnection, namespace: &str, env: &Envelope) -> Result<Sent> {
    // The application's own code built `env`: this is where its queue name enters.
    QueueName::new(env.queue.as_str())?;
    let body =
        String::from_utf8(env.to_bytes()).map_err(|e| QueueError::backend(BACKEND, "send", e))?;
    let row = sqlx::query(INSERT_SQL)
        .bind(namespace)
        .bind(&env.queue)
        .bind(body)
        .bind(env.run_at)
        .fetch_optional(conn)
        .await
        .map_err(|e| map_err("postgres://(caller's connection)", "send", e))?;
    Ok(sent_if(row.is_some()))
}

/// The `messages_dedup` trigger drops a duplicate's row: no row, nothing written.
fn sent_if(written: bool) -> Sent {
    if written {
        Sent::Enqueued
    } else {
        Sent::Duplicate
    }
}

fn body_text(env: &Envelope) -> Result<String> {
    // serde_json writes UTF-8; this only guards the type conversion.
    String::from_utf8(env.to_bytes()).map_err(|e| QueueError::backend(BACKEND, "encode", e))
}

#[async_trait]
impl Producer for PgBroker {
    async fn send(&self, envelope: &Envelope) -> Result<Sent> {
        let row = sqlx::query(INSERT_SQL)
            .bind(&self.inner.ns)
            .bind(&envelope.queue)
            .bind(body_text(envelope)?)
            .bind(envelope.run_at)
            .fetch_optional(&self.inner.pool)
            .await
            .map_err(|e| self.err("send", e))?;
        Ok(sent_if(row.is_some()))
    }

    async fn send_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Sent>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut queues = Vec::with_capacity(envelopes.len());
        let mut bodies = Vec::with_capacity(envelopes.len());
        let mut run_at = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            queues.push(e.queue.clone());
            bodies.push(body_text(e)?);
            run_at.push(e.run_at);
        }
        if !envelopes.iter().any(|e| e.dedup().is_some()) {
            // One statement: all or nothing, and one NOTIFY per queue from the statement trigger.
            sqlx::query(INSERT_BATCH_SQL)
                .bind(&self.inner.ns)
                .bind(queues)
                .bind(bodies)
                .bind(run_at)
                .execute(&self.inner.pool)
                .await
                .map_err(|e| self.err("send_batch", e))?;
            return Ok(vec![Sent::Enqueued; envelopes.len()]);
        }
        let written: Vec<String> = sqlx::query_scalar(INSERT_BATCH_RETURNING_SQL)
            .bind(&self.inner.ns)
            .bind(queues)
            .bind(&bodies)
            .bind(run_at)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.err("send_batch", e))?;
        // Bodies hold the job id, so equal bodies are the same envelope sent twice in one batch:
        // the first of them is the one written.
        let mut written: HashMap<String, usize> =
            written.into_iter().fold(HashMap::new(), |mut m, b| {
                *m.entry(b).or_default() += 1;
                m
            });
        Ok(bodies
            .iter()
            .map(|b| match written.get_mut(b) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    Sent::Enqueued
                }
                _ => Sent::Duplicate,
            })
            .collect())
    }
}

#[async_trait]
impl Consumer for PgBroker {
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Deliveries> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        let notify = self.inner.wakers.get(queue);
        loop {
            // Registered before the query, so a send committed between the query and the wait
            // still wakes us.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let got = self.take(queue, max).await?;
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let mut wake = deadline;
            if let Some(until) = self.next_visible(queue).await? {
                // Already due yet not taken means another transaction holds the row (a receive
                // or settle in progress): look again shortly rather than at once.
                let until = until.max(LOCKED_RECHECK);
                wake = wake.min(now + until + Duration::from_millis(2));
            }
            if !self.inner.wakers.healthy.load(Ordering::Relaxed) {
                wake = wake.min(now + DEGRADED_RECHECK);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

#[async_trait]
impl Inspector for PgBroker {
    async fn depth(&self, queue: &str) -> Result<Depth> {
        let row = sqlx::query(
            "SELECT \
               count(*) FILTER (WHERE visible_at <= now()) AS visible, \
               count(*) FILTER (WHERE visible_at > now() AND lease IS NOT NULL) AS in_flight, \
               count(*) FILTER (WHERE visible_at > now() AND lease IS NULL) AS delayed, \
               EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE visible_at <= now()))::float8 AS oldest, \
               (SELECT count(*) FROM jobfleet.dead_letters d WHERE d.ns = $1 AND d.queue = $2) AS dead \
             FROM jobfleet.messages WHERE ns = $1 AND queue = $2",
        )
        .bind(&self.inner.ns)
        .bind(queue)
        .fetch_one(&self.inner.pool)
        .await
        .map_err(|e| self.err("depth", e))?;
        let count = |col: &str| -> Result<u64> {
            let n: i64 = row.try_get(col).map_err(|e| self.err("depth", e))?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        let oldest: Option<f64> = row.try_get("oldest").map_err(|e| self.err("depth", e))?;
        Ok(Depth {
            visible: count("visible")?,
            in_flight: count("in_flight")?,
            delayed: count("delayed")?,
            dead_lettered: count("dead")?,
            oldest_age: oldest.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }
}

#[async_trait]
impl Broker for PgBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn url(&self) -> String {
        crate::error::redact_url(&self.inner.url)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.pool)
            .await
            .map_err(|e| self.err("ping", e))?;
        Ok(())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<()> {
        let ms = util::millis_i64(spec.visibility_timeout);
        if ms <= 0 {
            return Err(QueueError::Config(format!(
                "queue `{}`: visibility timeout must be at least 1 ms",
                spec.name
            )));
        }
        sqlx::query(
            "INSERT INTO jobfleet.queues (ns, queue, visibility_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (ns, queue) DO UPDATE SET visibility_ms = EXCLUDED.visibility_ms, \
               updated_at = now() \
             WHERE jobfleet.queues.visibility_ms IS DISTINCT FROM EXCLUDED.visibility_ms",
        )
        .bind(&self.inner.ns)
        .bind(&spec.name)
        .bind(ms)
        .execute(&self.inner.pool)
        .await
        .map_err(|e| self.err("declare", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_connection_errors() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_connection_error(&io));
        assert!(is_connection_error(&sqlx::Error::PoolTimedOut));
        assert!(!is_connection_error(&sqlx::Error::RowNotFound));
        let e = map_err("postgres://u:pw@h:1/db", "send", io);
        assert!(matches!(e, QueueError::Unavailable { .. }));
        assert!(e.to_string().contains("postgres://u:***@h:1/db"), "{e}");
    }

    #[test]
    fn migration_is_idempotent_sql() {
        // Databases set up before the one migrator applied 0001 outside it; it must re-run.
        let sql = &migrations::MIGRATOR
            .iter()
            .find(|m| m.version == 1)
            .expect("migration 0001")
            .sql
            .as_str();
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS jobfleet.messages"));
        assert!(
            sql.contains("VALUES (1)"),
            "records the queue schema version"
        );
        assert!(sql.contains(CHANNEL));
    }
}
