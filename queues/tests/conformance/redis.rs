//! The Redis backend against the shared suite, on the Redis at `$REDIS_URL`
//! (default `redis://127.0.0.1:6379`). Each harness uses its own random key namespace, and
//! foreign-client messages are written with `redis-cli`, exactly as another language would.

use std::sync::Arc;

use async_trait::async_trait;
use queues::backends::redis::RedisBroker;
use queues::conformance::Harness;
use queues::{BackendKind, Broker, BrokerConfig, QueueError};
use serde_json::Value;

use crate::support::{REDIS_UNIQUE_PUSH, env_or, run, unique_push_args};

struct Redis {
    cfg: BrokerConfig,
}

impl Redis {
    fn new() -> Self {
        let mut cfg = BrokerConfig::new(
            BackendKind::Redis,
            env_or("REDIS_URL", "redis://127.0.0.1:6379"),
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        cfg.namespace = format!("jftest-{}", &id[..12]);
        Redis { cfg }
    }
}

#[async_trait]
impl Harness for Redis {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(RedisBroker::connect(&self.cfg).await?))
    }

    /// The documented unique enqueue (docs/backends/redis.md): one `EVAL` that takes the key
    /// with `SET NX PX` and pushes only when it got it.
    async fn native_send_unique(&self, queue: &str, body: &Value) -> anyhow::Result<()> {
        let url = self.cfg.url_or_default();
        let [dedup, ready, body, id, ms] =
            unique_push_args(&format!("{}:{queue}", self.cfg.namespace), body);
        run(
            "redis-cli",
            &[
                "-u",
                url,
                "EVAL",
                REDIS_UNIQUE_PUSH,
                "2",
                &dedup,
                &ready,
                &body,
                &id,
                &ms,
            ],
            None,
        )
        .await?;
        Ok(())
    }

    /// The documented one-command enqueue: `LPUSH <namespace>:<queue>:ready '<json>'`.
    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        let url = self.cfg.url_or_default();
        let key = format!("{}:{queue}:ready", self.cfg.namespace);
        run("redis-cli", &["-u", url, "LPUSH", &key, body], None).await?;
        Ok(())
    }

    async fn connect_unreachable(&self) -> Option<Result<Arc<dyn Broker>, QueueError>> {
        let cfg = BrokerConfig {
            url: Some("redis://127.0.0.1:1".into()),
            ..self.cfg.clone()
        };
        Some(
            RedisBroker::connect(&cfg)
                .await
                .map(|b| Arc::new(b) as Arc<dyn Broker>),
        )
    }
}

queues::conformance_suite!(Redis::new());

// Redis-specific cases, beyond the shared suite.

use std::time::Duration;

use queues::tcp_proxy::TcpProxy;
use queues::{Envelope, QueueSpec};
use tokio::time::Instant;

async fn declared(h: &Redis, vis: Duration) -> anyhow::Result<(Arc<dyn Broker>, String)> {
    let b = h.connect().await?;
    let q = queues::conformance::unique_queue("redis");
    b.declare(&QueueSpec::new(&q).with_visibility(vis)).await?;
    Ok((b, q))
}

/// A foreign client's `LPUSH` of an envelope with `run_at` in the future is held until then,
/// and the hold does not count as a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn native_run_at_is_honoured() -> anyhow::Result<()> {
    let h = Redis::new();
    let (b, q) = declared(&h, Duration::from_secs(30)).await?;
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(2);
    let env = Envelope::new("k", &q, serde_json::json!({})).with_run_at(run_at);
    h.native_send(&q, &String::from_utf8(env.to_bytes())?)
        .await?;
    let early = b.receive(&q, 10, Duration::from_millis(800)).await?;
    anyhow::ensure!(early.is_empty(), "delivered before run_at");
    let d = b.depth(&q).await?;
    anyhow::ensure!(d.delayed == 1 && d.visible == 0, "depth {d:?}");
    let got = b.receive(&q, 10, Duration::from_secs(5)).await?;
    anyhow::ensure!(got.len() == 1, "not delivered after run_at");
    anyhow::ensure!(chrono::Utc::now() >= run_at - chrono::Duration::milliseconds(50));
    anyhow::ensure!(
        got[0].message().receive_count() == 1,
        "the hold counted as a delivery"
    );
    got[0].ack().await?;
    Ok(())
}

/// A consumer already blocked in a long poll learns about a retry scheduled sooner than
/// anything it knew of (the wake token), instead of sleeping through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocked_consumer_sees_short_nack() -> anyhow::Result<()> {
    let h = Redis::new();
    let (b, q) = declared(&h, Duration::from_secs(60)).await?;
    b.send(&Envelope::new("k", &q, serde_json::json!({})))
        .await?;
    let first = b.receive(&q, 1, Duration::from_secs(5)).await?;
    anyhow::ensure!(first.len() == 1);
    let waiter = {
        let b = h.connect().await?;
        let q = q.clone();
        tokio::spawn(async move { b.receive(&q, 1, Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let nacked = Instant::now();
    first[0].nack(Duration::from_secs(1)).await?;
    let got = waiter.await??;
    anyhow::ensure!(got.len() == 1, "blocked consumer got nothing");
    let took = nacked.elapsed();
    anyhow::ensure!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "redelivered after {took:?} for a 1 s nack"
    );
    anyhow::ensure!(got[0].message().receive_count() == 2);
    got[0].ack().await?;
    Ok(())
}

/// A stale delivery (its lease expired and the message went to someone else) can't settle it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_lease_cannot_settle() -> anyhow::Result<()> {
    let h = Redis::new();
    let (b, q) = declared(&h, Duration::from_millis(300)).await?;
    b.send(&Envelope::new("k", &q, serde_json::json!({})))
        .await?;
    let old = b.receive(&q, 1, Duration::from_secs(5)).await?;
    let new = b.receive(&q, 1, Duration::from_secs(5)).await?;
    anyhow::ensure!(old.len() == 1 && new.len() == 1);
    anyhow::ensure!(new[0].message().receive_count() == 2);
    for res in [
        old[0].ack().await,
        old[0].extend(Duration::from_secs(5)).await,
    ] {
        anyhow::ensure!(
            matches!(res, Err(QueueError::LeaseLost { .. })),
            "stale lease: {res:?}"
        );
    }
    new[0].ack().await?;
    anyhow::ensure!(b.depth(&q).await?.backlog() == 0);
    Ok(())
}

/// A proxy in front of Redis: stopping it cuts every connection the way a Redis restart does,
/// without disturbing the shared server.
async fn redis_proxy(port: u16) -> anyhow::Result<TcpProxy> {
    Ok(TcpProxy::start(port, "127.0.0.1:6379".parse()?).await?)
}

/// Redis goes away and comes back: operations in between fail with an error naming the URL,
/// the same broker reconnects by itself, and no message is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnects_after_restart() -> anyhow::Result<()> {
    let proxy = redis_proxy(0).await?;
    let mut h = Redis::new();
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    h.cfg.url = Some(url.clone());
    let (b, q) = declared(&h, Duration::from_secs(30)).await?;
    let before = Envelope::new("k", &q, serde_json::json!({"n": 1}));
    b.send(&before).await?;

    proxy.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = tokio::time::timeout(Duration::from_secs(30), b.send(&before))
        .await?
        .err()
        .ok_or_else(|| anyhow::anyhow!("send succeeded with Redis down"))?;
    anyhow::ensure!(matches!(err, QueueError::Unavailable { .. }), "{err:?}");
    anyhow::ensure!(
        err.to_string().contains(&url),
        "error does not name {url}: {err}"
    );

    let proxy = proxy.restart().await?;
    let after = Envelope::new("k", &q, serde_json::json!({"n": 2}));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match b.send(&after).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => anyhow::bail!("never reconnected: {e}"),
        }
    }
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !(ids.contains(&before.id) && ids.contains(&after.id)) {
        for d in b.receive(&q, 10, Duration::from_secs(2)).await? {
            ids.insert(d.message().id().to_owned());
            d.ack().await?;
        }
    }
    anyhow::ensure!(
        ids.contains(&before.id),
        "the job sent before the outage was lost"
    );
    anyhow::ensure!(
        ids.contains(&after.id),
        "the job sent after the outage was lost"
    );
    proxy.stop();
    Ok(())
}
