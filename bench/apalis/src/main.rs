//! apalis peer of bench/run.sh: N no-op jobs pushed through apalis's own producer
//! (`push_bulk`, 1,000 a call) onto a fresh queue of apalis-redis 1.0 or apalis-postgres 1.0,
//! then drained by one apalis worker, timed the same way as every other system (first job
//! start .. last job end; latency = the producer's enqueue time `t` .. job start). Prints one
//! JSON line.
//!
//! Throughput settings from apalis's docs: `.concurrency(C)` with `.parallelize(tokio::spawn)`
//! (the README's way to run C jobs at once), and the backend's `batch_size` raised to C ("larger
//! batches can improve throughput by reducing the number of queue operations"); PostgreSQL
//! without result persistence. apalis keeps finished jobs (Redis: in its done set, PostgreSQL:
//! rows marked done); the run's queue is removed afterwards.
//!
//! `apalis-bench --backend redis|postgres --jobs N --concurrency C --url URL`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noop {
    /// Enqueue time, Unix milliseconds.
    t: u64,
}

struct Args {
    backend: String,
    jobs: usize,
    concurrency: usize,
    url: String,
}

fn args() -> Args {
    let mut a = Args {
        backend: "redis".into(),
        jobs: 200_000,
        concurrency: 50,
        url: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--backend" => a.backend = val(),
            "--jobs" => a.jobs = val().parse().unwrap_or_else(|_| fail("--jobs N")),
            "--concurrency" => {
                a.concurrency = val().parse().unwrap_or_else(|_| fail("--concurrency N"))
            }
            "--url" => a.url = val(),
            other => fail(&format!("unknown flag {other}")),
        }
    }
    if a.url.is_empty() {
        a.url = match a.backend.as_str() {
            "postgres" => "postgres://postgres@127.0.0.1:5432/postgres".into(),
            _ => "redis://127.0.0.1:6379".into(),
        };
    }
    a
}

fn fail(msg: &str) -> ! {
    eprintln!("apalis-bench: {msg}");
    std::process::exit(2)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Start and end of the drain and every job's wait, shared by the handlers.
struct Probe {
    jobs: usize,
    started: AtomicUsize,
    done: AtomicUsize,
    lat_ms: Mutex<Vec<u64>>,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

async fn noop(job: Noop, probe: Data<Arc<Probe>>, wrk: WorkerContext) -> Result<(), BoxDynError> {
    let waited = now_ms().saturating_sub(job.t);
    if probe.started.fetch_add(1, Ordering::SeqCst) == 0 {
        *probe.first.lock().unwrap() = Some(Instant::now());
    }
    probe.lat_ms.lock().unwrap().push(waited);
    if probe.done.fetch_add(1, Ordering::SeqCst) + 1 == probe.jobs {
        *probe.last.lock().unwrap() = Some(Instant::now());
        let _ = wrk.stop();
    }
    Ok(())
}

fn batches(jobs: usize) -> impl Iterator<Item = Vec<Noop>> {
    (0..jobs).step_by(1000).map(move |i| {
        let t = now_ms();
        vec![Noop { t }; (jobs - i).min(1000)]
    })
}

#[tokio::main]
async fn main() {
    let a = args();
    let probe = Arc::new(Probe {
        jobs: a.jobs,
        started: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        lat_ms: Mutex::new(Vec::with_capacity(a.jobs)),
        first: Mutex::new(None),
        last: Mutex::new(None),
    });
    let queue = format!("jfbench_apalis_{}", std::process::id());
    let peak = Arc::new(Mutex::new(0.0f64));
    let enqueue_s;
    let drain_watch = {
        let (probe, peak) = (probe.clone(), peak.clone());
        move || {
            let (probe, peak) = (probe.clone(), peak.clone());
            tokio::spawn(async move {
                while probe.done.load(Ordering::SeqCst) < probe.jobs {
                    let r = rss_mb();
                    {
                        let mut p = peak.lock().unwrap();
                        *p = p.max(r);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        }
    };
    let (version, broker) = match a.backend.as_str() {
        "redis" => {
            let conn = apalis_redis::connect(a.url.as_str())
                .await
                .unwrap_or_else(|e| fail(&format!("cannot connect to {}: {e}", a.url)));
            let cfg = apalis_redis::Config::default()
                .queue(&queue)
                .batch_size(a.concurrency);
            let mut storage =
                apalis_redis::RedisStorage::<Noop>::new(conn.clone()).with_config(cfg);
            let t0 = Instant::now();
            for b in batches(a.jobs) {
                storage
                    .push_bulk(b)
                    .await
                    .unwrap_or_else(|e| fail(&format!("push failed: {e:?}")));
            }
            enqueue_s = t0.elapsed().as_secs_f64();
            let watch = drain_watch();
            WorkerBuilder::new(format!("{queue}-w"))
                .backend(storage)
                .data(probe.clone())
                .concurrency(a.concurrency)
                .parallelize(tokio::spawn)
                .build(noop)
                .run()
                .await
                .unwrap_or_else(|e| fail(&format!("worker failed: {e:?}")));
            watch.abort();
            // Remove every key of the run's queue.
            let mut c = conn;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("*{queue}*"))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
            }
            ("apalis-redis 1.0.0", "redis")
        }
        "postgres" => {
            let pool = apalis_postgres::PgPool::connect(&a.url)
                .await
                .unwrap_or_else(|e| fail(&format!("cannot connect to {}: {e}", a.url)));
            apalis_postgres::PostgresStorage::<()>::setup(&pool)
                .await
                .unwrap_or_else(|e| fail(&format!("apalis migrations failed: {e:?}")));
            let cfg = apalis_postgres::Config::default()
                .queue(&queue)
                .batch_size(a.concurrency)
                .persist_results(false);
            let mut storage = apalis_postgres::PostgresStorage::<Noop>::new(&pool).with_config(cfg);
            let t0 = Instant::now();
            for b in batches(a.jobs) {
                storage
                    .push_bulk(b)
                    .await
                    .unwrap_or_else(|e| fail(&format!("push failed: {e:?}")));
            }
            enqueue_s = t0.elapsed().as_secs_f64();
            let watch = drain_watch();
            WorkerBuilder::new(format!("{queue}-w"))
                .backend(storage)
                .data(probe.clone())
                .concurrency(a.concurrency)
                .parallelize(tokio::spawn)
                .build(noop)
                .run()
                .await
                .unwrap_or_else(|e| fail(&format!("worker failed: {e:?}")));
            watch.abort();
            let _ = sqlx_delete(&pool, &queue).await;
            ("apalis-postgres 1.0.0", "postgres")
        }
        other => fail(&format!("unknown backend {other} (redis or postgres)")),
    };
    let done = probe.done.load(Ordering::SeqCst);
    if done < a.jobs {
        fail(&format!(
            "the worker stopped after {done} of {} jobs",
            a.jobs
        ));
    }
    let first = probe.first.lock().unwrap().expect("a job started");
    let last = probe.last.lock().unwrap().expect("the last job ended");
    let drain = (last - first).as_secs_f64();
    let mut lat = std::mem::take(&mut *probe.lat_ms.lock().unwrap());
    lat.sort_unstable();
    let q = |p: f64| lat[((p * lat.len() as f64) as usize).min(lat.len() - 1)];
    let peak = *peak.lock().unwrap();
    let (impl_, version) = version.split_once(' ').unwrap_or((version, ""));
    println!(
        "{}",
        serde_json::json!({
            "impl": impl_, "version": version, "broker": broker,
            "concurrency": a.concurrency, "jobs": a.jobs,
            "enqueue_s": (enqueue_s * 1000.0).round() / 1000.0,
            "drain_s": (drain * 1000.0).round() / 1000.0,
            "jobs_per_s": (a.jobs as f64 / drain).round(),
            "p50_ms": q(0.5), "p99_ms": q(0.99),
            "peak_rss_mb": (peak * 10.0).round() / 10.0,
        })
    );
}

async fn sqlx_delete(pool: &apalis_postgres::PgPool, queue: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(queue)
        .execute(pool)
        .await
        .map(|_| ())
}
