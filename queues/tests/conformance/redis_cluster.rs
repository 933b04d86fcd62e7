//! The Redis backend on a Redis Cluster (3 masters + 3 replicas, `scripts/services.sh up`
//! starts it on 127.0.0.1:7000-7005) against the shared suite, at `$REDIS_CLUSTER_URL`
//! (default `redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002`). The suite's
//! random queue names hash to slots all over the cluster; `queues_spread_over_every_master`
//! pins one queue to each master and checks, on the nodes themselves, that each queue's keys
//! live on its master only. Foreign-client messages are written with `redis-cli -c`.
//!
//! Nothing here fails over or kills a node: the shared cluster's topology must not change
//! under tests running in parallel. Those tests start clusters of their own
//! (`worker/tests/redis_cluster.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use queues::backends::redis::RedisBroker;
use queues::conformance::Harness;
use queues::{BackendKind, Broker, BrokerConfig, Envelope, QueueError};
use serde_json::Value;

use crate::support::{REDIS_UNIQUE_PUSH, env_or, run, unique_push_args};

const DEFAULT_URL: &str = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002";

struct RedisCluster {
    cfg: BrokerConfig,
}

impl RedisCluster {
    fn new() -> Self {
        let mut cfg =
            BrokerConfig::new(BackendKind::Redis, env_or("REDIS_CLUSTER_URL", DEFAULT_URL));
        let id = uuid::Uuid::new_v4().simple().to_string();
        cfg.namespace = format!("jftest-{}", &id[..12]);
        RedisCluster { cfg }
    }

    /// `host` and `port` of the first seed node, for `redis-cli`.
    fn seed(&self) -> (String, String) {
        let seeds = queues::config::redis_cluster_seeds(self.cfg.url_or_default())
            .expect("a cluster URL")
            .expect("valid");
        let u = url::Url::parse(&seeds[0]).expect("seed URL");
        (
            u.host_str().expect("host").to_owned(),
            u.port().expect("port").to_string(),
        )
    }

    async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let (host, port) = self.seed();
        let mut all = vec!["-c", "-h", &host, "-p", &port];
        all.extend_from_slice(args);
        run("redis-cli", &all, None).await
    }
}

#[async_trait]
impl Harness for RedisCluster {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(RedisBroker::connect(&self.cfg).await?))
    }

    /// The documented one-command enqueue on a cluster, the queue in braces (its hash tag):
    /// `redis-cli -c LPUSH '<namespace>:{<queue>}:ready' '<json>'`.
    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        let key = format!("{}:{{{queue}}}:ready", self.cfg.namespace);
        self.cli(&["LPUSH", &key, body]).await?;
        Ok(())
    }

    /// The documented unique enqueue, with the cluster's key names (both keys share the
    /// queue's hash tag, so the script runs on one node).
    async fn native_send_unique(&self, queue: &str, body: &Value) -> anyhow::Result<()> {
        let [dedup, ready, body, id, ms] =
            unique_push_args(&format!("{}:{{{queue}}}", self.cfg.namespace), body);
        self.cli(&[
            "EVAL",
            REDIS_UNIQUE_PUSH,
            "2",
            &dedup,
            &ready,
            &body,
            &id,
            &ms,
        ])
        .await?;
        Ok(())
    }

    async fn connect_unreachable(&self) -> Option<Result<Arc<dyn Broker>, QueueError>> {
        let cfg = BrokerConfig {
            url: Some("redis+cluster://127.0.0.1:1,127.0.0.1:2".into()),
            ..self.cfg.clone()
        };
        Some(
            RedisBroker::connect(&cfg)
                .await
                .map(|b| Arc::new(b) as Arc<dyn Broker>),
        )
    }
}

queues::conformance_suite!(RedisCluster::new());

// Cluster-specific cases, beyond the shared suite.

/// The masters now (`host:port`) and the slot ranges each serves, from `CLUSTER NODES`.
async fn masters(h: &RedisCluster) -> anyhow::Result<BTreeMap<String, Vec<(u16, u16)>>> {
    let text = h.cli(&["CLUSTER", "NODES"]).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        let addr = f[1].split('@').next().unwrap_or_default().to_owned();
        let ranges = f[8..]
            .iter()
            .filter(|r| !r.starts_with('['))
            .map(|r| match r.split_once('-') {
                Some((a, b)) => Ok((a.parse()?, b.parse()?)),
                None => Ok((r.parse()?, r.parse()?)),
            })
            .collect::<anyhow::Result<Vec<(u16, u16)>>>()?;
        out.insert(addr, ranges);
    }
    Ok(out)
}

/// A batch over one queue per master (each name picked so its hash tag lands there) is sent,
/// received and acked; while the jobs wait, each queue's keys are on its own master and on no
/// other (asked without `-c`, so no node forwards the question); `KEYSLOT` of every key of a
/// queue is the same. That is what lets each script run on one node, and many queues use every
/// shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queues_spread_over_every_master() -> anyhow::Result<()> {
    let h = RedisCluster::new();
    let b = h.connect().await?;
    let masters = masters(&h).await?;
    anyhow::ensure!(masters.len() >= 3, "expected 3 masters: {masters:?}");
    let mut queue_of: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..200 {
        if queue_of.len() == masters.len() {
            break;
        }
        let q = queues::conformance::unique_queue(&format!("spread{i}"));
        let slot: u16 = h.cli(&["CLUSTER", "KEYSLOT", &q]).await?.trim().parse()?;
        let (addr, _) = masters
            .iter()
            .find(|(_, rs)| rs.iter().any(|(a, z)| (*a..=*z).contains(&slot)))
            .ok_or_else(|| anyhow::anyhow!("slot {slot} has no master"))?;
        queue_of.entry(addr.clone()).or_insert(q);
    }
    anyhow::ensure!(
        queue_of.len() == masters.len(),
        "found no queue name for some master: {queue_of:?}"
    );
    let batch: Vec<Envelope> = queue_of
        .values()
        .flat_map(|q| (0..5).map(move |n| Envelope::new("k", q, serde_json::json!({ "n": n }))))
        .collect();
    b.send_batch(&batch).await?;
    let ns = &h.cfg.namespace;
    for (addr, q) in &queue_of {
        let key = format!("{ns}:{{{q}}}:ready");
        for other in masters.keys() {
            let (host, port) = other.split_once(':').expect("host:port");
            let reply = run("redis-cli", &["-h", host, "-p", port, "EXISTS", &key], None).await?;
            let here = reply.trim() == "1";
            anyhow::ensure!(
                here == (other == addr),
                "{key}: EXISTS on {other} said {reply:?}, expected it on {addr} only"
            );
        }
        let slots: Vec<String> = [
            "ready",
            "claimed",
            "msgs",
            "counts",
            "inflight",
            "delayed",
            "dlq",
            "dlq:index",
        ]
        .iter()
        .map(|s| format!("{ns}:{{{q}}}:{s}"))
        .collect();
        let mut seen = std::collections::BTreeSet::new();
        for k in &slots {
            seen.insert(h.cli(&["CLUSTER", "KEYSLOT", k]).await?.trim().to_owned());
        }
        anyhow::ensure!(seen.len() == 1, "keys of {q} span slots {seen:?}");
    }
    for q in queue_of.values() {
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while got < 5 && tokio::time::Instant::now() < deadline {
            for d in b.receive(q, 10, std::time::Duration::from_secs(1)).await? {
                d.ack().await?;
                got += 1;
            }
        }
        anyhow::ensure!(got == 5, "{q}: received {got} of 5");
        let depth = b.depth(q).await?;
        anyhow::ensure!(depth.backlog() == 0, "{q}: {depth:?}");
    }
    Ok(())
}

/// The broker knows it is on a cluster and says which key a native producer pushes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_key_carries_the_hash_tag() -> anyhow::Result<()> {
    let h = RedisCluster::new();
    let b = RedisBroker::connect(&h.cfg).await?;
    anyhow::ensure!(b.is_cluster());
    anyhow::ensure!(b.ready_key("emails") == format!("{}:{{emails}}:ready", h.cfg.namespace));
    b.ping().await?;
    Ok(())
}
