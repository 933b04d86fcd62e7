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
//!
//! The receive count doubles as the lease token: a redelivery gets a new count, so a stale
//! delivery's ack/extend finds no `<id>:<old count>` member and fails with `LeaseLost`.
//! Times come from Redis (`TIME`) so producers' and consumers' clocks never have to agree.
//!
//! The scripts are `lua/*.lua`, each called only through its function in `scripts.rs`.

mod acks;
mod delivery;
mod dlq;
mod keys;
mod scripts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::backends::util;
use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, Deliveries, Depth, Inspector, Message, Producer,
    QueueSpec,
};
use crate::config::BrokerConfig;
use crate::envelope::Envelope;
use crate::error::{Msg, QueueError, Result};

use delivery::RedisDelivery;
use keys::Keys;

const BACKEND: &str = "redis";

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Scripts touch at most a few hundred keys; anything slower than this is a sick server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocking waits are re-armed at least this often, so a lost wake-up costs at most this much.
const MAX_BLOCK: Duration = Duration::from_secs(30);

/// The Redis broker. Cloning shares the connection.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    /// Connections for blocking waits: a `BLMOVE` holds its connection for its whole duration,
    /// so it must never share the multiplexed one the other operations use.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    /// Per queue, the way into its ack group commit ([`acks::ack_loop`]), started with its
    /// first receive.
    acks: Mutex<HashMap<String, mpsc::UnboundedSender<acks::AckRequest>>>,
    url: String,
    namespace: String,
}

impl Inner {
    fn keys(&self, queue: &str) -> Keys {
        Keys::new(&self.namespace, queue)
    }

    fn err(&self, op: &'static str, e: RedisError) -> QueueError {
        map_err(&self.url, op, e)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn blocking_conn(&self) -> Result<MultiplexedConnection> {
        let pooled = util::lock(&self.blocking).pop();
        if let Some(c) = pooled {
            return Ok(c);
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
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

    fn give_back(&self, c: MultiplexedConnection) {
        let mut pool = util::lock(&self.blocking);
        if pool.len() < 64 {
            pool.push(c);
        }
    }
}

fn map_err(url: &str, op: &'static str, e: RedisError) -> QueueError {
    util::client_error(BACKEND, url, op, connection_lost(&e), e)
}

/// Whether `e` means Redis could not be reached (so the same write may be tried again).
fn connection_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
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
    /// Connects to `cfg.url` (default `redis://127.0.0.1:6379`). Fails with
    /// [`QueueError::Unavailable`] within a few seconds when nothing answers; once connected,
    /// the connection manager reconnects by itself after a Redis restart.
    pub async fn connect(cfg: &BrokerConfig) -> Result<RedisBroker> {
        cfg.validate()?;
        let url = cfg.url_or_default().to_owned();
        let client = Client::open(url.as_str()).map_err(|e| {
            QueueError::Config(format!(
                "broker.url `{}` is not a Redis URL: {e}",
                crate::error::redact_url(&url)
            ))
        })?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT * 3,
            client.get_connection_manager_with_config(mcfg),
        )
        .await
        .map_err(|_| QueueError::unavailable(BACKEND, &url, Msg("connect timed out".into())))?
        .map_err(|e| QueueError::unavailable(BACKEND, &url, e))?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                client,
                conn,
                blocking: Mutex::new(Vec::new()),
                acks: Mutex::new(HashMap::new()),
                url,
                namespace: cfg.namespace.clone(),
            }),
        })
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
            .invocation()
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| inner.err("receive", e))?;
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
            .invocation()
            .invoke_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("defer", e))?;
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
            Ok(Err(e)) => Err(inner.err("receive (blocking wait)", e)),
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
    async fn send(&self, envelope: &Envelope) -> Result<()> {
        self.send_batch(std::slice::from_ref(envelope)).await
    }

    /// One pipeline: one `LPUSH` per queue for jobs due now, one script call per delayed job.
    async fn send_batch(&self, envelopes: &[Envelope]) -> Result<()> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let mut now_by_queue: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
        let mut pipe = redis::pipe();
        let mut delayed_any = false;
        for e in envelopes {
            match e.run_at.filter(|at| *at > now) {
                Some(at) => {
                    let keys = self.inner.keys(&e.queue);
                    let call = scripts::send_delayed(&keys, &e.to_bytes(), at.timestamp_millis());
                    if !delayed_any {
                        pipe.load_script(call.script()).ignore();
                        delayed_any = true;
                    }
                    pipe.invoke_script(&call.invocation()).ignore();
                }
                None => match now_by_queue.iter_mut().find(|(q, _)| *q == e.queue) {
                    Some((_, bodies)) => bodies.push(e.to_bytes()),
                    None => now_by_queue.push((&e.queue, vec![e.to_bytes()])),
                },
            }
        }
        for (queue, bodies) in &now_by_queue {
            pipe.lpush(self.inner.keys(queue).ready, bodies).ignore();
        }
        pipe.query_async::<()>(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("send", e))
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
            .invocation()
            .invoke_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("depth", e))?;
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
        redis::cmd("PING")
            .query_async::<()>(&mut self.inner.conn())
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
            .map_err(|e| self.inner.err("declare", e))
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
}
