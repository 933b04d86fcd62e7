//! The SQS backend against the suite, on moto (`$JOBFLEET_SQS_ENDPOINT`, default
//! http://127.0.0.1:5000), plus SQS-only checks: the API-call budget, far-future `run_at`, and
//! what a foreign client sees on the broker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use async_trait::async_trait;
use queues::backends::sqs::SqsBroker;
use queues::conformance::{Harness, unique_queue};
use queues::{
    BackendKind, Broker, BrokerConfig, Consumer, Envelope, Producer, QueueError, QueueSpec,
};

use crate::support;

const NAMESPACE: &str = "jftest";

fn endpoint() -> String {
    support::env_or("JOBFLEET_SQS_ENDPOINT", "http://127.0.0.1:5000")
}

fn config(url: &str) -> BrokerConfig {
    BrokerConfig {
        backend: BackendKind::Sqs,
        url: Some(url.to_owned()),
        region: Some("us-east-1".into()),
        namespace: NAMESPACE.into(),
        dedup_url: Some(support::pg_url()),
    }
}

async fn broker() -> anyhow::Result<SqsBroker> {
    Ok(SqsBroker::connect(&config(&endpoint())).await?)
}

struct Sqs;

#[async_trait]
impl Harness for Sqs {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(broker().await?))
    }

    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        let script = r#"
import sys, boto3
endpoint, name = sys.argv[1], sys.argv[2]
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
sqs.send_message(QueueUrl=url, MessageBody=sys.stdin.read())
"#;
        let name = format!("{NAMESPACE}-{queue}");
        support::run(
            &support::python(),
            &["-c", script, &endpoint(), &name],
            Some(body),
        )
        .await
        .context("boto3 send_message")?;
        Ok(())
    }

    async fn connect_unreachable(
        &self,
    ) -> Option<std::result::Result<Arc<dyn Broker>, QueueError>> {
        Some(
            SqsBroker::connect(&config("http://127.0.0.1:1"))
                .await
                .map(|b| Arc::new(b) as Arc<dyn Broker>),
        )
    }
}

queues::conformance_suite!(Sqs);

fn job(queue: &str, n: u64) -> Envelope {
    Envelope::new("bench", queue, serde_json::json!({ "n": n }))
}

/// With batch send, receive(10) and concurrent acks (as a worker pool acks), a job costs at
/// most 0.35 SQS requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_calls_per_message_with_batching() -> anyhow::Result<()> {
    const N: u64 = 200;
    let b = broker().await?;
    let q = unique_queue("calls");
    b.declare(&QueueSpec::new(&q)).await?;
    let before = b.api_calls();
    let envs: Vec<_> = (0..N).map(|i| job(&q, i)).collect();
    let t = std::time::Instant::now();
    b.send_batch(&envs).await?;
    println!("send_batch {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut done = 0;
    while done < N {
        let got = b.receive(&q, 10, Duration::from_secs(5)).await?;
        ensure!(!got.is_empty(), "ran dry after {done} of {N}");
        done += got.len() as u64;
        futures::future::try_join_all(got.iter().map(|d| d.ack())).await?;
    }
    println!("receive+ack {:?}", t.elapsed());
    let calls = b.api_calls() - before;
    let per = calls as f64 / N as f64;
    println!("sqs: {calls} API calls for {N} jobs = {per:.3} per job");
    ensure!(per <= 0.35, "{per:.3} API calls per job (budget 0.35)");
    Ok(())
}

/// A job due further out than SQS's 15-minute delay, as a foreign client might write it (no
/// DelaySeconds at all), is hidden again on receive and not handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_future_run_at_is_hidden_on_receive() -> anyhow::Result<()> {
    let b = broker().await?;
    let q = unique_queue("far");
    b.declare(&QueueSpec::new(&q)).await?;
    let later = job(&q, 1).with_run_at(chrono::Utc::now() + chrono::Duration::hours(2));
    Sqs.native_send(&q, &String::from_utf8(later.to_bytes())?)
        .await?;
    let now = job(&q, 2);
    b.send(&now).await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.extend(b.receive(&q, 10, Duration::from_secs(1)).await?);
    }
    ensure!(
        got.len() == 1 && got[0].message().id() == now.id,
        "got {} jobs",
        got.len()
    );
    got[0].ack().await?;
    let d = queues::Inspector::depth(&b, &q).await?;
    ensure!(
        d.visible == 0 && d.in_flight == 1,
        "hidden job should be in flight: {d:?}"
    );
    Ok(())
}

/// Sending to a queue nobody declared creates it (and its DLQ) with the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_undeclared_queue_creates_it() -> anyhow::Result<()> {
    let b = broker().await?;
    let q = unique_queue("auto");
    let e = job(&q, 1);
    b.send(&e).await?;
    let got = b.receive(&q, 1, Duration::from_secs(5)).await?;
    ensure!(got.len() == 1 && got[0].message().id() == e.id);
    got[0].dead_letter(None, "check the DLQ exists").await?;
    let d = queues::Inspector::depth(&b, &q).await?;
    ensure!(d.dead_lettered == 1, "{d:?}");
    Ok(())
}

/// Extending or nacking with a receipt handle that was already deleted is `LeaseLost`, not a
/// generic error, so the worker knows another consumer may have the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_delivery_reports_lease_lost() -> anyhow::Result<()> {
    let b = broker().await?;
    let q = unique_queue("lease");
    b.declare(&QueueSpec::new(&q)).await?;
    b.send(&job(&q, 1)).await?;
    let got = b.receive(&q, 1, Duration::from_secs(5)).await?;
    ensure!(got.len() == 1);
    got[0].ack().await?;
    match got[0].extend(Duration::from_secs(5)).await {
        Err(QueueError::LeaseLost { .. }) => Ok(()),
        other => anyhow::bail!("extend after ack gave {other:?}"),
    }
}
