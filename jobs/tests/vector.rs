//! pgvector storage against the real PostgreSQL 18 + pgvector on :5433: the `real[]` →
//! `vector(N)` migration (empty table, table with chunks, with jobs writing meanwhile), the HNSW
//! index in the search plan, recall of the index against an exact scan, search results, and
//! bad provider output. The `real[]` fallback's search runs on the plain PostgreSQL :5432.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::TestDb;
use jobs::JobError;
use jobs::embed::EmbedDocument;
use jobs::embedder::{EmbedError, Embedder, LocalEmbedder};
use jobs::search::Searcher;
use jobs::testkit;
use jobs::vector::{self, Storage};

async fn column_type(db: &TestDb) -> String {
    sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = $1::regclass AND attname = 'embedding'",
    )
    .bind(db.t("document_chunks"))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn insert_doc(db: &TestDb, title: &str, content: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {}.documents (title, content) VALUES ($1, $2) RETURNING id",
        db.schema
    )))
    .bind(title)
    .bind(content)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

fn local(db: &TestDb) -> EmbedDocument {
    EmbedDocument::new(
        db.pool.clone(),
        &db.cfg.embed,
        &db.cfg.documents,
        Arc::new(LocalEmbedder::new(384, 16)),
    )
    .unwrap()
}

const TOPICS: &[(&str, &str)] = &[
    (
        "Gardening",
        "Tomatoes need full sun, rich compost and regular watering. Prune the side shoots of \
         tomato plants and tie them to stakes.",
    ),
    (
        "Astronomy",
        "Jupiter is the largest planet of the solar system; its moons Io, Europa, Ganymede and \
         Callisto were discovered by Galileo with a telescope.",
    ),
    (
        "Baking",
        "Knead the bread dough for ten minutes, let the yeast rise for an hour, then bake the \
         loaf in a hot oven until the crust is golden.",
    ),
    (
        "Databases",
        "PostgreSQL stores rows in heap pages; an index lets a query find rows without a \
         sequential scan of the whole table.",
    ),
];

#[tokio::test]
async fn migration_of_an_empty_table_gives_vector_and_hnsw_and_is_idempotent() {
    let Some(db) = TestDb::pgvector("jt_vec").await else {
        return;
    };
    assert_eq!(column_type(&db).await, "real[]");
    let r = vector::migrate(&db.pool, &db.cfg, |_| {}).await.unwrap();
    assert_eq!(
        r.storage,
        Storage::Pgvector {
            dimensions: 384,
            indexed: true
        }
    );
    assert_eq!(r.converted, 0);
    assert_eq!(column_type(&db).await, "vector(384)");
    let def: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND indexdef LIKE '%hnsw%'",
    )
    .bind(&db.schema)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        def.contains("vector_cosine_ops")
            && def.contains("m='16'")
            && def.contains("ef_construction='64'"),
        "{def}"
    );
    let again = vector::migrate(&db.pool, &db.cfg, |_| {}).await.unwrap();
    assert_eq!(again.storage, r.storage);
    assert!(again.summary.contains("present"), "{}", again.summary);

    // The start-up check names both numbers when config and column disagree.
    let mut cfg = db.cfg.clone();
    cfg.vector.dimensions = 768;
    let e = vector::check_configured(&db.pool, &cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("vector(384)") && e.contains("768"), "{e}");
    // ... and when the provider does.
    let mut cfg = db.cfg.clone();
    cfg.embed.dimensions = Some(256);
    let e = vector::check_configured(&db.pool, &cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("256") && e.contains("384"), "{e}");
    db.cleanup().await;
}

#[tokio::test]
async fn migration_converts_existing_chunks_while_jobs_keep_writing() {
    let Some(db) = TestDb::pgvector("jt_vec").await else {
        return;
    };
    let h = Arc::new(local(&db));
    let mut ids = Vec::new();
    for i in 0..40 {
        let (title, text) = TOPICS[i % TOPICS.len()];
        let id = insert_doc(&db, title, &format!("{text} (copy {i}) ").repeat(12)).await;
        h.embed(id).await.unwrap();
        ids.push(id);
    }
    let before: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}",
        db.t("document_chunks")
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(before >= 80, "{before}");

    // Jobs re-embed documents (new content) all through the migration.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (h, stop, ids, pool, t) = (
            h.clone(),
            stop.clone(),
            ids.clone(),
            db.pool.clone(),
            db.t("documents"),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = ids[(n as usize) % ids.len()];
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {t} SET content = content || ' more' WHERE id = $1"
                )))
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
                match h.embed(id).await {
                    Ok(_) => n += 1,
                    // The swap's brief lock may make a write wait or retry; never lose data.
                    Err(JobError::Retry(_)) => {}
                    Err(e) => panic!("embed during migration: {e}"),
                }
            }
            n
        })
    };
    let mut cfg = db.cfg.clone();
    cfg.vector.migrate_batch_size = 37; // several batches
    let mut seen = Vec::new();
    let r = vector::migrate(&db.pool, &cfg, |n| seen.push(n))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 0, "no job ran during the migration");
    assert!(seen.len() > 2, "not batched: {seen:?}");
    assert!(r.converted > 0);
    assert_eq!(column_type(&db).await, "vector(384)");

    // Every document's chunks are complete and match what the job would write now.
    for &id in &ids {
        let doc: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT content FROM {} WHERE id = $1",
            db.t("documents")
        )))
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let rows: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT content, embedding::text FROM {} WHERE document_id = $1 ORDER BY chunk_index",
            db.t("document_chunks")
        )))
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let expect = jobs::embed::chunk_text(&doc, 1000, 200);
        assert_eq!(rows.len(), expect.len(), "document {id}");
        let e = LocalEmbedder::new(384, 1);
        for ((text, vec), c) in rows.iter().zip(&expect) {
            assert_eq!(text, &c.text);
            let stored: Vec<f32> = vec
                .trim_matches(|c| c == '[' || c == ']')
                .split(',')
                .map(|x| x.parse().unwrap())
                .collect();
            let want = e.embed_one(&c.text);
            assert!(stored.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
        }
    }
    // Old and new writers both work after the swap.
    let id = insert_doc(&db, "After", "written after the migration").await;
    h.embed(id).await.unwrap();
    db.cleanup().await;
}

#[tokio::test]
async fn search_finds_the_expected_document_through_the_hnsw_index() {
    let Some(db) = TestDb::pgvector("jt_vec").await else {
        return;
    };
    vector::migrate(&db.pool, &db.cfg, |_| {}).await.unwrap();
    let h = local(&db);
    let mut ids = Vec::new();
    for (title, text) in TOPICS {
        let id = insert_doc(&db, title, text).await;
        h.embed(id).await.unwrap();
        ids.push(id);
    }
    let embedder: Arc<dyn Embedder> = Arc::new(LocalEmbedder::new(384, 16));
    let s = Searcher::new(db.pool.clone(), &db.cfg, embedder)
        .await
        .unwrap();
    assert!(matches!(
        s.storage(),
        Storage::Pgvector { indexed: true, .. }
    ));
    for (query, want) in [
        ("watering tomato plants", 0),
        ("moons of Jupiter telescope", 1),
        ("bread dough yeast oven", 2),
        ("index sequential scan table", 3),
    ] {
        let hits = s.search(query, 3).await.unwrap();
        assert_eq!(hits[0].document_id, ids[want], "{query}: {hits:?}");
        assert_eq!(hits[0].title.as_deref(), Some(TOPICS[want].0));
        assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
    }
    for bad in ["", "   "] {
        assert!(s.search(bad, 3).await.is_err());
    }
    assert!(s.search(&"x".repeat(100_000), 3).await.is_err());
    assert!(s.search("bread", 0).await.is_err());
    assert!(s.search_vector(&[0.5; 12], 3).await.is_err());
    assert!(s.search_vector(&[f32::NAN; 384], 3).await.is_err());
    db.cleanup().await;
}

/// Exact top-`k` by a sequential scan (the index turned off).
async fn exact(db: &TestDb, q: &[f32], k: i64) -> Vec<(i64, i32)> {
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_indexscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rows = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT document_id, chunk_index FROM {} ORDER BY embedding <=> $1::real[]::vector LIMIT $2",
        db.t("document_chunks")
    )))
    .bind(q)
    .bind(k)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    rows
}

#[tokio::test]
async fn hnsw_recall_at_10_on_20000_chunks_and_the_plan_uses_the_index() {
    let Some(db) = TestDb::pgvector("jt_vec").await else {
        return;
    };
    let dim = 384;
    // Queries come from the same clusters as the data, but are not in the table.
    let all = testkit::clustered_vectors(20_050, dim, 400, 7);
    let (vectors, queries) = all.split_at(20_000);
    testkit::insert_chunks(&db.pool, &db.cfg, vectors, 100)
        .await
        .unwrap();
    // The realistic path: chunks already there, then `worker migrate`.
    let r = vector::migrate(&db.pool, &db.cfg, |_| {}).await.unwrap();
    assert_eq!(r.converted, 20_000);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ANALYZE {}",
        db.t("document_chunks")
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let s = Searcher::new(
        db.pool.clone(),
        &db.cfg,
        Arc::new(LocalEmbedder::new(dim, 1)),
    )
    .await
    .unwrap();

    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {}", s.sql())))
        .bind(&queries[0])
        .bind(10i64)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using document_chunks_embedding_hnsw"),
        "the search does not use the HNSW index:\n{plan}"
    );

    let mut found = 0;
    for q in queries {
        let want = exact(&db, q, 10).await;
        let got: Vec<(i64, i32)> = s
            .search_vector(q, 10)
            .await
            .unwrap()
            .iter()
            .map(|h| (h.document_id, h.chunk_index))
            .collect();
        assert_eq!(got.len(), 10);
        found += want.iter().filter(|w| got.contains(w)).count();
    }
    let recall = found as f64 / (10 * queries.len()) as f64;
    eprintln!("recall@10 over {} queries: {recall:.3}", queries.len());
    assert!(recall >= 0.95, "recall@10 = {recall}");
    db.cleanup().await;
}

/// A provider that answers with what the test scripts.
struct Scripted {
    dim: Option<usize>,
    answer: fn(usize) -> Vec<f32>,
}

#[async_trait]
impl Embedder for Scripted {
    fn model_id(&self) -> String {
        "scripted".into()
    }
    fn batch_size(&self) -> usize {
        2
    }
    fn dimensions(&self) -> Option<usize> {
        self.dim
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok((0..texts.len()).map(self.answer).collect())
    }
}

#[tokio::test]
async fn wrong_dimension_and_nan_are_permanent_and_write_nothing() {
    let Some(db) = TestDb::pgvector("jt_vec").await else {
        return;
    };
    vector::migrate(&db.pool, &db.cfg, |_| {}).await.unwrap();
    let good = local(&db);
    let text = "first words of a document that will not change. ".repeat(60);
    let id = insert_doc(&db, "Kept", &text).await;
    good.embed(id).await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} WHERE document_id = $1",
            db.t("document_chunks")
        )))
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let n = count().await;
    assert!(n > 1);
    db.exec("UPDATE {s}.documents SET content = content || ' changed' WHERE true")
        .await;
    let cases: Vec<(Scripted, &str)> = vec![
        // Undeclared dimension, the column says 384.
        (
            Scripted {
                dim: None,
                answer: |_| vec![0.1; 256],
            },
            "256",
        ),
        // Lengths differ within one document.
        (
            Scripted {
                dim: None,
                answer: |i| vec![0.1; if i == 0 { 384 } else { 383 }],
            },
            "383",
        ),
        (
            Scripted {
                dim: Some(384),
                answer: |i| {
                    let mut v = vec![0.05; 384];
                    v[i] = f32::NAN;
                    v
                },
            },
            "NaN",
        ),
    ];
    for (provider, needle) in cases {
        let h = EmbedDocument::new(
            db.pool.clone(),
            &db.cfg.embed,
            &db.cfg.documents,
            Arc::new(provider),
        )
        .unwrap();
        let e = h.embed(id).await.unwrap_err();
        assert!(
            matches!(&e, JobError::Permanent(m) if m.contains(needle)),
            "{needle}: {e}"
        );
        assert_eq!(count().await, n, "chunks changed after: {e}");
    }
    db.cleanup().await;
}

#[tokio::test]
async fn without_pgvector_search_is_an_exact_scan_over_real_arrays() {
    // The plain PostgreSQL 15 on :5432 has no pgvector: migrate leaves real[] and says why.
    let db = TestDb::new("jt_vec").await;
    let r = vector::migrate(&db.pool, &db.cfg, |_| {}).await.unwrap();
    if vector::extension_available(&db.pool).await.unwrap() {
        // A developer machine whose :5432 has pgvector: that path is tested above.
        assert!(matches!(r.storage, Storage::Pgvector { .. }));
        db.cleanup().await;
        return;
    }
    assert_eq!(r.storage, Storage::Array);
    assert!(r.summary.contains("no pgvector"), "{}", r.summary);
    let mut strict = db.cfg.clone();
    strict.vector.storage = jobs::config::VectorStorage::Pgvector;
    let e = vector::migrate(&db.pool, &strict, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no vector extension"), "{e}");

    let h = local(&db);
    let mut ids = Vec::new();
    for (title, text) in TOPICS {
        let id = insert_doc(&db, title, text).await;
        h.embed(id).await.unwrap();
        ids.push(id);
    }
    let s = Searcher::new(
        db.pool.clone(),
        &db.cfg,
        Arc::new(LocalEmbedder::new(384, 4)),
    )
    .await
    .unwrap();
    assert_eq!(s.storage(), Storage::Array);
    let hits = s.search("bread dough yeast oven", 2).await.unwrap();
    assert_eq!(hits[0].document_id, ids[2], "{hits:?}");
    assert_eq!(hits.len(), 2);
    db.cleanup().await;
}
