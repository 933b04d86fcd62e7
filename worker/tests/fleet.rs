//! Steering the fleet (issue 10), with real `worker` processes on the real services: pause and
//! resume across three workers while 1,000 jobs are queued; cancel of a waiting job on every
//! backend and of a running one on another process, both dead-lettered with the reason and
//! replayable; the control state's database cut while jobs flow on Redis; "where is job X?"
//! (`worker job`, the dashboard's job page) naming the worker a job runs on; bad input refused
//! with exit code 2 and nothing written. Every test has a database of its own for the control
//! state (and for the PostgreSQL broker), so runs never see each other's fleet.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{FreshDb, Proc, TestBroker, real_configs, wait_until};
use queues::conformance::unique_queue;
use queues::tcp_proxy::TcpProxy;
use queues::{BackendKind, BrokerConfig, Envelope, QueueSpec};
use serde_json::{Value, json};
use sqlx::PgPool;

const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The sample interval of every worker here: the bound a pause or cancel is held to.
const INTERVAL_MS: u64 = 300;
/// What a loaded 2-core CI box adds on top of one interval before a worker acts on a change
/// (scheduling, the refresh's queries): reported by each test, asserted with this margin.
const SLACK_MS: u64 = 400;

/// The broker of `backend`, on `db` when it is PostgreSQL (not the shared test database).
async fn broker(backend: BackendKind, db: &FreshDb) -> TestBroker {
    let mut config = real_configs()
        .into_iter()
        .find(|c| c.backend == backend)
        .unwrap();
    if backend == BackendKind::Postgres {
        config.url = Some(db.url.clone());
    }
    let broker = queues::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("backend {backend} is not usable: {e}"));
    TestBroker {
        name: config.backend.as_str(),
        broker,
        config,
        raw: None,
    }
}

struct Setup {
    db: FreshDb,
    pool: PgPool,
    tb: TestBroker,
    queue: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(backend: BackendKind, tag: &str) -> Setup {
        let db = FreshDb::create(PG_BASE, &format!("fleet_{tag}")).await;
        let pool = PgPool::connect(&db.url).await.unwrap();
        migrations::ensure(&pool).await.unwrap();
        let tb = broker(backend, &db).await;
        let queue = unique_queue(tag);
        tb.broker
            .declare(&QueueSpec::new(&queue).with_visibility(Duration::from_secs(5)))
            .await
            .unwrap();
        Setup {
            db,
            pool,
            tb,
            queue,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A worker config on this broker, this database (or `database_url`), one queue.
    fn config(
        &self,
        name: &str,
        database_url: Option<&str>,
        admin_port: u16,
        max: usize,
    ) -> PathBuf {
        let b: &BrokerConfig = &self.tb.config;
        let mut text = format!(
            "[broker]\nbackend = \"{}\"\nnamespace = \"{}\"\n",
            b.backend, b.namespace
        );
        if let Some(u) = &b.url {
            text += &format!("url = \"{u}\"\n");
        }
        if let Some(r) = &b.region {
            text += &format!("region = \"{r}\"\n");
        }
        let q = &self.queue;
        text += &format!(
            r#"
[database]
url = "{db}"

[worker]
admin_addr = "127.0.0.1:{admin_port}"
sample_interval = "{INTERVAL_MS}ms"
receive_wait = "200ms"
shutdown_grace = "5s"
connect_timeout = "2s"

[queues.{q}]
min = {max}
max = {max}
visibility_timeout = "5s"

[routes]
diag_sleep = "{q}"
diag_record = "{q}"
"#,
            db = database_url.unwrap_or(&self.db.url),
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn finish(self) {
        self.pool.close().await;
        drop(self.tb);
        self.db.drop_it().await;
    }
}

fn spawn_worker(config: &Path, stderr: Stdio) -> Proc {
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

/// Runs an operator command as user `tester`.
fn cli(config: &Path, args: &[&str]) -> Output {
    common::worker_cmd()
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", "tester")
        .output()
        .expect("run the worker binary")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).expect("--json prints JSON")
}

async fn sigterm_and_wait(child: &mut Proc) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            assert_eq!(s.code(), Some(0), "a clean exit");
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn recorded(pool: &PgPool, run: &str) -> (i64, i64) {
    sqlx::query_as::<_, (i64, i64)>(
        "SELECT count(*), count(DISTINCT key) FROM jobfleet_diag.runs WHERE run = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap_or((0, 0))
}

/// Every run of a job that ran more than once (when, which process, which attempt), to tell a
/// broker redelivery from a second copy when the assertion fails.
async fn repeated_runs(pool: &PgPool, run: &str) -> String {
    let rows: Vec<(String, i32, i32, String)> = sqlx::query_as(
        "SELECT key, attempt, pid, to_char(at, 'HH24:MI:SS.MS') FROM jobfleet_diag.runs \
         WHERE run = $1 AND key IN \
           (SELECT key FROM jobfleet_diag.runs WHERE run = $1 GROUP BY key HAVING count(*) > 1) \
         ORDER BY key, at",
    )
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    format!("{rows:?}")
}

/// Pause with three worker processes while 1,000 jobs are queued: after one interval no job
/// starts on any of them; `worker queues` and `worker workers` show it; resume: every job runs,
/// exactly once. Then a clean exit takes the workers out of the registry.
async fn pause_and_resume_on(backend: BackendKind) {
    let s = Setup::new(backend, "pause").await;
    let run = format!("pause-{}", uuid::Uuid::new_v4());
    let jobs: Vec<Envelope> = (0..1000)
        .map(|_| Envelope::new("diag_record", &s.queue, json!({"run": run, "ms": 40})))
        .collect();
    for chunk in jobs.chunks(100) {
        s.tb.broker.send_batch(chunk).await.unwrap();
    }
    let configs: Vec<PathBuf> = (0..3)
        .map(|i| s.config(&format!("w{i}"), None, 0, 4))
        .collect();
    let mut workers: Vec<Proc> = configs
        .iter()
        .map(|c| spawn_worker(c, Stdio::inherit()))
        .collect();
    wait_until(
        Duration::from_secs(60),
        "the workers are running jobs",
        || async { recorded(&s.pool, &run).await.0 >= 60 },
    )
    .await;

    ok(&cli(
        &configs[0],
        &["pause", &s.queue, "--reason", "provider incident"],
    ));
    let paused_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT paused_at FROM jobfleet.paused_queues WHERE queue = $1")
            .bind(&s.queue)
            .fetch_one(&s.pool)
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 3 + 1500)).await;
    // When each job started (it records 40 ms after), relative to the pause, by the one clock.
    let (last_start_ms, at_pause): (Option<f64>, i64) = sqlx::query_as(
        "SELECT max(extract(epoch FROM (at - interval '40 ms') - $2) * 1000)::float8, \
                count(*) FILTER (WHERE at - interval '40 ms' <= $2) \
         FROM jobfleet_diag.runs WHERE run = $1",
    )
    .bind(&run)
    .bind(paused_at)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    let last_start_ms = last_start_ms.unwrap();
    eprintln!(
        "{backend}: {at_pause} jobs started before the pause, the last start {last_start_ms:.0} ms after it"
    );
    assert!(
        last_start_ms <= (INTERVAL_MS + SLACK_MS) as f64,
        "{backend}: a job started {last_start_ms:.0} ms after the pause (interval {INTERVAL_MS} ms)"
    );
    let (held, _) = recorded(&s.pool, &run).await;
    assert!(held < 1000, "{backend}: the pause held nothing back");
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 2)).await;
    assert_eq!(
        recorded(&s.pool, &run).await.0,
        held,
        "{backend}: still paused"
    );

    let queues = json_of(&cli(&configs[1], &["queues", "--json"]));
    let row = &queues.as_array().unwrap()[0];
    assert_eq!(row["paused"], json!(true), "{queues}");
    assert!(
        row["paused_by"].as_str().unwrap().starts_with("tester@"),
        "{queues}"
    );
    assert_eq!(row["paused_reason"], "provider incident");
    let fleet = json_of(&cli(&configs[1], &["workers", "--json"]));
    let rows = fleet.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{fleet}");
    for r in rows {
        assert_eq!(r["state"], "running", "{fleet}");
        assert_eq!(r["backend"], backend.as_str());
        assert_eq!(r["pools"][0]["queue"], json!(s.queue), "{fleet}");
        assert_eq!(
            r["pools"][0]["running"], 0,
            "paused: nothing running: {fleet}"
        );
    }
    let succeeded: u64 = rows
        .iter()
        .map(|r| r["pools"][0]["succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!(
        succeeded as i64, held,
        "{backend}: the registry counts what ran"
    );

    ok(&cli(&configs[2], &["resume", &s.queue]));
    wait_until(
        Duration::from_secs(120),
        "every job ran after the resume",
        || async { recorded(&s.pool, &run).await.1 == 1000 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        recorded(&s.pool, &run).await,
        (1000, 1000),
        "{backend}: every job once, none twice; the repeated runs: {}",
        repeated_runs(&s.pool, &run).await
    );
    let d = s.tb.broker.depth(&s.queue).await.unwrap();
    assert_eq!((d.visible, d.dead_lettered), (0, 0), "{backend}: {d:?}");

    for w in &mut workers {
        sigterm_and_wait(w).await;
    }
    let fleet = json_of(&cli(&configs[0], &["workers", "--json"]));
    assert_eq!(fleet, json!([]), "a clean exit leaves the registry");
    let audit = json_of(&cli(&configs[0], &["audit", "--json"]));
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["resume", "pause"], "{audit}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_three_workers_and_resume_runs_every_job_once_on_postgres() {
    pause_and_resume_on(BackendKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_three_workers_and_resume_runs_every_job_once_on_redis() {
    pause_and_resume_on(BackendKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_three_workers_and_resume_runs_every_job_once_on_rabbitmq() {
    pause_and_resume_on(BackendKind::Rabbitmq).await;
}

async fn dlq_reasons(tb: &TestBroker, q: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = tb
        .broker
        .dlq_list(q, 100, None)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| (e.id, e.reason))
        .collect();
    v.sort();
    v
}

/// A waiting job cancelled before any worker runs: the worker that receives it dead-letters it
/// unrun. A running long job cancelled: its handler stops within one interval. Both are in the
/// DLQ with `cancelled by <who>: <reason>`; replaying the first runs it.
async fn cancel_on(backend: BackendKind) {
    let s = Setup::new(backend, "cancel").await;
    let run = format!("cancel-{}", uuid::Uuid::new_v4());
    let cfg = s.config("w", None, 0, 2);
    let waiting = Envelope::new("diag_record", &s.queue, json!({"run": run}));
    s.tb.broker.send(&waiting).await.unwrap();
    let out = ok(&cli(
        &cfg,
        &["cancel", &s.queue, &waiting.id, "--reason", "wrong tenant"],
    ));
    assert!(out.contains("cancel requested"), "{out}");

    let mut child = spawn_worker(&cfg, Stdio::inherit());
    wait_until(
        Duration::from_secs(30),
        "the waiting job dead-lettered",
        || async { s.tb.broker.depth(&s.queue).await.unwrap().dead_lettered == 1 },
    )
    .await;
    assert_eq!(
        recorded(&s.pool, &run).await.0,
        0,
        "{backend}: it never ran"
    );

    let long = Envelope::new("diag_sleep", &s.queue, json!({"ms": 60_000}));
    s.tb.broker.send(&long).await.unwrap();
    wait_until(
        Duration::from_secs(30),
        "the long job is running",
        || async {
            let d = s.tb.broker.depth(&s.queue).await.unwrap();
            d.visible == 0 && d.delayed == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ok(&cli(&cfg, &["cancel", &s.queue, &long.id]));
    let asked = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the running job dead-lettered",
        || async { s.tb.broker.depth(&s.queue).await.unwrap().dead_lettered == 2 },
    )
    .await;
    let took = asked.elapsed();
    eprintln!("{backend}: the running job stopped {took:?} after the cancel");
    assert!(
        took < Duration::from_millis(INTERVAL_MS + SLACK_MS + 500),
        "{backend}: stopped {took:?} after the cancel (interval {INTERVAL_MS} ms)"
    );

    let host = runtime::host::hostname();
    let mut expected = vec![
        (
            waiting.id.clone(),
            format!("cancelled by tester@{host}: wrong tenant"),
        ),
        (
            long.id.clone(),
            format!("cancelled by tester@{host}: no reason given"),
        ),
    ];
    expected.sort();
    assert_eq!(dlq_reasons(&s.tb, &s.queue).await, expected, "{backend}");

    // The request is met (written as such by the worker) before the replay.
    wait_until(
        Duration::from_secs(10),
        "the cancels are marked met",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobfleet.cancel_requests WHERE consumed_at IS NOT NULL",
            )
            .fetch_one(&s.pool)
            .await
            .unwrap()
                == 2
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 2)).await;
    let out = ok(&cli(
        &cfg,
        &["dlq", "replay", &s.queue, "--kind", "diag_record"],
    ));
    assert!(out.contains("replayed 1"), "{out}");
    wait_until(Duration::from_secs(30), "the replayed job ran", || async {
        recorded(&s.pool, &run).await.0 == 1
    })
    .await;
    assert_eq!(
        dlq_reasons(&s.tb, &s.queue).await.len(),
        1,
        "{backend}: the long job stays in the DLQ"
    );
    sigterm_and_wait(&mut child).await;

    let audit = json_of(&cli(&cfg, &["audit", "--json"]));
    let rows = audit.as_array().unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["dlq_replay", "cancel", "cancel"], "{audit}");
    assert_eq!(rows[0]["counts"]["done"], 1, "{audit}");
    assert_eq!(rows[0]["counts"]["cancels_cleared"], 1, "{audit}");
    assert_eq!(
        rows[2]["target"],
        json!(format!("{}/{}", s.queue, waiting.id))
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_postgres() {
    cancel_on(BackendKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_redis() {
    cancel_on(BackendKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_rabbitmq() {
    cancel_on(BackendKind::Rabbitmq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_on_sqs() {
    cancel_on(BackendKind::Sqs).await;
}

async fn send_sleeps(tb: &TestBroker, q: &str, n: usize) {
    let batch: Vec<Envelope> = (0..n)
        .map(|_| Envelope::new("diag_sleep", q, json!({"ms": 5})))
        .collect();
    tb.broker.send_batch(&batch).await.unwrap();
}

async fn drained(tb: &TestBroker, q: &str, what: &str) {
    wait_until(Duration::from_secs(30), what, || async {
        let d = tb.broker.depth(q).await.unwrap();
        d.visible + d.in_flight + d.delayed == 0
    })
    .await;
}

/// The control state's database cut (a proxy in front of it) while jobs flow on Redis: jobs
/// keep flowing, the worker says so in its log, `/readyz` and `jobfleet_control_state_up`; a
/// pause made meanwhile takes effect once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_state_down_keeps_jobs_flowing_and_is_reported_then_picked_up_again() {
    let s = Setup::new(BackendKind::Redis, "ctldown").await;
    let proxy = TcpProxy::start(0, "127.0.0.1:5432".parse().unwrap())
        .await
        .unwrap();
    let name = s.db.url.rsplit_once('/').unwrap().1.to_owned();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port());
    let admin = common::free_port();
    let cfg = s.config("w", Some(&via_proxy), admin, 4);
    let mut child = spawn_worker(&cfg, Stdio::piped());
    let stderr = child.0.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut text);
        text
    });
    wait_until(Duration::from_secs(20), "/readyz 200 at start", || async {
        matches!(common::http_get(admin, "/readyz").await, Some((200, _)))
    })
    .await;
    send_sleeps(&s.tb, &s.queue, 50).await;
    drained(&s.tb, &s.queue, "jobs run before the cut").await;

    proxy.stop();
    wait_until(
        Duration::from_secs(10),
        "/readyz names the control state",
        || async {
            matches!(common::http_get(admin, "/readyz").await,
            Some((503, body)) if body.contains("fleet control state does not answer"))
        },
    )
    .await;
    let (_, metrics) = common::http_get(admin, "/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("jobfleet_control_state_up") && l.ends_with(" 0")),
        "{metrics}"
    );
    // A pause written while this worker cannot see it: jobs keep flowing on the last state.
    let store = fleet::Store::new(s.pool.clone());
    store
        .pause(
            &fleet::Actor::named("ops@test"),
            &s.queue,
            "during the outage",
        )
        .await
        .unwrap();
    send_sleeps(&s.tb, &s.queue, 100).await;
    drained(
        &s.tb,
        &s.queue,
        "jobs keep flowing while the control state is away",
    )
    .await;

    let _back = proxy.restart().await.unwrap();
    wait_until(Duration::from_secs(15), "/readyz 200 again", || async {
        matches!(common::http_get(admin, "/readyz").await, Some((200, _)))
    })
    .await;
    let (_, metrics) = common::http_get(admin, "/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("jobfleet_control_state_up") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("jobfleet_queue_paused{")
                && l.contains(&s.queue)
                && l.ends_with(" 1")),
        "{metrics}"
    );
    // The pause is in force now: nothing is received.
    send_sleeps(&s.tb, &s.queue, 20).await;
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS * 4)).await;
    let d = s.tb.broker.depth(&s.queue).await.unwrap();
    assert_eq!(d.visible, 20, "paused after the return: {d:?}");
    store
        .resume(&fleet::Actor::named("ops@test"), &s.queue)
        .await
        .unwrap();
    drained(&s.tb, &s.queue, "resumed").await;

    sigterm_and_wait(&mut child).await;
    let log = log.join().unwrap();
    assert!(log.contains("fleet control state does not answer"), "{log}");
    assert!(log.contains("fleet control state answers again"), "{log}");
    drop(proxy);
    s.finish().await;
}

/// A queue not in the config, a malformed job id: exit 2 with the value named, and nothing
/// written (no pause, no cancel request, no audit row).
/// `worker job ID --json`, polled until `done` says yes of it (at most `limit`); returns the
/// answer and when the call that gave it had started.
async fn job_until(
    cfg: &Path,
    id: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Value, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        let asked = Instant::now();
        let v = json_of(&cli(cfg, &["job", id, "--json"]));
        if done(&v) {
            return (v, asked);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_running(v: &Value) -> bool {
    !v["running"].as_array().unwrap().is_empty()
}

/// Where is job X: a long job running on a real `worker run` is found by id on that worker
/// (worker id, host, pid, queue, kind, since when) within two sample intervals of its start,
/// by `worker job` and on the dashboard's job page; once it has finished it is no longer said
/// to run. A cancelled one is then found in the DLQ with the reason and its carried-out
/// cancel request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_job_says_which_worker_runs_a_job_and_where_it_went() {
    let s = Setup::new(BackendKind::Redis, "where").await;
    let cfg = s.config("w", None, 0, 2);
    let mut child = spawn_worker(&cfg, Stdio::inherit());
    let pid = child.0.id();
    let web_port = common::free_port();
    let web_addr = format!("127.0.0.1:{web_port}");
    let web = Proc(
        common::worker_cmd()
            .arg("--config")
            .arg(&cfg)
            .args(["web", "--addr", &web_addr, "--sample-every", "300ms"])
            .env_remove("JOBFLEET_WEB_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn worker web"),
    );

    let sleep_ms: u64 = 3000;
    let long = Envelope::new("diag_sleep", &s.queue, json!({"ms": sleep_ms}));
    let table = ok(&cli(&cfg, &["job", &long.id]));
    assert!(
        table.contains("not running on any registered worker"),
        "{table}"
    );
    s.tb.broker.send(&long).await.unwrap();

    let (v, _) = job_until(
        &cfg,
        &long.id,
        Duration::from_secs(30),
        "listed as running",
        is_running,
    )
    .await;
    let seen = chrono::Utc::now();
    let running = &v["running"].as_array().unwrap()[0];
    assert_eq!(running["worker"]["pid"], json!(pid), "{v}");
    assert_eq!(
        running["worker"]["host"],
        json!(runtime::host::hostname()),
        "{v}"
    );
    assert_eq!(running["worker"]["state"], json!("running"), "{v}");
    assert_eq!(running["job"]["queue"], json!(s.queue), "{v}");
    assert_eq!(running["job"]["kind"], json!("diag_sleep"), "{v}");
    let worker_id = running["worker"]["worker_id"].as_str().unwrap().to_owned();
    let started: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(running["job"]["started_at"].clone()).unwrap();
    // Freshness: the report after the start (one interval) plus the CLI's own start-up.
    let lag = (seen - started).to_std().unwrap_or_default();
    eprintln!("listed as running {lag:?} after its handler started");
    assert!(
        lag < Duration::from_millis(2 * INTERVAL_MS + SLACK_MS + 1500),
        "listed {lag:?} after the start (interval {INTERVAL_MS} ms)"
    );
    let table = ok(&cli(&cfg, &["job", &long.id]));
    eprintln!("{table}");
    assert!(table.contains("RUNNING"), "{table}");
    assert!(table.contains(&format!("on {worker_id} (")), "{table}");
    assert!(table.contains(&format!("pid {pid}")), "{table}");

    // The dashboard's job page says the same.
    wait_until(Duration::from_secs(30), "the dashboard listens", || async {
        std::net::TcpStream::connect(&web_addr).is_ok()
    })
    .await;
    let (code, page) = common::http_get(web_port, &format!("/job?id={}", long.id))
        .await
        .expect("the job page answers");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains(&format!("Running on <strong>{worker_id}</strong> (")),
        "{page}"
    );
    assert!(page.contains(&format!("pid {pid}) since ")), "{page}");
    assert!(
        page.contains(&format!("queue {}, kind diag_sleep", s.queue)),
        "{page}"
    );

    // Finished: no longer said to run, within two intervals of its end.
    let (v, asked) = job_until(
        &cfg,
        &long.id,
        Duration::from_secs(30),
        "no longer running",
        |v| !is_running(v),
    )
    .await;
    let ended = started + chrono::Duration::milliseconds(sleep_ms as i64);
    let after_end = (chrono::Utc::now() - ended).to_std().unwrap_or_default();
    eprintln!(
        "no longer listed {after_end:?} after its end ({:?} for the last call)",
        asked.elapsed()
    );
    assert!(
        after_end < Duration::from_millis(2 * INTERVAL_MS + SLACK_MS + 1500),
        "still listed {after_end:?} after it ended"
    );
    assert!(v["dead_lettered"].as_array().unwrap().is_empty(), "{v}");

    // Cancelled while running: in the DLQ of the queue with the reason, the cancel carried out.
    let doomed = Envelope::new("diag_sleep", &s.queue, json!({"ms": 60_000}));
    s.tb.broker.send(&doomed).await.unwrap();
    job_until(
        &cfg,
        &doomed.id,
        Duration::from_secs(30),
        "the doomed job runs",
        is_running,
    )
    .await;
    ok(&cli(
        &cfg,
        &["cancel", &s.queue, &doomed.id, "--reason", "wrong tenant"],
    ));
    let (v, _) = job_until(
        &cfg,
        &doomed.id,
        Duration::from_secs(30),
        "dead-lettered, met, not running",
        |v| {
            !v["dead_lettered"].as_array().unwrap().is_empty()
                && !v["cancels"][0]["consumed_by"].is_null()
                && !is_running(v)
        },
    )
    .await;
    let entry = &v["dead_lettered"][0];
    assert_eq!(entry["queue"], json!(s.queue), "{v}");
    let reason = entry["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("cancelled by tester@") && reason.ends_with(": wrong tenant"),
        "{v}"
    );
    assert_eq!(v["cancels"][0]["consumed_by"], json!(worker_id), "{v}");
    assert_eq!(v["unreadable"], json!([]), "{v}");
    let table = ok(&cli(&cfg, &["job", &doomed.id]));
    assert!(
        table.contains(&format!("in the DLQ of {} since", s.queue)),
        "{table}"
    );
    assert!(table.contains("carried out by"), "{table}");
    eprintln!("{table}");

    sigterm_and_wait(&mut child).await;
    drop(web);
    s.finish().await;
}

#[tokio::test]
async fn bad_input_exits_2_naming_the_value_and_writes_nothing() {
    let s = Setup::new(BackendKind::Redis, "badin").await;
    let cfg = s.config("w", None, 0, 1);
    for (args, named) in [
        (vec!["pause", "nope"], "`nope`"),
        (vec!["resume", "nope"], "`nope`"),
        (vec!["cancel", "nope", "some-id"], "`nope`"),
        (vec!["cancel", &s.queue, " padded"], "\" padded\""),
        (vec!["cancel", &s.queue, ""], "is empty"),
        (vec!["job", " padded"], "\" padded\""),
        (vec!["audit", "--since", "last tuesday"], "last tuesday"),
        (vec!["dlq", "replay", "nope"], "`nope`"),
    ] {
        let out = cli(&cfg, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?} names {named}: {err}");
    }
    let written: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobfleet.audit_log), \
                (SELECT count(*) FROM jobfleet.paused_queues), \
                (SELECT count(*) FROM jobfleet.cancel_requests)",
    )
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert_eq!(written, (0, 0, 0));
    s.finish().await;
}
