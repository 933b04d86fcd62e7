//! `worker run` never starts blind and never dies of an outage: a database (or broker) that
//! does not answer at start makes the binary exit 1 within `[worker] connect_timeout`, naming
//! the service and its URL with the password hidden; a database that goes away while the
//! worker runs turns `/readyz` to 503 naming it, and back to 200 when it returns, while the
//! process keeps running. Real Redis (broker) and PostgreSQL, the binary as deployed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proc, wait_until};
use queues::conformance::unique_queue;
use queues::tcp_proxy::TcpProxy;

const REDIS: &str = "redis://127.0.0.1:6379";
const POSTGRES: &str = "127.0.0.1:5432";

fn write_config(dir: &Path, broker_url: &str, database_url: &str, admin_port: u16) -> PathBuf {
    let q = unique_queue("startup");
    let ns = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let text = format!(
        r#"
[broker]
backend = "redis"
url = "{broker_url}"
namespace = "jft{ns}"

[database]
url = "{database_url}"

[worker]
admin_addr = "127.0.0.1:{admin_port}"
sample_interval = "300ms"
receive_wait = "200ms"
connect_timeout = "2s"
shutdown_grace = "2s"

[queues.{q}]
min = 1
max = 1

[routes]
noop = "{q}"
"#
    );
    let path = dir.join("worker.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn worker(config: &Path, stderr: Stdio) -> Command {
    let mut cmd = common::worker_cmd();
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    cmd
}

/// Runs `worker run` and waits for it to exit (it must, within `limit`): exit code, stderr,
/// and how long it took.
fn run_to_exit(config: &Path, limit: Duration) -> (Option<i32>, String, Duration) {
    use std::io::Read;
    let t0 = Instant::now();
    let mut child = Proc(worker(config, Stdio::piped()).spawn().unwrap());
    let mut pipe = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < limit,
            "worker still running after {limit:?}: it started blind"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), reader.join().unwrap(), t0.elapsed())
}

/// Database on a port nothing listens on (with a password in its URL): exit 1 within the
/// 2 s bound plus start-up margin, naming the database and its URL, password hidden. The same
/// for the broker.
#[test]
fn unreachable_database_or_broker_at_start_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let db_url = format!("postgres://postgres:s3cret-pw@127.0.0.1:{port}/jobs");
    let cfg = write_config(dir.path(), REDIS, &db_url, 0);
    let (code, err, took) = run_to_exit(&cfg, Duration::from_secs(12));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("database"), "names the service: {err}");
    assert!(
        err.contains(&format!("postgres://postgres:***@127.0.0.1:{port}/jobs")),
        "names the URL, password hidden: {err}"
    );
    assert!(!err.contains("s3cret-pw"), "password printed: {err}");
    assert!(
        err.contains("JOBFLEET_DATABASE_URL"),
        "says what to check: {err}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "gave up before the bound: {took:?}"
    );

    let port = common::free_port();
    let broker_url = format!("redis://:b4d-pw@127.0.0.1:{port}");
    let cfg = write_config(
        dir.path(),
        &broker_url,
        &format!("postgres://postgres@{POSTGRES}/postgres"),
        0,
    );
    let (code, err, _) = run_to_exit(&cfg, Duration::from_secs(12));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("broker (redis)"), "names the service: {err}");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && !err.contains("b4d-pw"),
        "names the URL, password hidden: {err}"
    );
}

/// The database goes away under a running worker (a proxy in front of it is cut): `/readyz`
/// turns 503 naming the database within a couple of sample intervals and the process keeps
/// running; the database comes back: `/readyz` is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_while_running_is_reported_by_readyz_not_fatal() {
    let proxy = TcpProxy::start(0, POSTGRES.parse().unwrap()).await.unwrap();
    let db_url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
    let admin = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), REDIS, &db_url, admin);
    let mut child = Proc(worker(&cfg, Stdio::inherit()).spawn().unwrap());

    wait_until(Duration::from_secs(20), "/readyz 200 at start", || async {
        matches!(common::http_get(admin, "/readyz").await, Some((200, _)))
    })
    .await;

    proxy.stop();
    let cut = Instant::now();
    let last = loop {
        let now = common::http_get(admin, "/readyz").await;
        if let Some((503, body)) = &now
            && body.contains("database")
            && body.contains(&db_url)
        {
            break body.clone();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(6),
            "/readyz does not name the database 6s after the cut: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("not ready {:?} after the cut: {last}", cut.elapsed());
    // Still not ready a while later, and still running: an outage is not fatal.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(
        common::http_get(admin, "/readyz").await,
        Some((503, _))
    ));
    assert!(child.0.try_wait().unwrap().is_none(), "the worker exited");

    let _back = proxy.restart().await.unwrap();
    wait_until(Duration::from_secs(10), "/readyz 200 again", || async {
        matches!(common::http_get(admin, "/readyz").await, Some((200, _)))
    })
    .await;

    let ok = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let t0 = Instant::now();
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}
