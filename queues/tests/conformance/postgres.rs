//! The PostgreSQL backend against the suite, on `$JOBFLEET_PG_URL` (default: the local `test`
//! database). The native client is `psql`, running the INSERT an API in another language runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queues::backends::postgres::PgBroker;
use queues::conformance::Harness;
use queues::{BackendKind, Broker, BrokerConfig, QueueError};

use crate::support::run;

fn url() -> String {
    crate::support::pg_url()
}

struct Postgres;

#[async_trait]
impl Harness for Postgres {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        let cfg = BrokerConfig::new(BackendKind::Postgres, url());
        Ok(Arc::new(PgBroker::connect(&cfg).await?))
    }

    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        // psql variables (:'name') quote the values as SQL literals, so any body goes in as-is.
        let sql = "INSERT INTO jobfleet.messages (queue, body) VALUES (:'queue', :'body');\n";
        run(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                &format!("queue={queue}"),
                "-v",
                &format!("body={body}"),
                &url(),
            ],
            Some(sql),
        )
        .await?;
        Ok(())
    }

    async fn connect_unreachable(&self) -> Option<Result<Arc<dyn Broker>, QueueError>> {
        let cfg = BrokerConfig::new(
            BackendKind::Postgres,
            "postgres://postgres@127.0.0.1:1/test",
        );
        Some(
            PgBroker::connect(&cfg)
                .await
                .map(|b| Arc::new(b) as Arc<dyn Broker>),
        )
    }

    fn short_visibility(&self) -> Duration {
        Duration::from_secs(2)
    }
}

queues::conformance_suite!(Postgres);

/// Behaviour specific to this backend, beyond the shared suite.
mod specific {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use queues::backends::postgres::{PgBroker, send_in};
    use queues::conformance::unique_queue;
    use queues::{
        BackendKind, Broker, BrokerConfig, Consumer, Envelope, Inspector, Producer, QueueError,
        QueueSpec,
    };
    use serde_json::json;
    use tokio::time::Instant;

    use super::url;

    async fn broker(ns: &str) -> PgBroker {
        let mut cfg = BrokerConfig::new(BackendKind::Postgres, url());
        cfg.namespace = ns.to_owned();
        PgBroker::connect(&cfg).await.expect("connect")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_in_follows_the_callers_transaction() {
        let b = broker("jobfleet").await;
        let q = unique_queue("tx");
        let pool = b.pool().clone();

        let mut tx = pool.begin().await.expect("begin");
        send_in(
            &mut tx,
            "jobfleet",
            &Envelope::new("k", &q, json!({"n": 1})),
        )
        .await
        .expect("send_in");
        tx.rollback().await.expect("rollback");
        assert_eq!(
            b.depth(&q).await.expect("depth").visible,
            0,
            "rolled back job is gone"
        );

        // A consumer already waiting is woken by the commit, not before.
        let waiter = {
            let b = b.clone();
            let q = q.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                let got = b
                    .receive(&q, 1, Duration::from_secs(15))
                    .await
                    .expect("receive");
                (got, t.elapsed())
            })
        };
        let mut tx = pool.begin().await.expect("begin");
        let sent = Envelope::new("k", &q, json!({"n": 2}));
        send_in(&mut tx, "jobfleet", &sent).await.expect("send_in");
        tokio::time::sleep(Duration::from_millis(600)).await;
        tx.commit().await.expect("commit");
        let (got, waited) = waiter.await.expect("join");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message().id(), sent.id);
        assert!(
            waited >= Duration::from_millis(500),
            "seen before commit: {waited:?}"
        );
        assert!(
            waited < Duration::from_secs(3),
            "commit did not wake the consumer: {waited:?}"
        );
        got[0].ack().await.expect("ack");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn namespaces_do_not_see_each_other() {
        let a = broker("jf-ns-a").await;
        let b = broker("jf-ns-b").await;
        let q = unique_queue("ns");
        a.send(&Envelope::new("k", &q, json!({})))
            .await
            .expect("send");
        assert!(
            b.receive(&q, 10, Duration::from_millis(300))
                .await
                .expect("receive")
                .is_empty()
        );
        assert_eq!(b.depth(&q).await.expect("depth").visible, 0);
        let got = a
            .receive(&q, 10, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        got[0].ack().await.expect("ack");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_lease_is_lost() {
        let b = broker("jobfleet").await;
        let q = unique_queue("stale");
        b.declare(&QueueSpec::new(&q).with_visibility(Duration::from_millis(300)))
            .await
            .expect("declare");
        b.send(&Envelope::new("k", &q, json!({})))
            .await
            .expect("send");
        let first = b
            .receive(&q, 1, Duration::from_secs(5))
            .await
            .expect("receive");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = b
            .receive(&q, 1, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(second[0].message().receive_count(), 2);
        for r in [
            first[0].ack().await,
            first[0].extend(Duration::from_secs(5)).await,
            first[0].nack(Duration::ZERO).await,
            first[0].dead_letter(None, "x").await,
        ] {
            assert!(matches!(r, Err(QueueError::LeaseLost { .. })), "{r:?}");
        }
        second[0].ack().await.expect("current lease settles");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_pool_shares_an_application_pool() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url())
            .await
            .expect("pool");
        let b = PgBroker::from_pool(pool, "jobfleet")
            .await
            .expect("from_pool");
        b.ping().await.expect("ping");
        assert!(b.url().starts_with("postgres://"), "{}", b.url());
        assert!(
            PgBroker::from_pool(b.pool().clone(), "bad ns")
                .await
                .is_err()
        );
    }

    /// Counts the statements sqlx runs (its `sqlx::query` events) on this thread.
    struct CountQueries(Arc<AtomicUsize>);

    impl tracing::Subscriber for CountQueries {
        fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
            m.target() == "sqlx::query"
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, e: &tracing::Event<'_>) {
            if e.metadata().target() == "sqlx::query" {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    /// An idle long poll waits on LISTEN and a timer, not in a query loop: a few statements per
    /// `receive`, however long the wait. Current-thread runtime, so the broker's tasks run on the
    /// thread the counting subscriber is installed on.
    #[tokio::test(flavor = "current_thread")]
    async fn idle_long_poll_does_not_query_in_a_loop() {
        let queries = Arc::new(AtomicUsize::new(0));
        let _guard = tracing::subscriber::set_default(CountQueries(queries.clone()));
        let b = broker("jobfleet").await;
        let q = unique_queue("idle");
        b.declare(&QueueSpec::new(&q)).await.expect("declare");

        let before = queries.load(Ordering::Relaxed);
        let t = Instant::now();
        let got = b
            .receive(&q, 10, Duration::from_secs(3))
            .await
            .expect("receive");
        assert!(got.is_empty() && t.elapsed() >= Duration::from_secs(3));
        let idle = queries.load(Ordering::Relaxed) - before;
        assert!(idle >= 1, "the counter saw no statement at all");
        assert!(idle <= 4, "{idle} statements during a 3 s idle long poll");

        // A delayed job wakes the waiter by the timer at its run_at, not by polling.
        let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
        b.send(&Envelope::new("k", &q, json!({})).with_run_at(run_at))
            .await
            .expect("send");
        let before = queries.load(Ordering::Relaxed);
        let got = b
            .receive(&q, 10, Duration::from_secs(5))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1, "delayed job not received");
        assert!(chrono::Utc::now() >= run_at - chrono::Duration::milliseconds(100));
        let used = queries.load(Ordering::Relaxed) - before;
        // A loop polling even every 200 ms would take 15 or more; on a loaded machine the
        // timer can fire a little before the database's clock reaches run_at, which costs one
        // more look (7 seen under the whole suite).
        assert!(
            used <= 8,
            "{used} statements waiting 1.5 s for a delayed job"
        );
        got[0].ack().await.expect("ack");
    }

    /// A rough figure for issue 2's target (the real bench is `queues/benches/throughput.rs`):
    /// `cargo nextest run -p jobfleet-queues --run-ignored only -E 'test(/throughput/)' --no-capture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "benchmark"]
    async fn throughput() {
        let b = broker("jobfleet").await;
        let q = unique_queue("bench");
        let n = 20_000usize;
        let t = Instant::now();
        let envs: Vec<_> = (0..n)
            .map(|i| Envelope::new("noop", &q, json!({"i": i})))
            .collect();
        for chunk in envs.chunks(500) {
            b.send_batch(chunk).await.expect("send");
        }
        let sent = t.elapsed();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let b = b.clone();
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0usize;
                let (mut in_rx, mut in_ack) = (Duration::ZERO, Duration::ZERO);
                loop {
                    let t = Instant::now();
                    let got = b
                        .receive(&q, 50, Duration::from_millis(200))
                        .await
                        .expect("rx");
                    in_rx += t.elapsed();
                    if got.is_empty() {
                        println!("consumer: {done} msgs, {in_rx:?} receiving, {in_ack:?} acking");
                        return done;
                    }
                    let t = Instant::now();
                    for d in got {
                        d.ack().await.expect("ack");
                        done += 1;
                    }
                    in_ack += t.elapsed();
                }
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("join");
        }
        let all = t.elapsed();
        assert_eq!(total, n);
        println!(
            "postgres: {n} msgs; send {:.0}/s; send+receive+ack {:.0}/s",
            n as f64 / sent.as_secs_f64(),
            n as f64 / all.as_secs_f64()
        );
    }
}
