//! The CloudWatch publisher against moto (http://127.0.0.1:5000, or `JOBFLEET_CLOUDWATCH_ENDPOINT`):
//! what it publishes reads back equal to the queue's real depth, job counts are per interval,
//! and a dead endpoint fails fast, is counted, and does not slow a job loop down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use queues::backends::memory::MemoryBroker;
use queues::{Consumer, Envelope, Inspector, Producer};
use runtime::config::CloudWatchConfig;
use worker::cloudwatch::{self, Publisher};
use worker::stats::{PoolSnapshot, SnapshotSource};

fn moto_url() -> String {
    std::env::var("JOBFLEET_CLOUDWATCH_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:5000".to_owned())
}

/// The endpoint the tests publish to: moto behind a protocol bridge.
///
/// aws-sdk-cloudwatch speaks the rpc-v2-cbor protocol; moto 5.2 answers CloudWatch only in the
/// Query and JSON protocols. The two carry the same members, so the bridge re-encodes each
/// request body from CBOR to JSON (timestamps: CBOR tag 1 <-> epoch seconds), forwards it with
/// the JSON protocol's target header, and re-encodes the answer. The SDK's requests and moto's
/// storage and statistics are real; only the encoding is translated.
async fn moto_endpoint() -> String {
    use axum::body::Bytes;
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};

    async fn forward(
        Path((service, op)): Path<(String, String)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, [(&'static str, &'static str); 2], Vec<u8>) {
        let request: ciborium::Value = if body.is_empty() {
            ciborium::Value::Map(vec![])
        } else {
            ciborium::from_reader(&body[..]).expect("CBOR request body")
        };
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let answer = reqwest::Client::new()
            .post(moto_url())
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("{service}.{op}"))
            // moto picks the service from the credential scope of the signature.
            .header("authorization", auth)
            .body(serde_json::to_vec(&cbor_to_json(request)).unwrap())
            .send()
            .await
            .expect("moto answers");
        let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
        let bytes = answer.bytes().await.unwrap();
        let json: serde_json::Value = if bytes.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_slice(&bytes).expect("JSON from moto")
        };
        let mut out = Vec::new();
        ciborium::into_writer(&json_to_cbor(json, false), &mut out).unwrap();
        (
            status,
            [
                ("content-type", "application/cbor"),
                ("smithy-protocol", "rpc-v2-cbor"),
            ],
            out,
        )
    }

    let app = axum::Router::new().route(
        "/service/{service}/operation/{op}",
        axum::routing::post(forward),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn cbor_to_json(v: ciborium::Value) -> serde_json::Value {
    use ciborium::Value as C;
    use serde_json::Value as J;
    match v {
        C::Integer(i) => J::from(i128::from(i) as i64),
        C::Float(f) => J::from(f),
        C::Text(s) => J::String(s),
        C::Bool(b) => J::Bool(b),
        C::Null => J::Null,
        C::Tag(1, inner) => cbor_to_json(*inner),
        C::Array(a) => J::Array(a.into_iter().map(cbor_to_json).collect()),
        C::Map(m) => J::Object(
            m.into_iter()
                .map(|(k, v)| (k.into_text().expect("text keys"), cbor_to_json(v)))
                .collect(),
        ),
        other => panic!("bridge does not translate {other:?}"),
    }
}

fn json_to_cbor(v: serde_json::Value, timestamp: bool) -> ciborium::Value {
    use ciborium::Value as C;
    use serde_json::Value as J;
    match v {
        J::Number(n) if timestamp => C::Tag(1, Box::new(C::Float(n.as_f64().unwrap()))),
        J::Number(n) => match n.as_i64() {
            Some(i) if !n.is_f64() => C::Integer(i.into()),
            _ => C::Float(n.as_f64().unwrap()),
        },
        J::String(s) => C::Text(s),
        J::Bool(b) => C::Bool(b),
        J::Null => C::Null,
        J::Array(a) => C::Array(a.into_iter().map(|x| json_to_cbor(x, timestamp)).collect()),
        J::Object(m) => C::Map(
            m.into_iter()
                .map(|(k, v)| {
                    let ts = matches!(k.as_str(), "Timestamp" | "Timestamps");
                    (C::Text(k), json_to_cbor(v, ts))
                })
                .collect(),
        ),
    }
}

/// A publisher with moto's fake credentials and otherwise the SDK settings `Publisher::new`
/// uses, so the tests need no AWS variables in the environment.
async fn publisher(
    cfg: &CloudWatchConfig,
    broker: Arc<MemoryBroker>,
    pools: Arc<FakePools>,
    queues: Vec<String>,
) -> Publisher {
    let creds =
        aws_sdk_cloudwatch::config::Credentials::new("testing", "testing", None, None, "test");
    let sdk = Publisher::aws_loader(cfg)
        .credentials_provider(creds)
        .load()
        .await;
    Publisher::with_client(
        cfg,
        aws_sdk_cloudwatch::Client::new(&sdk),
        broker,
        pools,
        queues,
        None,
    )
    .unwrap()
}

fn config(endpoint: &str) -> CloudWatchConfig {
    CloudWatchConfig {
        enabled: true,
        // A namespace per test, so parallel tests and earlier runs never mix their points.
        namespace: format!("JobfleetTest/{}", uuid::Uuid::new_v4().simple()),
        interval: Duration::from_secs(1),
        storage_resolution: 60,
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        ..CloudWatchConfig::default()
    }
}

fn queue_name() -> String {
    format!("cw{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[derive(Default)]
struct FakePools(Mutex<Vec<PoolSnapshot>>);

impl FakePools {
    fn set(&self, queue: &str, succeeded: u64, failed: u64, dead_lettered: u64) {
        *self.0.lock().unwrap() = vec![PoolSnapshot {
            queue: queue.into(),
            priority: "default".into(),
            succeeded,
            failed,
            dead_lettered,
            ..Default::default()
        }];
    }
}

impl SnapshotSource for FakePools {
    fn snapshot(&self) -> Vec<PoolSnapshot> {
        self.0.lock().unwrap().clone()
    }
}

async fn stat(
    p: &Publisher,
    ns: &str,
    metric: &str,
    queue: &str,
    statistic: Statistic,
) -> Option<f64> {
    let now = std::time::SystemTime::now();
    let out = p
        .client()
        .get_metric_statistics()
        .namespace(ns)
        .metric_name(metric)
        .dimensions(Dimension::builder().name("Queue").value(queue).build())
        .start_time(DateTime::from(now - Duration::from_secs(600)))
        .end_time(DateTime::from(now + Duration::from_secs(600)))
        .period(3600)
        .statistics(statistic.clone())
        .send()
        .await
        .expect("GetMetricStatistics on moto");
    let points = out.datapoints();
    assert!(points.len() <= 1, "one period expected: {points:?}");
    points.first().map(|d| match statistic {
        Statistic::Maximum => d.maximum().unwrap(),
        Statistic::Sum => d.sum().unwrap(),
        _ => unreachable!(),
    })
}

#[tokio::test]
async fn cloudwatch_burst_reads_back_as_real_depth() {
    let cfg = config(&moto_endpoint().await);
    let broker = Arc::new(MemoryBroker::new());
    let q = queue_name();
    let other = queue_name();
    let burst: Vec<Envelope> = (0..57)
        .map(|i| Envelope::new("noop", &q, serde_json::json!({ "i": i })))
        .collect();
    broker.send_batch(&burst).await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    for _ in 0..4 {
        broker
            .send(&Envelope::new("noop", &q, serde_json::json!({})).with_run_at(later))
            .await
            .unwrap();
    }
    // Some in flight, one dead-lettered.
    let taken = broker
        .receive(&q, 7, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(taken.len(), 7);
    taken[0].dead_letter(None, "test").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let pools = Arc::new(FakePools::default());
    pools.set(&q, 5, 2, 1);
    let p = publisher(
        &cfg,
        broker.clone(),
        pools.clone(),
        vec![q.clone(), other.clone()],
    )
    .await;
    let depth = broker.depth(&q).await.unwrap();
    let report = p.publish_once().await.unwrap();
    assert_eq!(report.calls, 1, "one call carries every queue");
    // 7 gauges (Paused among them) + 3 counters for q (it has an oldest age); 6 + 3 for the
    // empty queue.
    assert_eq!(report.data, 10 + 9);
    assert_eq!(p.failures(), 0);

    let ns = &cfg.namespace;
    let max = |m: &'static str| stat(&p, ns, m, &q, Statistic::Maximum);
    assert_eq!(depth.visible, 50);
    assert_eq!(max(cloudwatch::VISIBLE).await, Some(depth.visible as f64));
    assert_eq!(
        max(cloudwatch::IN_FLIGHT).await,
        Some(depth.in_flight as f64)
    );
    assert_eq!(max(cloudwatch::DELAYED).await, Some(depth.delayed as f64));
    assert_eq!(
        max(cloudwatch::DLQ_DEPTH).await,
        Some(depth.dead_lettered as f64)
    );
    assert_eq!(max(cloudwatch::BACKLOG).await, Some(depth.backlog() as f64));
    let age = max(cloudwatch::OLDEST_AGE)
        .await
        .expect("oldest age published");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(
        stat(&p, ns, cloudwatch::VISIBLE, &other, Statistic::Maximum).await,
        Some(0.0)
    );

    // Counters are per interval: a second publish sends only what happened since the first,
    // so the Sum over both is the cumulative count.
    pools.set(&q, 8, 2, 1);
    p.publish_once().await.unwrap();
    let sum = |m: &'static str| stat(&p, ns, m, &q, Statistic::Sum);
    assert_eq!(sum(cloudwatch::SUCCEEDED).await, Some(8.0));
    assert_eq!(sum(cloudwatch::FAILED).await, Some(2.0));
    assert_eq!(sum(cloudwatch::DEAD_LETTERED).await, Some(1.0));
}

/// A TCP proxy to moto that can be switched off: then it drops every connection at once, which
/// is what a dead endpoint looks like to the SDK.
async fn switchable_proxy(target: &str) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let target = target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let on = Arc::new(AtomicBool::new(true));
    let flag = on.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !flag.load(Ordering::SeqCst) {
                drop(inbound);
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("http://{addr}"), on)
}

#[tokio::test]
async fn cloudwatch_failed_publish_carries_counts_to_the_next() {
    use std::sync::atomic::Ordering;
    let (endpoint, up) = switchable_proxy(&moto_endpoint().await).await;
    let cfg = config(&endpoint);
    let broker = Arc::new(MemoryBroker::new());
    let q = queue_name();
    let pools = Arc::new(FakePools::default());
    let p = publisher(&cfg, broker.clone(), pools.clone(), vec![q.clone()]).await;

    pools.set(&q, 4, 1, 0);
    up.store(false, Ordering::SeqCst);
    assert!(p.publish_once().await.is_err());
    assert_eq!(p.failures(), 1);

    // The endpoint is back: the jobs of the failed interval arrive with this publish.
    up.store(true, Ordering::SeqCst);
    pools.set(&q, 6, 1, 0);
    p.publish_once().await.unwrap();
    let ns = &cfg.namespace;
    assert_eq!(
        stat(&p, ns, cloudwatch::SUCCEEDED, &q, Statistic::Sum).await,
        Some(6.0)
    );
    assert_eq!(
        stat(&p, ns, cloudwatch::FAILED, &q, Statistic::Sum).await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_endpoint_down_fails_fast_and_does_not_block_jobs() {
    let mut cfg = config("http://127.0.0.1:1");
    cfg.interval = Duration::from_secs(1);
    let broker = Arc::new(MemoryBroker::new());
    let q = queue_name();
    let pools = Arc::new(FakePools::default());
    let p = Arc::new(publisher(&cfg, broker.clone(), pools.clone(), vec![q.clone()]).await);

    let started = Instant::now();
    let err = p.publish_once().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("PutMetricData"), "{err}");
    assert_eq!(p.failures(), 1);
    assert_eq!(p.next_delay(0), Duration::from_secs(1));
    assert_eq!(p.next_delay(3), Duration::from_secs(4));
    assert_eq!(p.next_delay(30), Duration::from_secs(8));

    // A job loop: send, receive, ack. Its time with the failing publisher running beside it
    // stays close to its time alone.
    async fn job_loop(broker: &MemoryBroker, q: &str, n: usize) -> Duration {
        let t = Instant::now();
        for i in 0..n {
            broker
                .send(&Envelope::new("noop", q, serde_json::json!({ "i": i })))
                .await
                .unwrap();
            let got = broker.receive(q, 1, Duration::from_secs(1)).await.unwrap();
            got[0].ack().await.unwrap();
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        t.elapsed()
    }
    let alone = job_loop(&broker, &q, 2000).await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = p.clone().spawn(async move {
        let _ = stopped.await;
    });
    let mut beside = Duration::ZERO;
    // Long enough for the publisher to fail several times (1 s, then 2 s backoff).
    let until = Instant::now() + Duration::from_millis(3500);
    let mut rounds = 0;
    while Instant::now() < until {
        beside += job_loop(&broker, &q, 2000).await;
        rounds += 1;
    }
    let per_round = beside / rounds;
    assert!(
        per_round < alone * 3 + Duration::from_millis(200),
        "job loop slowed from {alone:?} to {per_round:?} per 2000 jobs"
    );
    assert!(p.failures() >= 2, "failures: {}", p.failures());

    // Shutdown runs the final flush, which fails fast too.
    let t = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("publisher stops promptly")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(p.failures() >= 3);
}
