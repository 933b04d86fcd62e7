//! What happens to jobs in a running worker: retries into the DLQ with their history and back
//! out by replay, poison messages, panics, timeouts, heartbeats, lost leases. Each case runs on
//! the memory backend and on every real backend already built (see `common::real_brokers`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use common::{
    Count, Flaky, Panic, Runs, Sleep, TestBroker, all_brokers, config, fast_policy, wait_until,
};
use jobs::{Handler, JobContext, JobError, Outcome, Registry};
use queues::conformance::unique_queue;
use queues::dlq::{DlqFilter, NoObserver, ScanOptions};
use queues::{Broker, Delivery, Envelope, Message, QueueError};
use runtime::config::Priority;
use serde_json::json;
use tokio::sync::watch;
use worker::runner::{Runner, Settled};
use worker::stats::SnapshotSource;
use worker::{PoolsView, Shutdown, Worker};

struct Running {
    shutdown: Shutdown,
    view: PoolsView,
    task: tokio::task::JoinHandle<Result<worker::DrainReport, worker::WorkerError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.trigger();
        let report = self.task.await.unwrap().unwrap();
        assert_eq!(report.handed_back, 0);
    }
}

fn start(tb: &TestBroker, queue: &str, visibility: Duration, registry: Registry) -> Running {
    let mut cfg = config(&[(queue, Priority::Default, 4, 4)]);
    cfg.queues.get_mut(queue).unwrap().visibility_timeout = visibility;
    let w = Worker::new(cfg, tb.broker.clone(), registry);
    let shutdown = Shutdown::new();
    Running {
        view: w.view(),
        task: tokio::spawn(w.run(shutdown.clone())),
        shutdown,
    }
}

async fn dlq_len(b: &dyn Broker, q: &str) -> usize {
    b.dlq_list(q, 1000, None).await.unwrap().entries.len()
}

#[tokio::test]
async fn failing_job_is_dead_lettered_after_max_attempts_and_replay_completes_it() {
    for tb in all_brokers().await {
        let q = unique_queue("flaky");
        let runs = Runs::default();
        let mut reg = Registry::new();
        reg.register(Arc::new(Flaky(runs.clone())), fast_policy(3));
        let w = start(&tb, &q, Duration::from_secs(5), reg);

        // Fails 3 times; the policy allows 3 attempts, so the fourth run only happens after a replay.
        let env = Envelope::new("flaky", &q, json!({"fail": 3}));
        tb.broker.send(&env).await.unwrap();
        wait_until(Duration::from_secs(20), "job in the DLQ", || async {
            dlq_len(&*tb.broker, &q).await == 1
        })
        .await;
        assert_eq!(
            runs.get(&env.id),
            3,
            "{}: exactly max_attempts runs",
            tb.name
        );
        let entry = tb.broker.dlq_get(&q, &env.id).await.unwrap().unwrap();
        let dead = entry.envelope.clone().unwrap();
        assert_eq!(dead.attempt, 3);
        let history: Vec<_> = dead
            .errors
            .iter()
            .map(|e| (e.attempt, e.error.clone()))
            .collect();
        assert_eq!(
            history,
            [
                (1, "flaky failure #1".to_owned()),
                (2, "flaky failure #2".to_owned()),
                (3, "flaky failure #3".to_owned())
            ],
            "{}",
            tb.name
        );
        assert!(dead.errors.iter().all(|e| e.worker == "test-worker"));
        assert!(
            entry.reason.contains("attempts exhausted (3/3)"),
            "{}",
            entry.reason
        );

        let report = queues::dlq::replay(
            &*tb.broker,
            &q,
            &DlqFilter::default(),
            &ScanOptions::default(),
            &mut NoObserver,
        )
        .await
        .unwrap();
        assert_eq!(report.done, 1);
        wait_until(Duration::from_secs(20), "replayed job succeeds", || async {
            w.view.snapshot()[0].succeeded == 1
        })
        .await;
        assert_eq!(runs.get(&env.id), 4);
        assert_eq!(dlq_len(&*tb.broker, &q).await, 0);
        let s = &w.view.snapshot()[0];
        assert_eq!((s.failed, s.dead_lettered), (3, 1));
        w.stop().await;
    }
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_reasons_while_others_flow() {
    for tb in all_brokers().await {
        let q = unique_queue("poison");
        let done = Arc::new(AtomicUsize::new(0));
        let runs = Runs::default();
        let mut reg = Registry::new();
        reg.register(Arc::new(Count(done.clone())), fast_policy(3));
        reg.register(Arc::new(Sleep(runs.clone())), fast_policy(3));
        let w = start(&tb, &q, Duration::from_secs(5), reg);

        let mut expect = vec![];
        if tb.send_raw(&q, "this is not json").await {
            expect.push("not valid JSON");
        }
        if tb
            .send_raw(&q, r#"{"v":2,"id":"x","kind":"count","queue":"q"}"#)
            .await
        {
            // Exactly: the value as the producer wrote it, not `Some(Number(2))`.
            expect.push("unsupported envelope version 2 (this worker reads v1)");
        }
        let unknown = Envelope::new("no_such_kind", &q, json!({}));
        let invalid = Envelope::new("sleep", &q, json!({"ms": "soon"}));
        expect.push("unknown job kind `no_such_kind`");
        expect.push("invalid sleep payload");
        let good: Vec<Envelope> = (0..20)
            .map(|_| Envelope::new("count", &q, json!({})))
            .collect();
        tb.broker.send(&unknown).await.unwrap();
        tb.broker.send(&invalid).await.unwrap();
        tb.broker.send_batch(&good).await.unwrap();

        wait_until(
            Duration::from_secs(20),
            "good jobs done, poison dead-lettered",
            || async {
                done.load(Ordering::SeqCst) == 20 && dlq_len(&*tb.broker, &q).await == expect.len()
            },
        )
        .await;
        let page = tb.broker.dlq_list(&q, 100, None).await.unwrap();
        for want in &expect {
            assert!(
                page.entries.iter().any(|e| e.reason.contains(want)),
                "{}: no DLQ reason contains {want:?}: {:?}",
                tb.name,
                page.entries.iter().map(|e| &e.reason).collect::<Vec<_>>()
            );
        }
        assert_eq!(runs.total(), 0, "an invalid payload never runs");
        let bad = tb.broker.dlq_get(&q, &invalid.id).await.unwrap().unwrap();
        assert_eq!(
            bad.envelope.unwrap().errors.len(),
            1,
            "the refusal is in the history"
        );
        w.stop().await;
    }
}

/// `timeout_then_ok`: hangs on its first attempt (cut off by the timeout), succeeds after.
struct HangOnce(Runs);

#[async_trait]
impl Handler for HangOnce {
    fn kind(&self) -> &'static str {
        "hang_once"
    }
    fn validate(&self, _p: &serde_json::Value) -> Result<(), JobError> {
        Ok(())
    }
    async fn run(&self, ctx: &JobContext, _p: &serde_json::Value) -> Result<Outcome, JobError> {
        if self.0.bump(&ctx.job_id) == 1 {
            std::future::pending::<()>().await;
        }
        Ok(Outcome::default())
    }
}

/// `rate_limited`: asks to be retried after 300 ms once, then succeeds; `permanent`: refuses.
struct RateLimited(Runs);

#[async_trait]
impl Handler for RateLimited {
    fn kind(&self) -> &'static str {
        "rate_limited"
    }
    fn validate(&self, _p: &serde_json::Value) -> Result<(), JobError> {
        Ok(())
    }
    async fn run(&self, ctx: &JobContext, p: &serde_json::Value) -> Result<Outcome, JobError> {
        if p.get("permanent").is_some() {
            return Err(JobError::Permanent("document 42 does not exist".into()));
        }
        if self.0.bump(&ctx.job_id) == 1 {
            return Err(JobError::RetryAfter {
                after: Duration::from_millis(300),
                message: "429 from provider".into(),
            });
        }
        Ok(Outcome::default())
    }
}

#[tokio::test]
async fn panics_timeouts_retry_after_and_permanent_errors() {
    for tb in all_brokers().await {
        let q = unique_queue("errs");
        let runs = Runs::default();
        let mut reg = Registry::new();
        reg.register(Arc::new(Panic), fast_policy(2));
        let mut short = fast_policy(3);
        short.timeout = Duration::from_millis(300);
        reg.register(Arc::new(HangOnce(runs.clone())), short);
        reg.register(Arc::new(RateLimited(runs.clone())), fast_policy(5));
        let w = start(&tb, &q, Duration::from_secs(5), reg);

        let panic = Envelope::new("panic", &q, json!({}));
        let hang = Envelope::new("hang_once", &q, json!({}));
        // One attempt only: its time-out is the DLQ reason.
        let hung = Envelope::new("hang_once", &q, json!({})).with_max_attempts(1);
        let limited = Envelope::new("rate_limited", &q, json!({}));
        let permanent = Envelope::new("rate_limited", &q, json!({"permanent": true}));
        for e in [&panic, &hang, &limited, &permanent, &hung] {
            tb.broker.send(e).await.unwrap();
        }
        wait_until(Duration::from_secs(20), "all settled", || async {
            let s = &w.view.snapshot()[0];
            s.succeeded == 2 && s.dead_lettered == 3
        })
        .await;
        let timed_out = tb.broker.dlq_get(&q, &hung.id).await.unwrap().unwrap();
        assert_eq!(
            timed_out.reason, "attempts exhausted (1/1): timed out after 300ms",
            "{}",
            tb.name
        );
        let p = tb.broker.dlq_get(&q, &panic.id).await.unwrap().unwrap();
        let errs = p.envelope.unwrap().errors;
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].error.contains("panicked: handler blew up"),
            "{errs:?}"
        );
        let perm = tb.broker.dlq_get(&q, &permanent.id).await.unwrap().unwrap();
        assert!(
            perm.reason.starts_with("permanent: document 42"),
            "{}",
            perm.reason
        );
        assert_eq!(
            perm.envelope.unwrap().errors.len(),
            1,
            "permanent: no retry"
        );
        assert_eq!(runs.get(&hang.id), 2, "timed out once, then ran again");
        assert_eq!(runs.get(&limited.id), 2);
        w.stop().await;
    }
}

#[tokio::test]
async fn envelope_max_attempts_below_policy_wins() {
    for tb in all_brokers().await {
        let q = unique_queue("maxatt");
        let runs = Runs::default();
        let mut reg = Registry::new();
        reg.register(Arc::new(Flaky(runs.clone())), fast_policy(5));
        let w = start(&tb, &q, Duration::from_secs(5), reg);
        let env = Envelope::new("flaky", &q, json!({"fail": 10})).with_max_attempts(2);
        tb.broker.send(&env).await.unwrap();
        wait_until(Duration::from_secs(20), "dead-lettered", || async {
            dlq_len(&*tb.broker, &q).await == 1
        })
        .await;
        assert_eq!(runs.get(&env.id), 2);
        w.stop().await;
    }
}

#[tokio::test]
async fn heartbeat_keeps_a_long_job_from_being_redelivered() {
    for tb in all_brokers().await {
        let q = unique_queue("long");
        let runs = Runs::default();
        let mut reg = Registry::new();
        reg.register(Arc::new(Sleep(runs.clone())), fast_policy(3));
        // Visibility 2 s, job 5 s: without heartbeats it would be delivered twice.
        let w = start(&tb, &q, Duration::from_secs(2), reg);
        let env = Envelope::new("sleep", &q, json!({"ms": 5000}));
        tb.broker.send(&env).await.unwrap();
        wait_until(Duration::from_secs(20), "long job done", || async {
            w.view.snapshot()[0].succeeded == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.get(&env.id), 1, "{}: ran once", tb.name);
        let d = tb.broker.depth(&q).await.unwrap();
        assert_eq!((d.visible, d.in_flight, d.dead_lettered), (0, 0, 0));
        w.stop().await;
    }
}

/// A delivery whose lease is already gone: every extend fails with `LeaseLost`, and settling it
/// is a test failure.
struct LostLease {
    msg: Message,
    settled: AtomicBool,
}

#[async_trait]
impl Delivery for LostLease {
    fn message(&self) -> &Message {
        &self.msg
    }
    async fn ack(&self) -> queues::Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn nack(&self, _d: Duration) -> queues::Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn retry(&self, _e: &Envelope, _d: Duration) -> queues::Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn extend(&self, _v: Duration) -> queues::Result<()> {
        Err(QueueError::LeaseLost {
            backend: "test",
            id: "x".into(),
        })
    }
    async fn dead_letter(&self, _e: Option<&Envelope>, _r: &str) -> queues::Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Sets a flag if it ever gets to the end of its run.
struct Finisher(Arc<AtomicBool>);

#[async_trait]
impl Handler for Finisher {
    fn kind(&self) -> &'static str {
        "finisher"
    }
    fn validate(&self, _p: &serde_json::Value) -> Result<(), JobError> {
        Ok(())
    }
    async fn run(&self, _c: &JobContext, _p: &serde_json::Value) -> Result<Outcome, JobError> {
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.0.store(true, Ordering::SeqCst);
        Ok(Outcome::default())
    }
}

#[tokio::test(start_paused = true)]
async fn lost_lease_cancels_the_handler_and_leaves_the_job_alone() {
    let finished = Arc::new(AtomicBool::new(false));
    let mut reg = Registry::new();
    reg.register(Arc::new(Finisher(finished.clone())), fast_policy(3));
    let runner = Runner::new(Arc::new(reg), "w");
    let env = Envelope::new("finisher", "q", json!({}));
    let delivery = Arc::new(LostLease {
        msg: Message::new(env.to_bytes(), 1, "b1"),
        settled: AtomicBool::new(false),
    });
    struct Shared(Arc<LostLease>);
    #[async_trait]
    impl Delivery for Shared {
        fn message(&self) -> &Message {
            self.0.message()
        }
        async fn ack(&self) -> queues::Result<()> {
            self.0.ack().await
        }
        async fn nack(&self, d: Duration) -> queues::Result<()> {
            self.0.nack(d).await
        }
        async fn retry(&self, e: &Envelope, d: Duration) -> queues::Result<()> {
            self.0.retry(e, d).await
        }
        async fn extend(&self, v: Duration) -> queues::Result<()> {
            self.0.extend(v).await
        }
        async fn dead_letter(&self, e: Option<&Envelope>, r: &str) -> queues::Result<()> {
            self.0.dead_letter(e, r).await
        }
    }
    let (_tx, abort) = watch::channel(false);
    let settled = runner
        .run(
            "q",
            Duration::from_secs(2),
            Box::new(Shared(delivery.clone())),
            abort,
        )
        .await;
    assert_eq!(settled, Settled::Abandoned);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!finished.load(Ordering::SeqCst), "handler was cancelled");
    assert!(
        !delivery.settled.load(Ordering::SeqCst),
        "the twin owns it now"
    );
}
