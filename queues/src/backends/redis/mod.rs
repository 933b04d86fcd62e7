//! Redis backend: a reliable queue made of plain lists, hashes and sorted sets, with every move
//! between states done by one Lua script so it is atomic, and a stream for the DLQ.
//!
//! Keys of queue `q` (all under the configured namespace `ns`; see `docs/backends/redis.md`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `ns:q:ready` | LIST | visible work: raw bodies (`LPUSH` by any client) or `\0jf:<id>` references to stored messages |
//! | `ns:q:claimed` | LIST | items a blocked consumer woke up with, adopted by the next receive |
//! | `ns:q:msgs` | HASH | id → body of messages in flight or delayed |
//! | `ns:q:counts` | HASH | id → receive count |
//! | `ns:q:inflight` | ZSET | `<id>:<receive count>` scored by the lease deadline (ms) |
//! | `ns:q:delayed` | ZSET | id scored by the due time (ms) |
//! | `ns:q:seq` | STRING | counter for ids of adopted raw bodies |
//! | `ns:q:meta` | HASH | `visibility_ms` set by `declare` |
//! | `ns:q:dlq` | STREAM | dead letters: `id`, `body`, `reason`, `at`, `broker_id` |
//! | `ns:q:dlq:index` | HASH | entry id → stream id, for `dlq_get` |
//! | `ns:q:dedup:<key>` | STRING | job id holding `dedup_key` `<key>`, expiring with its `unique_for` (`SET NX PX` in the script that pushes the job) |
//!
//! The receive count doubles as the lease token: a redelivery gets a new count, so a stale
//! delivery's ack/extend finds no `<id>:<old count>` member and fails with `LeaseLost`.
//! Times come from Redis (`TIME`) so producers' and consumers' clocks never have to agree.
//!
//! The scripts are `lua/*.lua`, each called only through its function in `scripts.rs`.

mod acks;
mod conn;
mod delivery;
mod dlq;
mod keys;
mod scripts;
mod slots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backends::util;
use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, Deliveries, Depth, Inspector, Message, Producer,
    QueueSpec, Sent,
};
use crate::config::BrokerConfig;
use crate::envelope::Envelope;
use crate::error::{Msg, QueueError, Result};

use conn::{CONNECT_TIMEOUT, Conn, RESPONSE_TIMEOUT, Target};
use delivery::RedisDelivery;
use keys::{Keys, Layout};
use slots::SlotMap;

const BACKEND: &str = "redis";

/// Blocking waits are re-armed at least this often, so a lost wake-up costs at most this much.
const MAX_BLOCK: Duration = Duration::from_secs(30);

/// The Redis broker. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    conn: Conn,
    /// Connections for blocking waits: a `BLMOVE` holds its connection for its whole duration,
    /// so it must never share the multiplexed one the other operations use.
    blocking: Mutex<Vec<Conn>>,
    /// On a cluster: the slot map as last seen, to name the node in errors.
    slots: Option<Arc<SlotMap>>,
    /// Per queue, the way into its ack group commit ([`acks::ack_loop`]), started with its
    /// first receive.
    acks: Mutex<HashMap<String, mpsc::UnboundedSender<acks::AckRequest>>>,
    url: String,
    namespace: String,
    /// Replicas every send waits for (`WAIT`), and for how long at most; none by default.
    replica_wait: Option<(u32, Duration)>,
}

impl Inner {
    fn keys(&self, queue: &str) -> Keys {
        Keys::new(self.target.layout(), &self.namespace, queue)
    }

    /// An error of an operation that concerns no queue in particular.
    fn err(&self, op: &'static str, e: RedisError) -> QueueError {
        map_err(&self.url, op, e)
    }

    /// An error of an operation on the queue of `keys`. On a cluster a transient one names
    /// the slot and the master that served it when last seen, and has the slot map re-read.
    fn err_on(&self, keys: &Keys, op: &'static str, e: RedisError) -> QueueError {
        let (Some(slots), Some(cluster)) = (&self.slots, self.conn.cluster()) else {
            return self.err(op, e);
        };
        if !connection_lost(&e) {
            return self.err(op, e);
        }
        let slot = keys.slot();
        let node = slots
            .master_of(slot)
            .unwrap_or_else(|| "an unknown node".into());
        slots.refresh_soon(cluster);
        QueueError::unavailable(
            BACKEND,
            &self.url,
            Msg(format!(
                "{op} on queue `{}` (hash slot {slot}, served by {node} when last seen): {e}",
                keys.queue
            )),
        )
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    async fn blocking_conn(&self) -> Result<Conn> {
        let pooled = util::lock(&self.blocking).pop();
        if let Some(c) = pooled {
            return Ok(c);
        }
        self.target
            .blocking()
            .await
            .map_err(|e| self.err("connect", e))
    }

    /// The ack queue of `queue`, starting its writer on first use (or again, should the
    /// runtime that ran the last one have gone).
    fn acks(&self, queue: &str, keys: &Keys) -> mpsc::UnboundedSender<acks::AckRequest> {
        let mut map = util::lock(&self.acks);
        if let Some(tx) = map.get(queue).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(acks::ack_loop(
            self.conn(),
            keys.clone(),
            self.url.clone(),
            rx,
        ));
        map.insert(queue.to_owned(), tx.clone());
        tx
    }

    fn give_back(&self, c: Conn) {
        let mut pool = util::lock(&self.blocking);
        if pool.len() < 64 {
            pool.push(c);
        }
    }
}

/// Whether `e` is the server (or the path to it) being away rather than an answer: besides
/// the connection itself, the cluster's own "not now" answers during a failover (`CLUSTERDOWN`,
/// `TRYAGAIN`, `MASTERDOWN`, a `READONLY` from a demoted master, a redirection the client gave
/// up following) and a node still `LOADING` its data after a restart.
fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::BusyLoading
                )
        )
}

fn map_err(url: &str, op: &'static str, e: RedisError) -> QueueError {
    util::client_error(BACKEND, url, op, connection_lost(&e), e)
}

fn bad_reply(op: &'static str, what: &str) -> QueueError {
    QueueError::backend(BACKEND, op, Msg(format!("unexpected reply: {what}")))
}

fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        other => as_bytes(other).map(|b| String::from_utf8_lossy(b).into_owned()),
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_string(other).and_then(|s| s.parse().ok()),
    }
}

impl RedisBroker {
    /// Connects to `cfg.url` (default `redis://127.0.0.1:6379`; `redis+cluster://h:p,h:p…`
    /// for a cluster). Fails with [`QueueError::Unavailable`] within a few seconds when
    /// nothing answers; once connected, it reconnects by itself after a Redis restart and, on
    /// a cluster, follows failovers and slot moves.
    pub async fn connect(cfg: &BrokerConfig) -> Result<RedisBroker> {
        cfg.validate()?;
        let url = cfg.url_or_default().to_owned();
        let target = Target::open(&url)?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT * 3, target.connect())
            .await
            .map_err(|_| QueueError::unavailable(BACKEND, &url, Msg("connect timed out".into())))?
            .map_err(|e| QueueError::unavailable(BACKEND, &url, e))?;
        let slots = match conn.cluster() {
            Some(c) => {
                let map = Arc::new(SlotMap::default());
                map.refresh(&mut c.clone()).await;
                Some(map)
            }
            None => None,
        };
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                target,
                conn,
                blocking: Mutex::new(Vec::new()),
                slots,
                acks: Mutex::new(HashMap::new()),
                url,
                namespace: cfg.namespace.clone(),
                replica_wait: None,
            }),
        })
    }

    /// The same broker, but every `send`/`send_batch` ends with `WAIT replicas timeout` on the
    /// connection that wrote, and fails with a transient error when fewer replicas confirm in
    /// time. Redis replicates asynchronously: without this, a job acknowledged by a master that
    /// dies before passing it on is gone. With it, it survives the failover of that master
    /// (unless the replica dies too). It costs a replication round trip per send call
    /// (`docs/backends/redis.md` has the figure); a send that fails may still have enqueued the
    /// jobs on the master, so a retry can enqueue them twice (delivery is at least once anyway).
    pub fn with_replica_wait(&self, replicas: u32, timeout: Duration) -> RedisBroker {
        let inner = &self.inner;
        RedisBroker {
            inner: Arc::new(Inner {
                target: inner.target.clone(),
                conn: inner.conn.clone(),
                blocking: Mutex::new(Vec::new()),
                slots: inner.slots.clone(),
                acks: Mutex::new(HashMap::new()),
                url: inner.url.clone(),
                namespace: inner.namespace.clone(),
                replica_wait: Some((replicas, timeout)),
            }),
        }
    }

    /// Whether this broker talks to a Redis Cluster (keys `ns:{queue}:…`).
    pub fn is_cluster(&self) -> bool {
        self.inner.target.layout() == Layout::Cluster
    }

    /// The key of `queue`'s ready list, where a native producer `LPUSH`es a job:
    /// `ns:queue:ready` on a single node, `ns:{queue}:ready` on a cluster.
    pub fn ready_key(&self, queue: &str) -> String {
        self.inner.keys(queue).ready
    }

    /// Runs one receive script and turns its reply into deliveries (parking future `run_at`s).
    async fn receive_once(
        &self,
        queue: &str,
        keys: &Keys,
        max: usize,
    ) -> Result<(Deliveries, Option<Duration>)> {
        let inner = &self.inner;
        let reply: Vec<Value> = scripts::receive(keys, max)
            .run(&mut inner.conn())
            .await
            .map_err(|e| inner.err_on(keys, "receive", e))?;
        let Some((wake, rest)) = reply.split_first() else {
            return Err(bad_reply("receive", "empty"));
        };
        let wake = as_int(wake).ok_or_else(|| bad_reply("receive", "wake time"))?;
        let wake = u64::try_from(wake).ok().map(Duration::from_millis);
        if rest.is_empty() {
            return Ok((Vec::new(), wake));
        }
        let mut out: Deliveries = Vec::with_capacity(rest.len() / 3);
        let acks = inner.acks(queue, keys);
        let now = Utc::now();
        for item in rest.chunks(3) {
            let [id, count, body] = item else {
                return Err(bad_reply("receive", "truncated item"));
            };
            let id = as_string(id).ok_or_else(|| bad_reply("receive", "id"))?;
            let count = as_int(count).ok_or_else(|| bad_reply("receive", "count"))?;
            let body = as_bytes(body).ok_or_else(|| bad_reply("receive", "body"))?;
            let msg = Message::new(
                Bytes::copy_from_slice(body),
                u32::try_from(count).unwrap_or(u32::MAX),
                id.clone(),
            );
            if count == 1 {
                let run_at = msg.envelope().ok().and_then(|e| e.run_at);
                if let Some(at) = run_at.filter(|at| *at > now) {
                    self.defer(keys, &id, count, at).await?;
                    continue;
                }
            }
            out.push(Box::new(RedisDelivery {
                broker: self.clone(),
                acks: acks.clone(),
                keys: keys.clone(),
                queue: queue.to_owned(),
                id,
                count,
                msg,
            }));
        }
        Ok((out, wake))
    }

    async fn defer(&self, keys: &Keys, id: &str, count: i64, at: DateTime<Utc>) -> Result<()> {
        let _: i64 = scripts::defer(keys, id, count, at.timestamp_millis())
            .run(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err_on(keys, "defer", e))?;
        Ok(())
    }

    /// Blocks until an item lands on the ready list or `wait` passes, moving that item to the
    /// claimed list (never taking it: the next receive script adopts it, so a consumer dying
    /// right here loses nothing).
    async fn block(&self, keys: &Keys, wait: Duration) -> Result<()> {
        let inner = &self.inner;
        let mut conn = inner.blocking_conn().await?;
        let mut cmd = redis::cmd("BLMOVE");
        cmd.arg(&keys.ready)
            .arg(&keys.claimed)
            .arg("RIGHT")
            .arg("LEFT")
            .arg(wait.as_secs_f64());
        // The server ends the wait itself; the guard only catches a connection that went silent.
        let res = tokio::time::timeout(
            wait + RESPONSE_TIMEOUT,
            cmd.query_async::<Option<Vec<u8>>>(&mut conn),
        )
        .await;
        match res {
            Ok(Ok(_)) => {
                inner.give_back(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(inner.err_on(keys, "receive (blocking wait)", e)),
            Err(_) => Err(QueueError::unavailable(
                BACKEND,
                &inner.url,
                Msg("blocking wait got no answer".into()),
            )),
        }
    }
}

#[async_trait]
impl Producer for RedisBroker {
    async fn send(&self, envelope: &Envelope) -> Result<Sent> {
        let sent = self.send_batch(std::slice::from_ref(envelope)).await?;
        Ok(sent.first().copied().unwrap_or(Sent::Enqueued))
    }

    /// One pipeline: one `LPUSH` per queue for jobs due now, one script call per delayed job
    /// and per job with a dedup key (whose reply says whether it was written). On a cluster a
    /// pipeline may only touch one slot, so there it is one pipeline per queue, all sent at once.
    async fn send_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Sent>> {
        if envelopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_queue: Vec<(&str, Vec<(usize, &Envelope)>)> = Vec::new();
        for (i, e) in envelopes.iter().enumerate() {
            match by_queue.iter_mut().find(|(q, _)| *q == e.queue) {
                Some((_, list)) => list.push((i, e)),
                None => by_queue.push((&e.queue, vec![(i, e)])),
            }
        }
        let now = Utc::now();
        let mut sent = vec![Sent::Enqueued; envelopes.len()];
        let mut mark = |unique: Vec<usize>, written: Vec<i64>| {
            for (i, w) in unique.into_iter().zip(written) {
                if w == 0 {
                    sent[i] = Sent::Duplicate;
                }
            }
        };
        if !self.is_cluster() {
            let mut pipe = redis::pipe();
            let mut unique = Vec::new();
            for (queue, list) in &by_queue {
                unique.extend(self.add_sends(&mut pipe, &self.inner.keys(queue), list, now));
            }
            let written = self
                .send_pipeline(pipe)
                .await
                .map_err(|e| self.inner.err("send", e))??;
            mark(unique, written);
            return Ok(sent);
        }
        let replies =
            futures::future::try_join_all(by_queue.iter().map(|(queue, list)| async move {
                let keys = self.inner.keys(queue);
                let mut pipe = redis::pipe();
                let unique = self.add_sends(&mut pipe, &keys, list, now);
                let written = self
                    .send_pipeline(pipe)
                    .await
                    .map_err(|e| self.inner.err_on(&keys, "send", e))??;
                Ok::<_, QueueError>((unique, written))
            }))
            .await?;
        for (unique, written) in replies {
            mark(unique, written);
        }
        Ok(sent)
    }
}

impl RedisBroker {
    /// Runs a pipeline of sends, ending it with `WAIT` when the broker asks for replicas. In
    /// the same pipeline, so on the same connection and node as the writes it waits for.
    /// Returns the replies of the pipeline's unignored calls (the unique sends' scripts).
    async fn send_pipeline(
        &self,
        mut pipe: redis::Pipeline,
    ) -> redis::RedisResult<Result<Vec<i64>>> {
        let Some((replicas, timeout)) = self.inner.replica_wait else {
            return pipe
                .query_async::<Vec<i64>>(&mut self.inner.conn())
                .await
                .map(Ok);
        };
        pipe.cmd("WAIT")
            .arg(replicas)
            .arg(util::millis_u64(timeout));
        let mut replies: Vec<i64> = pipe.query_async(&mut self.inner.conn()).await?;
        let acked = replies.pop().unwrap_or(0);
        if acked >= i64::from(replicas) {
            return Ok(Ok(replies));
        }
        Ok(Err(QueueError::backend(
            BACKEND,
            "send (WAIT for replicas)",
            Msg(format!(
                "{acked} of {replicas} replicas confirmed within {timeout:?}: the jobs are on \
                 the master but could be lost if it fails now (retrying may enqueue them twice)"
            )),
        )))
    }

    /// Adds the sends of `envelopes`, all of the queue of `keys`, to `pipe`. Returns the
    /// indexes of the envelopes whose script reply the pipeline returns, in order.
    fn add_sends(
        &self,
        pipe: &mut redis::Pipeline,
        keys: &Keys,
        envelopes: &[(usize, &Envelope)],
        now: DateTime<Utc>,
    ) -> Vec<usize> {
        let mut due_now = Vec::new();
        let mut loaded = (false, false);
        let mut unique = Vec::new();
        for (i, e) in envelopes {
            let due = e.run_at.filter(|at| *at > now);
            if let Some((key, window)) = e.dedup() {
                let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
                let due_ms = due.map_or(0, |at| at.timestamp_millis());
                let call = scripts::send_unique(keys, key, &e.to_bytes(), &e.id, window_ms, due_ms);
                if !loaded.1 {
                    pipe.load_script(call.script()).ignore();
                    loaded.1 = true;
                }
                pipe.invoke_script(&call.invocation());
                unique.push(*i);
                continue;
            }
            match due {
                Some(at) => {
                    let call = scripts::send_delayed(keys, &e.to_bytes(), at.timestamp_millis());
                    if !loaded.0 {
                        pipe.load_script(call.script()).ignore();
                        loaded.0 = true;
                    }
                    pipe.invoke_script(&call.invocation()).ignore();
                }
                None => due_now.push(e.to_bytes()),
            }
        }
        if !due_now.is_empty() {
            pipe.lpush(&keys.ready, due_now).ignore();
        }
        unique
    }
}

#[async_trait]
impl Consumer for RedisBroker {
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Deliveries> {
        let keys = self.inner.keys(queue);
        let deadline = Instant::now() + wait;
        let max = max.max(1);
        loop {
            let (got, wake) = self.receive_once(queue, &keys, max).await?;
            if !got.is_empty() {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(got);
            }
            let block = wake.map_or(left, |w| w.min(left)).min(MAX_BLOCK);
            // BLMOVE with a zero timeout would wait forever; something is due now, so look again.
            if block < Duration::from_millis(1) {
                continue;
            }
            // Redis counts the timeout in whole milliseconds and reads 0 as "forever".
            self.block(&keys, block.max(Duration::from_millis(2)))
                .await?;
        }
    }
}

#[async_trait]
impl Inspector for RedisBroker {
    async fn depth(&self, queue: &str) -> Result<Depth> {
        let keys = self.inner.keys(queue);
        let reply: Vec<Value> = scripts::depth(&keys)
            .run(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err_on(&keys, "depth", e))?;
        let [visible, in_flight, delayed, dead, oldest] = reply.as_slice() else {
            return Err(bad_reply("depth", "wrong length"));
        };
        let count = |v: &Value| {
            as_int(v)
                .map(|n| u64::try_from(n).unwrap_or(0))
                .ok_or_else(|| bad_reply("depth", "count"))
        };
        let oldest_age = as_bytes(oldest)
            .and_then(|b| Envelope::parse(b).ok())
            .and_then(|e| (Utc::now() - e.enqueued_at).to_std().ok());
        Ok(Depth {
            visible: count(visible)?,
            in_flight: count(in_flight)?,
            delayed: count(delayed)?,
            dead_lettered: count(dead)?,
            oldest_age,
        })
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn url(&self) -> String {
        crate::error::redact_url(&self.inner.url)
    }

    async fn ping(&self) -> Result<()> {
        self.inner
            .conn()
            .ping()
            .await
            .map_err(|e| self.inner.err("ping", e))
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<()> {
        let keys = self.inner.keys(&spec.name);
        let vis = if spec.visibility_timeout.is_zero() {
            DEFAULT_VISIBILITY
        } else {
            spec.visibility_timeout
        };
        redis::cmd("HSET")
            .arg(&keys.meta)
            .arg("visibility_ms")
            .arg(util::millis_u64(vis))
            .query_async::<()>(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err_on(&keys, "declare", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_unavailable() {
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        let e = map_err("redis://:pw@h:1", "send", io);
        assert!(matches!(e, QueueError::Unavailable { .. }), "{e:?}");
        assert!(e.to_string().contains("redis://:***@h:1"));
    }

    /// What a cluster answers during a failover is "not now", retried like a lost connection;
    /// any other error answer is the server saying no.
    #[test]
    fn failover_answers_are_unavailable() {
        for kind in [
            ServerErrorKind::ClusterDown,
            ServerErrorKind::TryAgain,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
            ServerErrorKind::BusyLoading,
        ] {
            let e = map_err(
                "redis+cluster://h:1",
                "receive",
                (ErrorKind::Server(kind), "failover").into(),
            );
            assert!(
                matches!(e, QueueError::Unavailable { .. }),
                "{kind:?}: {e:?}"
            );
        }
        let e = map_err(
            "redis+cluster://h:1",
            "receive",
            (
                ErrorKind::Server(ServerErrorKind::ResponseError),
                "WRONGTYPE",
            )
                .into(),
        );
        assert!(matches!(e, QueueError::Backend { .. }), "{e:?}");
    }
}
