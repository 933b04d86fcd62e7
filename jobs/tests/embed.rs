//! `embed_document` against the real PostgreSQL, with the local embedder and with the
//! OpenAI-compatible provider talking to a local axum server.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::{TestDb, ctx};
use jobs::JobError;
use jobs::config::OpenAiConfig;
use jobs::embed::{EmbedDocument, chunk_text};
use jobs::embedder::{EmbedError, Embedder, OpenAiEmbedder};
use serde_json::{Value, json};

async fn insert_doc(db: &TestDb, content: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {}.documents (content) VALUES ($1) RETURNING id",
        db.schema
    )))
    .bind(content)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn chunks_of(db: &TestDb, id: i64) -> Vec<(i32, String, Vec<f32>, String)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT chunk_index, content, embedding, model FROM {}.document_chunks \
         WHERE document_id = $1 ORDER BY chunk_index",
        db.schema
    )))
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn text(words: usize, seed: &str) -> String {
    (0..words).map(|i| format!("{seed}{} ", i % 97)).collect()
}

#[tokio::test]
async fn local_embed_writes_chunks_skips_unchanged_and_replaces_on_change() {
    let db = TestDb::new("jt_embed").await;
    let mut cfg = db.cfg.clone();
    cfg.embed.chunk_size = 200;
    cfg.embed.chunk_overlap = 40;
    cfg.embed.batch_size = 3;
    let reg = jobs::registry(db.pool.clone(), &cfg).unwrap();
    let h = reg.get("embed_document").unwrap().handler.clone();

    let content = text(300, "alpha");
    let id = insert_doc(&db, &content).await;
    let p = json!({ "document_id": id });
    h.validate(&p).unwrap();
    let out = h.run(&ctx(), &p).await.unwrap();
    let expected = chunk_text(&content, 200, 40);
    assert!(
        out.summary
            .starts_with(&format!("{} chunks", expected.len())),
        "{out:?}"
    );
    let rows = chunks_of(&db, id).await;
    assert_eq!(rows.len(), expected.len());
    for (row, chunk) in rows.iter().zip(&expected) {
        assert_eq!(row.1, chunk.text);
        assert_eq!(row.2.len(), 384);
        assert_eq!(row.3, "local-fnv-v1/384");
    }
    // Same text, same vector.
    let local = jobs::embedder::LocalEmbedder::new(384, 1);
    assert_eq!(rows[0].2, local.embed_one(&expected[0].text));

    let again = h.run(&ctx(), &p).await.unwrap();
    assert_eq!(again.summary, "skipped: content unchanged");

    db.exec("UPDATE {s}.documents SET content = 'short now' WHERE true")
        .await;
    h.run(&ctx(), &p).await.unwrap();
    let rows = chunks_of(&db, id).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "short now");

    // A different chunk size changes the hash: re-embedded, not skipped.
    let mut cfg2 = cfg.clone();
    cfg2.embed.chunk_size = 4;
    cfg2.embed.chunk_overlap = 1;
    let reg2 = jobs::registry(db.pool.clone(), &cfg2).unwrap();
    let out = reg2
        .get("embed_document")
        .unwrap()
        .handler
        .run(&ctx(), &p)
        .await
        .unwrap();
    assert!(!out.summary.starts_with("skipped"), "{out:?}");
    assert!(chunks_of(&db, id).await.len() > 1);

    db.cleanup().await;
}

#[tokio::test]
async fn missing_document_and_bad_payloads_are_permanent() {
    let db = TestDb::new("jt_embed").await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("embed_document").unwrap().handler.clone();
    let e = h
        .run(&ctx(), &json!({"document_id": 987654321}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains("does not exist")),
        "{e}"
    );
    for bad in [json!({}), json!({"document_id": "7"}), json!([1])] {
        assert!(matches!(h.validate(&bad), Err(JobError::Permanent(_))));
        assert!(matches!(
            h.run(&ctx(), &bad).await,
            Err(JobError::Permanent(_))
        ));
    }
    // An empty document has no chunks but is recorded, so it is skipped next time.
    let id = insert_doc(&db, "").await;
    h.run(&ctx(), &json!({"document_id": id})).await.unwrap();
    assert!(chunks_of(&db, id).await.is_empty());
    let again = h.run(&ctx(), &json!({"document_id": id})).await.unwrap();
    assert!(again.summary.starts_with("skipped"));
    db.cleanup().await;
}

#[tokio::test]
async fn concurrent_runs_of_one_document_converge() {
    let db = TestDb::new("jt_embed").await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("embed_document").unwrap().handler.clone();
    let content = text(2000, "beta");
    let id = insert_doc(&db, &content).await;
    let p = json!({ "document_id": id });
    let runs = (0..6).map(|_| {
        let h = h.clone();
        let p = p.clone();
        tokio::spawn(async move { h.run(&ctx(), &p).await })
    });
    let outs = futures::future::join_all(runs).await;
    let written = outs
        .into_iter()
        .map(|o| o.unwrap().unwrap())
        .filter(|o| !o.summary.starts_with("skipped"))
        .count();
    assert!(written >= 1);
    let expected = chunk_text(&content, 1000, 200);
    assert_eq!(chunks_of(&db, id).await.len(), expected.len());
    db.cleanup().await;
}

// ---- OpenAI-compatible provider against a local server ----

#[derive(Clone)]
enum Reply {
    Status(u16, Option<&'static str>),
    Slow(Duration),
}

#[derive(Default)]
struct Fake {
    script: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<(Option<String>, Value)>>,
}

/// Answers from the script, then with vectors `[chars, index, 1]` in reversed order (the
/// client must sort by `index`).
async fn embeddings(
    State(f): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    f.requests.lock().unwrap().push((auth, body.clone()));
    let next = f.script.lock().unwrap().pop_front();
    match next {
        Some(Reply::Status(code, retry_after)) => {
            let mut resp = (
                StatusCode::from_u16(code).unwrap(),
                Json(json!({"error": {"message": format!("scripted {code}")}})),
            )
                .into_response();
            if let Some(ra) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", ra.parse().unwrap());
            }
            return resp;
        }
        Some(Reply::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let inputs = body["input"].as_array().cloned().unwrap_or_default();
    let mut data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let n = t.as_str().unwrap_or("").chars().count();
            json!({"object": "embedding", "index": i, "embedding": [n as f32, i as f32, 1.0]})
        })
        .collect();
    data.reverse();
    Json(json!({"object": "list", "data": data, "model": body["model"]})).into_response()
}

async fn start_fake() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let app = axum::Router::new()
        .route("/v1/embeddings", post(embeddings))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (fake, format!("http://{addr}/v1"))
}

fn openai(base_url: &str, timeout: Duration, batch: usize) -> OpenAiEmbedder {
    let cfg = OpenAiConfig {
        base_url: base_url.to_owned(),
        model: "test-model".into(),
        api_key_env: String::new(),
        timeout,
    };
    OpenAiEmbedder::new(&cfg, Some("sk-test".into()), Some(3), batch).unwrap()
}

#[tokio::test]
async fn openai_provider_orders_results_and_maps_errors() {
    let (fake, url) = start_fake().await;
    let e = openai(&url, Duration::from_millis(500), 8);
    let texts: Vec<String> = vec!["a".into(), "bbb".into(), "cc".into()];
    let v = e.embed(&texts).await.unwrap();
    assert_eq!(
        v,
        vec![
            vec![1.0, 0.0, 1.0],
            vec![3.0, 1.0, 1.0],
            vec![2.0, 2.0, 1.0]
        ]
    );
    {
        let reqs = fake.requests.lock().unwrap();
        assert_eq!(reqs[0].0.as_deref(), Some("Bearer sk-test"));
        assert_eq!(reqs[0].1["model"], "test-model");
        assert_eq!(reqs[0].1["dimensions"], 3);
        assert_eq!(reqs[0].1["input"], json!(["a", "bbb", "cc"]));
    }

    fake.script.lock().unwrap().extend([
        Reply::Status(429, Some("7")),
        Reply::Status(429, None),
        Reply::Status(500, None),
        Reply::Status(503, None),
        Reply::Status(400, None),
        Reply::Status(401, None),
        Reply::Slow(Duration::from_secs(3)),
    ]);
    let e429 = e.embed(&texts).await.unwrap_err();
    assert_eq!(e429, EmbedError::RateLimited(Some(Duration::from_secs(7))));
    assert!(matches!(
        JobError::from(e429),
        JobError::RetryAfter { after, .. } if after == Duration::from_secs(7)
    ));
    assert!(matches!(
        JobError::from(e.embed(&texts).await.unwrap_err()),
        JobError::Retry(_)
    ));
    for _ in 0..2 {
        let err = e.embed(&texts).await.unwrap_err();
        assert!(
            matches!(err, EmbedError::Unavailable(ref m) if m.contains("50")),
            "{err}"
        );
        assert!(matches!(JobError::from(err), JobError::Retry(_)));
    }
    for _ in 0..2 {
        let err = e.embed(&texts).await.unwrap_err();
        assert!(matches!(err, EmbedError::Rejected(_)), "{err}");
        assert!(matches!(JobError::from(err), JobError::Permanent(_)));
    }
    let started = std::time::Instant::now();
    let err = e.embed(&texts).await.unwrap_err();
    assert!(matches!(err, EmbedError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "timeout not applied"
    );
}

#[tokio::test]
async fn embed_document_with_http_provider_batches_and_keeps_chunks_on_429() {
    let db = TestDb::new("jt_embed").await;
    let (fake, url) = start_fake().await;
    let mut cfg = db.cfg.clone();
    cfg.embed.chunk_size = 50;
    cfg.embed.chunk_overlap = 10;
    let h = EmbedDocument::new(
        db.pool.clone(),
        &cfg.embed,
        &cfg.documents,
        Arc::new(openai(&url, Duration::from_secs(5), 2)),
    )
    .unwrap();
    let content = text(40, "gamma");
    let id = insert_doc(&db, &content).await;
    let n = chunk_text(&content, 50, 10).len();
    assert!(n >= 3);
    h.embed(id).await.unwrap();
    assert_eq!(fake.requests.lock().unwrap().len(), n.div_ceil(2));
    let rows = chunks_of(&db, id).await;
    assert_eq!(rows.len(), n);
    assert_eq!(rows[0].3, "openai/test-model/3");
    assert_eq!(rows[0].2[0], rows[0].1.chars().count() as f32);

    // Content changes, provider rate-limits: a RetryAfter, and the old chunks stay intact.
    db.exec("UPDATE {s}.documents SET content = content || ' more text' WHERE true")
        .await;
    fake.script
        .lock()
        .unwrap()
        .push_back(Reply::Status(429, Some("2")));
    let e = h.embed(id).await.unwrap_err();
    assert!(matches!(e, JobError::RetryAfter { after, .. } if after == Duration::from_secs(2)));
    assert_eq!(chunks_of(&db, id).await.len(), n);
    // A 500 mid-document: retry, nothing half-written.
    fake.script
        .lock()
        .unwrap()
        .extend([Reply::Status(200, None), Reply::Status(500, None)]);
    // (the scripted 200 is an empty-bodied success: malformed → retry as well)
    assert!(matches!(h.embed(id).await.unwrap_err(), JobError::Retry(_)));
    assert!(matches!(h.embed(id).await.unwrap_err(), JobError::Retry(_)));
    assert_eq!(chunks_of(&db, id).await.len(), n);
    h.embed(id).await.unwrap();
    assert!(chunks_of(&db, id).await.len() >= n);
    db.cleanup().await;
}

#[tokio::test]
async fn empty_huge_and_non_utf8_documents_are_skipped_or_refused_without_writing() {
    let db = TestDb::new("jt_embed").await;
    let reg = jobs::registry(db.pool.clone(), &db.cfg).unwrap();
    let h = reg.get("embed_document").unwrap().handler.clone();

    // Empty or whitespace-only: recorded with no chunks, and the outcome says why.
    for blank in ["", " \n\t "] {
        let id = insert_doc(&db, blank).await;
        let out = h.run(&ctx(), &json!({"document_id": id})).await.unwrap();
        assert!(out.summary.contains("empty"), "{out:?}");
        assert!(chunks_of(&db, id).await.is_empty());
    }

    // 5 MB: a permanent error naming the size and the limit, the old chunks untouched.
    let id = insert_doc(&db, &text(300, "delta")).await;
    h.run(&ctx(), &json!({"document_id": id})).await.unwrap();
    let before = chunks_of(&db, id).await;
    assert!(!before.is_empty());
    db.exec("UPDATE {s}.documents SET content = repeat('huge text ', 524288) WHERE true")
        .await;
    let e = h
        .run(&ctx(), &json!({"document_id": id}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains("5242880 bytes") && m.contains("max_document_bytes")),
        "{e}"
    );
    assert_eq!(chunks_of(&db, id).await, before);

    // An application table whose bytea content is not UTF-8.
    db.exec(
        "CREATE TABLE {s}.raw_docs (id bigint PRIMARY KEY, body bytea NOT NULL);
         INSERT INTO {s}.raw_docs VALUES (1, '\\x68656c6c6fff00'::bytea), (2, convert_to('héllo wörld', 'UTF8'));
         ALTER TABLE {s}.document_chunks DROP CONSTRAINT document_chunks_document_id_fkey;
         ALTER TABLE {s}.document_embedding_state DROP CONSTRAINT document_embedding_state_document_id_fkey;",
    )
    .await;
    let mut cfg = db.cfg.clone();
    cfg.documents.table = db.t("raw_docs");
    cfg.documents.content_column = "body".into();
    let raw = EmbedDocument::new(
        db.pool.clone(),
        &cfg.embed,
        &cfg.documents,
        Arc::new(jobs::embedder::LocalEmbedder::new(384, 8)),
    )
    .unwrap();
    let e = raw.embed(1).await.unwrap_err();
    assert!(
        matches!(&e, JobError::Permanent(m) if m.contains("not valid UTF-8") && m.contains("byte 5")),
        "{e}"
    );
    assert!(chunks_of(&db, 1).await.is_empty());
    raw.embed(2).await.unwrap();
    assert_eq!(chunks_of(&db, 2).await[0].1, "héllo wörld");
    db.cleanup().await;
}
