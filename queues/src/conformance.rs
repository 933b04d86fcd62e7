//! The conformance suite: what every backend must do, as tests. Each backend's test file
//! implements [`Harness`] and calls [`conformance_suite!`](crate::conformance_suite), which
//! expands to one `#[tokio::test]` per case below, each on its own randomly named queues so the
//! suite runs in parallel against one shared service.
//!
//! Adding behaviour to any backend means adding a case here, so every backend is held to it.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::broker::{Broker, Deliveries, Depth, DlqEntry, QueueSpec, Sent};
use crate::dlq::{self, DlqFilter, NoObserver, ScanObserver, ScanOptions};
use crate::envelope::Envelope;
use crate::error::QueueError;

/// What a backend's test file provides.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A broker connected to the real service.
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>>;

    /// Writes `body` to `queue` with the backend's native non-Rust client (boto3 for SQS, pika
    /// for RabbitMQ, redis-cli for Redis, psql for PostgreSQL), exactly as another language's
    /// API would.
    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()>;

    /// Writes `body` (an envelope with a `dedup_key`, its `id` and a `unique_for`) the way
    /// docs/backends/<backend>.md tells a native producer to write a unique job. The default
    /// is [`Harness::native_send`]: on most brokers the plain write is checked (a trigger, or
    /// the worker on receive); Redis needs its documented script.
    async fn native_send_unique(&self, queue: &str, body: &Value) -> anyhow::Result<()> {
        self.native_send(queue, &body.to_string()).await
    }

    /// A broker pointed at an address where nothing listens, or the error connecting to it.
    /// `None` for backends with nothing to be unreachable (memory).
    async fn connect_unreachable(
        &self,
    ) -> Option<std::result::Result<Arc<dyn Broker>, QueueError>> {
        None
    }

    /// A visibility timeout short enough for expiry tests and long enough for the backend to
    /// honour (SQS counts whole seconds).
    fn short_visibility(&self) -> Duration {
        Duration::from_secs(2)
    }
}

/// A queue name no other test uses.
pub fn unique_queue(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

/// Expands to one tokio test per conformance case for the harness built by `$make`
/// (an expression evaluated in each test).
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            send_receive_ack,
            batch_of_25,
            delayed_send_waits_for_run_at,
            nack_with_delay,
            visibility_expiry_redelivers,
            extend_keeps_message_invisible,
            retry_rewrites_envelope,
            competing_consumers_never_share,
            dead_letter_with_reason,
            dlq_list_pages_with_cursor,
            dlq_replay_and_purge_with_filters,
            dlq_browse_filtered_pages_and_groups,
            replay_interrupted_loses_nothing,
            unknown_fields_survive_dlq_and_replay,
            malformed_bodies_are_dead_lettered,
            native_client_envelope_is_received,
            long_poll_wakes_on_send,
            unreachable_broker_names_url,
            unique_jobs_once_per_window,
            unique_jobs_from_a_native_producer,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let harness = $make;
                $crate::conformance::$case(&harness)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:#}", stringify!($case)));
            }
        )*
    };
}

fn job(queue: &str, n: u64) -> Envelope {
    Envelope::new("conformance", queue, json!({ "n": n }))
}

async fn declared(
    h: &dyn Harness,
    prefix: &str,
    vis: Duration,
) -> anyhow::Result<(Arc<dyn Broker>, String)> {
    let b = h.connect().await?;
    let q = unique_queue(prefix);
    b.declare(&QueueSpec::new(&q).with_visibility(vis)).await?;
    Ok((b, q))
}

/// Receives until `n` deliveries arrived or `within` passed.
async fn receive_n(
    b: &dyn Broker,
    q: &str,
    n: usize,
    within: Duration,
) -> anyhow::Result<Deliveries> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("received {} of {n} messages within {within:?}", got.len());
        }
        let wait = left.min(Duration::from_secs(5));
        got.extend(b.receive(q, (n - got.len()).min(10), wait).await?);
    }
    Ok(got)
}

/// Asserts nothing is receivable for `wait`.
async fn expect_empty(b: &dyn Broker, q: &str, wait: Duration) -> anyhow::Result<()> {
    let got = b.receive(q, 10, wait).await?;
    if let Some(d) = got.first() {
        bail!(
            "expected no visible message, got {} (receive_count {})",
            d.message().id(),
            d.message().receive_count()
        );
    }
    Ok(())
}

/// Polls `depth` until `check` holds (brokers publish counts with a little lag).
async fn depth_until(
    b: &dyn Broker,
    q: &str,
    what: &str,
    check: impl Fn(&Depth) -> bool,
) -> anyhow::Result<Depth> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = b.depth(q).await?;
        if check(&d) {
            return Ok(d);
        }
        if Instant::now() > deadline {
            bail!("depth never became {what}: last {d:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn all_dlq(b: &dyn Broker, q: &str) -> anyhow::Result<Vec<DlqEntry>> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = b.dlq_list(q, 100, cursor.as_deref()).await?;
        out.extend(page.entries);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// Polls the DLQ listing until `n` entries show (SQS/RabbitMQ list by taking and giving back).
async fn dlq_until(b: &dyn Broker, q: &str, n: usize) -> anyhow::Result<Vec<DlqEntry>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let entries = all_dlq(b, q).await?;
        if entries.len() == n {
            return Ok(entries);
        }
        if Instant::now() > deadline {
            bail!("DLQ of {q} shows {} entries, expected {n}", entries.len());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sends `n` jobs, receives them and dead-letters each with `reason(i)`; returns the envelopes.
async fn fill_dlq(
    b: &dyn Broker,
    q: &str,
    n: u64,
    make: impl Fn(u64) -> (Envelope, String),
) -> anyhow::Result<Vec<Envelope>> {
    let mut sent = HashMap::new();
    let mut reasons = HashMap::new();
    let envs: Vec<Envelope> = (0..n)
        .map(|i| {
            let (e, r) = make(i);
            reasons.insert(e.id.clone(), r);
            sent.insert(e.id.clone(), e.clone());
            e
        })
        .collect();
    b.send_batch(&envs).await?;
    for d in receive_n(b, q, n as usize, Duration::from_secs(30)).await? {
        let env = d.message().envelope().map_err(|e| anyhow!("{e}"))?.clone();
        d.dead_letter(Some(&env), &reasons[&env.id]).await?;
    }
    Ok(envs)
}

/// Case: one job goes in, comes out equal, and is gone after ack; depth follows each step.
pub async fn send_receive_ack(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "basic", Duration::from_secs(30)).await?;
    depth_until(&*b, &q, "empty", |d| {
        d.backlog() == 0 && d.dead_lettered == 0
    })
    .await?;
    let sent = job(&q, 1);
    b.send(&sent).await?;
    depth_until(&*b, &q, "1 visible", |d| d.visible == 1 && d.in_flight == 0).await?;
    let got = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    let msg = got[0].message();
    ensure!(
        msg.envelope().map_err(|e| anyhow!("{e}"))? == &sent,
        "envelope changed in transit"
    );
    ensure!(
        msg.receive_count() == 1,
        "first delivery has receive_count {}",
        msg.receive_count()
    );
    depth_until(&*b, &q, "1 in flight", |d| {
        d.visible == 0 && d.in_flight == 1
    })
    .await?;
    got[0].ack().await?;
    depth_until(&*b, &q, "empty after ack", |d| {
        d.backlog() == 0 && d.delayed == 0
    })
    .await?;
    expect_empty(&*b, &q, Duration::from_millis(500)).await
}

/// Case: a batch of 25 (more than one SQS batch) arrives whole.
pub async fn batch_of_25(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "batch", Duration::from_secs(30)).await?;
    let envs: Vec<_> = (0..25).map(|i| job(&q, i)).collect();
    b.send_batch(&envs).await?;
    depth_until(&*b, &q, "25 visible", |d| d.visible == 25).await?;
    let got = receive_n(&*b, &q, 25, Duration::from_secs(30)).await?;
    let want: HashSet<_> = envs.iter().map(|e| e.id.clone()).collect();
    let seen: HashSet<_> = got.iter().map(|d| d.message().id().to_owned()).collect();
    ensure!(seen == want, "received ids differ from sent ids");
    for d in &got {
        d.ack().await?;
    }
    depth_until(&*b, &q, "empty", |d| d.backlog() == 0).await?;
    Ok(())
}

/// Case: a job with `run_at` in the future is not visible before it, and is after.
pub async fn delayed_send_waits_for_run_at(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "delay", Duration::from_secs(30)).await?;
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(4);
    b.send(&job(&q, 1).with_run_at(run_at)).await?;
    depth_until(&*b, &q, "1 delayed", |d| d.delayed == 1 && d.visible == 0).await?;
    // Receiving from now on returns the job the moment it shows: when that is decides the case.
    // (A receive may outlast its wait, SQS counts its long poll in whole seconds, so "nothing
    // within the time left" would measure the poll, not the delay.)
    let got = receive_n(&*b, &q, 1, Duration::from_secs(15)).await?;
    let early = run_at - chrono::Utc::now();
    ensure!(
        early < chrono::Duration::milliseconds(500),
        "delivered {early} before run_at"
    );
    got[0].ack().await?;
    Ok(())
}

/// Case: nack with a delay hides the message for that long, then it comes back as a redelivery.
pub async fn nack_with_delay(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "nack", Duration::from_secs(30)).await?;
    b.send(&job(&q, 1)).await?;
    let first = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    let nacked_at = Instant::now();
    first[0].nack(Duration::from_secs(2)).await?;
    expect_empty(&*b, &q, Duration::from_millis(800)).await?;
    let again = receive_n(&*b, &q, 1, Duration::from_secs(15)).await?;
    ensure!(
        nacked_at.elapsed() >= Duration::from_millis(1500),
        "back after {:?}, before its 2 s delay",
        nacked_at.elapsed()
    );
    ensure!(again[0].message().id() == first[0].message().id());
    ensure!(
        again[0].message().receive_count() >= 2,
        "a nacked message counts as delivered again, got receive_count {}",
        again[0].message().receive_count()
    );
    again[0].ack().await?;
    // A zero-delay nack makes it visible at once.
    b.send(&job(&q, 2)).await?;
    let d = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    d[0].nack(Duration::ZERO).await?;
    let d = receive_n(&*b, &q, 1, Duration::from_secs(5)).await?;
    d[0].ack().await?;
    Ok(())
}

/// Case: a delivery nobody settles comes back after the visibility timeout, counted.
pub async fn visibility_expiry_redelivers(h: &dyn Harness) -> anyhow::Result<()> {
    let vis = h.short_visibility();
    let (b, q) = declared(h, "vis", vis).await?;
    let sent = job(&q, 1);
    b.send(&sent).await?;
    let first = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    ensure!(first[0].message().receive_count() == 1);
    expect_empty(&*b, &q, vis / 3).await?;
    let again = receive_n(&*b, &q, 1, vis * 5 + Duration::from_secs(10)).await?;
    let m = again[0].message();
    ensure!(m.id() == sent.id, "a different message came back");
    ensure!(
        m.receive_count() == 2,
        "redelivery has receive_count {}",
        m.receive_count()
    );
    again[0].ack().await?;
    expect_empty(&*b, &q, vis + Duration::from_secs(1)).await
}

/// Case: extending the lease keeps the message away from other consumers past the timeout.
pub async fn extend_keeps_message_invisible(h: &dyn Harness) -> anyhow::Result<()> {
    let vis = h.short_visibility();
    let (b, q) = declared(h, "extend", vis).await?;
    b.send(&job(&q, 1)).await?;
    let d = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    for _ in 0..3 {
        tokio::time::sleep(vis / 2).await;
        d[0].extend(vis * 2).await?;
    }
    expect_empty(&*b, &q, vis / 2).await?;
    d[0].ack().await?;
    expect_empty(&*b, &q, vis * 3).await
}

/// Case: retry replaces the body (attempt and history grown) and delays it.
pub async fn retry_rewrites_envelope(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "retry", Duration::from_secs(30)).await?;
    b.send(&job(&q, 1)).await?;
    let d = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    let mut env = d[0]
        .message()
        .envelope()
        .map_err(|e| anyhow!("{e}"))?
        .clone();
    env.record_failure("first failure", "conformance-worker");
    d[0].retry(&env, Duration::from_secs(1)).await?;
    depth_until(&*b, &q, "1 delayed or visible", |d| {
        d.in_flight == 0 && d.delayed + d.visible == 1
    })
    .await?;
    let again = receive_n(&*b, &q, 1, Duration::from_secs(15)).await?;
    let got = again[0].message().envelope().map_err(|e| anyhow!("{e}"))?;
    ensure!(
        got.id == env.id && got.attempt == 1,
        "attempt not recorded: {got:?}"
    );
    ensure!(got.errors.len() == 1 && got.errors[0].error == "first failure");
    again[0].ack().await?;
    depth_until(&*b, &q, "empty", |d| d.backlog() + d.delayed == 0).await?;
    Ok(())
}

/// Case: 1,000 jobs, 8 consumers: each job is processed, and none is handed to two consumers
/// while its lease holds.
pub async fn competing_consumers_never_share(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "compete", Duration::from_secs(60)).await?;
    let envs: Vec<_> = (0..1000).map(|i| job(&q, i)).collect();
    for chunk in envs.chunks(100) {
        b.send_batch(chunk).await?;
    }
    let seen = Arc::new(std::sync::Mutex::new(HashMap::<String, u32>::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        let q = q.clone();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut idle = 0;
            while Instant::now() < deadline && idle < 3 {
                let got = b.receive(&q, 10, Duration::from_secs(1)).await?;
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for d in got {
                    *seen
                        .lock()
                        .unwrap()
                        .entry(d.message().id().to_owned())
                        .or_default() += 1;
                    d.ack().await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(
        twice.is_empty(),
        "{} jobs delivered twice, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    let missing = envs.iter().filter(|e| !seen.contains_key(&e.id)).count();
    ensure!(missing == 0, "{missing} of 1000 jobs never delivered");
    depth_until(&*b, &q, "empty", |d| d.backlog() == 0).await?;
    Ok(())
}

/// Case: dead-lettering keeps the reason and the grown history, and depth counts it.
pub async fn dead_letter_with_reason(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "dead", Duration::from_secs(30)).await?;
    let sent = job(&q, 1);
    b.send(&sent).await?;
    let d = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    let mut env = d[0]
        .message()
        .envelope()
        .map_err(|e| anyhow!("{e}"))?
        .clone();
    env.record_failure("handler said no", "conformance-worker");
    d[0].dead_letter(Some(&env), "permanent: handler said no")
        .await?;
    depth_until(&*b, &q, "1 dead", |d| {
        d.dead_lettered == 1 && d.backlog() == 0
    })
    .await?;
    let entries = dlq_until(&*b, &q, 1).await?;
    let e = &entries[0];
    ensure!(e.id == sent.id && e.queue == q, "entry {e:?}");
    ensure!(
        e.reason == "permanent: handler said no",
        "reason {:?}",
        e.reason
    );
    let got = e.envelope.as_ref().context("entry lost its envelope")?;
    ensure!(got.errors.len() == 1 && got.errors[0].error == "handler said no");
    let by_id = b
        .dlq_get(&q, &sent.id)
        .await?
        .context("dlq_get found nothing")?;
    ensure!(by_id.reason == e.reason);
    ensure!(b.dlq_get(&q, "no-such-id").await?.is_none());
    expect_empty(&*b, &q, Duration::from_millis(500)).await
}

/// Case: listing 25 entries 10 at a time sees each once.
pub async fn dlq_list_pages_with_cursor(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "pages", Duration::from_secs(30)).await?;
    let envs = fill_dlq(&*b, &q, 25, |i| (job(&q, i), format!("reason {i}"))).await?;
    depth_until(&*b, &q, "25 dead", |d| d.dead_lettered == 25).await?;
    let mut ids = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = b.dlq_list(&q, 10, cursor.as_deref()).await?;
        ensure!(page.entries.len() <= 10, "page of {}", page.entries.len());
        pages += 1;
        ids.extend(page.entries.into_iter().map(|e| e.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        ensure!(pages < 10, "cursor never ends");
    }
    let unique: HashSet<_> = ids.iter().cloned().collect();
    ensure!(
        ids.len() == 25 && unique.len() == 25,
        "listed {} ({} unique)",
        ids.len(),
        unique.len()
    );
    ensure!(envs.iter().all(|e| unique.contains(&e.id)));
    ensure!(
        (3..=4).contains(&pages),
        "{pages} pages for 25 entries at 10 a page"
    );
    Ok(())
}

/// Case: the dashboard's and `worker dlq list`'s browsing (`dlq::list_matching`): a filtered
/// page can end inside a backend page and the next one resumes right after it, with nothing
/// repeated or skipped; `dlq::group_by_error` counts the reasons with their numbers collapsed.
pub async fn dlq_browse_filtered_pages_and_groups(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "browse", Duration::from_secs(30)).await?;
    fill_dlq(&*b, &q, 8, |i| {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        let reason = if i == 7 {
            "timed out after 30s".to_owned()
        } else {
            format!("permanent: item {i} broken")
        };
        (Envelope::new(kind, &q, json!({ "n": i })), reason)
    })
    .await?;
    depth_until(&*b, &q, "8 dead", |d| d.dead_lettered == 8).await?;
    dlq_until(&*b, &q, 8).await?;

    let only_odd = DlqFilter {
        kind: Some("odd".into()),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for round in 0.. {
        ensure!(round < 10, "the filtered cursor never ends");
        let p = dlq::list_matching(&*b, &q, &only_odd, 2, cursor.as_deref()).await?;
        ensure!(p.entries.len() <= 2, "page of {}", p.entries.len());
        seen.extend(p.entries.iter().map(|e| e.reason.clone()));
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    ensure!(
        seen == [
            "permanent: item 1 broken",
            "permanent: item 3 broken",
            "permanent: item 5 broken",
            "timed out after 30s"
        ],
        "odd entries paged 2 at a time: {seen:?}"
    );

    let g = dlq::group_by_error(&*b, &q, &DlqFilter::default()).await?;
    ensure!(g.matched == 8, "grouped {} of 8", g.matched);
    ensure!(g.groups.len() == 2, "groups: {:?}", g.groups);
    ensure!(
        g.groups[0].signature == "permanent: item # broken" && g.groups[0].count == 7,
        "biggest group first: {:?}",
        g.groups[0]
    );
    ensure!(
        g.groups[0].kinds == vec![("even".to_owned(), 4), ("odd".to_owned(), 3)],
        "kinds of the group: {:?}",
        g.groups[0].kinds
    );
    ensure!(
        g.groups[1].signature == "timed out after #s" && g.groups[1].count == 1,
        "{:?}",
        g.groups[1]
    );
    let err = dlq::list_matching(&*b, &q, &only_odd, 2, Some("x"))
        .await
        .err()
        .context("a malformed cursor is refused")?;
    ensure!(err.to_string().contains("bad DLQ cursor `x`"), "{err}");
    Ok(())
}

/// Case: replay and purge honour kind, error, attempts, time and limit filters and the dry run;
/// a replayed job comes back with attempt 0 and its history.
pub async fn dlq_replay_and_purge_with_filters(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "replay", Duration::from_secs(30)).await?;
    let opts = ScanOptions {
        hold: Duration::from_secs(5),
        ..ScanOptions::default()
    };
    // 3 × kind a (timeouts, 2 failures), 3 × kind b (bad payload, 1 failure)
    fill_dlq(&*b, &q, 6, |i| {
        let kind = if i < 3 { "a" } else { "b" };
        let mut e = Envelope::new(kind, &q, json!({ "n": i }));
        let (err, fails) = if i < 3 {
            ("timeout after 30s", 2)
        } else {
            ("bad payload", 1)
        };
        for _ in 0..fails {
            e.record_failure(err, "w");
        }
        (e, format!("gave up: {err}"))
    })
    .await?;
    dlq_until(&*b, &q, 6).await?;

    let kind_a = DlqFilter {
        kind: Some("a".into()),
        ..Default::default()
    };
    let dry = ScanOptions {
        dry_run: true,
        ..opts.clone()
    };
    let r = dlq::replay(&*b, &q, &kind_a, &dry, &mut NoObserver).await?;
    ensure!(r.matched == 3 && r.done == 0, "dry run {r:?}");
    dlq_until(&*b, &q, 6).await?;

    let future = DlqFilter {
        since: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    let r = dlq::replay(&*b, &q, &future, &opts, &mut NoObserver).await?;
    ensure!(r.matched == 0, "time filter matched {r:?}");

    let limited = ScanOptions {
        limit: Some(1),
        ..opts.clone()
    };
    let r = dlq::replay(&*b, &q, &kind_a, &limited, &mut NoObserver).await?;
    ensure!(r.matched == 1 && r.done == 1, "limit 1: {r:?}");
    let r = dlq::replay(&*b, &q, &kind_a, &opts, &mut NoObserver).await?;
    ensure!(r.matched == 2 && r.done == 2, "rest of kind a: {r:?}");
    let back = receive_n(&*b, &q, 3, Duration::from_secs(20)).await?;
    for d in &back {
        let env = d.message().envelope().map_err(|e| anyhow!("{e}"))?;
        ensure!(env.kind == "a" && env.attempt == 0, "replayed {env:?}");
        ensure!(env.errors.len() == 2, "history lost: {:?}", env.errors);
        d.ack().await?;
    }
    let left = dlq_until(&*b, &q, 3).await?;
    ensure!(
        left.iter()
            .all(|e| e.envelope.as_ref().is_some_and(|e| e.kind == "b"))
    );

    let no_match = DlqFilter {
        error: Some(regex::Regex::new("timeout")?),
        ..Default::default()
    };
    let r = dlq::purge(&*b, &q, &no_match, &opts, &mut NoObserver).await?;
    ensure!(r.matched == 0, "purge by error matched {r:?}");
    let min2 = DlqFilter {
        min_attempts: Some(2),
        ..Default::default()
    };
    let r = dlq::purge(&*b, &q, &min2, &opts, &mut NoObserver).await?;
    ensure!(r.matched == 0, "min_attempts 2 matched {r:?}");
    let bad = DlqFilter {
        error: Some(regex::Regex::new("^gave up: bad")?),
        ..Default::default()
    };
    let r = dlq::purge(&*b, &q, &bad, &opts, &mut NoObserver).await?;
    ensure!(r.matched == 3 && r.done == 3, "purge {r:?}");
    dlq_until(&*b, &q, 0).await?;
    depth_until(&*b, &q, "no dead letters", |d| d.dead_lettered == 0).await?;
    Ok(())
}

struct StopAfter(usize);

impl ScanObserver for StopAfter {
    fn written(&mut self, _entry: &DlqEntry) -> ControlFlow<()> {
        if self.0 == 0 {
            return ControlFlow::Break(());
        }
        self.0 -= 1;
        ControlFlow::Continue(())
    }
}

/// Case: a replay that dies between writing a job back and deleting it from the DLQ leaves
/// every job in at least one place; running it again finishes the job.
pub async fn replay_interrupted_loses_nothing(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "crash", Duration::from_secs(30)).await?;
    let envs = fill_dlq(&*b, &q, 10, |i| (job(&q, i), "boom".into())).await?;
    dlq_until(&*b, &q, 10).await?;
    let opts = ScanOptions {
        hold: Duration::from_secs(2),
        batch: 4,
        ..ScanOptions::default()
    };
    let r = dlq::replay(&*b, &q, &DlqFilter::default(), &opts, &mut StopAfter(5)).await?;
    ensure!(r.interrupted && r.done == 5, "interrupted run {r:?}");
    // A second process (new connection) finds the rest once the dead one's hold lapses.
    let b2 = h.connect().await?;
    tokio::time::sleep(opts.hold + Duration::from_millis(500)).await;
    let in_dlq: HashSet<String> = dlq_until(&*b2, &q, 5)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    let back = receive_n(&*b2, &q, 8, Duration::from_secs(20)).await?;
    let mut in_queue = HashSet::new();
    for d in &back {
        in_queue.insert(d.message().id().to_owned());
        d.ack().await?;
    }
    for e in &envs {
        ensure!(
            in_dlq.contains(&e.id) || in_queue.contains(&e.id),
            "job {} is in neither the queue nor the DLQ",
            e.id
        );
    }
    let r = dlq::replay(&*b2, &q, &DlqFilter::default(), &opts, &mut NoObserver).await?;
    ensure!(r.done == 5 && !r.interrupted, "second run {r:?}");
    dlq_until(&*b2, &q, 0).await?;
    let rest = receive_n(&*b2, &q, 5, Duration::from_secs(20)).await?;
    for d in &rest {
        in_queue.insert(d.message().id().to_owned());
        d.ack().await?;
    }
    ensure!(
        envs.iter().all(|e| in_queue.contains(&e.id)),
        "a job never came back"
    );
    Ok(())
}

/// Case: fields this version does not know survive send → DLQ → replay unchanged.
pub async fn unknown_fields_survive_dlq_and_replay(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "fwd", Duration::from_secs(30)).await?;
    let mut sent = job(&q, 1);
    sent.extra.insert("tenant".into(), json!("acme"));
    sent.extra
        .insert("trace".into(), json!({"span": [1, 2, 3], "sampled": true}));
    b.send(&sent).await?;
    let d = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    let env = d[0]
        .message()
        .envelope()
        .map_err(|e| anyhow!("{e}"))?
        .clone();
    ensure!(
        env.extra == sent.extra,
        "lost fields on receive: {:?}",
        env.extra
    );
    d[0].dead_letter(Some(&env), "test").await?;
    let entries = dlq_until(&*b, &q, 1).await?;
    let raw: Value = serde_json::from_str(&entries[0].body)?;
    ensure!(
        raw["trace"]["span"] == json!([1, 2, 3]),
        "DLQ body lost fields: {raw}"
    );
    dlq::replay(
        &*b,
        &q,
        &DlqFilter::default(),
        &ScanOptions::default(),
        &mut NoObserver,
    )
    .await?;
    let back = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    let env = back[0].message().envelope().map_err(|e| anyhow!("{e}"))?;
    ensure!(
        env.extra == sent.extra,
        "lost fields on replay: {:?}",
        env.extra
    );
    back[0].ack().await?;
    Ok(())
}

/// Case: bodies that are not envelopes are delivered with the parse error and dead-lettered
/// as they came; valid jobs beside them are unaffected.
pub async fn malformed_bodies_are_dead_lettered(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "junk", Duration::from_secs(30)).await?;
    let bodies = [
        "this is not json {".to_owned(),
        json!({"v": 2, "id": "x", "kind": "k", "queue": q}).to_string(),
        json!({"v": 1, "kind": "k", "queue": q}).to_string(),
    ];
    for body in &bodies {
        h.native_send(&q, body).await?;
    }
    let good = job(&q, 1);
    b.send(&good).await?;
    let got = receive_n(&*b, &q, 4, Duration::from_secs(20)).await?;
    let mut reasons = Vec::new();
    for d in &got {
        match d.message().envelope() {
            Ok(env) => {
                ensure!(env.id == good.id);
                d.ack().await?;
            }
            Err(err) => {
                reasons.push(err.to_string());
                d.dead_letter(None, &err.to_string()).await?;
            }
        }
    }
    ensure!(
        reasons.len() == 3,
        "{} bodies failed to parse, expected 3",
        reasons.len()
    );
    let entries = dlq_until(&*b, &q, 3).await?;
    for body in &bodies {
        let e = entries
            .iter()
            .find(|e| &e.body == body)
            .with_context(|| format!("body {body:?} not in the DLQ as it came"))?;
        ensure!(e.envelope.is_none() && !e.reason.is_empty());
        ensure!(
            b.dlq_get(&q, &e.id).await?.is_some(),
            "dlq_get by broker id"
        );
    }
    let all: String = entries.iter().map(|e| e.reason.as_str()).collect();
    ensure!(all.contains("not valid JSON") && all.contains("version") && all.contains("`id`"));
    // Replay skips them (nothing to run) and leaves them for purge.
    let r = dlq::replay(
        &*b,
        &q,
        &DlqFilter::default(),
        &ScanOptions::default(),
        &mut NoObserver,
    )
    .await?;
    ensure!(r.skipped == 3 && r.done == 0, "replay of junk {r:?}");
    let r = dlq::purge(
        &*b,
        &q,
        &DlqFilter::default(),
        &ScanOptions::default(),
        &mut NoObserver,
    )
    .await?;
    ensure!(r.done == 3, "purge of junk {r:?}");
    expect_empty(&*b, &q, Duration::from_millis(500)).await
}

/// Case: an envelope written by another language's client is received like our own.
pub async fn native_client_envelope_is_received(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "native", Duration::from_secs(30)).await?;
    let body = json!({
        "v": 1, "id": "native-0001", "kind": "embed_document", "queue": q,
        "payload": {"document_id": 42}, "enqueued_at": "2026-11-22T10:00:00Z",
        "client": "not-rust"
    });
    h.native_send(&q, &body.to_string()).await?;
    let got = receive_n(&*b, &q, 1, Duration::from_secs(10)).await?;
    let env = got[0].message().envelope().map_err(|e| anyhow!("{e}"))?;
    ensure!(env.id == "native-0001" && env.kind == "embed_document");
    ensure!(env.payload == json!({"document_id": 42}) && env.attempt == 0);
    ensure!(env.extra.get("client") == Some(&json!("not-rust")));
    got[0].ack().await?;
    Ok(())
}

/// Case: a consumer blocked in a long poll gets a message sent meanwhile well before its wait
/// ends (no sleep-and-poll loop).
pub async fn long_poll_wakes_on_send(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "poll", Duration::from_secs(30)).await?;
    let rx = {
        let b = b.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let got = b.receive(&q, 1, Duration::from_secs(15)).await?;
            anyhow::Ok((got, t.elapsed()))
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.send(&job(&q, 1)).await?;
    let (got, waited) = rx.await??;
    ensure!(got.len() == 1, "long poll returned {} messages", got.len());
    ensure!(
        waited < Duration::from_secs(5),
        "long poll took {waited:?} to see a message"
    );
    got[0].ack().await?;
    Ok(())
}

/// Case: a broker that is down gives an error naming the backend and where it looked, quickly.
pub async fn unreachable_broker_names_url(h: &dyn Harness) -> anyhow::Result<()> {
    let Some(res) = tokio::time::timeout(Duration::from_secs(60), h.connect_unreachable())
        .await
        .context("connecting to a dead address hung")?
    else {
        return Ok(());
    };
    let err = match res {
        Err(e) => e,
        Ok(b) => {
            let q = unique_queue("down");
            tokio::time::timeout(Duration::from_secs(60), b.send(&job(&q, 1)))
                .await
                .context("send to a dead broker hung")?
                .err()
                .context("send to a dead broker succeeded")?
        }
    };
    ensure!(
        matches!(err, QueueError::Unavailable { .. }),
        "expected Unavailable, got {err:?}"
    );
    let text = err.to_string();
    ensure!(
        text.contains("unreachable"),
        "error does not say unreachable: {text}"
    );
    Ok(())
}

/// The window the unique-job cases use: short, so "after the window" is a short sleep.
const UNIQUE_FOR: Duration = Duration::from_secs(2);

/// Receives for `within` and returns the ids of everything delivered (acked).
async fn drain_ids(b: &dyn Broker, q: &str, within: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + within;
    let mut ids = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(ids);
        }
        for d in b.receive(q, 10, left.min(Duration::from_secs(1))).await? {
            ids.push(d.message().id().to_owned());
            d.ack().await?;
        }
    }
}

/// Case: two enqueues with one `dedup_key` inside `unique_for` give one job (the second is
/// told [`Sent::Duplicate`] and writes nothing), also within one batch; other keys and other
/// queues are not affected; a job with a failure history or replayed from the DLQ is never a
/// duplicate;
/// after the window the key is free again.
pub async fn unique_jobs_once_per_window(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "unique", Duration::from_secs(30)).await?;
    let (_, other_q) = declared(h, "unique-other", Duration::from_secs(30)).await?;
    let key = format!("doc-{}", uuid::Uuid::new_v4().simple());
    let unique = |q: &str, key: &str| job(q, 1).with_dedup_key(key).with_unique_for(UNIQUE_FOR);
    let first = unique(&q, &key);
    ensure!(
        b.send(&first).await? == Sent::Enqueued,
        "first send not enqueued"
    );
    ensure!(
        b.send(&unique(&q, &key)).await? == Sent::Duplicate,
        "second send inside the window was not a duplicate"
    );
    let other_key = format!("{key}-b");
    let batch = [
        unique(&q, &key),
        unique(&q, &other_key),
        unique(&q, &other_key),
        unique(&other_q, &key),
        job(&q, 2),
    ];
    let sent = b.send_batch(&batch).await?;
    ensure!(
        sent == [
            Sent::Duplicate,
            Sent::Enqueued,
            Sent::Duplicate,
            Sent::Enqueued,
            Sent::Enqueued
        ],
        "batch: {sent:?}"
    );
    let mut failed = unique(&q, &key);
    failed.record_failure("failed once", "w");
    ensure!(
        b.send(&failed).await? == Sent::Enqueued,
        "a job with a failure history was taken for a duplicate"
    );
    // A DLQ entry without history (SQS's own redrive records none), replayed.
    let replayed = first.for_replay();
    ensure!(
        b.send(&replayed).await? == Sent::Enqueued,
        "a replayed job was taken for a duplicate"
    );
    let mut want = vec![
        first.id.clone(),
        batch[1].id.clone(),
        batch[4].id.clone(),
        failed.id.clone(),
        replayed.id.clone(),
    ];
    let mut got = drain_ids(&*b, &q, Duration::from_secs(3)).await?;
    got.sort();
    want.sort();
    ensure!(got == want, "inside the window: got {got:?}, want {want:?}");
    let other = drain_ids(&*b, &other_q, Duration::from_secs(1)).await?;
    ensure!(other == [batch[3].id.clone()], "other queue: {other:?}");

    // Let the window pass (counted from the first send, a few seconds ago at least).
    tokio::time::sleep(UNIQUE_FOR + Duration::from_millis(500)).await;
    let after = unique(&q, &key);
    ensure!(
        b.send(&after).await? == Sent::Enqueued,
        "a send after the window was refused"
    );
    let got = drain_ids(&*b, &q, Duration::from_secs(3)).await?;
    ensure!(got == [after.id.clone()], "after the window: {got:?}");
    Ok(())
}

/// Case: a native producer writing unique jobs as the backend's page documents gets the same
/// meaning: two bodies with one key inside the window run once, a third after the window runs.
pub async fn unique_jobs_from_a_native_producer(h: &dyn Harness) -> anyhow::Result<()> {
    let (b, q) = declared(h, "unique-native", Duration::from_secs(30)).await?;
    let key = format!("doc-{}", uuid::Uuid::new_v4().simple());
    let body = |n: u32| {
        json!({
            "v": 1, "id": format!("native-{n}-{}", uuid::Uuid::new_v4().simple()),
            "kind": "embed_document", "queue": q, "payload": {"document_id": 42},
            "enqueued_at": chrono::Utc::now().to_rfc3339(), "dedup_key": key,
            "unique_for": UNIQUE_FOR.as_secs_f64()
        })
    };
    let (one, two) = (body(1), body(2));
    h.native_send_unique(&q, &one).await?;
    h.native_send_unique(&q, &two).await?;
    let got = drain_ids(&*b, &q, Duration::from_secs(4)).await?;
    // Which of the two runs is the broker's order (SQS standard queues do not keep one).
    let ids = [&one["id"], &two["id"]].map(|v| v.as_str().unwrap_or_default().to_owned());
    ensure!(
        got.len() == 1 && ids.contains(&got[0]),
        "inside the window: {got:?} (sent {ids:?})"
    );
    ensure!(
        b.depth(&q).await?.backlog() == 0,
        "the duplicate is still queued"
    );
    tokio::time::sleep(UNIQUE_FOR + Duration::from_millis(500)).await;
    let three = body(3);
    h.native_send_unique(&q, &three).await?;
    let got = drain_ids(&*b, &q, Duration::from_secs(4)).await?;
    ensure!(
        got == [three["id"].as_str().unwrap_or_default()],
        "after the window: {got:?}"
    );
    Ok(())
}
