//! RabbitMQ backend (lapin): durable quorum queues, publisher confirms on every write, manual
//! acks with prefetch, an emulated visibility timeout, delays through per-queue TTL bucket
//! queues, and a classic `<queue>.dlq` per queue. The topology, headers and semantics are
//! described for operators and other-language producers in `docs/backends/rabbitmq.md`.
//!
//! The connection is opened at `connect` and re-opened lazily by the next operation after it
//! drops, so a broker restart never needs a process restart; operations during the outage fail
//! with [`QueueError::Unavailable`].

mod consume;
mod delivery;
mod dlq;
mod topology;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use tokio::time::Instant;

use crate::backends::dedup_store::DedupStore;
use crate::backends::util::{self, lock};
use crate::broker::{
    Broker, Consumer, DEFAULT_VISIBILITY, Deliveries, Depth, Inspector, Producer, QueueSpec, Sent,
};
use crate::config::BrokerConfig;
use crate::envelope::Envelope;
use crate::error::{Msg, QueueError, Result, redact_url};

use consume::QueueConsumer;
use topology::Names;

const BACKEND: &str = "rabbitmq";
/// Connecting (TCP + AMQP handshake) gives up after this, so a black-holed address can't hang
/// a worker's start or an operation during an outage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A publish not confirmed within this is reported as failed (the broker may be blocked by a
/// memory or disk alarm); the caller keeps its copy, so nothing is lost.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Unacked deliveries per queue consumer when the URL sets no `prefetch`.
const DEFAULT_PREFETCH: u16 = 100;

/// The RabbitMQ broker. Cloning shares the connection.
#[derive(Clone)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The URL handed to lapin (this backend's own query parameters removed).
    amqp_url: String,
    names: Names,
    prefetch: u16,
    conn: tokio::sync::Mutex<Option<Conn>>,
    consumers: tokio::sync::Mutex<HashMap<String, Arc<QueueConsumer>>>,
    /// Job queues (and their DLQs) known to exist. Publishes are `mandatory`, so a queue
    /// deleted behind our back is noticed (returned) and declared again rather than lost.
    declared: Mutex<HashSet<String>>,
    /// Delay buckets and when they were last declared (which renews their `x-expires`).
    buckets: Mutex<HashMap<String, Instant>>,
    /// Delay buckets known to exist, per job queue (bucket exponent → exists at least until):
    /// the ones this process declared, and the ones messages have come out of. `depth` looks
    /// only at these, since asking the broker about a missing queue closes the channel with
    /// an error (which lapin logs at ERROR: hundreds of lines a minute from an idle worker).
    live_buckets: Mutex<HashMap<String, HashMap<u32, Instant>>>,
    visibility: Mutex<HashMap<String, Duration>>,
    /// Deliveries handed out and not settled, per queue (this process only).
    in_flight: Mutex<HashMap<String, Arc<AtomicU64>>>,
    /// Open DLQ listings by queue, so the next page continues where the last one stopped.
    list_sessions: tokio::sync::Mutex<HashMap<String, dlq::ListSession>>,
    /// Where unique jobs' keys are kept (`broker.dedup_url`): RabbitMQ has no such check.
    dedup: Option<DedupStore>,
}

#[derive(Clone)]
struct Conn {
    connection: Arc<Connection>,
    /// Confirm-mode channel for every publish.
    publish: Channel,
    /// Declares. Replaced when a declare error closes it.
    admin: Arc<tokio::sync::Mutex<Channel>>,
}

/// Where a message is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Main(String),
    Bucket(String, u32),
    Dlq(String),
}

/// One message to publish.
pub(crate) struct Outgoing {
    pub target: Target,
    pub body: Vec<u8>,
    pub props: BasicProperties,
}

pub(crate) fn is_soft(e: &lapin::Error, which: AMQPSoftError) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p) if *p.kind() == AMQPErrorKind::Soft(which))
}

impl RabbitBroker {
    /// Connects to `cfg.url` (default `amqp://guest:guest@127.0.0.1:5672/%2f`). The URL may
    /// carry `?prefetch=N` (unacked deliveries per queue consumer, default 100).
    pub async fn connect(cfg: &BrokerConfig) -> Result<RabbitBroker> {
        cfg.validate()?;
        let raw = cfg.url_or_default();
        let mut url = url::Url::parse(raw)
            .map_err(|e| QueueError::Config(format!("broker.url `{raw}` is not a URL: {e}")))?;
        let mut prefetch = DEFAULT_PREFETCH;
        let mut kept = Vec::new();
        for (k, v) in url.query_pairs() {
            if k == "prefetch" {
                prefetch = v.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                    QueueError::Config(format!("broker.url: prefetch `{v}` must be 1-65535"))
                })?;
            } else {
                kept.push((k.into_owned(), v.into_owned()));
            }
        }
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        let broker = RabbitBroker {
            inner: Arc::new(Inner {
                amqp_url: url.to_string(),
                names: Names::new(&cfg.namespace),
                prefetch,
                conn: tokio::sync::Mutex::new(None),
                consumers: tokio::sync::Mutex::new(HashMap::new()),
                declared: Mutex::new(HashSet::new()),
                buckets: Mutex::new(HashMap::new()),
                live_buckets: Mutex::new(HashMap::new()),
                visibility: Mutex::new(HashMap::new()),
                in_flight: Mutex::new(HashMap::new()),
                list_sessions: tokio::sync::Mutex::new(HashMap::new()),
                dedup: cfg
                    .dedup_url
                    .as_deref()
                    .map(|u| DedupStore::new(BACKEND, u, &cfg.namespace))
                    .transpose()?,
            }),
        };
        broker.inner.conn().await?;
        Ok(broker)
    }
}

impl Inner {
    pub(crate) fn unavailable(&self, e: impl Into<crate::error::BoxError>) -> QueueError {
        QueueError::unavailable(BACKEND, &self.amqp_url, e)
    }

    /// Maps a lapin error: connection-level trouble is `Unavailable` (retry later), an answer
    /// from the broker is `Backend`.
    pub(crate) fn err(&self, op: &'static str, e: lapin::Error) -> QueueError {
        let connection_gone = e.is_io_error()
            || e.is_amqp_hard_error()
            || matches!(
                e.kind(),
                ErrorKind::InvalidConnectionState(_) | ErrorKind::InvalidChannelState(..)
            );
        util::client_error(BACKEND, &self.amqp_url, op, connection_gone, e)
    }

    /// The live connection, opened again if it dropped.
    async fn conn(&self) -> Result<Conn> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_mut() {
            if c.connection.status().connected() {
                if c.publish.status().connected() {
                    return Ok(c.clone());
                }
                if let Ok(ch) = open_publish(&c.connection).await {
                    c.publish = ch;
                    return Ok(c.clone());
                }
            }
            tracing::warn!(url = %redact_url(&self.amqp_url), "rabbitmq connection lost; reconnecting");
        }
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, self.open())
            .await
            .map_err(|_| {
                self.unavailable(Msg(format!(
                    "no connection within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            })??;
        *slot = Some(opened.clone());
        Ok(opened)
    }

    async fn open(&self) -> Result<Conn> {
        // Named so an operator can tell deployments and processes apart in `list_connections`.
        let name = format!("jobfleet {} pid {}", self.names.ns(), std::process::id());
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(&self.amqp_url, props)
            .await
            .map_err(|e| self.unavailable(e))?;
        let publish = open_publish(&connection)
            .await
            .map_err(|e| self.err("channel.open", e))?;
        let admin = connection
            .create_channel()
            .await
            .map_err(|e| self.err("channel.open", e))?;
        Ok(Conn {
            connection: Arc::new(connection),
            publish,
            admin: Arc::new(tokio::sync::Mutex::new(admin)),
        })
    }

    /// A fresh channel on the live connection (consumers, DLQ passes, depth probes).
    pub(crate) async fn channel(&self) -> Result<Channel> {
        let c = self.conn().await?;
        c.connection
            .create_channel()
            .await
            .map_err(|e| self.err("channel.open", e))
    }

    async fn admin(&self, c: &Conn) -> Result<Channel> {
        let mut ch = c.admin.lock().await;
        if !ch.status().connected() {
            *ch = c
                .connection
                .create_channel()
                .await
                .map_err(|e| self.err("channel.open", e))?;
        }
        Ok(ch.clone())
    }

    pub(crate) fn visibility(&self, queue: &str) -> Duration {
        lock(&self.visibility)
            .get(queue)
            .copied()
            .unwrap_or(DEFAULT_VISIBILITY)
    }

    pub(crate) fn in_flight(&self, queue: &str) -> Arc<AtomicU64> {
        lock(&self.in_flight)
            .entry(queue.to_owned())
            .or_default()
            .clone()
    }

    /// Declares `name` with `args`; if it already exists with other arguments (say, created as
    /// a classic queue by hand), uses it as it is rather than failing every publish.
    async fn declare_one(&self, c: &Conn, name: &str, args: FieldTable) -> Result<()> {
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let ch = self.admin(c).await?;
        match ch.queue_declare(name.into(), opts, args).await {
            Ok(_) => Ok(()),
            Err(e) if is_soft(&e, AMQPSoftError::PRECONDITIONFAILED) => {
                tracing::warn!(queue = name, error = %e, "queue exists with other arguments; using it as it is");
                let ch = self.admin(c).await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                ch.queue_declare(name.into(), passive, FieldTable::default())
                    .await
                    .map(|_| ())
                    .map_err(|e| self.err("queue.declare", e))
            }
            Err(e) => Err(self.err("queue.declare", e)),
        }
    }

    /// Makes sure `queue` and its DLQ exist (once per process unless a publish bounces).
    async fn ensure_queue(&self, c: &Conn, queue: &str) -> Result<()> {
        let main = self.names.main(queue);
        if lock(&self.declared).contains(&main) {
            return Ok(());
        }
        self.declare_one(c, &main, topology::main_args()).await?;
        self.declare_one(c, &self.names.dlq(queue), topology::dlq_args())
            .await?;
        lock(&self.declared).insert(main);
        Ok(())
    }

    async fn ensure_target(&self, c: &Conn, t: &Target) -> Result<()> {
        match t {
            Target::Main(q) | Target::Dlq(q) => self.ensure_queue(c, q).await,
            Target::Bucket(q, exp) => {
                self.ensure_queue(c, q).await?;
                let name = self.names.bucket(q, *exp);
                let renew_after = topology::bucket_expiry(*exp) / 4;
                let fresh = lock(&self.buckets)
                    .get(&name)
                    .is_some_and(|at| at.elapsed() < renew_after);
                if !fresh {
                    let args = topology::bucket_args(&self.names.main(q), *exp);
                    let asked = Instant::now();
                    self.declare_one(c, &name, args).await?;
                    lock(&self.buckets).insert(name, asked);
                    self.bucket_lives(q, *exp, asked + topology::bucket_expiry(*exp));
                }
                Ok(())
            }
        }
    }

    /// Records that bucket `exp` of `queue` exists until `until` at least.
    pub(crate) fn bucket_lives(&self, queue: &str, exp: u32, until: Instant) {
        let mut live = lock(&self.live_buckets);
        let at = live
            .entry(queue.to_owned())
            .or_default()
            .entry(exp)
            .or_insert(until);
        *at = (*at).max(until);
    }

    /// The buckets of `queue` known to exist now (forgetting the ones that may have expired).
    fn live_buckets(&self, queue: &str) -> Vec<u32> {
        let now = Instant::now();
        let mut live = lock(&self.live_buckets);
        let Some(of_queue) = live.get_mut(queue) else {
            return Vec::new();
        };
        of_queue.retain(|_, until| *until > now);
        let mut exps: Vec<u32> = of_queue.keys().copied().collect();
        exps.sort_unstable();
        exps
    }

    /// Learns the buckets a delivery came out of: whoever declared one, it still exists for a
    /// while after a message left it. Its `x-expires` runs from the last declare, which came at
    /// most a quarter of the expiry before the publish (see `ensure_target`), and the message
    /// then waited out the bucket's TTL; expiry is 2 × TTL + 10 min, so half the TTL plus 150 s
    /// from now is safely inside the bucket's life.
    pub(crate) fn saw_delivery(&self, queue: &str, d: &lapin::message::Delivery) {
        for exp in topology::buckets_passed(&self.names, queue, d.properties.headers().as_ref()) {
            let ttl = Duration::from_secs(1u64 << exp);
            self.bucket_lives(
                queue,
                exp,
                Instant::now() + ttl / 2 + Duration::from_secs(150),
            );
        }
    }

    fn bucket_gone(&self, queue: &str, exp: u32) {
        if let Some(of_queue) = lock(&self.live_buckets).get_mut(queue) {
            of_queue.remove(&exp);
        }
        lock(&self.buckets).remove(&self.names.bucket(queue, exp));
    }

    fn forget(&self, t: &Target) {
        match t {
            Target::Main(q) | Target::Dlq(q) => {
                lock(&self.declared).remove(&self.names.main(q));
            }
            Target::Bucket(q, exp) => {
                lock(&self.buckets).remove(&self.names.bucket(q, *exp));
            }
        }
    }

    fn routing_key(&self, t: &Target) -> String {
        match t {
            Target::Main(q) => self.names.main(q),
            Target::Bucket(q, exp) => self.names.bucket(q, *exp),
            Target::Dlq(q) => self.names.dlq(q),
        }
    }

    /// Publishes every message (pipelined on the confirm channel), then waits for all the
    /// confirms. Returns once the broker has every one of them, or with the first failure.
    pub(crate) async fn publish_all(&self, items: &[Outgoing]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let c = self.conn().await?;
        let mut seen = HashSet::new();
        for it in items {
            if seen.insert(&it.target) {
                self.ensure_target(&c, &it.target).await?;
            }
        }
        let bounced = self.publish_once(&c, items.iter()).await?;
        if bounced.is_empty() {
            return Ok(());
        }
        // Unroutable: the queue was deleted since we declared it. Declare again and resend.
        let again: Vec<&Outgoing> = bounced.into_iter().map(|i| &items[i]).collect();
        for it in &again {
            self.forget(&it.target);
        }
        for it in &again {
            self.ensure_target(&c, &it.target).await?;
        }
        let still = self.publish_once(&c, again.iter().copied()).await?;
        if let Some(i) = still.first() {
            return Err(QueueError::backend(
                BACKEND,
                "basic.publish",
                Msg(format!(
                    "message to `{}` was returned as unroutable",
                    self.routing_key(&again[*i].target)
                )),
            ));
        }
        Ok(())
    }

    /// Publishes and awaits confirms; returns the indexes of returned (unroutable) messages.
    async fn publish_once<'a>(
        &self,
        c: &Conn,
        items: impl Iterator<Item = &'a Outgoing>,
    ) -> Result<Vec<usize>> {
        let opts = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // Started together so every frame is queued before the first write is awaited: one
        // trip through lapin's IO loop for the batch, not one per message.
        let sends = items.map(|it| {
            let key = topology::short(&self.routing_key(&it.target));
            c.publish
                .basic_publish("".into(), key, opts, &it.body, it.props.clone())
        });
        let mut pending = Vec::new();
        for sent in futures::future::join_all(sends).await {
            pending.push(sent.map_err(|e| self.err("basic.publish", e))?);
        }
        let all = futures::future::join_all(pending);
        let results = tokio::time::timeout(CONFIRM_TIMEOUT, all)
            .await
            .map_err(|_| {
                QueueError::backend(
                    BACKEND,
                    "basic.publish",
                    Msg(format!(
                        "no publisher confirm within {}s (is the broker blocked by an alarm?)",
                        CONFIRM_TIMEOUT.as_secs()
                    )),
                )
            })?;
        let mut bounced = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r.map_err(|e| self.err("basic.publish", e))? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(_)) => bounced.push(i),
                Confirmation::Nack(_) => {
                    return Err(QueueError::backend(
                        BACKEND,
                        "basic.publish",
                        Msg("the broker refused (nacked) the message".into()),
                    ));
                }
            }
        }
        Ok(bounced)
    }

    /// Message count (ready only) of a queue, 0 when it does not exist. Uses `ch`, replacing it
    /// when the broker closes it over a missing queue. Only for queues expected to exist: a
    /// missing one costs the channel and an ERROR line from lapin.
    async fn ready_count(&self, ch: &mut Channel, name: &str) -> Result<u64> {
        Ok(self.count_if_exists(ch, name).await?.unwrap_or(0))
    }

    /// Like [`ready_count`](Self::ready_count), but `None` when the queue does not exist.
    async fn count_if_exists(&self, ch: &mut Channel, name: &str) -> Result<Option<u64>> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match ch
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
        {
            Ok(q) => Ok(Some(u64::from(q.message_count()))),
            Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => {
                *ch = self.channel().await?;
                Ok(None)
            }
            Err(e) => Err(self.err("queue.declare", e)),
        }
    }

    /// The delayed copy of a message: into the bucket for `delay`, due at `now + delay`.
    pub(crate) fn delayed(
        &self,
        queue: &str,
        body: Vec<u8>,
        props: BasicProperties,
        delay: Duration,
        receive_count: u64,
    ) -> Outgoing {
        let mut headers = topology::carried_headers(props.headers().as_ref());
        if receive_count > 0 {
            headers.insert(
                topology::H_RECEIVE_COUNT.into(),
                AMQPValue::LongLongInt(i64::try_from(receive_count).unwrap_or(i64::MAX)),
            );
        }
        let target = if delay.is_zero() {
            Target::Main(queue.to_owned())
        } else {
            let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            headers.insert(
                topology::H_NOT_BEFORE.into(),
                AMQPValue::LongLongInt(due.timestamp_millis()),
            );
            Target::Bucket(queue.to_owned(), topology::bucket_for(delay))
        };
        Outgoing {
            target,
            body,
            props: props.with_delivery_mode(2).with_headers(headers),
        }
    }
}

fn envelope_props(e: &Envelope) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(topology::short(&e.id))
        .with_type(topology::short(&e.kind))
        .with_app_id(topology::APP_ID.into())
        .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or_default())
}

async fn open_publish(conn: &Connection) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

impl RabbitBroker {
    fn outgoing(&self, e: &Envelope) -> Result<Outgoing> {
        Ok(self
            .inner
            .delayed(&e.queue, e.to_bytes(), envelope_props(e), e.delay(), 0))
    }
}

#[async_trait]
impl Producer for RabbitBroker {
    async fn send(&self, envelope: &Envelope) -> Result<Sent> {
        let sent = self.send_batch(std::slice::from_ref(envelope)).await?;
        Ok(sent.first().copied().unwrap_or(Sent::Enqueued))
    }

    /// Jobs with a dedup key are checked against the store first (see [`DedupStore::send`]).
    async fn send_batch(&self, envelopes: &[Envelope]) -> Result<Vec<Sent>> {
        DedupStore::send(
            self.inner.dedup.as_ref(),
            BACKEND,
            envelopes,
            |todo| async move {
                let out = todo
                    .into_iter()
                    .map(|e| self.outgoing(e))
                    .collect::<Result<Vec<_>>>()?;
                self.inner.publish_all(&out).await
            },
        )
        .await
    }
}

#[async_trait]
impl Consumer for RabbitBroker {
    /// A received job whose dedup key another job holds is acked and dropped here, so a
    /// duplicate published natively ends the same way as one refused at send.
    async fn receive(&self, queue: &str, max: usize, wait: Duration) -> Result<Deliveries> {
        let got = consume::receive(&self.inner, queue, max, wait).await?;
        Ok(DedupStore::admit(self.inner.dedup.as_ref(), queue, got).await)
    }
}

#[async_trait]
impl Inspector for RabbitBroker {
    async fn depth(&self, queue: &str) -> Result<Depth> {
        let inner = &self.inner;
        let mut ch = inner.channel().await?;
        let ready = inner.ready_count(&mut ch, &inner.names.main(queue)).await?;
        let dead = inner.ready_count(&mut ch, &inner.names.dlq(queue)).await?;
        let mut delayed = 0;
        for exp in inner.live_buckets(queue) {
            let name = inner.names.bucket(queue, exp);
            match inner.count_if_exists(&mut ch, &name).await? {
                Some(n) => delayed += n,
                // Deleted behind our back (or expired early): not probed again until used.
                None => inner.bucket_gone(queue, exp),
            }
        }
        let _ = ch.close(200, "depth done".into()).await;
        let buffered = consume::buffered(inner, queue).await;
        Ok(Depth {
            visible: ready + buffered,
            in_flight: inner.in_flight(queue).load(Ordering::Relaxed),
            delayed: delayed + consume::hopping(inner, queue).await,
            dead_lettered: dead,
            oldest_age: None,
        })
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn url(&self) -> String {
        redact_url(&self.inner.amqp_url)
    }

    async fn ping(&self) -> Result<()> {
        self.inner.conn().await.map(|_| ())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<()> {
        let c = self.inner.conn().await?;
        lock(&self.inner.declared).remove(&self.inner.names.main(&spec.name));
        self.inner.ensure_queue(&c, &spec.name).await?;
        lock(&self.inner.visibility).insert(spec.name.clone(), spec.visibility_timeout);
        Ok(())
    }
}
