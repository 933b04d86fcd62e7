//! The RabbitMQ backend against the suite, on the local broker (`RABBITMQ_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f). Foreign messages are written with pika, the way a
//! Python API would enqueue a job.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queues::backends::rabbitmq::RabbitBroker;
use queues::conformance::Harness;
use queues::{BackendKind, Broker, BrokerConfig, QueueError};

use crate::support;

const NAMESPACE: &str = "jftest";

struct Rabbit {
    url: String,
}

impl Rabbit {
    fn new() -> Self {
        Rabbit {
            url: support::env_or("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        }
    }

    fn config(&self, url: &str) -> BrokerConfig {
        let mut cfg = BrokerConfig::new(BackendKind::Rabbitmq, url);
        cfg.namespace = NAMESPACE.into();
        cfg.dedup_url = Some(support::pg_url());
        cfg
    }
}

/// What another language's API does: publish the JSON to the default exchange with the queue's
/// broker name as routing key, persistent, mandatory, with publisher confirms.
const PIKA_SEND: &str = r#"
import sys, pika
url, queue, body = sys.argv[1], sys.argv[2], sys.stdin.read()
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
ch.basic_publish(exchange="", routing_key=queue, body=body.encode(), mandatory=True,
                 properties=pika.BasicProperties(content_type="application/json", delivery_mode=2))
conn.close()
"#;

#[async_trait]
impl Harness for Rabbit {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(
            RabbitBroker::connect(&self.config(&self.url)).await?,
        ))
    }

    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        let routing_key = format!("{NAMESPACE}.{queue}");
        support::run(
            &support::python(),
            &["-c", PIKA_SEND, &self.url, &routing_key],
            Some(body),
        )
        .await?;
        Ok(())
    }

    async fn connect_unreachable(&self) -> Option<Result<Arc<dyn Broker>, QueueError>> {
        let cfg = self.config("amqp://guest:guest@127.0.0.1:1/%2f");
        Some(
            RabbitBroker::connect(&cfg)
                .await
                .map(|b| Arc::new(b) as Arc<dyn Broker>),
        )
    }

    fn short_visibility(&self) -> Duration {
        Duration::from_secs(2)
    }
}

queues::conformance_suite!(Rabbit::new());

/// RabbitMQ-specific cases beyond the shared suite.
mod extra {
    use std::time::Duration;

    use anyhow::{Context, ensure};
    use queues::backends::rabbitmq::RabbitBroker;
    use queues::conformance::unique_queue;
    use queues::{Broker, Envelope, QueueError, QueueSpec};
    use serde_json::json;
    use tokio::time::Instant;

    use super::Rabbit;
    use crate::support;

    /// Closes every broker connection whose name mentions `marker` (our connection name carries
    /// the namespace), as a broker restart or a network cut would.
    async fn kill_connections(marker: &str) -> anyhow::Result<usize> {
        let out = support::run(
            "rabbitmqctl",
            &[
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ],
            None,
        )
        .await?;
        let mut n = 0;
        for line in out.lines().filter(|l| l.contains(marker)) {
            let pid = line.split('\t').next().context("connection pid")?;
            support::run(
                "rabbitmqctl",
                &["close_connection", pid, "test: simulated outage"],
                None,
            )
            .await?;
            n += 1;
        }
        Ok(n)
    }

    async fn receive_one(b: &RabbitBroker, q: &str) -> anyhow::Result<Box<dyn queues::Delivery>> {
        use queues::Consumer;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            ensure!(Instant::now() < deadline, "nothing received within 15 s");
            match b.receive(q, 1, Duration::from_secs(2)).await {
                Ok(mut got) if !got.is_empty() => return Ok(got.remove(0)),
                Ok(_) => {}
                // Reconnecting may take a round or two right after the cut.
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => return Err(e.into()),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reconnects_after_connection_loss_and_loses_nothing() -> anyhow::Result<()> {
        let ns = format!("jfcut{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut cfg = Rabbit::new().config(&Rabbit::new().url);
        cfg.namespace = ns.clone();
        let b = RabbitBroker::connect(&cfg).await?;
        let q = unique_queue("cut");
        b.declare(&QueueSpec::new(&q)).await?;
        use queues::Producer;
        let first = Envelope::new("k", &q, json!({"n": 1}));
        b.send(&first).await?;
        let held = receive_one(&b, &q).await?;
        ensure!(held.message().id() == first.id);

        // Give the broker's connection listing a moment to show the new connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ensure!(
            kill_connections(&ns).await? >= 1,
            "no connection of ours found"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;

        // The lease died with the channel: settling it says so, nothing panics.
        let err = held.ack().await.expect_err("ack on a dead channel");
        ensure!(matches!(err, QueueError::LeaseLost { .. }), "got {err:?}");

        // The next operations reconnect by themselves.
        let second = Envelope::new("k", &q, json!({"n": 2}));
        b.send(&second).await?;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = receive_one(&b, &q).await?;
            seen.push((d.message().id().to_owned(), d.message().receive_count()));
            d.ack().await?;
        }
        ensure!(
            seen.iter().any(|(id, n)| *id == first.id && *n >= 2),
            "the unacked message did not come back as a redelivery: {seen:?}"
        );
        ensure!(seen.iter().any(|(id, _)| *id == second.id), "{seen:?}");
        Ok(())
    }

    /// `depth` probes only buckets known to exist (no 404 channel closes, issue 15): the one
    /// this process declared, and one another process declared once a message has come out of
    /// it here. Both count delayed messages.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn depth_counts_buckets_declared_here_or_seen_in_use() -> anyhow::Result<()> {
        use queues::{Inspector, Producer};
        let h = Rabbit::new();
        let producer = RabbitBroker::connect(&h.config(&h.url)).await?;
        let consumer = RabbitBroker::connect(&h.config(&h.url)).await?;
        let q = unique_queue("buckets");
        producer.declare(&QueueSpec::new(&q)).await?;
        consumer.declare(&QueueSpec::new(&q)).await?;
        // 1 s: one pass through the 1 s bucket, no second hop (which would declare it here).
        let delayed = |ms: i64| {
            let mut e = Envelope::new("k", &q, json!({}));
            e.run_at = Some(chrono::Utc::now() + chrono::Duration::milliseconds(ms));
            e
        };
        producer.send(&delayed(1000)).await?;
        ensure!(
            producer.depth(&q).await?.delayed == 1,
            "declared here, not counted"
        );
        // The consumer learns the bucket from the message that came out of it.
        receive_one(&consumer, &q).await?.ack().await?;
        producer.send(&delayed(1000)).await?;
        let d = consumer.depth(&q).await?;
        ensure!(d.delayed == 1, "bucket seen in use not counted: {d:?}");
        receive_one(&consumer, &q).await?.ack().await?;
        let d = consumer.depth(&q).await?;
        ensure!(d.delayed + d.visible == 0, "{d:?}");
        Ok(())
    }

    /// A job another client published straight to the queue with a future `run_at` waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn foreign_run_at_is_honoured() -> anyhow::Result<()> {
        use queues::Consumer;
        use queues::conformance::Harness;
        let h = Rabbit::new();
        let b = RabbitBroker::connect(&h.config(&h.url)).await?;
        let q = unique_queue("fdelay");
        b.declare(&QueueSpec::new(&q)).await?;
        let run_at = chrono::Utc::now() + chrono::Duration::seconds(2);
        let body = json!({
            "v": 1, "id": "foreign-delayed", "kind": "k", "queue": q, "payload": {},
            "enqueued_at": chrono::Utc::now(), "run_at": run_at,
        });
        h.native_send(&q, &body.to_string()).await?;
        let early = b.receive(&q, 1, Duration::from_secs(1)).await?;
        ensure!(early.is_empty(), "delivered before run_at");
        let d = receive_one(&b, &q).await?;
        ensure!(chrono::Utc::now() >= run_at, "delivered before run_at");
        ensure!(d.message().id() == "foreign-delayed" && d.message().receive_count() == 1);
        d.ack().await?;
        Ok(())
    }

    /// Paging a DLQ continues where the last page stopped (no re-skipping), sees every entry
    /// once, and gives everything back at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn dlq_listing_pages_through_many_entries() -> anyhow::Result<()> {
        use queues::{Consumer, DeadLetters, Inspector, Producer};
        let h = Rabbit::new();
        let b = RabbitBroker::connect(&h.config(&h.url)).await?;
        let q = unique_queue("many");
        b.declare(&QueueSpec::new(&q)).await?;
        let n = 300;
        let envs: Vec<_> = (0..n)
            .map(|i| Envelope::new("k", &q, json!({"n": i})))
            .collect();
        b.send_batch(&envs).await?;
        let mut dead = 0;
        while dead < n {
            for d in b.receive(&q, 50, Duration::from_secs(5)).await? {
                d.dead_letter(None, "test").await?;
                dead += 1;
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = b.dlq_list(&q, 7, cursor.as_deref()).await?;
            pages += 1;
            for e in page.entries {
                ensure!(ids.insert(e.id.clone()), "entry {} listed twice", e.id);
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        ensure!(
            ids.len() == n && pages == n.div_ceil(7),
            "{} entries in {pages} pages",
            ids.len()
        );
        // A cursor from another process (no session here) still works: it skips.
        let other = RabbitBroker::connect(&h.config(&h.url)).await?;
        let page = other.dlq_list(&q, 5, Some("295")).await?;
        ensure!(page.entries.len() == 5 && page.next_cursor.is_none());
        let d = b.depth(&q).await?;
        ensure!(d.dead_lettered == n as u64, "entries not given back: {d:?}");
        Ok(())
    }

    /// A queue deleted behind the producer's back is declared again on the bounced publish;
    /// the message is not silently dropped by the default exchange.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn publish_to_deleted_queue_is_not_lost() -> anyhow::Result<()> {
        use queues::Producer;
        let h = Rabbit::new();
        let b = RabbitBroker::connect(&h.config(&h.url)).await?;
        let q = unique_queue("gone");
        b.declare(&QueueSpec::new(&q)).await?;
        let name = format!("{}.{q}", super::NAMESPACE);
        support::run("rabbitmqctl", &["delete_queue", "-q", &name], None).await?;
        let e = Envelope::new("k", &q, json!({}));
        b.send(&e).await?;
        let d = receive_one(&b, &q).await?;
        ensure!(d.message().id() == e.id);
        d.ack().await?;
        Ok(())
    }

    /// Consumers left idle (a paused queue, a pool whose slots are all busy) are retired and
    /// give their prefetched messages back as fresh copies: each comes back exactly once and
    /// not counted as a delivery. The originals' acks follow `basic.cancel`, and RabbitMQ's
    /// quorum queues apply them only a moment later: with three processes retiring at once
    /// and each channel closed right after its acks, 2 runs in 4 got originals back as well
    /// (receive counts `[2, 1]`), which `consume::linger` prevents.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn retired_consumer_gives_its_buffer_back_exactly_once() -> anyhow::Result<()> {
        use std::collections::HashMap;

        use queues::{Consumer, Producer};
        let h = Rabbit::new();
        let q = unique_queue("retire");
        let mut idle = Vec::new();
        for _ in 0..3 {
            let b = RabbitBroker::connect(&h.config(&h.url)).await?;
            b.declare(&QueueSpec::new(&q)).await?;
            idle.push(b);
        }
        let other = RabbitBroker::connect(&h.config(&h.url)).await?;
        other.declare(&QueueSpec::new(&q)).await?;
        let sent: Vec<Envelope> = (0..303)
            .map(|i| Envelope::new("k", &q, json!({"n": i})))
            .collect();
        idle[0].send_batch(&sent).await?;
        // Starts each process's consumer, which prefetches 100 into its buffer.
        for b in &idle {
            receive_one(b, &q).await?.ack().await?;
        }
        // Idle past the consumer's limit (3 s, checked every second) while another process
        // asks for work all along, as the rest of a fleet does.
        let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
        let until = Instant::now() + Duration::from_secs(9);
        while Instant::now() < until {
            for d in other.receive(&q, 50, Duration::from_millis(500)).await? {
                let m = d.message();
                seen.entry(m.id().to_owned())
                    .or_default()
                    .push(m.receive_count());
                d.ack().await?;
            }
        }
        let twice: Vec<_> = seen.iter().filter(|(_, c)| c.len() > 1).collect();
        ensure!(twice.is_empty(), "delivered more than once: {twice:?}");
        ensure!(seen.len() == 300, "{} of 300 came back", seen.len());
        ensure!(
            seen.values().all(|c| c == &[1]),
            "giving back counted as a delivery: {seen:?}"
        );
        Ok(())
    }

    /// A rough figure on the debug build (the real bench is `queues/benches`): run with
    /// `cargo nextest run -p jobfleet-queues -E 'test(/throughput/)' --run-ignored only`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn throughput() -> anyhow::Result<()> {
        use queues::{Consumer, Inspector, Producer};
        let b = std::sync::Arc::new(
            RabbitBroker::connect(&Rabbit::new().config(&Rabbit::new().url)).await?,
        );
        let q = unique_queue("tput");
        b.declare(&QueueSpec::new(&q)).await?;
        let n = 20_000usize;
        let envs: Vec<_> = (0..n)
            .map(|i| Envelope::new("noop", &q, json!({"n": i})))
            .collect();
        let t = Instant::now();
        for chunk in envs.chunks(500) {
            b.send_batch(chunk).await?;
        }
        let sent = t.elapsed();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (b, q) = (b.clone(), q.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0usize;
                loop {
                    let got = b.receive(&q, 50, Duration::from_millis(500)).await?;
                    if got.is_empty() {
                        return anyhow::Ok(n);
                    }
                    for d in got {
                        d.ack().await?;
                        n += 1;
                    }
                }
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        let recv = t.elapsed().saturating_sub(Duration::from_millis(500));
        let t = Instant::now();
        let depth = b.depth(&q).await?;
        println!(
            "send {n}: {:.0}/s; receive+ack {total}: {:.0}/s; total {:.0}/s; depth() took {:?}: {depth:?}",
            n as f64 / sent.as_secs_f64(),
            total as f64 / recv.as_secs_f64(),
            n as f64 / (sent + recv).as_secs_f64(),
            t.elapsed()
        );
        ensure!(total == n);
        Ok(())
    }
}
