//! Unique jobs for brokers with no de-duplication of their own (RabbitMQ, SQS standard queues):
//! the taken `dedup_key`s live in PostgreSQL (`jobfleet.dedup_keys`, `broker.dedup_url`, by
//! default the jobs' database), the same table and functions the PostgreSQL queue's trigger uses
//! (`migrations/0150_unique_jobs.sql`, docs/decisions.md D51).
//!
//! Two checks, so a job written natively (pika, boto3) means the same as one sent from here:
//! - [`DedupStore::send`]: before publishing, take the keys (`dedup_take`); publish what was
//!   taken; record it written. A failed publish gives its keys back.
//! - [`DedupStore::admit`]: on receive, a job whose key another job holds is acked and dropped
//!   (log line + `jobfleet_duplicates_dropped_total`), which is where a native duplicate ends.
//!
//! The pool connects lazily and the schema is brought up on first use, so a broker whose jobs
//! carry no keys never needs the database.

use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::OnceCell;

use crate::broker::{Deliveries, Sent};
use crate::envelope::Envelope;
use crate::error::{QueueError, Result, redact_url};

/// How long a store operation may wait for a connection: the job path must not hang on it.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The Prometheus counter of received duplicates that were dropped, by `queue`.
pub const DROPPED_METRIC: &str = "jobfleet_duplicates_dropped_total";

/// The table of taken keys, for one broker namespace.
pub(crate) struct DedupStore {
    backend: &'static str,
    pool: PgPool,
    url: String,
    ns: String,
    schema: OnceCell<()>,
}

/// Key columns of the envelopes that need a check, as query arrays.
#[derive(Default)]
struct Keys {
    index: Vec<usize>,
    queue: Vec<String>,
    key: Vec<String>,
    job: Vec<String>,
    window_ms: Vec<i64>,
    enqueued_at: Vec<chrono::DateTime<chrono::Utc>>,
}

impl Keys {
    fn push(&mut self, i: usize, env: &Envelope) {
        if let Some((key, window)) = env.dedup() {
            self.index.push(i);
            self.queue.push(env.queue.clone());
            self.key.push(key.to_owned());
            self.job.push(env.id.clone());
            self.window_ms
                .push(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
            self.enqueued_at.push(env.enqueued_at);
        }
    }
}

impl DedupStore {
    /// A store on `url` (not connected yet) for `backend`'s namespace `ns`.
    pub(crate) fn new(backend: &'static str, url: &str, ns: &str) -> Result<DedupStore> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy(url)
            .map_err(|e| {
                QueueError::Config(format!(
                    "broker.dedup_url `{}` is not a PostgreSQL URL: {e}",
                    redact_url(url)
                ))
            })?;
        Ok(DedupStore {
            backend,
            pool,
            url: url.to_owned(),
            ns: ns.to_owned(),
            schema: OnceCell::new(),
        })
    }

    /// `dedup_key` needs the store; a broker configured without one says so instead of
    /// silently writing duplicates.
    pub(crate) fn required<'a>(
        store: Option<&'a DedupStore>,
        backend: &'static str,
        env: &Envelope,
    ) -> Result<&'a DedupStore> {
        store.ok_or_else(|| {
            QueueError::Config(format!(
                "job {} has dedup_key `{}` but broker.dedup_url is not set: {backend} has no \
                 de-duplication of its own, so it keeps the keys in PostgreSQL (set \
                 broker.dedup_url, or [database] url, which it defaults to)",
                env.id,
                env.dedup_key.as_deref().unwrap_or_default()
            ))
        })
    }

    fn err(&self, op: &'static str, e: sqlx::Error) -> QueueError {
        let lost = matches!(
            e,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
        );
        crate::backends::util::client_error(self.backend, &self.url, op, lost, e)
    }

    async fn ready(&self) -> Result<&PgPool> {
        self.schema
            .get_or_try_init(|| async {
                migrations::ensure(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| match e {
                        migrations::Error::Status(e) => self.err("dedup schema", e),
                        e => QueueError::backend(self.backend, "dedup schema", e),
                    })
            })
            .await?;
        Ok(&self.pool)
    }

    /// Runs `sql` (a function of ns, queue, key, job, window) over `keys`, one bool each.
    async fn call(&self, op: &'static str, sql: &'static str, keys: &Keys) -> Result<Vec<bool>> {
        let pool = self.ready().await?;
        sqlx::query_scalar(sql)
            .bind(&self.ns)
            .bind(&keys.queue)
            .bind(&keys.key)
            .bind(&keys.job)
            .bind(&keys.window_ms)
            .bind(&keys.enqueued_at)
            .fetch_all(pool)
            .await
            .map_err(|e| self.err(op, e))
    }

    /// Sends `envelopes` with `publish` (which must return once the broker confirmed), writing
    /// only those whose keys could be taken: one [`Sent`] per envelope, in order.
    pub(crate) async fn send<'e, F, Fut>(
        store: Option<&DedupStore>,
        backend: &'static str,
        envelopes: &'e [Envelope],
        publish: F,
    ) -> Result<Vec<Sent>>
    where
        F: FnOnce(Vec<&'e Envelope>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut keys = Keys::default();
        for (i, e) in envelopes.iter().enumerate() {
            keys.push(i, e);
        }
        if keys.index.is_empty() {
            publish(envelopes.iter().collect()).await?;
            return Ok(vec![Sent::Enqueued; envelopes.len()]);
        }
        let store = Self::required(store, backend, &envelopes[keys.index[0]])?;
        let taken = store.call("dedup take", TAKE_SQL, &keys).await?;
        let mut sent = vec![Sent::Enqueued; envelopes.len()];
        for (i, ok) in keys.index.iter().zip(&taken) {
            if !ok {
                sent[*i] = Sent::Duplicate;
            }
        }
        let out: Vec<&Envelope> = envelopes
            .iter()
            .zip(&sent)
            .filter(|(_, s)| s.is_enqueued())
            .map(|(e, _)| e)
            .collect();
        let taken_keys = keys.only(&taken);
        if out.is_empty() {
            return Ok(sent);
        }
        if let Err(e) = publish(out).await {
            // Give the keys back so a retry of this send (or another producer) is not told
            // "duplicate" of a job that was never written.
            if let Err(r) = store.run(RELEASE_SQL, &taken_keys).await {
                tracing::warn!(error = %r, "could not give back dedup keys after a failed publish; they lapse within a minute");
            }
            return Err(e);
        }
        // Only a shortcut: until this lands, the receive-side check also records it.
        if let Err(e) = store.run(WRITTEN_SQL, &taken_keys).await {
            tracing::warn!(error = %e, "could not record dedup keys as written; the worker will on receive");
        }
        Ok(sent)
    }

    async fn run(&self, sql: &'static str, keys: &Keys) -> Result<()> {
        if keys.index.is_empty() {
            return Ok(());
        }
        let pool = self.ready().await?;
        sqlx::query(sql)
            .bind(&self.ns)
            .bind(&keys.queue)
            .bind(&keys.key)
            .bind(&keys.job)
            .execute(pool)
            .await
            .map_err(|e| self.err("dedup update", e))?;
        Ok(())
    }

    /// Drops (acks) received jobs whose key another job holds; passes the rest on in order. A
    /// store that cannot be reached lets everything through (at-least-once: a duplicate may
    /// run, nothing is lost) and says so in the log.
    pub(crate) async fn admit(
        store: Option<&DedupStore>,
        queue: &str,
        deliveries: Deliveries,
    ) -> Deliveries {
        let mut keys = Keys::default();
        for (i, d) in deliveries.iter().enumerate() {
            if let Ok(env) = d.message().envelope() {
                keys.push(i, env);
            }
        }
        let Some(store) = store.filter(|_| !keys.index.is_empty()) else {
            return deliveries;
        };
        let admitted = match store.call("dedup admit", ADMIT_SQL, &keys).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%queue, error = %e, "dedup store unreachable: received jobs with a dedup_key run unchecked");
                return deliveries;
            }
        };
        let mut drop = vec![false; deliveries.len()];
        for (i, ok) in keys.index.iter().zip(admitted) {
            drop[*i] = !ok;
        }
        let mut kept = Vec::with_capacity(deliveries.len());
        for (d, dup) in deliveries.into_iter().zip(drop) {
            if !dup {
                kept.push(d);
                continue;
            }
            let env = d.message().envelope().ok();
            let key = env.and_then(|e| e.dedup_key.as_deref()).unwrap_or_default();
            match d.ack().await {
                Ok(()) => {
                    tracing::info!(%queue, id = %d.message().id(), %key, "dropped a duplicate: another job of this queue holds its dedup_key");
                    metrics::counter!(DROPPED_METRIC, "queue" => queue.to_owned()).increment(1);
                }
                // Not acked: it comes back after its visibility timeout and is checked again.
                Err(e) => {
                    tracing::warn!(%queue, id = %d.message().id(), error = %e, "could not ack a duplicate")
                }
            }
        }
        kept
    }
}

impl Keys {
    /// The rows whose flag in `taken` is true.
    fn only(&self, taken: &[bool]) -> Keys {
        let mut k = Keys::default();
        for (j, _) in taken.iter().enumerate().filter(|(_, t)| **t) {
            k.index.push(self.index[j]);
            k.queue.push(self.queue[j].clone());
            k.key.push(self.key[j].clone());
            k.job.push(self.job[j].clone());
            k.window_ms.push(self.window_ms[j]);
            k.enqueued_at.push(self.enqueued_at[j]);
        }
        k
    }
}

// Both take the same arrays ($6, the envelopes' `enqueued_at`, only matters on receive).
const TAKE_SQL: &str = "SELECT jobfleet.dedup_take($1, t.q, t.k, t.j, t.ms, false) \
     FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[]) \
     WITH ORDINALITY AS t(q, k, j, ms, e, n) ORDER BY t.n";

const ADMIT_SQL: &str = "SELECT jobfleet.dedup_admit($1, t.q, t.k, t.j, t.ms, t.e) \
     FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bigint[], $6::timestamptz[]) \
     WITH ORDINALITY AS t(q, k, j, ms, e, n) ORDER BY t.n";

const WRITTEN_SQL: &str = "UPDATE jobfleet.dedup_keys d SET written = true \
     FROM UNNEST($2::text[], $3::text[], $4::text[]) AS t(q, k, j) \
     WHERE d.ns = $1 AND d.queue = t.q AND d.key = t.k AND d.job_id = t.j";

const RELEASE_SQL: &str = "DELETE FROM jobfleet.dedup_keys d \
     USING UNNEST($2::text[], $3::text[], $4::text[]) AS t(q, k, j) \
     WHERE d.ns = $1 AND d.queue = t.q AND d.key = t.k AND d.job_id = t.j AND NOT d.written";
