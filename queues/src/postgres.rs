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

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, DeadLetters, Delivery, Depth, DlqEntry, DlqPage, DlqScan,
    Inspector, Message, Producer, QueueSpec,
};
use crate::config::BrokerConfig;
use crate::envelope::Envelope;
use crate::error::{Msg, QueueError, Result};

const BACKEND: &str = "postgres";

/// The NOTIFY channel the INSERT trigger of `jobfleet.messages` uses.
pub const CHANNEL: &str = "jobfleet_queues";

/// The queue tables, applied at connect when `jobfleet.queue_schema` lacks [`SCHEMA_VERSION`].
pub const MIGRATION: &str = include_str!("../../migrations/0001_queue.sql");

/// The version `migrations/0001_queue.sql` records in `jobfleet.queue_schema`.
pub const SCHEMA_VERSION: i32 = 1;

/// Advisory lock key serializing concurrent schema set-up (`'jfqueue1'` as a big-endian i64).
const MIGRATION_LOCK: i64 = 0x6a66_7175_6575_6531;

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

/// Per-queue wake-ups fed by the one LISTEN connection.
#[derive(Default)]
struct Wakers {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
    /// False while the listener is reconnecting (notifications may be missed meanwhile).
    healthy: AtomicBool,
}

impl Wakers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        // Only inserts and lookups happen under this lock; a poisoned map is still consistent.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, queue: &str) -> Arc<Notify> {
        self.lock().entry(queue.to_owned()).or_default().clone()
    }

    fn wake(&self, queue: &str) {
        if let Some(n) = self.lock().get(queue) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for n in self.lock().values() {
            n.notify_waiters();
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        ensure_schema(&pool)
            .await
            .map_err(|e| map_err(&url, "apply schema", e))?;
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
    pub async fn send_in(&self, conn: &mut PgConnection, env: &Envelope) -> Result<()> {
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

    async fn take(&self, queue: &str, max: usize) -> Result<Vec<Box<dyn Delivery>>> {
        let lease = Uuid::new_v4();
        let rows = sqlx::query(RECEIVE_SQL)
            .bind(&self.inner.ns)
            .bind(queue)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .bind(lease)
            .bind(millis(DEFAULT_VISIBILITY))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.err("receive", e))?;
        let mut out: Vec<Box<dyn Delivery>> = Vec::with_capacity(rows.len());
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
    if is_connection_error(&e) {
        QueueError::unavailable(BACKEND, url, e)
    } else {
        QueueError::backend(BACKEND, op, e)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Applies `MIGRATION` unless `jobfleet.queue_schema` already records it. The check comes first
/// so a connecting worker takes no table lock (CREATE INDEX IF NOT EXISTS would) on a live queue.
async fn ensure_schema(pool: &PgPool) -> std::result::Result<(), sqlx::Error> {
    if schema_applied(pool).await? {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Another process may have finished while we waited for the lock.
    if schema_applied_in(&mut tx).await? {
        return tx.commit().await;
    }
    if let Err(e) = sqlx::raw_sql(MIGRATION).execute(&mut *tx).await {
        drop(tx);
        // `worker migrate` (its own lock) may have raced us; fine if the tables now exist.
        if schema_applied(pool).await? {
            return Ok(());
        }
        return Err(e);
    }
    tx.commit().await
}

/// Every ack leaves a dead row; without autovacuum the messages table and its index only grow
/// and receives slow down. Worth one log line at start, not a failure.
async fn warn_without_autovacuum(pool: &PgPool, url: &str) {
    let on: std::result::Result<String, sqlx::Error> =
        sqlx::query_scalar("SELECT current_setting('autovacuum')")
            .fetch_one(pool)
            .await;
    if matches!(on.as_deref(), Ok("off")) {
        tracing::warn!(
            url = %crate::error::redact_url(url),
            "postgres queue: autovacuum is off; run `VACUUM jobfleet.messages` every few minutes \
             or the table bloats (see docs/backends/postgres.md)"
        );
    }
}

async fn schema_applied(pool: &PgPool) -> std::result::Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    schema_applied_in(&mut conn).await
}

async fn schema_applied_in(conn: &mut PgConnection) -> std::result::Result<bool, sqlx::Error> {
    // Two statements: PostgreSQL resolves every table a statement names before running it, so
    // one query that guards `queue_schema` with a CASE still fails on a fresh database.
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('jobfleet.queue_schema') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    if !exists {
        return Ok(false);
    }
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobfleet.queue_schema WHERE version >= $1)")
        .bind(SCHEMA_VERSION)
        .fetch_one(conn)
        .await
}

/// Forwards notifications to the waiting consumers of this namespace. When the connection drops,
/// PgListener reconnects and re-LISTENs; whatever was sent meanwhile was not notified, so every
/// waiter is woken to look for itself.
async fn listen_loop(mut listener: PgListener, ns: String, wakers: Arc<Wakers>) {
    let prefix = format!("{ns}:");
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if let Some(queue) = n.payload().strip_prefix(&prefix) {
                    wakers.wake(queue);
                }
            }
            Ok(None) => {
                wakers.healthy.store(true, Ordering::Relaxed);
                wakers.wake_all();
            }
            Err(e) => {
                if wakers.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "postgres queue listener lost its connection; retrying");
                }
                wakers.wake_all();
                tokio::time::sleep(DEGRADED_RECHECK).await;
            }
        }
    }
}

/// An ack waiting for the group delete.
struct AckRequest {
    id: i64,
    lease: Uuid,
    done: oneshot::Sender<Result<bool>>,
}

/// Most acks deleted by one statement.
const ACK_BATCH: usize = 1000;

/// Group deletes in flight at once: enough to overlap round trips, few enough to leave the
/// pool to receives and sends.
const ACK_FLUSHES: usize = 4;

/// Group commit for acks. Each DELETE would be its own transaction waiting for a WAL flush
/// (~3 ms here), which capped a busy queue near 2,500 acks/s. So acks that arrive while one
/// delete runs go together in the next (no added delay when idle), and the ack transaction
/// commits with `synchronous_commit = off` (set for that transaction only): the caller returns
/// once the row is deleted and committed, but a database crash within ~0.6 s of an ack can
/// undo it, and the job then runs once more, which at-least-once delivery already allows.
/// Sends, receives, nacks, extends and dead-letters keep fully durable commits.
async fn ack_loop(pool: PgPool, url: String, mut rx: mpsc::UnboundedReceiver<AckRequest>) {
    let flushing = Arc::new(tokio::sync::Semaphore::new(ACK_FLUSHES));
    loop {
        // Taken before collecting: while every flush is busy, acks pile up into a bigger batch.
        let Ok(permit) = flushing.clone().acquire_owned().await else {
            return;
        };
        let mut batch: Vec<AckRequest> = Vec::new();
        if rx.recv_many(&mut batch, ACK_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        let url = url.clone();
        tokio::spawn(async move {
            flush_acks(&pool, &url, batch).await;
            drop(permit);
        });
    }
}

async fn flush_acks(pool: &PgPool, url: &str, batch: Vec<AckRequest>) {
    let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
    let leases: Vec<Uuid> = batch.iter().map(|r| r.lease).collect();
    let res: std::result::Result<Vec<i64>, sqlx::Error> = sqlx::query_scalar(
        "DELETE FROM jobfleet.messages m \
         USING UNNEST($1::bigint[], $2::uuid[]) AS a(id, lease) \
         WHERE m.id = a.id AND m.lease = a.lease \
           AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL \
         RETURNING m.id",
    )
    .bind(ids)
    .bind(leases)
    .fetch_all(pool)
    .await;
    match res {
        Ok(deleted) => {
            let mut deleted: std::collections::HashSet<i64> = deleted.into_iter().collect();
            for r in batch {
                // `remove`, so a second ack of the same delivery in one batch is LeaseLost.
                let _ = r.done.send(Ok(deleted.remove(&r.id)));
            }
        }
        Err(e) => {
            let text = e.to_string();
            let conn = is_connection_error(&e);
            for r in batch {
                let err = if conn {
                    QueueError::unavailable(BACKEND, url, Msg(text.clone()))
                } else {
                    QueueError::backend(BACKEND, "ack", Msg(text.clone()))
                };
                let _ = r.done.send(Err(err));
            }
        }
    }
}

/// Writes `env` on `conn`: inside the caller's transaction when `conn` is one, so the job is
/// enqueued exactly when that transaction commits (consumers are woken at commit). `namespace`
/// is the broker's `ns` (`"jobfleet"` by default).
pub async fn send_in(conn: &mut PgConnection, namespace: &str, env: &Envelope) -> Result<()> {
    crate::validate_queue_name(&env.queue)?;
    let body =
        String::from_utf8(env.to_bytes()).map_err(|e| QueueError::backend(BACKEND, "send", e))?;
    sqlx::query(INSERT_SQL)
        .bind(namespace)
        .bind(&env.queue)
        .bind(body)
        .bind(env.run_at)
        .execute(conn)
        .await
        .map_err(|e| {
            if is_connection_error(&e) {
                QueueError::unavailable(BACKEND, "postgres://(caller's connection)", e)
            } else {
                QueueError::backend(BACKEND, "send", e)
            }
        })?;
    Ok(())
}

fn body_text(env: &Envelope) -> Result<String> {
    // serde_json writes UTF-8; this only guards the type conversion.
    String::from_utf8(env.to_bytes()).map_err(|e| QueueError::backend(BACKEND, "encode", e))
}

#[async_trait]
impl Producer for PgBroker {
    async fn send(&self, envelope: &Envelope) -> Result<()> {
        crate::validate_queue_name(&envelope.queue)?;
        sqlx::query(INSERT_SQL)
            .bind(&self.inner.ns)
            .bind(&envelope.queue)
            .bind(body_text(envelope)?)
            .bind(envelope.run_at)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| self.err("send", e))?;
        Ok(())
    }

    async fn send_batch(&self, envelopes: &[Envelope]) -> Result<()> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut queues = Vec::with_capacity(envelopes.len());
        let mut bodies = Vec::with_capacity(envelopes.len());
        let mut run_at = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            crate::validate_queue_name(&e.queue)?;
            queues.push(e.queue.clone());
            bodies.push(body_text(e)?);
            run_at.push(e.run_at);
        }
        // One statement: all or nothing, and one NOTIFY per queue from the statement trigger.
        sqlx::query(INSERT_BATCH_SQL)
            .bind(&self.inner.ns)
            .bind(queues)
            .bind(bodies)
            .bind(run_at)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| self.err("send_batch", e))?;
        Ok(())
    }
}

#[async_trait]
impl Consumer for PgBroker {
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Box<dyn Delivery>>> {
        crate::validate_queue_name(queue)?;
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
        crate::validate_queue_name(&spec.name)?;
        let ms = millis(spec.visibility_timeout);
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

/// One leased row. Every settle matches on `(id, lease)`: a lease that expired and was taken by
/// another consumer no longer matches, which is [`QueueError::LeaseLost`]. A lease that expired
/// but was not re-received still matches, so a slow job's ack is not wasted.
struct PgDelivery {
    broker: PgBroker,
    id: i64,
    lease: Uuid,
    msg: Message,
}

impl PgDelivery {
    fn lost(&self) -> QueueError {
        QueueError::LeaseLost {
            backend: BACKEND,
            id: self.msg.id().to_owned(),
        }
    }

    fn check(&self, op: &'static str, r: std::result::Result<u64, sqlx::Error>) -> Result<()> {
        match r {
            Ok(0) => Err(self.lost()),
            Ok(_) => Ok(()),
            Err(e) => Err(self.broker.err(op, e)),
        }
    }

    fn pool(&self) -> &PgPool {
        &self.broker.inner.pool
    }
}

/// Makes a leased row visible again after `$3` ms, with a new body when `$4` is not NULL (then
/// as a fresh message: receive count and age restart), and wakes that queue's consumers.
const REQUEUE_SQL: &str = "WITH u AS ( \
       UPDATE jobfleet.messages SET lease = NULL, \
         visible_at = now() + $3 * interval '1 millisecond', \
         body = COALESCE($4, body), \
         receive_count = CASE WHEN $4 IS NULL THEN receive_count ELSE 0 END, \
         enqueued_at = CASE WHEN $4 IS NULL THEN enqueued_at ELSE now() END \
       WHERE id = $1 AND lease = $2 RETURNING ns, queue \
     ) SELECT pg_notify('jobfleet_queues', ns || ':' || queue) FROM u";

#[async_trait]
impl Delivery for PgDelivery {
    fn message(&self) -> &Message {
        &self.msg
    }

    async fn ack(&self) -> Result<()> {
        let (done, result) = oneshot::channel();
        let req = AckRequest {
            id: self.id,
            lease: self.lease,
            done,
        };
        let closed = || QueueError::backend(BACKEND, "ack", Msg("ack task stopped".into()));
        self.broker.inner.acks.send(req).map_err(|_| closed())?;
        match result.await.map_err(|_| closed())? {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost()),
            Err(e) => Err(e),
        }
    }

    async fn nack(&self, retry_after: Duration) -> Result<()> {
        let r = sqlx::query(REQUEUE_SQL)
            .bind(self.id)
            .bind(self.lease)
            .bind(millis(retry_after))
            .bind(None::<String>)
            .fetch_all(self.pool())
            .await
            .map(|rows| rows.len() as u64);
        self.check("nack", r)
    }

    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()> {
        // The body is replaced in the same row, atomically: never lost, never duplicated.
        let r = sqlx::query(REQUEUE_SQL)
            .bind(self.id)
            .bind(self.lease)
            .bind(millis(retry_after))
            .bind(Some(body_text(updated)?))
            .fetch_all(self.pool())
            .await
            .map(|rows| rows.len() as u64);
        self.check("retry", r)
    }

    async fn extend(&self, visibility: Duration) -> Result<()> {
        let r = sqlx::query(
            "UPDATE jobfleet.messages SET visible_at = now() + $3 * interval '1 millisecond' \
             WHERE id = $1 AND lease = $2",
        )
        .bind(self.id)
        .bind(self.lease)
        .bind(millis(visibility))
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected());
        self.check("extend", r)
    }

    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()> {
        let (entry_id, body) = match updated {
            Some(env) => (env.id.clone(), Some(body_text(env)?)),
            None => (self.msg.id().to_owned(), None),
        };
        // Delete and insert in one statement: the message is in exactly one of the two tables.
        let r = sqlx::query(
            "WITH d AS ( \
               DELETE FROM jobfleet.messages WHERE id = $1 AND lease = $2 \
               RETURNING id, ns, queue, body, receive_count, enqueued_at \
             ) INSERT INTO jobfleet.dead_letters \
                 (ns, queue, entry_id, body, reason, broker_id, receive_count, enqueued_at) \
               SELECT ns, queue, $3, COALESCE($4, body), $5, id::text, receive_count, enqueued_at \
               FROM d",
        )
        .bind(self.id)
        .bind(self.lease)
        .bind(entry_id)
        .bind(body)
        .bind(reason)
        .execute(self.pool())
        .await
        .map(|r| r.rows_affected());
        self.check("dead_letter", r)
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
        assert!(MIGRATION.contains("CREATE TABLE IF NOT EXISTS jobfleet.messages"));
        assert!(MIGRATION.contains("VALUES (1)"), "records SCHEMA_VERSION");
        assert!(MIGRATION.contains(CHANNEL));
    }
}
