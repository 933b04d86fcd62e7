//! The `worker` binary as an Auto Scaling group runs it: SIGTERM drains and exits 0 with
//! nothing lost; a SIGKILLed worker's job is redelivered and completed by another worker.
//! These need a broker shared between processes, so they run on each real backend already
//! built; the memory backend covers only the signal handling itself.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, TestBroker, real_brokers, wait_until};
use jobs::Registry;
use queues::conformance::unique_queue;
use queues::{BrokerConfig, Envelope, QueueSpec};
use serde_json::{Value, json};
use worker::stats::SnapshotSource;
use worker::{Shutdown, Worker};

fn write_config(
    dir: &Path,
    broker: &BrokerConfig,
    queue: &str,
    grace_s: u64,
) -> std::path::PathBuf {
    let mut text = format!(
        "[broker]\nbackend = \"{}\"\nnamespace = \"{}\"\n",
        broker.backend, broker.namespace
    );
    if let Some(u) = &broker.url {
        text += &format!("url = \"{u}\"\n");
    }
    if let Some(r) = &broker.region {
        text += &format!("region = \"{r}\"\n");
    }
    text += &format!(
        r#"
[worker]
admin_addr = "127.0.0.1:0"
sample_interval = "200ms"
receive_wait = "200ms"
shutdown_grace = "{grace_s}s"
id = "proc-test"

[queues.{queue}]
min = 2
max = 2
visibility_timeout = "2s"

[routes]
diag_sleep = "{queue}"
"#
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn_worker(config: &Path) -> Proc {
    spawn_worker_with(config, Stdio::inherit())
}

fn spawn_worker_with(config: &Path, stderr: Stdio) -> Proc {
    Proc(
        common::worker_cmd()
            .arg("--config")
            .arg(config)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the worker binary"),
    )
}

fn signal(child: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

async fn wait_exit(child: &mut Proc, limit: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > limit {
            let _ = child.0.kill();
            panic!("worker did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the one job sent is no longer waiting: the worker process holds it. (Not
/// `in_flight == 1`: RabbitMQ's in-flight count is per process and this one consumes nothing.)
async fn wait_in_flight(tb: &TestBroker, q: &str) {
    wait_until(
        Duration::from_secs(30),
        "the worker took the job",
        || async {
            let d = tb.broker.depth(q).await.unwrap();
            d.visible == 0 && d.delayed == 0
        },
    )
    .await;
    // Let the job start inside the worker.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Declares the queue as the worker will, so this process can inspect it before the worker
/// process has started.
async fn declare(tb: &TestBroker, q: &str) {
    tb.broker
        .declare(&QueueSpec::new(q).with_visibility(Duration::from_secs(2)))
        .await
        .unwrap();
}

#[tokio::test]
async fn sigterm_lets_a_long_job_finish_and_exits_zero() {
    for tb in real_brokers().await {
        let q = unique_queue("term");
        declare(&tb, &q).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &tb.config, &q, 20);
        let mut child = spawn_worker(&cfg);
        let env = Envelope::new("diag_sleep", &q, json!({"ms": 3000}));
        tb.broker.send(&env).await.unwrap();
        wait_in_flight(&tb, &q).await;
        signal(&child, "-TERM");
        let status = wait_exit(&mut child, Duration::from_secs(30)).await;
        assert!(status.success(), "{}: {status}", tb.name);
        let d = tb.broker.depth(&q).await.unwrap();
        assert_eq!(
            (d.visible, d.in_flight, d.delayed, d.dead_lettered),
            (0, 0, 0, 0),
            "{}: the job finished and was acked",
            tb.name
        );
    }
}

/// A second signal during the drain exits at once (130) instead of waiting out the grace; the
/// unsettled job is not lost: it comes back after its visibility timeout.
#[tokio::test]
async fn second_signal_exits_at_once() {
    let tb = real_brokers()
        .await
        .into_iter()
        .find(|b| b.name == "postgres")
        .expect("postgres backend");
    let q = unique_queue("twice");
    declare(&tb, &q).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &tb.config, &q, 60);
    let mut child = spawn_worker(&cfg);
    let env = Envelope::new("diag_sleep", &q, json!({"ms": 60_000}));
    tb.broker.send(&env).await.unwrap();
    wait_in_flight(&tb, &q).await;
    signal(&child, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let d = tb.broker.depth(&q).await.unwrap();
    assert_eq!(
        d.visible + d.in_flight + d.delayed,
        1,
        "the job is still on the queue: {d:?}"
    );
}

#[tokio::test]
async fn sigterm_hands_back_what_outlives_the_grace() {
    for tb in real_brokers().await {
        let q = unique_queue("grace");
        declare(&tb, &q).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &tb.config, &q, 1);
        let mut child = spawn_worker(&cfg);
        tb.broker
            .send(&Envelope::new("diag_sleep", &q, json!({"ms": 60_000})))
            .await
            .unwrap();
        wait_in_flight(&tb, &q).await;
        signal(&child, "-TERM");
        let status = wait_exit(&mut child, Duration::from_secs(30)).await;
        assert!(status.success(), "{}: {status}", tb.name);
        let d = tb.broker.depth(&q).await.unwrap();
        assert_eq!(
            (d.visible, d.in_flight),
            (1, 0),
            "{}: handed back at once",
            tb.name
        );
    }
}

#[tokio::test]
async fn sigkilled_workers_job_is_completed_by_another_worker() {
    for tb in real_brokers().await {
        let q = unique_queue("kill");
        declare(&tb, &q).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = write_config(dir.path(), &tb.config, &q, 20);
        let mut child = spawn_worker(&cfg_path);
        let env = Envelope::new("diag_sleep", &q, json!({"ms": 3000}));
        tb.broker.send(&env).await.unwrap();
        wait_in_flight(&tb, &q).await;
        signal(&child, "-KILL");
        let _ = wait_exit(&mut child, Duration::from_secs(10)).await;

        // A second worker (in-process, same kinds) picks it up once the lease runs out.
        let cfg = worker::Config::load(Some(&cfg_path)).unwrap();
        let mut reg = Registry::new();
        worker::diag::register(&mut reg);
        let w = Worker::new(cfg, tb.broker.clone(), reg);
        let view = w.view();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(w.run(shutdown.clone()));
        wait_until(
            Duration::from_secs(30),
            "the other worker completes the job",
            || async { view.snapshot()[0].succeeded == 1 },
        )
        .await;
        let d = tb.broker.depth(&q).await.unwrap();
        assert_eq!(
            (d.visible, d.in_flight, d.dead_lettered),
            (0, 0, 0),
            "{}",
            tb.name
        );
        shutdown.trigger();
        task.await.unwrap().unwrap();
    }
}

/// The signal path and exit codes on the memory backend: an idle worker exits 0 on SIGTERM; a
/// config error exits 2 naming the key.
#[tokio::test]
async fn binary_exits_zero_on_sigterm_and_reports_bad_config_with_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let mem = BrokerConfig::new(queues::BackendKind::Memory, "memory://");
    let cfg = write_config(dir.path(), &mem, "idle", 5);
    let mut child = spawn_worker(&cfg);
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[worker]\nbudgett = 3\n").unwrap();
    let out = common::worker_cmd()
        .arg("--config")
        .arg(&bad)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("budgett"), "{err}");
}

/// Issue 15 item 2: a worker on RabbitMQ, idle, then busy with successes, retries through the
/// delay buckets, delayed sends and dead-letters, then idle again, writes no ERROR line (its
/// depth checks used to probe every possible delay bucket, and each missing one closed a
/// channel with an ERROR from lapin: ~500 lines per 20 s idle).
#[tokio::test]
async fn rabbitmq_worker_logs_no_error_line_idle_or_busy() {
    let tb = real_brokers()
        .await
        .into_iter()
        .find(|b| b.name == "rabbitmq")
        .expect("rabbitmq backend");
    let q = unique_queue("quiet");
    declare(&tb, &q).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &tb.config, &q, 10);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text += &format!(
        "diag_fail = \"{q}\"\n\n[log]\nformat = \"json\"\n\n\
         [retry.diag_fail]\nmax_attempts = 3\nbackoff_base = \"1s\"\nbackoff_cap = \"2s\"\ntimeout = \"9s\"\n"
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = spawn_worker_with(&cfg, Stdio::piped());
    let stderr = child.0.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });

    // Idle: the pools sample depth every 200 ms.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Busy.
    let mut batch: Vec<Envelope> = (0..20)
        .map(|_| Envelope::new("diag_sleep", &q, json!({"ms": 50})))
        .collect();
    batch.extend((0..5).map(|_| Envelope::new("diag_fail", &q, json!({"message": "flaky"}))));
    batch.extend((0..3).map(|_| {
        let mut e = Envelope::new("diag_sleep", &q, json!({"ms": 10}));
        e.run_at = Some(chrono::Utc::now() + chrono::Duration::seconds(2));
        e
    }));
    tb.broker.send_batch(&batch).await.unwrap();
    wait_until(
        Duration::from_secs(60),
        "the failing jobs dead-lettered",
        || async { tb.broker.depth(&q).await.unwrap().dead_lettered == 5 },
    )
    .await;
    // Idle again, now with delay buckets in use.
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    let lines = lines.join().unwrap();

    let events: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let count = |message: &str| events.iter().filter(|e| e["message"] == message).count();
    // The capture works and the run did what it should: every good job ran, failures retried.
    assert_eq!(count("job succeeded"), 23, "{lines:#?}");
    assert_eq!(count("job failed; retrying"), 10, "{lines:#?}");
    let errors: Vec<&String> = lines
        .iter()
        .zip(lines.iter().map(|l| serde_json::from_str::<Value>(l).ok()))
        .filter(|(_, e)| e.as_ref().is_some_and(|e| e["level"] == "ERROR"))
        .map(|(l, _)| l)
        .collect();
    assert!(
        errors.is_empty(),
        "{} ERROR lines: {errors:#?}",
        errors.len()
    );
    let d = tb.broker.depth(&q).await.unwrap();
    assert_eq!((d.visible, d.dead_lettered), (0, 5));
}
