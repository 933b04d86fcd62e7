//! Throughput of the two heavy jobs on the local PostgreSQL (`cargo bench -p jobfleet-jobs`):
//! `embed_document` with the local embedder on 10 KB documents, 8 handlers at a time,
//! including the database writes; and a daily + hourly rollup of 1,000,000 events of one day.
//! Runs in a throw-away schema; `DATABASE_URL` overrides the default database.

use std::time::Instant;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use jobs::partitions::{EnsurePartitions, PartitionsPayload};
use jobs::rollup::{Granularity, RollupAnalytics, RollupPayload};
use jobs::{JobContext, testkit};
use sqlx::postgres::PgPoolOptions;

const DOCS: usize = 2000;
const DOC_BYTES: usize = 10 * 1024;
const CONCURRENCY: usize = 8;
const EVENTS: i64 = 1_000_000;

fn document(seed: usize) -> String {
    const WORDS: &[&str] = &[
        "queue",
        "worker",
        "retry",
        "partition",
        "rollup",
        "embedding",
        "vector",
        "postgres",
        "latency",
        "backlog",
        "scale",
        "deadline",
        "timeout",
        "shard",
        "replica",
        "index",
    ];
    let mut s = String::with_capacity(DOC_BYTES + 16);
    let mut i = seed;
    while s.len() < DOC_BYTES {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(WORDS[(i >> 33) % WORDS.len()]);
        s.push_str(&format!("{} ", (i >> 40) % 1000));
    }
    s.truncate(DOC_BYTES);
    s
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(CONCURRENCY as u32 + 4)
        .connect(&url)
        .await?;
    let schema = testkit::random_schema("jobs_bench");
    testkit::install_schema(&pool, &schema).await?;
    let cfg = testkit::config_for_schema(&schema);
    let result = run(&pool, &schema, &cfg).await;
    testkit::drop_schema(&pool, &schema).await?;
    result
}

async fn run(
    pool: &sqlx::PgPool,
    schema: &str,
    cfg: &jobs::JobsConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    // ---- embed_document ----
    let docs: Vec<String> = (0..DOCS).map(document).collect();
    let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".documents (content) SELECT unnest($1::text[]) RETURNING id"
    )))
    .bind(&docs)
    .fetch_all(pool)
    .await?;
    let reg = jobs::registry(pool.clone(), cfg)?;
    let handler = reg
        .get("embed_document")
        .ok_or("embed_document missing")?
        .handler
        .clone();
    let ctx = JobContext {
        job_id: "bench".into(),
        queue: "bench".into(),
        attempt: 1,
    };
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let h = handler.clone();
            let ctx = ctx.clone();
            async move { h.run(&ctx, &serde_json::json!({ "document_id": id })).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let chunks: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".document_chunks"
    )))
    .fetch_one(pool)
    .await?;
    println!(
        "embed_document (local embedder, 10 KB docs, {CONCURRENCY} concurrent): {DOCS} docs in {:.2} s = {:.0} docs/s ({chunks} chunks, {failed} failed)",
        elapsed.as_secs_f64(),
        DOCS as f64 / elapsed.as_secs_f64()
    );
    let started = Instant::now();
    for id in ids.iter().take(500) {
        handler
            .run(&ctx, &serde_json::json!({ "document_id": id }))
            .await?;
    }
    println!(
        "embed_document, unchanged documents (skip path, sequential): {:.0} docs/s",
        500.0 / started.elapsed().as_secs_f64()
    );

    // ---- rollup_analytics ----
    let day = Utc
        .with_ymd_and_hms(2026, 11, 15, 0, 0, 0)
        .single()
        .ok_or("date")?;
    EnsurePartitions::new(pool.clone(), &cfg.partitions)?
        .ensure(
            &PartitionsPayload::new(format!("{schema}.analytics_events"), 0),
            day,
        )
        .await?;
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".analytics_events (occurred_at, name, user_id) \
         SELECT timestamptz '2026-11-15 00:00:00+00' + (n % 86400) * interval '1 second', \
                'event_' || (n % 20), n % 50000 \
         FROM generate_series(1, {EVENTS}) n; \
         ANALYZE \"{schema}\".analytics_events;"
    )))
    .execute(pool)
    .await?;
    println!(
        "generated {EVENTS} events with generate_series in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let rollup = RollupAnalytics::new(pool.clone(), &cfg.analytics)?;
    for g in [Granularity::Day, Granularity::Hour] {
        let p = RollupPayload {
            granularity: g,
            from: day,
            to: day + chrono::Duration::days(1),
        };
        let started = Instant::now();
        let stats = rollup.rollup(&p).await?;
        println!(
            "rollup_analytics ({g:?}) of {EVENTS} events for one day: {:.2} s ({} buckets)",
            started.elapsed().as_secs_f64(),
            stats.upserted
        );
    }
    Ok(())
}
