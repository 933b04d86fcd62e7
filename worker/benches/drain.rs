//! In-process drain benchmark, a profiling aid (the peer comparison is `bench/run.sh`, which
//! drives the real `worker run` binary): pre-fills a fresh queue with N no-op jobs, then drains
//! it with the real `Worker` (pools, budget, runner, acks: what `worker run` runs) at a fixed
//! concurrency, and prints one JSON line: drain = first job start .. last job done; latency =
//! `enqueued_at` .. handler start.
//!
//! `cargo bench -p jobfleet-worker --bench drain -- --backend redis --jobs 50000 --concurrency 50`
//! `... -- --enqueue-only --queue NAME --namespace NS` only fills a queue (for the RSS check of a
//! separately running `worker run`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use jobs::{Handler, JobContext, JobError, Outcome, Registry, RetryPolicy};
use queues::{BackendKind, BrokerConfig, Envelope};
use runtime::config::{Priority, QueueConfig};
use serde_json::{Value, json};
use worker::{Config, Shutdown, Worker};

struct Args {
    backend: BackendKind,
    url: Option<String>,
    jobs: usize,
    concurrency: usize,
    enqueue_only: bool,
    queue: Option<String>,
    namespace: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        backend: BackendKind::Redis,
        url: None,
        jobs: 50_000,
        concurrency: 50,
        enqueue_only: false,
        queue: None,
        namespace: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => {
                a.backend = serde_json::from_value(Value::String(val())).expect("backend name")
            }
            "--url" => a.url = Some(val()),
            "--jobs" => a.jobs = val().parse().expect("--jobs N"),
            "--concurrency" => a.concurrency = val().parse().expect("--concurrency N"),
            "--queue" => a.queue = Some(val()),
            "--namespace" => a.namespace = Some(val()),
            "--enqueue-only" => a.enqueue_only = true,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Records when each job started relative to its enqueue time, and when the last one ended.
struct Probe {
    latencies_ms: Mutex<Vec<f64>>,
    done: AtomicUsize,
    first_start: Mutex<Option<Instant>>,
    last_end: Mutex<Option<Instant>>,
}

struct BenchNoop(Arc<Probe>);

#[async_trait]
impl Handler for BenchNoop {
    fn kind(&self) -> &'static str {
        "noop"
    }
    fn validate(&self, _payload: &Value) -> Result<(), JobError> {
        Ok(())
    }
    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let now = Instant::now();
        self.0.first_start.lock().unwrap().get_or_insert(now);
        let enq = payload["t"].as_i64().unwrap_or_default();
        let lat = (Utc::now().timestamp_micros() - enq) as f64 / 1000.0;
        self.0.latencies_ms.lock().unwrap().push(lat);
        self.0.done.fetch_add(1, Ordering::Relaxed);
        *self.0.last_end.lock().unwrap() = Some(Instant::now());
        Ok(Outcome::default())
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let queue = a.queue.clone().unwrap_or_else(|| format!("bench-{suffix}"));
    let mut bcfg = BrokerConfig::new(
        a.backend,
        a.url
            .clone()
            .unwrap_or_else(|| a.backend.default_url().into()),
    );
    bcfg.namespace = a
        .namespace
        .clone()
        .unwrap_or_else(|| format!("jfbench{suffix}"));
    let broker = queues::connect(&bcfg).await.expect("broker");
    broker
        .declare(&queues::QueueSpec::new(&queue).with_visibility(Duration::from_secs(60)))
        .await
        .expect("declare");

    let t0 = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..a.jobs {
        let t = Utc::now().timestamp_micros();
        batch.push(Envelope::new("noop", &queue, json!({ "n": i, "t": t })));
        if batch.len() == 1000 || i + 1 == a.jobs {
            broker.send_batch(&batch).await.expect("send");
            batch.clear();
        }
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    if a.enqueue_only {
        println!(
            "{}",
            json!({"enqueued": a.jobs, "queue": queue, "namespace": bcfg.namespace, "enqueue_s": enqueue_s})
        );
        return;
    }

    let mut cfg = Config {
        broker: bcfg.clone(),
        ..Config::default()
    };
    cfg.queues.clear();
    cfg.queues.insert(
        queue.clone(),
        QueueConfig {
            priority: Priority::Default,
            min: a.concurrency,
            max: a.concurrency,
            jobs_per_slot: 1,
            visibility_timeout: Duration::from_secs(60),
        },
    );
    cfg.routes.clear();
    cfg.worker.budget = a.concurrency;
    cfg.worker.receive_wait = Duration::from_secs(1);
    cfg.worker.shutdown_grace = Duration::from_secs(5);
    let probe = Arc::new(Probe {
        latencies_ms: Mutex::new(Vec::with_capacity(a.jobs)),
        done: AtomicUsize::new(0),
        first_start: Mutex::new(None),
        last_end: Mutex::new(None),
    });
    let mut registry = Registry::new();
    registry.register(Arc::new(BenchNoop(probe.clone())), RetryPolicy::default());
    let shutdown = Shutdown::new();
    let w = Worker::new(cfg, broker.clone(), registry);
    let task = tokio::spawn(w.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(600);
    while probe.done.load(Ordering::Relaxed) < a.jobs {
        assert!(Instant::now() < deadline, "drain did not finish in 10 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = probe.first_start.lock().unwrap().expect("a job ran");
    let last = probe.last_end.lock().unwrap().expect("a job ran");
    shutdown.trigger();
    let _ = task.await;
    let drain_s = (last - first).as_secs_f64();
    let mut lat = std::mem::take(&mut *probe.latencies_ms.lock().unwrap());
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((p * lat.len() as f64) as usize).min(lat.len() - 1)];
    println!(
        "{}",
        json!({
            "impl": "jobfleet",
            "backend": a.backend.as_str(),
            "jobs": a.jobs,
            "concurrency": a.concurrency,
            "enqueue_s": (enqueue_s * 1000.0).round() / 1000.0,
            "drain_s": (drain_s * 1000.0).round() / 1000.0,
            "jobs_per_s": (a.jobs as f64 / drain_s).round(),
            "p50_ms": q(0.5).round(),
            "p99_ms": q(0.99).round(),
        })
    );
}
