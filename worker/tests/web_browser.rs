//! `worker web` in a real browser: Debian's chromium driven by playwright-core
//! (`web/tests/browser/dashboard.mjs`, installed by `scripts/services.sh`) against a real
//! dashboard process and a real `worker run`, on PostgreSQL and on Redis. The script does what
//! an operator does in the browser; this test changes the world between its steps (enqueues,
//! starts the worker, fixes the bug) and checks the outcome in the backend itself.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FreshDb, Proc};
use queues::conformance::unique_queue;
use queues::{BackendKind, Broker, BrokerConfig, Envelope};
use serde_json::json;

const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../web/tests/browser")
}

/// Fails (never skips) when the browser tooling is missing, saying how to get it.
fn check_tooling() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: scripts/services.sh up installs Debian's chromium"
    );
    assert!(
        browser_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is missing: scripts/services.sh up runs `npm ci` in web/tests/browser"
    );
}

fn write_config(dir: &Path, broker: &BrokerConfig, db: &str, queue: &str, admin: u16) -> PathBuf {
    let mut text = format!(
        "[broker]\nbackend = \"{}\"\nnamespace = \"{}\"\n",
        broker.backend, broker.namespace
    );
    if let Some(u) = &broker.url {
        text += &format!("url = \"{u}\"\n");
    }
    text += &format!(
        r#"
[database]
url = "{db}"

[worker]
admin_addr = "127.0.0.1:{admin}"
sample_interval = "200ms"
receive_wait = "200ms"
shutdown_grace = "5s"
id = "web-test-worker"

[queues.{queue}]
min = 1
max = 2
visibility_timeout = "5s"

[routes]
diag_sleep = "{queue}"
diag_fail = "{queue}"
ensure_partitions = "{queue}"

[cloudwatch]
enabled = false

[[scheduler.schedules]]
name = "web_tick"
cron = "0 3 * * *"
timezone = "Europe/Berlin"
kind = "diag_sleep"
payload = {{ ms = 1 }}
queue = "{queue}"
"#
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn worker(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_worker"));
    c.arg("--config")
        .arg(config)
        .args(args)
        .env("JOBFLEET_DIAGNOSTIC_KINDS", "1")
        .env_remove("JOBFLEET_CONFIG")
        .env_remove("JOBFLEET_BROKER_URL")
        .env_remove("JOBFLEET_BROKER_BACKEND")
        .env_remove("JOBFLEET_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("JOBFLEET_WEB_TOKEN")
        .stdin(Stdio::null());
    c
}

/// Starts `worker web` and waits until it answers.
fn start_web(config: &Path, port: u16, extra: &[&str], token: Option<&str>) -> Proc {
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["web", "--addr", addr.as_str(), "--sample-every", "300ms"];
    args.extend_from_slice(extra);
    let mut cmd = worker(config, &args);
    if let Some(t) = token {
        cmd.env("JOBFLEET_WEB_TOKEN", t);
    }
    let mut child = Proc(cmd.stdout(Stdio::null()).spawn().expect("spawn worker web"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&addr).is_err() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("worker web exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "worker web did not listen on {addr} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// Runs the browser script; `on_step` answers each `STEP name` it prints.
async fn browse<F, Fut>(args: &[&str], mut on_step: F) -> Vec<String>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut child = Proc(
        Command::new("node")
            .arg(browser_dir().join("dashboard.mjs"))
            .args(args)
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node (Debian's nodejs)"),
    );
    let mut stdin = Some(child.0.stdin.take().unwrap());
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut out = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        println!("browser: {line}");
        if let Some(step) = line.strip_prefix("STEP ") {
            on_step(step.to_owned()).await;
            let pipe = stdin.as_mut().expect("no step after DONE");
            writeln!(pipe, "OK").unwrap();
            pipe.flush().unwrap();
        }
        if line == "DONE" {
            // Nothing more to answer: closing stdin lets the script's process end.
            stdin = None;
        }
        out.push(line);
    }
    let status = child.0.wait().unwrap();
    assert!(
        status.success(),
        "the browser script failed ({status}); its last lines: {:?}",
        out.iter().rev().take(5).collect::<Vec<_>>()
    );
    assert_eq!(out.last().map(String::as_str), Some("DONE"));
    out
}

async fn wait_for<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The row of `worker limits --json` for `kind`, if a limit is in force.
fn cli_limit(config: &Path, kind: &str) -> Option<serde_json::Value> {
    let out = worker(config, &["limits", "--json"]).output().unwrap();
    assert!(out.status.success(), "worker limits --json: {out:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.into_iter()
        .find(|r| r["scope"] == "kind" && r["name"] == kind)
}

fn once(kind: &str, queue: &str, payload: serde_json::Value) -> Envelope {
    let mut e = Envelope::new(kind, queue, payload);
    e.max_attempts = 1;
    e
}

async fn dashboard_in_a_browser(backend: BackendKind) {
    check_tooling();
    let db = FreshDb::create(PG_BASE, "jfweb").await;
    let mut broker_cfg = match backend {
        BackendKind::Postgres => BrokerConfig::new(backend, db.url.clone()),
        _ => BrokerConfig::new(backend, "redis://127.0.0.1:6379"),
    };
    broker_cfg.namespace = format!("jfw{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let queue = unique_queue("web");
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port();
    let config = write_config(dir.path(), &broker_cfg, &db.url, &queue, admin);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let schema = format!("webt_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let table = format!("{schema}.events");

    let port = common::free_port();
    let web = start_web(&config, port, &[], None);
    let broker: Arc<dyn Broker> = queues::connect(&broker_cfg).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let shots = std::env::var("JOBFLEET_WEB_SCREENSHOTS")
        .ok()
        .filter(|_| backend == BackendKind::Postgres);
    let running: Arc<Mutex<Option<Proc>>> = Arc::default();
    let mut replayed: Option<String> = None;
    let mut args = vec!["full", base.as_str(), queue.as_str(), table.as_str()];
    if let Some(s) = &shots {
        args.push(s);
    }
    let lines = browse(&args, |step| {
        let (broker, pool, queue, table, schema, config, running) = (
            broker.clone(),
            pool.clone(),
            queue.clone(),
            table.clone(),
            schema.clone(),
            config.clone(),
            running.clone(),
        );
        async move {
            let (queue, table) = (queue.as_str(), table.as_str());
            match step.as_str() {
                "enqueue" => {
                    let jobs = vec![
                        once("diag_sleep", queue, json!({"ms": 1})),
                        once(
                            "ensure_partitions",
                            queue,
                            json!({"table": table, "months_ahead": 1}),
                        ),
                        once(
                            "diag_fail",
                            queue,
                            json!({"message": "<script>alert(1)</script>", "permanent": true}),
                        ),
                        once(
                            "diag_fail",
                            queue,
                            json!({"message": "<script>alert(1)</script>", "permanent": true}),
                        ),
                    ];
                    broker.send_batch(&jobs).await.unwrap();
                }
                "run-worker" => {
                    *running.lock().unwrap() = Some(Proc(
                        worker(&config, &["run"])
                            .stdout(Stdio::null())
                            .spawn()
                            .expect("spawn worker run"),
                    ));
                }
                "fix" => {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "CREATE SCHEMA {schema}; CREATE TABLE {table} (at timestamptz NOT NULL, v int) PARTITION BY RANGE (at);"
                    )))
                    .execute(&pool)
                    .await
                    .unwrap();
                }
                "replayed" => {
                    // The replayed job runs in the running worker and succeeds: the partitions
                    // it was asked for now exist.
                    wait_for(Duration::from_secs(30), "the replayed job created partitions", || async {
                        let n: i64 = sqlx::query_scalar(
                            "SELECT count(*) FROM pg_inherits WHERE inhparent = $1::regclass",
                        )
                        .bind(table)
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                        n > 0
                    })
                    .await;
                }
                "paused" => {
                    // Every worker stops receiving within a sample interval (200 ms here); a
                    // job sent now stays visible.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    broker.send(&once("diag_sleep", queue, json!({"ms": 1}))).await.unwrap();
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    let d = broker.depth(queue).await.unwrap();
                    assert_eq!((d.visible, d.in_flight), (1, 0), "a paused queue is not received from: {d:?}");
                }
                "resumed" => {
                    wait_for(Duration::from_secs(20), "the resumed queue is drained by the worker", || async {
                        let d = broker.depth(queue).await.unwrap();
                        d.visible == 0 && d.in_flight == 0
                    })
                    .await;
                }
                "limited" => {
                    // The command reads what the page wrote: the page and the CLI agree.
                    let row = cli_limit(&config, "diag_sleep").expect("worker limits lists the kind's limit");
                    assert_eq!(row["rate"], "600/min", "{row}");
                    assert_eq!(row["concurrency"], 3, "{row}");
                    assert_eq!(row["override_rate"], "600/min", "{row}");
                    assert!(row["set_by"].as_str().unwrap().ends_with("(web)"), "{row}");
                    let audited: Vec<(String, serde_json::Value)> = sqlx::query_as(
                        "SELECT actor, detail FROM jobfleet.audit_log WHERE action = 'limit_set' AND target = 'kind:diag_sleep'",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    assert_eq!(audited.len(), 1, "one audit row per change: {audited:?}");
                    assert!(audited[0].0.ends_with("(web)"), "{audited:?}");
                    assert_eq!(audited[0].1["now"]["rate"], "600/min", "{audited:?}");
                    assert_eq!(audited[0].1["now"]["concurrency"], 3, "{audited:?}");
                }
                "unlimited" => {
                    assert!(cli_limit(&config, "diag_sleep").is_none(), "the override is gone for the CLI too");
                    let cleared: Vec<(String,)> = sqlx::query_as(
                        "SELECT actor FROM jobfleet.audit_log WHERE action = 'limit_clear' AND target = 'kind:diag_sleep'",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    assert_eq!(cleared.len(), 1, "{cleared:?}");
                    assert!(cleared[0].0.ends_with("(web)"), "{cleared:?}");
                    // The refused bad rate wrote nothing.
                    let n: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM jobfleet.audit_log WHERE target = 'kind:diag_sleep'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    assert_eq!(n, 2, "set and clear only");
                }
                other => panic!("unknown step {other}"),
            }
        }
    })
    .await;
    for l in &lines {
        if let Some(id) = l.strip_prefix("REPLAYED ") {
            replayed = Some(id.to_owned());
        }
    }
    let replayed = replayed.expect("the script names the replayed job");
    assert!(
        broker.dlq_get(&queue, &replayed).await.unwrap().is_none(),
        "the replayed job left the DLQ"
    );
    assert_eq!(broker.depth(&queue).await.unwrap().dead_lettered, 2);
    let audit: Vec<(String, String, Option<serde_json::Value>)> =
        sqlx::query_as("SELECT actor, action, counts FROM jobfleet.audit_log WHERE target = $1")
            .bind(&queue)
            .fetch_all(&pool)
            .await
            .unwrap();
    let replay: Vec<_> = audit.iter().filter(|a| a.1 == "dlq_replay").collect();
    assert_eq!(replay.len(), 1, "{audit:?}");
    assert!(replay[0].0.ends_with("(web)"), "{audit:?}");
    assert_eq!(replay[0].2.as_ref().unwrap()["done"], 1, "{audit:?}");
    for action in ["pause", "resume"] {
        assert!(
            audit
                .iter()
                .any(|a| a.1 == action && a.0.ends_with("(web)")),
            "{action} is in the audit log with who: {audit:?}"
        );
    }
    drop(web);

    // --read-only: no action, and every POST refused even with a valid token.
    let ro_port = common::free_port();
    let ro = start_web(&config, ro_port, &["--read-only"], None);
    let ro_base = format!("http://127.0.0.1:{ro_port}");
    let some_id = broker.dlq_list(&queue, 1, None).await.unwrap().entries[0]
        .id
        .clone();
    browse(&["readonly", &ro_base, &queue, &some_id], |_| async {}).await;
    drop(ro);
    assert_eq!(
        broker.depth(&queue).await.unwrap().dead_lettered,
        2,
        "read-only changed nothing"
    );

    // With a token: a login form, a session cookie that scripts cannot read.
    let tk_port = common::free_port();
    let token = "test-token-0123456789abcdef";
    let tk = start_web(&config, tk_port, &[], Some(token));
    browse(
        &[
            "token",
            &format!("http://127.0.0.1:{tk_port}"),
            &queue,
            token,
        ],
        |_| async {},
    )
    .await;
    drop(tk);

    drop(running.lock().unwrap().take());
    pool.close().await;
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_browser_on_postgres() {
    dashboard_in_a_browser(BackendKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_a_browser_on_redis() {
    dashboard_in_a_browser(BackendKind::Redis).await;
}

/// Off loopback without `JOBFLEET_WEB_TOKEN` the dashboard refuses to start (exit 2, saying
/// what to set) before it connects anything.
#[test]
fn non_loopback_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    // It refuses before connecting anything; the config still names a real backend.
    let cfg = BrokerConfig::new(BackendKind::Postgres, PG_BASE);
    let config = write_config(dir.path(), &cfg, PG_BASE, "webrefuse", common::free_port());
    let out = worker(&config, &["web", "--addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("JOBFLEET_WEB_TOKEN"), "{err}");
    assert!(err.contains("0.0.0.0:0"), "{err}");
}
