//! Dashboard benchmark (issue 11): with 100,000 DLQ entries on PostgreSQL and on Redis, how long
//! a real `worker web` process takes to serve the DLQ browser's first page and the
//! group-by-error view, each against its peer measured in the same run (the library call the
//! page makes, without HTTP and HTML); and the CPU the dashboard process uses idle and while 20
//! live-refresh sessions (SSE, plus a chart fetch every 10 s as the page does) are open.
//!
//! `cargo bench -p jobfleet-worker --bench web -- [--entries 100000] [--backend postgres|redis]`
//!
//! Entries are written straight into each backend's DLQ storage as its dead-letter path writes
//! them (a row of `jobfleet.dead_letters`; an XADD to the DLQ stream plus its id index), because
//! dead-lettering 100,000 jobs one delivery at a time would take longer than the measurement;
//! one entry is read back through the broker to check the format. Every failed target is
//! printed as `FAILED:` and makes the bench exit 1.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use queues::{BackendKind, Broker, BrokerConfig, Envelope};
use serde_json::json;

const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432/postgres";

struct Args {
    entries: usize,
    backends: Vec<BackendKind>,
    sessions: usize,
    window: Duration,
}

fn args() -> Args {
    let mut a = Args {
        entries: 100_000,
        backends: vec![BackendKind::Postgres, BackendKind::Redis],
        sessions: 20,
        window: Duration::from_secs(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--entries" => a.entries = it.next().and_then(|v| v.parse().ok()).expect("--entries N"),
            "--sessions" => {
                a.sessions = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--sessions N")
            }
            "--window" => {
                a.window = Duration::from_secs(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--window SECS"),
                )
            }
            "--backend" => {
                a.backends = vec![match it.next().as_deref() {
                    Some("postgres") => BackendKind::Postgres,
                    Some("redis") => BackendKind::Redis,
                    other => panic!("--backend postgres|redis, not {other:?}"),
                }]
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn reason(i: usize) -> String {
    match i % 4 {
        0 => format!("attempts exhausted (3/3): document {i} does not exist"),
        1 => "timed out after 30s".to_owned(),
        2 => format!("permanent: invalid payload: field `n` = {i} out of range"),
        _ => "panicked: called `Option::unwrap()` on a `None` value".to_owned(),
    }
}

fn body(queue: &str, i: usize) -> (String, String) {
    let mut env = Envelope::new(
        format!("kind_{}", i % 5),
        queue,
        json!({"n": i, "pad": "x".repeat(200)}),
    );
    env.max_attempts = 3;
    for _ in 0..3 {
        env.record_failure(reason(i), "bench/1");
    }
    (
        env.id.clone(),
        String::from_utf8(env.to_bytes().to_vec()).unwrap(),
    )
}

async fn seed_postgres(url: &str, ns: &str, queue: &str, n: usize) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    migrations::ensure(&pool).await.unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let (mut ids, mut bodies, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
        for &i in chunk {
            let (id, b) = body(queue, i);
            ids.push(id);
            bodies.push(b);
            reasons.push(reason(i));
        }
        sqlx::query(
            "INSERT INTO jobfleet.dead_letters (ns, queue, entry_id, body, reason, broker_id) \
             SELECT $1, $2, e, b, r, e FROM unnest($3::text[], $4::text[], $5::text[]) AS t(e, b, r)",
        )
        .bind(ns)
        .bind(queue)
        .bind(&ids)
        .bind(&bodies)
        .bind(&reasons)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("ANALYZE jobfleet.dead_letters")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

async fn seed_redis(ns: &str, queue: &str, n: usize) {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let (dlq, index) = (
        format!("{ns}:{queue}:dlq"),
        format!("{ns}:{queue}:dlq:index"),
    );
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let mut p = redis::pipe();
        for &i in chunk {
            let (id, b) = body(queue, i);
            let at = Utc::now().to_rfc3339();
            // The stream id is chosen here (ms-seq) so the index can point at it in the same
            // pipeline, as the dead-letter script does with the id XADD returns.
            let sid = format!("{}-{}", 1_700_000_000_000u64 + i as u64, 0);
            p.cmd("XADD")
                .arg(&dlq)
                .arg(&sid)
                .arg("id")
                .arg(&id)
                .arg("body")
                .arg(&b)
                .arg("reason")
                .arg(reason(i))
                .arg("at")
                .arg(&at)
                .arg("broker_id")
                .arg(&id)
                .ignore();
            p.cmd("HSET").arg(&index).arg(&id).arg(&sid).ignore();
        }
        let _: () = p.query_async(&mut c).await.unwrap();
    }
}

async fn cleanup_redis(ns: &str, queue: &str) {
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{ns}:{queue}:dlq"))
        .arg(format!("{ns}:{queue}:dlq:index"))
        .query_async(&mut c)
        .await
        .unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    stat.lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn time_get(client: &reqwest::Client, url: &str, runs: usize) -> (f64, f64) {
    let mut t = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let resp = client.get(url).send().await.unwrap();
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        let text = resp.text().await.unwrap();
        t.push(ms(start.elapsed()));
        assert!(text.len() > 1000, "{url} served a real page");
    }
    let max = t.iter().cloned().fold(0.0, f64::max);
    (median(t), max)
}

struct Outcome {
    failed: Vec<String>,
}

async fn run_backend(kind: BackendKind, a: &Args, out: &mut Outcome) {
    let name = kind.as_str();
    let ns = format!("jfwb{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let queue = "webbench".to_owned();
    let db_name = format!(
        "jfwebbench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let admin = sqlx::PgPool::connect(PG_BASE).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .execute(&admin)
        .await
        .unwrap();
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{db_name}");
    let mut broker_cfg = match kind {
        BackendKind::Postgres => BrokerConfig::new(kind, db_url.clone()),
        _ => BrokerConfig::new(kind, "redis://127.0.0.1:6379"),
    };
    broker_cfg.namespace = ns.clone();
    let t0 = Instant::now();
    match kind {
        BackendKind::Postgres => seed_postgres(&db_url, &ns, &queue, a.entries).await,
        _ => seed_redis(&ns, &queue, a.entries).await,
    }
    eprintln!(
        "{name}: seeded {} DLQ entries in {:.1} s",
        a.entries,
        t0.elapsed().as_secs_f64()
    );
    let broker: Arc<dyn Broker> = queues::connect(&broker_cfg).await.unwrap();
    let depth = broker.depth(&queue).await.unwrap().dead_lettered;
    assert_eq!(depth, a.entries as u64, "{name}: DLQ depth after seeding");
    let first = broker.dlq_list(&queue, 1, None).await.unwrap().entries;
    assert!(
        first[0].envelope.is_some(),
        "{name}: seeded entries read back as envelopes"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("web.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nbackend = \"{name}\"\nnamespace = \"{ns}\"\nurl = \"{}\"\n[database]\nurl = \"{db_url}\"\n\
             [worker]\nadmin_addr = \"127.0.0.1:{}\"\n[queues.{queue}]\nmin = 1\nmax = 4\n[routes]\n[cloudwatch]\nenabled = false\n",
            broker_cfg.url.clone().unwrap(),
            free_port()
        ),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut web = Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(&cfg)
        .args(["web", "--addr", &addr])
        .env_remove("JOBFLEET_CONFIG")
        .env_remove("JOBFLEET_WEB_TOKEN")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    while std::net::TcpStream::connect(&addr).is_err() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{addr}");
    let filter = queues::dlq::DlqFilter::default();

    // First DLQ page, and its peer: the same library call without HTTP and HTML.
    let (page_p50, page_max) = time_get(&client, &format!("{base}/queues/{queue}/dlq"), 20).await;
    let mut peer = Vec::new();
    for _ in 0..20 {
        let s = Instant::now();
        let p = queues::dlq::list_matching(&*broker, &queue, &filter, 50, None)
            .await
            .unwrap();
        assert_eq!(p.entries.len(), 50);
        peer.push(ms(s.elapsed()));
    }
    let peer_p50 = median(peer);
    let filtered = format!("{base}/queues/{queue}/dlq?error=does+not+exist&kind=kind_3");
    let (filt_p50, _) = time_get(&client, &filtered, 10).await;
    // Group by error over all entries, and its peer: walking the same pages without grouping.
    let (groups_p50, groups_max) =
        time_get(&client, &format!("{base}/queues/{queue}/dlq/groups"), 5).await;
    let mut walk = Vec::new();
    for _ in 0..3 {
        let s = Instant::now();
        let mut cursor: Option<String> = None;
        let mut n = 0;
        loop {
            let p = broker
                .dlq_list(&queue, 500, cursor.as_deref())
                .await
                .unwrap();
            n += p.entries.len();
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(n, a.entries);
        walk.push(ms(s.elapsed()));
    }
    let walk_p50 = median(walk);
    println!(
        "{name}: first DLQ page p50 {page_p50:.1} ms (max {page_max:.1}; library call {peer_p50:.1} ms, ratio {:.2}x); \
         filtered page (kind_3 + error regex) p50 {filt_p50:.1} ms; group-by-error p50 {groups_p50:.0} ms (max {groups_max:.0}; \
         plain walk of the DLQ {walk_p50:.0} ms, ratio {:.2}x)",
        page_p50 / peer_p50,
        groups_p50 / walk_p50
    );
    if page_p50 >= 300.0 {
        out.failed
            .push(format!("{name}: first DLQ page {page_p50:.1} ms >= 300 ms"));
    }
    if groups_p50 >= 2000.0 {
        out.failed.push(format!(
            "{name}: group-by-error {groups_p50:.0} ms >= 2000 ms"
        ));
    }

    // CPU: idle, then with live sessions open.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let measure = |secs: Duration| {
        let pid = web.id();
        async move {
            let (p0, m0) = (cpu_ticks(pid), machine_ticks());
            tokio::time::sleep(secs).await;
            let (p1, m1) = (cpu_ticks(pid), machine_ticks());
            // Share of all cores' time in the window.
            (p1 - p0) as f64 / ((m1 - m0) as f64).max(1.0) * 100.0
        }
    };
    let idle = measure(a.window).await;
    // Snapshots the sessions received, so the window is known to have had live traffic.
    let events = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sessions = Vec::new();
    for _ in 0..a.sessions {
        let (client, base, queue, events) =
            (client.clone(), base.clone(), queue.clone(), events.clone());
        sessions.push(tokio::spawn(async move {
            let mut resp = client.get(format!("{base}/live")).send().await.unwrap();
            let mut last_chart = Instant::now() - Duration::from_secs(10);
            loop {
                match tokio::time::timeout(Duration::from_secs(1), resp.chunk()).await {
                    Ok(Ok(Some(c))) => {
                        let n = String::from_utf8_lossy(&c)
                            .matches("event: snapshot")
                            .count();
                        events.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
                if last_chart.elapsed() >= Duration::from_secs(10) {
                    last_chart = Instant::now();
                    if let Ok(r) = client
                        .get(format!("{base}/chart/{queue}/depth"))
                        .send()
                        .await
                    {
                        let _ = r.bytes().await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = events.load(std::sync::atomic::Ordering::Relaxed);
    let busy = measure(a.window).await;
    let received = events.load(std::sync::atomic::Ordering::Relaxed) - before;
    let added = busy - idle;
    for s in &sessions {
        s.abort();
    }
    println!(
        "{name}: dashboard process CPU, share of the whole {cores}-core machine over {} s: idle {idle:.2}%, with {} live sessions {busy:.2}% (adds {added:.2}%, i.e. {:.2}% of one core); {received} snapshots pushed to the sessions in the window",
        a.window.as_secs(),
        a.sessions,
        added * cores
    );
    if received < a.sessions {
        out.failed.push(format!("{name}: the live sessions received {received} snapshots: the CPU window had no live traffic"));
    }
    if added >= 5.0 {
        out.failed.push(format!(
            "{name}: {} live sessions add {added:.2}% CPU >= 5%",
            a.sessions
        ));
    }
    let _ = web.kill();
    let _ = web.wait();
    if kind == BackendKind::Redis {
        cleanup_redis(&ns, &queue).await;
    }
    drop(broker);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {db_name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut out = Outcome { failed: Vec::new() };
    for &b in &a.backends.clone() {
        run_backend(b, &a, &mut out).await;
    }
    if out.failed.is_empty() {
        println!("all targets met");
    } else {
        for f in &out.failed {
            println!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}
