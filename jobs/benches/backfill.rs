//! Backfill of a default partition holding 1,000,000 rows over 12 months
//! (`cargo bench -p jobfleet-jobs --bench backfill`): total time of `ensure_partitions`, and the
//! longest a concurrent writer (single-row inserts over all the months) and a concurrent
//! reader (one-hour range counts through the parent) waited for one statement, against the
//! same loops measured before the backfill. Runs in a throw-away schema; `DATABASE_URL`
//! overrides the default database, `BACKFILL_ROWS` the row count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use jobs::partitions::{EnsurePartitions, PartitionsPayload};
use jobs::testkit;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};

#[derive(Debug, Default, Clone, Copy)]
struct Waits {
    longest: Duration,
    total: Duration,
    n: u64,
}

impl Waits {
    fn add(&mut self, d: Duration) {
        self.longest = self.longest.max(d);
        self.total += d;
        self.n += 1;
    }

    fn show(&self) -> String {
        format!(
            "longest {:.1} ms, mean {:.2} ms over {} statements",
            self.longest.as_secs_f64() * 1e3,
            self.total.as_secs_f64() * 1e3 / self.n.max(1) as f64,
            self.n
        )
    }
}

/// Runs a writer and a reader until `stop`; returns their waits.
fn load(
    pool: &PgPool,
    schema: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Waits, Waits)> {
    let insert = format!(
        "INSERT INTO \"{schema}\".\"PodExecution\" (\"podId\", \"startedAt\") \
         VALUES ('w', timestamptz '2025-12-01+00' + $1 * interval '1 second')"
    );
    let read = format!(
        "SELECT count(*) FROM \"{schema}\".\"PodExecution\" \
         WHERE \"startedAt\" >= timestamptz '2025-12-01+00' + $1 * interval '1 hour' \
           AND \"startedAt\" < timestamptz '2025-12-01+00' + ($1 + 1) * interval '1 hour'"
    );
    let (p1, p2, s1, s2) = (pool.clone(), pool.clone(), stop.clone(), stop);
    let writer = tokio::spawn(async move {
        let mut w = Waits::default();
        let mut i: i64 = 0;
        while !s1.load(Ordering::Relaxed) {
            i += 1;
            let offset = (i * 7_919_993) % (369 * 86_400);
            let t = Instant::now();
            sqlx::query(AssertSqlSafe(insert.as_str()))
                .bind(offset as f64)
                .execute(&p1)
                .await
                .expect("writer insert");
            w.add(t.elapsed());
        }
        w
    });
    let reader = tokio::spawn(async move {
        let mut w = Waits::default();
        let mut i: i64 = 0;
        while !s2.load(Ordering::Relaxed) {
            i += 1;
            let t = Instant::now();
            let _: i64 = sqlx::query_scalar(AssertSqlSafe(read.as_str()))
                .bind((i * 37 % (365 * 24)) as f64)
                .fetch_one(&p2)
                .await
                .expect("reader query");
            w.add(t.elapsed());
        }
        w
    });
    tokio::spawn(async move { (writer.await.unwrap(), reader.await.unwrap()) })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let rows: u64 = std::env::var("BACKFILL_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    let schema = testkit::random_schema("backfill_bench");
    testkit::install_schema(&pool, &schema).await?;
    let result = run(&pool, &schema, rows).await;
    testkit::drop_schema(&pool, &schema).await?;
    result
}

async fn run(pool: &PgPool, schema: &str, rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    let q = format!("\"{schema}\"");
    sqlx::raw_sql(AssertSqlSafe(
        testkit::FLOPODS_POD_EXECUTION.replace("{s}", &q),
    ))
    .execute(pool)
    .await?;
    let started = Instant::now();
    // Dec 2025 .. Nov 2026, evenly.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "INSERT INTO {q}.\"PodExecution\" (\"podId\", status, \"startedAt\", \"tokensUsed\") \
         SELECT 'pod-' || (n % 40), 'DONE', \
                timestamptz '2025-12-01+00' + (n - 1) * interval '365 days' / {rows}, n % 1000 \
         FROM generate_series(1, {rows}) n"
    )))
    .execute(pool)
    .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "VACUUM ANALYZE {q}.\"PodExecution_default\""
    )))
    .execute(pool)
    .await?;
    println!(
        "seeded {rows} rows over 12 months into the default partition in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The same reader and writer without a backfill, for comparison.
    let stop = Arc::new(AtomicBool::new(false));
    let baseline = load(pool, schema, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let (bw, br) = baseline.await?;
    println!("baseline (no backfill), writer: {}", bw.show());
    println!("baseline (no backfill), reader: {}", br.show());

    let cfg = jobs::config::PartitionsConfig::default();
    let ep = EnsurePartitions::new(pool.clone(), &cfg)?;
    let now = Utc
        .with_ymd_and_hms(2026, 12, 5, 12, 0, 0)
        .single()
        .ok_or("date")?;
    let stop = Arc::new(AtomicBool::new(false));
    let during = load(pool, schema, stop.clone());
    let started = Instant::now();
    let r = ep
        .ensure(
            &PartitionsPayload::new(format!("{schema}.PodExecution"), 0),
            now,
        )
        .await?;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (w, rd) = during.await?;
    let left: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {q}.\"PodExecution_default\""
    )))
    .fetch_one(pool)
    .await?;
    println!(
        "backfill (batch_rows {}, lock_timeout {} ms): {} partitions, {} rows moved in {:.1} s \
         = {:.0} rows/s; {left} rows left in default; longest final step {} ms; {} lock timeouts retried",
        cfg.batch_rows,
        cfg.lock_timeout.as_millis(),
        r.created.len(),
        r.moved_rows,
        took.as_secs_f64(),
        r.moved_rows as f64 / took.as_secs_f64(),
        r.longest_lock.as_millis(),
        r.lock_retries
    );
    println!("during backfill, writer: {}", w.show());
    println!("during backfill, reader: {}", rd.show());
    Ok(())
}
