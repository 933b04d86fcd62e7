//! Throughput of the raw queue layer, for any backend `queues::connect` knows.
//!
//! ```text
//! cargo bench -p jobfleet-queues --bench throughput -- \
//!     --backend redis --url redis://127.0.0.1:6379 --messages 50000 --consumers 8 --batch 100
//! ```
//!
//! Three phases on `--queues Q` fresh, randomly named queues (default 1):
//! 1. send: N no-op envelopes with `send_batch` (`--send-batch` per call), spread round-robin
//!    over the queues, so one batch holds jobs of every queue;
//! 2. drain: C consumer tasks per queue `receive(batch)` and ack what they got (acks of one
//!    batch run concurrently, as a worker's job slots would), all queues at once;
//! 3. latency probe: with the consumers idle in a long poll, one producer sends `--probe`
//!    messages one at a time and the consumers record send → receive time.
//!
//! Phase 2's latency (enqueue → receive) includes the time a message queued behind the backlog,
//! so it measures drain order, not the broker; phase 3 is the broker's own delivery latency.
//! `api calls/msg` is printed when the backend counts its API calls (SQS bills per call);
//! [`Broker::api_calls`] supplies the counter.
//!
//! Redis only: `--wait-replicas R` makes every send wait for R replicas (`WAIT`, see
//! `RedisBroker::with_replica_wait`), to measure what that costs a producer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use queues::{BackendKind, Broker, BrokerConfig, Envelope, QueueSpec};
use tokio::sync::Mutex;
use tokio::time::Instant;

struct Args {
    backend: BackendKind,
    url: Option<String>,
    messages: usize,
    consumers: usize,
    batch: usize,
    send_batch: usize,
    probe: usize,
    queues: usize,
    wait_replicas: Option<u32>,
}

const USAGE: &str = "usage: throughput [--backend memory|redis|rabbitmq|postgres|sqs] [--url URL] \
[--messages N] [--consumers C] [--batch B] [--send-batch S] [--probe P] [--queues Q] \
[--wait-replicas R]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        backend: BackendKind::Memory,
        url: None,
        messages: 50_000,
        consumers: 8,
        batch: 100,
        send_batch: 1_000,
        probe: 1_000,
        queues: 1,
        wait_replicas: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // cargo bench passes `--bench` to every harness=false target.
        if flag == "--bench" {
            continue;
        }
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--backend" => {
                let v = value()?;
                a.backend = serde_json::from_value(serde_json::Value::String(v.clone()))
                    .map_err(|_| format!("unknown backend `{v}`\n{USAGE}"))?;
            }
            "--url" => a.url = Some(value()?),
            "--messages" => a.messages = num(value()?)?,
            "--consumers" => a.consumers = num(value()?)?.max(1),
            "--batch" => a.batch = num(value()?)?.max(1),
            "--send-batch" => a.send_batch = num(value()?)?.max(1),
            "--probe" => a.probe = num(value()?)?,
            "--queues" => a.queues = num(value()?)?.max(1),
            "--wait-replicas" => {
                let v = value()?;
                a.wait_replicas = Some(v.parse().map_err(|e| format!("{flag} {v}: {e}"))?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(a)
}

/// API calls the backend made so far, when it counts them (SQS).
fn api_calls(broker: &dyn Broker) -> Option<u64> {
    broker.api_calls()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = BrokerConfig::new(
        a.backend,
        a.url
            .clone()
            .unwrap_or_else(|| a.backend.default_url().into()),
    );
    cfg.namespace = "jfbench".into();
    let broker: Arc<dyn Broker> = match a.wait_replicas {
        None => queues::connect(&cfg).await?,
        Some(r) if a.backend == BackendKind::Redis => Arc::new(
            queues::backends::redis::RedisBroker::connect(&cfg)
                .await?
                .with_replica_wait(r, Duration::from_secs(1)),
        ),
        Some(_) => return Err("--wait-replicas is for the redis backend".into()),
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let names: Vec<String> = (0..a.queues)
        .map(|i| format!("bench-{}-{i}", &id[..12]))
        .collect();
    for q in &names {
        broker.declare(&QueueSpec::new(q)).await?;
    }
    let queue = names[0].clone();
    println!(
        "backend={} url={} queue={queue} queues={} messages={} consumers={} batch={} send-batch={} wait-replicas={}",
        broker.backend(),
        broker.url(),
        a.queues,
        a.messages,
        a.consumers,
        a.batch,
        a.send_batch,
        a.wait_replicas.unwrap_or(0)
    );
    let calls_before = api_calls(&*broker);

    // Phase 1: send.
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < a.messages {
        let n = (a.messages - sent).min(a.send_batch);
        let envs: Vec<Envelope> = (sent..sent + n)
            .map(|i| Envelope::new("noop", &names[i % a.queues], serde_json::json!({ "i": i })))
            .collect();
        broker.send_batch(&envs).await?;
        sent += n;
    }
    let send = t0.elapsed();

    // Phase 2: drain with C consumers per queue, every queue at once.
    let t1 = Instant::now();
    let per_queue = |i: usize| a.messages / a.queues + usize::from(i < a.messages % a.queues);
    let drained = futures::future::try_join_all(
        names
            .iter()
            .enumerate()
            .map(|(i, q)| drain(&broker, q, per_queue(i), a.consumers, a.batch, None)),
    )
    .await?;
    let finished = drained
        .iter()
        .map(|(_, f)| *f)
        .max()
        .unwrap_or_else(Instant::now);
    let mut lat: Vec<Duration> = drained.into_iter().flat_map(|(l, _)| l).collect();
    lat.sort();
    // Up to the last ack, not the end of the consumers' last (empty) long poll.
    let drain_time = finished - t1;
    let total = finished - t0;

    println!(
        "send:              {:>8} msgs in {:>8.3} s = {:>10.0} msgs/s",
        a.messages,
        send.as_secs_f64(),
        rate(a.messages, send)
    );
    println!(
        "receive+ack:       {:>8} msgs in {:>8.3} s = {:>10.0} msgs/s",
        a.messages,
        drain_time.as_secs_f64(),
        rate(a.messages, drain_time)
    );
    println!(
        "send+receive+ack:  {:>8} msgs in {:>8.3} s = {:>10.0} msgs/s",
        a.messages,
        total.as_secs_f64(),
        rate(a.messages, total)
    );
    println!(
        "latency (backlog, enqueue → receive): p50 {}  p99 {}",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99))
    );

    // Billing figure of the batch pipeline (send + receive + ack); the probe below sends one
    // message per call on purpose, so it is left out.
    let calls_after_drain = api_calls(&*broker);

    // Phase 3: latency of single messages to idle consumers.
    if a.probe > 0 {
        let sent_at = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let consumers = {
            let broker = broker.clone();
            let queue = queue.clone();
            let sent_at = sent_at.clone();
            tokio::spawn(async move {
                drain(
                    &broker,
                    &queue,
                    a.probe,
                    a.consumers,
                    a.batch,
                    Some(sent_at),
                )
                .await
            })
        };
        // Let the consumers settle into their long poll.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..a.probe {
            let env = Envelope::new("noop", &queue, serde_json::json!({ "probe": i }));
            sent_at.lock().await.insert(env.id.clone(), Instant::now());
            broker.send(&env).await?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (lat, _) = consumers.await??;
        println!(
            "latency (idle consumers, send → receive, {} msgs): p50 {}  p99 {}",
            a.probe,
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.99))
        );
    }

    match (calls_before, calls_after_drain) {
        (Some(b), Some(after)) => println!(
            "api calls/msg:     {:.3} (send + receive + ack of the {} batch-sent messages)",
            (after - b) as f64 / a.messages.max(1) as f64,
            a.messages
        ),
        _ => println!("api calls/msg:     n/a (the backend does not count API calls)"),
    }
    for q in &names {
        let depth = broker.depth(q).await?;
        if depth.backlog() + depth.delayed > 0 {
            println!("warning: queue {q} not empty at the end: {depth:?}");
        }
    }
    Ok(())
}

type SentAt = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

/// Receives and acks `n` messages with `consumers` tasks; returns the sorted receive latencies
/// (from `sent_at` when given, else from the envelope's `enqueued_at`) and when the n-th ack
/// completed.
async fn drain(
    broker: &Arc<dyn Broker>,
    queue: &str,
    n: usize,
    consumers: usize,
    batch: usize,
    sent_at: Option<SentAt>,
) -> Result<(Vec<Duration>, Instant), queues::QueueError> {
    let done = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let broker = broker.clone();
        let queue = queue.to_owned();
        let done = done.clone();
        let sent_at = sent_at.clone();
        let finished = finished.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut idle = 0;
            while (done.load(Ordering::Relaxed) as usize) < n && idle < 20 {
                let got = broker
                    .receive(&queue, batch, Duration::from_millis(500))
                    .await?;
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                let now = Instant::now();
                let wall = chrono::Utc::now();
                for d in &got {
                    let m = d.message();
                    let l = match &sent_at {
                        Some(map) => map.lock().await.get(m.id()).map(|t| now - *t),
                        None => m
                            .envelope()
                            .ok()
                            .and_then(|e| (wall - e.enqueued_at).to_std().ok()),
                    };
                    lat.extend(l);
                }
                futures::future::try_join_all(got.iter().map(|d| d.ack())).await?;
                let before = done.fetch_add(got.len() as u64, Ordering::Relaxed) as usize;
                if before + got.len() >= n {
                    let _ = finished.set(Instant::now());
                }
            }
            Ok::<_, queues::QueueError>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => all.extend(r?),
            Err(e) => {
                return Err(queues::QueueError::Config(format!(
                    "consumer task died: {e}"
                )));
            }
        }
    }
    all.sort();
    let got = done.load(Ordering::Relaxed) as usize;
    if got < n {
        eprintln!("warning: drained {got} of {n} messages");
    }
    let end = finished.get().copied().unwrap_or_else(Instant::now);
    Ok((all, end))
}
