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

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, RedisError, Script, Value};
use tokio::time::Instant;

use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, DeadLetters, Delivery, Depth, DlqEntry, DlqPage, DlqScan,
    Inspector, Message, Producer, QueueSpec,
};
use crate::config::BrokerConfig;
use crate::envelope::Envelope;
use crate::error::{Msg, QueueError, Result};

const BACKEND: &str = "redis";

/// How long connecting may take before the broker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Scripts touch at most a few hundred keys; anything slower than this is a sick server.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocking waits are re-armed at least this often, so a lost wake-up costs at most this much.
const MAX_BLOCK: Duration = Duration::from_secs(30);

/// Shared Lua helpers, prepended to the scripts that need them.
const PRELUDE: &str = r#"
local REF = '\0jf:'
local WAKE = '\0jf:wake'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function next_due(delayed, inflight)
  local w = nil
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if d[2] then w = tonumber(d[2]) end
  local f = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  if f[2] and (w == nil or tonumber(f[2]) < w) then w = tonumber(f[2]) end
  return w
end
-- Consumers blocked on an empty ready list sleep until the earliest due time they saw. Before
-- scheduling something earlier, push one wake token so one of them re-reads the schedule.
local function nudge(ready, delayed, inflight, due)
  if redis.call('LLEN', ready) > 0 then return end
  local w = next_due(delayed, inflight)
  if w == nil or due < w then redis.call('LPUSH', ready, WAKE) end
end
"#;

/// KEYS: ready claimed msgs counts inflight delayed seq meta. ARGV: max.
/// Returns `[wake_ms, id, count, body, …]`; `wake_ms` (only when nothing was delivered) is the
/// time until something becomes visible by itself, -1 for never.
const RECEIVE: &str = r#"
local ready, claimed, msgs, counts, inflight, delayed, seq, meta =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = now_ms()
local vis = tonumber(redis.call('HGET', meta, 'visibility_ms') or '30000')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', delayed, id)
  redis.call('LPUSH', ready, REF .. id)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', inflight, m)
  local id = string.match(m, '^(.+):%d+$')
  if id then redis.call('LPUSH', ready, REF .. id) end
end
local max = tonumber(ARGV[1])
local out = {0}
local n = 0
local earliest = nil
local function take(item)
  local id, body
  if string.sub(item, 1, 4) == REF then
    if item == WAKE then return end
    id = string.sub(item, 5)
    body = redis.call('HGET', msgs, id)
    if not body then return end
  else
    id = tostring(redis.call('INCR', seq))
    body = item
    redis.call('HSET', msgs, id, body)
  end
  local c = redis.call('HINCRBY', counts, id, 1)
  redis.call('ZADD', inflight, now + vis, id .. ':' .. c)
  out[#out + 1] = id
  out[#out + 1] = c
  out[#out + 1] = body
  n = n + 1
end
if max > 0 then
  local w = next_due(delayed, inflight)
  -- a lease we hand out may now be the earliest thing due: blocked consumers must know
  if w == nil or now + vis < w then earliest = true end
end
while n < max do
  local item = redis.call('RPOP', claimed)
  if not item then break end
  take(item)
end
while n < max do
  local items = redis.call('RPOP', ready, max - n)
  if not items then break end
  for _, it in ipairs(items) do take(it) end
end
if n > 0 then
  if earliest and redis.call('LLEN', ready) == 0 then redis.call('LPUSH', ready, WAKE) end
else
  local w = next_due(delayed, inflight)
  if w then out[1] = math.max(w - now, 0) else out[1] = -1 end
end
return out
"#;

/// KEYS: msgs counts inflight. ARGV: id count. 1 when settled, 0 when the lease is gone.
const ACK: &str = r#"
if redis.call('ZREM', KEYS[3], ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"#;

/// KEYS: ready inflight delayed. ARGV: id count delay_ms.
const NACK: &str = r#"
local ready, inflight, delayed = KEYS[1], KEYS[2], KEYS[3]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
local delay = tonumber(ARGV[3])
if delay <= 0 then
  redis.call('LPUSH', ready, REF .. ARGV[1])
else
  local due = now_ms() + delay
  nudge(ready, delayed, inflight, due)
  redis.call('ZADD', delayed, due, ARGV[1])
end
return 1
"#;

/// KEYS: ready msgs counts inflight delayed seq. ARGV: id count body delay_ms.
/// The new body is written in the same atomic step that drops the old one.
const RETRY: &str = r#"
local ready, msgs, counts, inflight, delayed, seq =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
redis.call('HDEL', msgs, ARGV[1])
redis.call('HDEL', counts, ARGV[1])
local delay = tonumber(ARGV[4])
if delay <= 0 then
  redis.call('LPUSH', ready, ARGV[3])
else
  local id = tostring(redis.call('INCR', seq))
  local due = now_ms() + delay
  redis.call('HSET', msgs, id, ARGV[3])
  nudge(ready, delayed, inflight, due)
  redis.call('ZADD', delayed, due, id)
end
return 1
"#;

/// KEYS: ready inflight delayed. ARGV: id count visibility_ms.
const EXTEND: &str = r#"
local ready, inflight, delayed = KEYS[1], KEYS[2], KEYS[3]
local member = ARGV[1] .. ':' .. ARGV[2]
if not redis.call('ZSCORE', inflight, member) then return 0 end
local due = now_ms() + tonumber(ARGV[3])
nudge(ready, delayed, inflight, due)
redis.call('ZADD', inflight, due, member)
return 1
"#;

/// KEYS: msgs counts inflight dlq dlq_index. ARGV: id count has_body body reason entry_id at.
/// Returns the stream id of the new DLQ entry, or 0 when the lease is gone.
const DEAD_LETTER: &str = r#"
local msgs, counts, inflight, dlq, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
local body = ARGV[4]
if ARGV[3] == '0' then body = redis.call('HGET', msgs, ARGV[1]) or '' end
local sid = redis.call('XADD', dlq, '*', 'id', ARGV[6], 'body', body, 'reason', ARGV[5],
  'at', ARGV[7], 'broker_id', ARGV[1])
redis.call('HSET', index, ARGV[6], sid)
redis.call('HDEL', msgs, ARGV[1])
redis.call('HDEL', counts, ARGV[1])
return sid
"#;

/// KEYS: ready msgs delayed inflight seq. ARGV: body due_ms. Stores a job for later.
const SEND_DELAYED: &str = r#"
local ready, msgs, delayed, inflight, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = tostring(redis.call('INCR', seq))
local due = tonumber(ARGV[2])
redis.call('HSET', msgs, id, ARGV[1])
nudge(ready, delayed, inflight, due)
redis.call('ZADD', delayed, due, id)
return id
"#;

/// KEYS: ready counts inflight delayed. ARGV: id count due_ms.
/// Parks a first delivery whose envelope says `run_at` is in the future (a job enqueued by a
/// foreign client with a plain LPUSH) without counting it as delivered.
const DEFER: &str = r#"
local ready, counts, inflight, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
redis.call('HSET', counts, ARGV[1], 0)
local due = tonumber(ARGV[3])
nudge(ready, delayed, inflight, due)
redis.call('ZADD', delayed, due, ARGV[1])
return 1
"#;

/// KEYS: ready claimed inflight delayed dlq msgs.
/// Returns `[visible, in_flight, delayed, dead, oldest_body_or_empty]` without moving anything:
/// due delayed jobs and expired leases count as visible, as a receive would see them.
const DEPTH: &str = r#"
local ready, claimed, inflight, delayed, dlq, msgs =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = now_ms()
local function tokens(list)
  local n = 0
  for _, it in ipairs(redis.call('LRANGE', list, -2, -1)) do
    if it == WAKE then n = n + 1 end
  end
  return n
end
local listed = redis.call('LLEN', ready) + redis.call('LLEN', claimed)
  - tokens(ready) - tokens(claimed)
local due = redis.call('ZCOUNT', delayed, '-inf', now)
local expired = redis.call('ZCOUNT', inflight, '-inf', now)
local oldest = ''
for _, it in ipairs(redis.call('LRANGE', ready, -2, -1)) do
  if it ~= WAKE then
    if string.sub(it, 1, 4) == REF then
      oldest = redis.call('HGET', msgs, string.sub(it, 5)) or ''
    else
      oldest = it
    end
  end
end
return {listed + due + expired, redis.call('ZCARD', inflight) - expired,
  redis.call('ZCARD', delayed) - due, redis.call('XLEN', dlq), oldest}
"#;

/// KEYS: dlq dlq_index. ARGV: stream_id entry_id.
const DLQ_REMOVE: &str = r#"
redis.call('XDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
return 1
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

struct Scripts {
    receive: Script,
    ack: Script,
    nack: Script,
    retry: Script,
    extend: Script,
    dead_letter: Script,
    send_delayed: Script,
    defer: Script,
    depth: Script,
    dlq_remove: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    receive: script(RECEIVE),
    ack: script(ACK),
    nack: script(NACK),
    retry: script(RETRY),
    extend: script(EXTEND),
    dead_letter: script(DEAD_LETTER),
    send_delayed: script(SEND_DELAYED),
    defer: script(DEFER),
    depth: script(DEPTH),
    dlq_remove: script(DLQ_REMOVE),
});

/// The key names of one queue.
#[derive(Clone)]
struct Keys {
    ready: String,
    claimed: String,
    msgs: String,
    counts: String,
    inflight: String,
    delayed: String,
    seq: String,
    meta: String,
    dlq: String,
    dlq_index: String,
}

impl Keys {
    fn new(namespace: &str, queue: &str) -> Keys {
        let k = |s: &str| format!("{namespace}:{queue}:{s}");
        Keys {
            ready: k("ready"),
            claimed: k("claimed"),
            msgs: k("msgs"),
            counts: k("counts"),
            inflight: k("inflight"),
            delayed: k("delayed"),
            seq: k("seq"),
            meta: k("meta"),
            dlq: k("dlq"),
            dlq_index: k("dlq:index"),
        }
    }
}

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
        let pooled = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
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

    fn give_back(&self, c: MultiplexedConnection) {
        let mut pool = self.blocking.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 64 {
            pool.push(c);
        }
    }
}

fn map_err(url: &str, op: &'static str, e: RedisError) -> QueueError {
    if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
    {
        QueueError::unavailable(BACKEND, url, e)
    } else {
        QueueError::backend(BACKEND, op, e)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
    ) -> Result<(Vec<Box<dyn Delivery>>, Option<Duration>)> {
        let inner = &self.inner;
        let reply: Vec<Value> = SCRIPTS
            .receive
            .key(&keys.ready)
            .key(&keys.claimed)
            .key(&keys.msgs)
            .key(&keys.counts)
            .key(&keys.inflight)
            .key(&keys.delayed)
            .key(&keys.seq)
            .key(&keys.meta)
            .arg(max)
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| inner.err("receive", e))?;
        let Some((wake, rest)) = reply.split_first() else {
            return Err(bad_reply("receive", "empty"));
        };
        let wake = as_int(wake).ok_or_else(|| bad_reply("receive", "wake time"))?;
        let mut out: Vec<Box<dyn Delivery>> = Vec::with_capacity(rest.len() / 3);
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
                keys: keys.clone(),
                queue: queue.to_owned(),
                id,
                count,
                msg,
            }));
        }
        let wake = u64::try_from(wake).ok().map(Duration::from_millis);
        Ok((out, wake))
    }

    async fn defer(&self, keys: &Keys, id: &str, count: i64, at: DateTime<Utc>) -> Result<()> {
        let _: i64 = SCRIPTS
            .defer
            .key(&keys.ready)
            .key(&keys.counts)
            .key(&keys.inflight)
            .key(&keys.delayed)
            .arg(id)
            .arg(count)
            .arg(at.timestamp_millis())
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
            crate::validate_queue_name(&e.queue)?;
            match e.run_at.filter(|at| *at > now) {
                Some(at) => {
                    if !delayed_any {
                        pipe.load_script(&SCRIPTS.send_delayed).ignore();
                        delayed_any = true;
                    }
                    let keys = self.inner.keys(&e.queue);
                    pipe.invoke_script(
                        SCRIPTS
                            .send_delayed
                            .key(&keys.ready)
                            .key(&keys.msgs)
                            .key(&keys.delayed)
                            .key(&keys.inflight)
                            .key(&keys.seq)
                            .arg(e.to_bytes())
                            .arg(at.timestamp_millis()),
                    )
                    .ignore();
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
    async fn receive(
        &self,
        queue: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Box<dyn Delivery>>> {
        crate::validate_queue_name(queue)?;
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
        crate::validate_queue_name(queue)?;
        let keys = self.inner.keys(queue);
        let reply: Vec<Value> = SCRIPTS
            .depth
            .key(&keys.ready)
            .key(&keys.claimed)
            .key(&keys.inflight)
            .key(&keys.delayed)
            .key(&keys.dlq)
            .key(&keys.msgs)
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

/// One DLQ stream entry as `XRANGE` returns it.
fn dlq_entry(
    queue: &str,
    sid: &str,
    fields: &std::collections::HashMap<String, Value>,
) -> DlqEntry {
    let text = |k: &str| fields.get(k).and_then(as_string).unwrap_or_default();
    let body = fields.get("body").and_then(as_bytes).unwrap_or_default();
    let at = DateTime::parse_from_rfc3339(&text("at"))
        .ok()
        .map(|t| t.with_timezone(&Utc));
    let mut e = DlqEntry::new(queue, body, text("reason"), at, sid, &text("broker_id"));
    // The id the index knows it by, so `dlq_get` and the listing agree.
    let id = text("id");
    if !id.is_empty() {
        e.id = id;
    }
    e
}

impl RedisBroker {
    async fn xrange(
        &self,
        queue: &str,
        keys: &Keys,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<DlqEntry>> {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys.dlq)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("dlq list", e))?;
        Ok(reply
            .ids
            .iter()
            .map(|s| dlq_entry(queue, &s.id, &s.map))
            .collect())
    }
}

fn after(cursor: Option<&str>) -> Result<String> {
    match cursor {
        None => Ok("-".into()),
        Some(c) if is_stream_id(c) => Ok(format!("({c}")),
        Some(c) => Err(QueueError::Config(format!("bad DLQ cursor `{c}`"))),
    }
}

fn is_stream_id(s: &str) -> bool {
    let mut parts = s.splitn(2, '-');
    let ok =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next())
}

#[async_trait]
impl DeadLetters for RedisBroker {
    async fn dlq_list(&self, queue: &str, limit: usize, cursor: Option<&str>) -> Result<DlqPage> {
        crate::validate_queue_name(queue)?;
        let keys = self.inner.keys(queue);
        let limit = limit.max(1);
        let entries = self
            .xrange(queue, &keys, &after(cursor)?, "+", limit + 1)
            .await?;
        Ok(DlqPage::from_overfetch(entries, limit))
    }

    async fn dlq_get(&self, queue: &str, id: &str) -> Result<Option<DlqEntry>> {
        crate::validate_queue_name(queue)?;
        let keys = self.inner.keys(queue);
        let sid: Option<String> = redis::cmd("HGET")
            .arg(&keys.dlq_index)
            .arg(id)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("dlq get", e))?;
        let Some(sid) = sid.filter(|s| is_stream_id(s)) else {
            return Ok(None);
        };
        Ok(self
            .xrange(queue, &keys, &sid, &sid, 1)
            .await?
            .into_iter()
            .next())
    }

    async fn dlq_scan(&self, queue: &str, _hold: Duration) -> Result<Box<dyn DlqScan>> {
        crate::validate_queue_name(queue)?;
        let keys = self.inner.keys(queue);
        let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&keys.dlq)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("dlq scan", e))?;
        Ok(Box::new(RedisScan {
            broker: self.clone(),
            queue: queue.to_owned(),
            keys,
            after: None,
            end: last.ids.first().map(|s| s.id.clone()),
        }))
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
        crate::validate_queue_name(&spec.name)?;
        let keys = self.inner.keys(&spec.name);
        let vis = if spec.visibility_timeout.is_zero() {
            DEFAULT_VISIBILITY
        } else {
            spec.visibility_timeout
        };
        redis::cmd("HSET")
            .arg(&keys.meta)
            .arg("visibility_ms")
            .arg(ms(vis))
            .query_async::<()>(&mut self.inner.conn())
            .await
            .map_err(|e| self.inner.err("declare", e))
    }
}

struct RedisDelivery {
    broker: RedisBroker,
    keys: Keys,
    queue: String,
    id: String,
    count: i64,
    msg: Message,
}

impl RedisDelivery {
    fn lost(&self) -> QueueError {
        QueueError::LeaseLost {
            backend: BACKEND,
            id: self.msg.id().to_owned(),
        }
    }

    /// Runs a settle script whose reply is 0 when the lease is gone.
    async fn settle(&self, op: &'static str, inv: &redis::ScriptInvocation<'_>) -> Result<()> {
        let inner = &self.broker.inner;
        let reply: Value = inv
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| inner.err(op, e))?;
        match reply {
            Value::Int(0) | Value::Nil => Err(self.lost()),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Delivery for RedisDelivery {
    fn message(&self) -> &Message {
        &self.msg
    }

    async fn ack(&self) -> Result<()> {
        let k = &self.keys;
        let mut inv = SCRIPTS.ack.key(&k.msgs);
        inv.key(&k.counts)
            .key(&k.inflight)
            .arg(&self.id)
            .arg(self.count);
        self.settle("ack", &inv).await
    }

    async fn nack(&self, retry_after: Duration) -> Result<()> {
        let k = &self.keys;
        let mut inv = SCRIPTS.nack.key(&k.ready);
        inv.key(&k.inflight)
            .key(&k.delayed)
            .arg(&self.id)
            .arg(self.count)
            .arg(ms(retry_after));
        self.settle("nack", &inv).await
    }

    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()> {
        let k = &self.keys;
        let mut inv = SCRIPTS.retry.key(&k.ready);
        inv.key(&k.msgs)
            .key(&k.counts)
            .key(&k.inflight)
            .key(&k.delayed)
            .key(&k.seq)
            .arg(&self.id)
            .arg(self.count)
            .arg(updated.to_bytes())
            .arg(ms(retry_after));
        self.settle("retry", &inv).await
    }

    async fn extend(&self, visibility: Duration) -> Result<()> {
        let k = &self.keys;
        let mut inv = SCRIPTS.extend.key(&k.ready);
        inv.key(&k.inflight)
            .key(&k.delayed)
            .arg(&self.id)
            .arg(self.count)
            .arg(ms(visibility).max(1));
        self.settle("extend", &inv).await
    }

    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()> {
        let k = &self.keys;
        let body = updated.map(Envelope::to_bytes);
        let entry_id = updated.map_or_else(|| self.msg.id().to_owned(), |e| e.id.clone());
        let mut inv = SCRIPTS.dead_letter.key(&k.msgs);
        inv.key(&k.counts)
            .key(&k.inflight)
            .key(&k.dlq)
            .key(&k.dlq_index)
            .arg(&self.id)
            .arg(self.count)
            .arg(if body.is_some() { "1" } else { "0" })
            .arg(body.unwrap_or_default())
            .arg(reason)
            .arg(entry_id)
            .arg(Utc::now().to_rfc3339());
        tracing::debug!(queue = %self.queue, id = %self.msg.id(), %reason, "dead-lettering");
        self.settle("dead_letter", &inv).await
    }
}

struct RedisScan {
    broker: RedisBroker,
    queue: String,
    keys: Keys,
    after: Option<String>,
    /// The newest entry when the pass started: entries dead-lettered later (a replayed job that
    /// fails again at once) are left for the next pass, so a replay always ends.
    end: Option<String>,
}

#[async_trait]
impl DlqScan for RedisScan {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<DlqEntry>> {
        let Some(end) = self.end.clone() else {
            return Ok(Vec::new());
        };
        if self.after.as_deref() == Some(end.as_str()) {
            return Ok(Vec::new());
        }
        let start = after(self.after.as_deref())?;
        let batch = self
            .broker
            .xrange(&self.queue, &self.keys, &start, &end, max.max(1))
            .await?;
        match batch.last() {
            Some(last) => self.after = Some(last.handle.clone()),
            None => self.after = Some(end),
        }
        Ok(batch)
    }

    async fn remove(&mut self, entry: &DlqEntry) -> Result<()> {
        let inner = &self.broker.inner;
        let _: Value = SCRIPTS
            .dlq_remove
            .key(&self.keys.dlq)
            .key(&self.keys.dlq_index)
            .arg(&entry.handle)
            .arg(&entry.id)
            .invoke_async(&mut inner.conn())
            .await
            .map_err(|e| inner.err("dlq remove", e))?;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_stream_ids() {
        assert_eq!(after(None).unwrap(), "-");
        assert_eq!(after(Some("1700000000000-3")).unwrap(), "(1700000000000-3");
        assert!(after(Some("1700000000000")).is_err());
        assert!(after(Some("abc-1")).is_err());
        assert!(after(Some("1-")).is_err());
    }

    #[test]
    fn keys_are_namespaced() {
        let k = Keys::new("jobfleet", "embeddings");
        assert_eq!(k.ready, "jobfleet:embeddings:ready");
        assert_eq!(k.dlq_index, "jobfleet:embeddings:dlq:index");
    }

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
