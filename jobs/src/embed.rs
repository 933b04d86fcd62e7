//! `embed_document {document_id}`: split a document into overlapping chunks, embed them in
//! batches and replace the document's chunks in one transaction. A document whose content (and
//! embedding setup) hashes to what was embedded last time is skipped.
//!
//! Bad input never half-writes: an empty document is recorded with no chunks, one over
//! `max_document_bytes` or not UTF-8, or a provider answer of the wrong length or with NaN, is a
//! permanent error before anything is written. The chunk table's `embedding` column may be
//! `real[]` or pgvector's `vector(N)` (see [`crate::vector`]): the same `real[]` value is
//! written to both, cast on assignment.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgPool, Row, TypeInfo, ValueRef};

use crate::config::{DocumentsConfig, EmbedConfig};
use crate::embedder::Embedder;
use crate::ident::{QualifiedName, db_error, lock_key, quote_ident};
use crate::{Handler, JobContext, JobError, Outcome, RetryPolicy, SetupError};

/// The envelope kind.
pub const KIND: &str = "embed_document";

/// Payload of `embed_document`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedPayload {
    /// Key of the document row.
    pub document_id: i64,
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first character (in characters, not bytes).
    pub start_char: usize,
    /// The chunk's text.
    pub text: String,
}

/// Splits `text` into chunks of at most `size` characters, each starting `overlap` characters
/// before the previous one ended. A chunk ends at whitespace when there is some in the second
/// half of the window, so words are rarely cut.
pub fn chunk_text(text: &str, size: usize, overlap: usize) -> Vec<Chunk> {
    let size = size.max(1);
    let overlap = overlap.min(size - 1);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |(b, _)| *b);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = (start + size).min(n);
        if end < n {
            let min_end = start + (size / 2).max(1);
            if let Some(ws) = (min_end..end).rev().find(|&i| chars[i].1.is_whitespace()) {
                end = ws + 1;
            }
        }
        out.push(Chunk {
            start_char: start,
            text: text[byte_at(start)..byte_at(end)].to_owned(),
        });
        if end == n {
            break;
        }
        start = end.saturating_sub(overlap).max(start + 1);
    }
    out
}

/// The `embed_document` handler.
pub struct EmbedDocument {
    pool: PgPool,
    embedder: Arc<dyn Embedder>,
    chunk_size: usize,
    chunk_overlap: usize,
    max_bytes: usize,
    lock_ns: String,
    sql_load: String,
    sql_recheck: String,
    sql_delete: String,
    sql_insert: String,
    sql_state: String,
}

impl EmbedDocument {
    /// A handler over the tables in `docs`, embedding with `embedder`.
    pub fn new(
        pool: PgPool,
        embed: &EmbedConfig,
        docs: &DocumentsConfig,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Self, SetupError> {
        let name = |key: &str, v: &str| {
            QualifiedName::parse(v)
                .map(|q| q.quoted())
                .map_err(|e| SetupError::Config(format!("jobs.documents.{key}: {e}")))
        };
        let table = name("table", &docs.table)?;
        let chunks = name("chunks_table", &docs.chunks_table)?;
        let state = name("state_table", &docs.state_table)?;
        let id = quote_ident(&docs.id_column);
        let content = quote_ident(&docs.content_column);
        Ok(EmbedDocument {
            pool,
            embedder,
            chunk_size: embed.chunk_size,
            chunk_overlap: embed.chunk_overlap,
            max_bytes: embed.max_document_bytes,
            lock_ns: format!("jobfleet.embed_document:{chunks}"),
            sql_load: format!(
                "SELECT d.{content}, md5(d.{content}::text), s.content_hash \
                 FROM {table} d LEFT JOIN {state} s ON s.document_id = d.{id} \
                 WHERE d.{id} = $1"
            ),
            sql_recheck: format!(
                "SELECT md5(d.{content}::text), \
                        (SELECT s.content_hash FROM {state} s WHERE s.document_id = $1) \
                 FROM {table} d WHERE d.{id} = $1"
            ),
            sql_delete: format!("DELETE FROM {chunks} WHERE document_id = $1"),
            sql_insert: format!(
                "INSERT INTO {chunks} (document_id, chunk_index, start_char, content, embedding, model) \
                 SELECT $1, (t.ord - 1)::int, t.start_char, t.content, \
                        ($4::real[])[(t.ord - 1) * $5 + 1 : t.ord * $5], $6 \
                 FROM unnest($2::int[], $3::text[]) WITH ORDINALITY AS t(start_char, content, ord)"
            ),
            sql_state: format!(
                "INSERT INTO {state} (document_id, content_hash, model, chunk_count, embedded_at) \
                 VALUES ($1, $2, $3, $4, now()) \
                 ON CONFLICT (document_id) DO UPDATE SET content_hash = EXCLUDED.content_hash, \
                   model = EXCLUDED.model, chunk_count = EXCLUDED.chunk_count, \
                   embedded_at = EXCLUDED.embedded_at"
            ),
        })
    }

    /// The hash that decides "unchanged": content plus everything that shapes the chunks'
    /// vectors, so a new model or chunk size re-embeds.
    fn content_hash(&self, content: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.embedder.model_id().as_bytes());
        h.update(format!("\0{}\0{}\0", self.chunk_size, self.chunk_overlap).as_bytes());
        h.update(content.as_bytes());
        hex::encode(h.finalize())
    }

    /// Splits `content` into chunks that also fit the model's input window.
    fn chunks(&self, content: &str) -> Vec<Chunk> {
        let mut out = Vec::new();
        for c in chunk_text(content, self.chunk_size, self.chunk_overlap) {
            let cuts = self.embedder.window_cuts(&c.text);
            if cuts.is_empty() {
                out.push(c);
                continue;
            }
            let bytes: Vec<usize> = c.text.char_indices().map(|(b, _)| b).collect();
            let byte_at = |i: usize| bytes.get(i).copied().unwrap_or(c.text.len());
            let mut from = 0;
            for to in cuts.into_iter().chain([bytes.len()]) {
                if to > from {
                    out.push(Chunk {
                        start_char: c.start_char + from,
                        text: c.text[byte_at(from)..byte_at(to)].to_owned(),
                    });
                    from = to;
                }
            }
        }
        out
    }

    /// Embeds `texts` and checks the answer: one vector per text, all of the provider's length,
    /// all finite. Returns them flattened, with their length.
    async fn vectors(&self, id: i64, texts: &[String]) -> Result<(Vec<f32>, usize), JobError> {
        let model = self.embedder.model_id();
        let mut flat: Vec<f32> = Vec::new();
        let mut dim = self.embedder.dimensions().unwrap_or(0);
        let mut done = 0usize;
        for batch in texts.chunks(self.embedder.batch_size().max(1)) {
            let vectors = self.embedder.embed(batch).await?;
            if vectors.len() != batch.len() {
                return Err(JobError::Permanent(format!(
                    "embedding provider {model} returned {} vectors for {} texts",
                    vectors.len(),
                    batch.len()
                )));
            }
            for v in vectors {
                if dim == 0 {
                    dim = v.len();
                }
                if v.len() != dim || dim == 0 {
                    return Err(JobError::Permanent(format!(
                        "embedding provider {model} returned a vector of length {} for chunk \
                         {done} of document {id}, expected {dim}",
                        v.len()
                    )));
                }
                if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                    return Err(JobError::Permanent(format!(
                        "embedding provider {model} returned {x} in the vector of chunk {done} \
                         of document {id}"
                    )));
                }
                flat.extend_from_slice(&v);
                done += 1;
            }
        }
        Ok((flat, dim))
    }

    /// Embeds document `id`; the handler's `run` without the JSON.
    pub async fn embed(&self, id: i64) -> Result<Outcome, JobError> {
        let row: Option<PgRow> = sqlx::query(AssertSqlSafe(self.sql_load.as_str()))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("loading document", e))?;
        let Some(row) = row else {
            return Err(JobError::Permanent(format!("document {id} does not exist")));
        };
        let content = content_of(&row, id, self.max_bytes)?;
        let content_md5: Option<String> = row
            .try_get(1)
            .map_err(|e| db_error("loading document", e))?;
        let stored_hash: Option<String> = row
            .try_get(2)
            .map_err(|e| db_error("loading document", e))?;
        let hash = self.content_hash(&content);
        if stored_hash.as_deref() == Some(hash.as_str()) {
            return Ok(Outcome::new("skipped: content unchanged"));
        }

        // Whitespace has no meaning to embed (and a zero vector has no cosine distance): an
        // empty document is recorded with no chunks.
        let chunks = if content.trim().is_empty() {
            Vec::new()
        } else {
            self.chunks(&content)
        };
        let texts: Vec<String> = chunks.iter().map(|c| c.text.clone()).collect();
        let (flat, dim) = self.vectors(id, &texts).await?;
        let starts: Vec<i32> = chunks
            .iter()
            .map(|c| i32::try_from(c.start_char).unwrap_or(i32::MAX))
            .collect();
        let model = self.embedder.model_id();

        let mut tx = self.pool.begin().await.map_err(|e| db_error("begin", e))?;
        // Serialises concurrent runs for one document, so the re-check below and the writes
        // are one step.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock_key(&self.lock_ns, &id.to_string()))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("locking document", e))?;
        let now: Option<(Option<String>, Option<String>)> =
            sqlx::query_as(AssertSqlSafe(self.sql_recheck.as_str()))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| db_error("re-reading document", e))?;
        let Some((now_md5, now_hash)) = now else {
            return Err(JobError::Permanent(format!(
                "document {id} was deleted while it was embedded"
            )));
        };
        if now_hash.as_deref() == Some(hash.as_str()) {
            return Ok(Outcome::new("skipped: embedded by a concurrent run"));
        }
        if now_md5 != content_md5 {
            // Writing vectors of the old text could overwrite those of the new text that
            // another run already stored; the next attempt embeds the current text.
            return Err(JobError::Retry(format!(
                "document {id} changed while it was embedded"
            )));
        }
        sqlx::query(AssertSqlSafe(self.sql_delete.as_str()))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("deleting old chunks", e))?;
        if !chunks.is_empty() {
            sqlx::query(AssertSqlSafe(self.sql_insert.as_str()))
                .bind(id)
                .bind(&starts)
                .bind(&texts)
                .bind(&flat)
                .bind(i32::try_from(dim).unwrap_or(i32::MAX))
                .bind(&model)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error("writing chunks", e))?;
        }
        sqlx::query(AssertSqlSafe(self.sql_state.as_str()))
            .bind(id)
            .bind(&hash)
            .bind(&model)
            .bind(i32::try_from(chunks.len()).unwrap_or(i32::MAX))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error("writing embedding state", e))?;
        tx.commit().await.map_err(|e| db_error("commit", e))?;
        if chunks.is_empty() {
            return Ok(Outcome::new(format!(
                "skipped: document {id} is empty (recorded with no chunks)"
            )));
        }
        Ok(Outcome::new(format!(
            "{} chunks written ({model})",
            chunks.len()
        )))
    }
}

#[async_trait]
impl Handler for EmbedDocument {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn default_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(600),
            timeout: Duration::from_secs(120),
        }
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        validate_payload(payload)
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let p = parse(payload)?;
        self.embed(p.document_id).await
    }
}

/// Checks an `embed_document` payload; needs neither the database nor the provider.
pub fn validate_payload(payload: &Value) -> Result<(), JobError> {
    parse(payload).map(|_| ())
}

/// The document's text: a `text` column, or a `bytea` one that must hold UTF-8 (anything else
/// is a permanent error naming the document). NULL is empty.
fn content_of(row: &PgRow, id: i64, max_bytes: usize) -> Result<String, JobError> {
    let raw = row
        .try_get_raw(0)
        .map_err(|e| db_error("loading document", e))?;
    if raw.is_null() {
        return Ok(String::new());
    }
    let ty = raw.type_info().name().to_owned();
    if !matches!(
        ty.as_str(),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "BYTEA"
    ) {
        return Err(JobError::Permanent(format!(
            "document {id}: the content column is of type {ty}; expected text or bytea"
        )));
    }
    let bytes = raw
        .as_bytes()
        .map_err(|e| JobError::Permanent(format!("document {id}: unreadable content: {e}")))?;
    if bytes.len() > max_bytes {
        return Err(JobError::Permanent(format!(
            "document {id} is {} bytes, more than jobs.embed.max_document_bytes ({max_bytes}); \
             split it or raise the limit",
            bytes.len()
        )));
    }
    String::from_utf8(bytes.to_vec()).map_err(|e| {
        JobError::Permanent(format!(
            "document {id} is not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn parse(payload: &Value) -> Result<EmbedPayload, JobError> {
    crate::parse_payload(KIND, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_overlap_and_cover_the_text() {
        let text: String = (0..500).map(|i| format!("w{i} ")).collect();
        let chunks = chunk_text(&text, 100, 20);
        assert!(chunks.len() > 1);
        let chars: Vec<char> = text.chars().collect();
        for c in &chunks {
            assert!(c.text.chars().count() <= 100);
            let expect: String = chars[c.start_char..c.start_char + c.text.chars().count()]
                .iter()
                .collect();
            assert_eq!(c.text, expect);
        }
        for w in chunks.windows(2) {
            let end = w[0].start_char + w[0].text.chars().count();
            assert!(w[1].start_char < end, "no overlap");
            assert!(end - w[1].start_char <= 20);
        }
        let last = chunks.last().unwrap();
        assert_eq!(last.start_char + last.text.chars().count(), chars.len());
    }

    #[test]
    fn chunking_edge_cases() {
        assert!(chunk_text("", 10, 2).is_empty());
        assert_eq!(chunk_text("short", 10, 2).len(), 1);
        // Multi-byte characters are never split.
        let t = "ééééééééééééééééééééé";
        let c = chunk_text(t, 4, 1);
        assert!(c.iter().all(|c| c.text.chars().count() <= 4));
        // No whitespace: hard cuts, still terminates.
        assert_eq!(chunk_text(&"x".repeat(25), 10, 9).len(), 16);
    }

    #[test]
    fn payload_validation() {
        assert!(parse(&serde_json::json!({"document_id": 4})).is_ok());
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"document_id": "x"}),
            serde_json::json!({"document_id": 1, "extra": true}),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(
                matches!(&e, JobError::Permanent(m) if m.contains("embed_document")),
                "{e}"
            );
        }
    }
}
