//! Vector search and the local model (`cargo bench -p jobfleet-jobs --features minilm --bench
//! search`; without the feature only the search part runs):
//!
//! - all-MiniLM-L6-v2 through `embed_document` (database writes included) on 1 KB and 10 KB
//!   documents: chunks/s and docs/s, with the batch size and candle's thread count;
//! - search over 100,000 chunks on the pgvector server (:5433, `JOBFLEET_PGVECTOR_URL`):
//!   p50/p99 of the search query through the HNSW index and by an exact scan, and recall@10
//!   of the index against the exact scan. The chunks are synthetic clustered 384-dimensional
//!   unit vectors (no model needed), indexed by `worker migrate`'s code path, whose time is
//!   reported too. `JOBFLEET_BENCH_CHUNKS` changes the count.
//!
//! Runs in a throw-away schema.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs::search::Searcher;
use jobs::testkit;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const CHUNKS: usize = 100_000;
const DIM: usize = 384;
const QUERIES: usize = 300;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("JOBFLEET_PGVECTOR_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(4)
        // The HNSW build of 100k × 384 floats needs the graph in memory to be quick.
        .after_connect(|c, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET maintenance_work_mem = '512MB'")
                    .execute(c)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&url)
        .await?;
    let schema = testkit::random_schema("search_bench");
    testkit::install_schema(&pool, &schema).await?;
    let cfg = testkit::config_for_schema(&schema);
    let result = run(&pool, &cfg).await;
    testkit::drop_schema(&pool, &schema).await?;
    result
}

async fn run(pool: &PgPool, cfg: &jobs::JobsConfig) -> Result<(), Box<dyn std::error::Error>> {
    jobs::vector::migrate(pool, cfg, |_| {}).await?;
    #[cfg(feature = "minilm")]
    model(pool, cfg).await?;
    #[cfg(not(feature = "minilm"))]
    println!("model: skipped (build with --features minilm)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "TRUNCATE {}, {} CASCADE",
        cfg.documents.chunks_table, cfg.documents.table
    )))
    .execute(pool)
    .await?;
    search(pool, cfg).await
}

#[cfg(feature = "minilm")]
async fn model(pool: &PgPool, cfg: &jobs::JobsConfig) -> Result<(), Box<dyn std::error::Error>> {
    use jobs::embed::EmbedDocument;
    use jobs::embedder::MiniLmEmbedder;

    let dir = jobs::embedder::minilm_dir(&cfg.embed)?;
    let embedder = Arc::new(MiniLmEmbedder::load(&dir, cfg.embed.batch_size)?);
    let h = EmbedDocument::new(pool.clone(), &cfg.embed, &cfg.documents, embedder)?;
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!(
        "model: all-MiniLM-L6-v2 via embed_document, chunk_size {} / overlap {}, batch_size {}, \
         {threads} candle threads, one document at a time",
        cfg.embed.chunk_size, cfg.embed.chunk_overlap, cfg.embed.batch_size
    );
    for (bytes, docs) in [(1024, 40), (10 * 1024, 12)] {
        let mut ids = Vec::new();
        for d in 0..docs {
            let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} (title, content) VALUES ($1, $2) RETURNING id",
                cfg.documents.table
            )))
            .bind(format!("bench {bytes} {d}"))
            .bind(prose(bytes, d))
            .fetch_one(pool)
            .await?;
            ids.push(id);
        }
        let started = Instant::now();
        let mut chunks = 0usize;
        for id in ids {
            let out = h.embed(id).await?;
            chunks += out
                .summary
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "  {:>2} KB docs: {docs} docs, {chunks} chunks in {secs:.1} s = {:.1} chunks/s, {:.2} docs/s",
            bytes / 1024,
            chunks as f64 / secs,
            docs as f64 / secs
        );
    }
    Ok(())
}

/// English-like text of `bytes` bytes (sentences from a fixed vocabulary, varied by `seed`).
#[cfg(feature = "minilm")]
fn prose(bytes: usize, seed: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "worker",
        "queue",
        "retries",
        "a",
        "failed",
        "job",
        "after",
        "backoff",
        "and",
        "stores",
        "its",
        "result",
        "in",
        "database",
        "while",
        "another",
        "process",
        "reads",
        "documents",
        "from",
        "storage",
        "to",
        "embed",
        "them",
        "for",
        "search",
        "customers",
        "expect",
        "answers",
        "quickly",
        "when",
        "servers",
        "restart",
        "during",
        "deploys",
    ];
    let mut s = String::with_capacity(bytes + 64);
    let mut i = seed as u64 + 1;
    while s.len() < bytes {
        for w in 0..12 {
            i = i
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if w > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[(i >> 33) as usize % WORDS.len()]);
        }
        s.push_str(". ");
    }
    let mut end = bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

async fn search(pool: &PgPool, cfg: &jobs::JobsConfig) -> Result<(), Box<dyn std::error::Error>> {
    let chunks: usize = std::env::var("JOBFLEET_BENCH_CHUNKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CHUNKS);
    // Loaded without the index, then indexed the way `worker migrate` does it (CONCURRENTLY).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP INDEX IF EXISTS {}_embedding_hnsw",
        cfg.documents.chunks_table
    )))
    .execute(pool)
    .await?;
    let all = testkit::clustered_vectors(chunks + QUERIES, DIM, 2000, 42);
    let (data, queries) = all.split_at(chunks);
    let started = Instant::now();
    testkit::insert_chunks(pool, cfg, data, 100).await?;
    println!(
        "search: {chunks} chunks of {DIM} dimensions (synthetic, 2000 clusters) inserted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let report = jobs::vector::migrate(pool, cfg, |_| {}).await?;
    println!(
        "  HNSW build (m={} ef_construction={}, CONCURRENTLY): {:.1} s — {}",
        cfg.vector.hnsw_m,
        cfg.vector.hnsw_ef_construction,
        started.elapsed().as_secs_f64(),
        report.summary
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ANALYZE {}",
        cfg.documents.chunks_table
    )))
    .execute(pool)
    .await?;
    let s = Searcher::new(
        pool.clone(),
        cfg,
        Arc::new(jobs::embedder::LocalEmbedder::new(DIM, 1)),
    )
    .await?;
    // Warm the caches once, as a running service has them.
    for q in queries.iter().take(20) {
        s.search_vector(q, 10).await?;
    }
    let mut hnsw = Vec::new();
    let mut got = Vec::new();
    for q in queries {
        let t = Instant::now();
        let hits = s.search_vector(q, 10).await?;
        hnsw.push(t.elapsed());
        got.push(
            hits.iter()
                .map(|h| (h.document_id, h.chunk_index))
                .collect::<Vec<_>>(),
        );
    }
    let exact_sql = format!(
        "SELECT document_id, chunk_index FROM {} ORDER BY embedding <=> $1::real[]::vector LIMIT 10",
        cfg.documents.chunks_table
    );
    let mut exact = Vec::new();
    let mut found = 0usize;
    for (q, got) in queries.iter().zip(&got) {
        let t = Instant::now();
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL enable_indexscan = off")
            .execute(&mut *tx)
            .await?;
        let want: Vec<(i64, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(exact_sql.as_str()))
            .bind(q)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        exact.push(t.elapsed());
        found += want.iter().filter(|w| got.contains(w)).count();
    }
    hnsw.sort();
    exact.sort();
    println!(
        "  HNSW  (ef_search {}): p50 {}  p99 {}  over {QUERIES} queries, limit 10, {chunks} chunks",
        cfg.vector.ef_search,
        ms(pct(&hnsw, 0.5)),
        ms(pct(&hnsw, 0.99))
    );
    println!(
        "  exact (sequential scan): p50 {}  p99 {}",
        ms(pct(&exact, 0.5)),
        ms(pct(&exact, 0.99))
    );
    println!(
        "  recall@10 of HNSW against the exact scan: {:.3}",
        found as f64 / (10 * QUERIES) as f64
    );
    Ok(())
}
