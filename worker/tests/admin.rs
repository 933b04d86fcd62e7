//! The admin port of a running worker: `/readyz` follows the pools and the broker, `/metrics`
//! carries the job counters, duration histogram, pool and depth gauges by queue and kind.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use common::{Count, Flaky, Runs, config, fast_policy, wait_until};
use jobs::Registry;
use queues::backends::memory::MemoryBroker;
use queues::conformance::unique_queue;
use queues::{Envelope, Producer};
use runtime::config::Priority;
use serde_json::json;
use worker::stats::SnapshotSource;
use worker::{Shutdown, Worker};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn readyz_and_metrics() {
    let q = unique_queue("admin");
    let cfg = config(&[(&q, Priority::Critical, 1, 4)]);
    let broker = MemoryBroker::new();
    let mut reg = Registry::new();
    reg.register(
        Arc::new(Count(Arc::new(AtomicUsize::new(0)))),
        fast_policy(3),
    );
    reg.register(Arc::new(Flaky(Runs::default())), fast_policy(2));
    let w = Worker::new(cfg, Arc::new(broker.clone()), reg);
    let view = w.view();
    let shutdown = Shutdown::new();
    let addr = w
        .serve_admin("127.0.0.1:0".parse().unwrap(), &shutdown)
        .await
        .unwrap();
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503, "pools not started yet: {body}");
    let task = tokio::spawn(w.run(shutdown.clone()));
    wait_until(Duration::from_secs(5), "ready", || async {
        http_get(addr, "/readyz").await.0 == 200
    })
    .await;

    broker
        .send(&Envelope::new("count", &q, json!({})))
        .await
        .unwrap();
    broker
        .send(&Envelope::new("flaky", &q, json!({"fail": 5})))
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "jobs settled", || async {
        let s = &view.snapshot()[0];
        s.succeeded == 1 && s.dead_lettered == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, text) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for want in [
        format!("jobfleet_jobs_started_total{{queue=\"{q}\",kind=\"count\"}} 1"),
        format!("jobfleet_jobs_succeeded_total{{queue=\"{q}\",kind=\"count\"}} 1"),
        format!("jobfleet_jobs_failed_total{{queue=\"{q}\",kind=\"flaky\"}} 2"),
        format!("jobfleet_jobs_retried_total{{queue=\"{q}\",kind=\"flaky\"}} 1"),
        format!("jobfleet_jobs_dead_lettered_total{{queue=\"{q}\",kind=\"flaky\"}} 1"),
        format!("jobfleet_job_duration_seconds_count{{queue=\"{q}\",kind=\"count\"}} 1"),
        format!("jobfleet_pool_target{{queue=\"{q}\"}} 1"),
        format!("jobfleet_pool_running{{queue=\"{q}\"}} 0"),
        format!("jobfleet_queue_depth{{queue=\"{q}\",state=\"dead_lettered\"}} 1"),
    ] {
        assert!(text.contains(&want), "missing {want}\n{text}");
    }
    assert_eq!(worker::cmd::queues::parse_targets(&text).get(&q), Some(&1));

    shutdown.trigger();
    task.await.unwrap().unwrap();
}
