//! Semantic search over the embedded chunks: embed the query with the configured provider and
//! return the nearest chunks by cosine distance — through the HNSW index when the chunk table
//! has a pgvector column, by an exact scan over `real[]` otherwise. `worker search` and an
//! application's API call [`Searcher::search`].

use std::sync::Arc;

use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

use crate::config::JobsConfig;
use crate::embedder::{EmbedError, Embedder};
use crate::ident::{QualifiedName, quote_ident};
use crate::vector::{self, Storage, VectorError};

/// Longest query accepted, in bytes (a query is a question, not a document).
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Most hits one search returns.
pub const MAX_LIMIT: usize = 1000;
/// Characters of a chunk shown as its snippet.
const SNIPPET_CHARS: usize = 200;

/// One nearest chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The document's key.
    pub document_id: i64,
    /// The chunk's position in the document.
    pub chunk_index: i32,
    /// The document's title, when the table has one.
    pub title: Option<String>,
    /// The start of the chunk's text.
    pub snippet: String,
    /// Cosine distance (0 = same direction, 2 = opposite).
    pub distance: f64,
}

/// Why a search failed.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query or limit is unusable; the message says which.
    #[error("{0}")]
    BadRequest(String),
    /// The provider could not embed the query.
    #[error("embedding the query: {0}")]
    Embed(#[from] EmbedError),
    /// Config, provider and chunk table disagree.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// The database refused the search.
    #[error("search query failed: {0}")]
    Database(#[source] sqlx::Error),
}

/// Runs searches over one chunk table with one provider.
pub struct Searcher {
    pool: PgPool,
    embedder: Arc<dyn Embedder>,
    storage: Storage,
    ef_search: u32,
    sql: String,
}

impl Searcher {
    /// Checks the chunk table against the config and provider (see [`vector::check`]) and
    /// prepares the query.
    pub async fn new(
        pool: PgPool,
        cfg: &JobsConfig,
        embedder: Arc<dyn Embedder>,
    ) -> Result<Self, SearchError> {
        let storage =
            vector::check(&pool, cfg, embedder.dimensions(), &embedder.model_id()).await?;
        let d = &cfg.documents;
        let name = |key: &str, v: &str| {
            QualifiedName::parse(v)
                .map(|q| q.quoted())
                .map_err(|e| SearchError::BadRequest(format!("jobs.documents.{key}: {e}")))
        };
        let chunks = name("chunks_table", &d.chunks_table)?;
        let docs = name("table", &d.table)?;
        let id = quote_ident(&d.id_column);
        let title = if d.title_column.is_empty() {
            "NULL::text".to_owned()
        } else {
            format!("d.{}::text", quote_ident(&d.title_column))
        };
        let nearest = match storage {
            // The ORDER BY must be exactly `column <=> constant` for the planner to walk the
            // HNSW index; the join to the documents comes after the LIMIT.
            Storage::Pgvector { dimensions, .. } => format!(
                "SELECT c.document_id, c.chunk_index, c.content, \
                        (c.embedding <=> $1::real[]::vector({dimensions}))::float8 AS distance \
                 FROM {chunks} c \
                 ORDER BY c.embedding <=> $1::real[]::vector({dimensions}) LIMIT $2"
            ),
            Storage::Array => format!(
                "SELECT c.document_id, c.chunk_index, c.content, \
                        1 - (SELECT sum(a::float8 * b) FROM unnest(c.embedding, $1::real[]) t(a, b)) \
                          / nullif(sqrt((SELECT sum(a::float8 * a) FROM unnest(c.embedding) a)) \
                                 * sqrt((SELECT sum(b::float8 * b) FROM unnest($1::real[]) b)), 0) \
                          AS distance \
                 FROM {chunks} c WHERE cardinality(c.embedding) = cardinality($1::real[]) \
                 ORDER BY distance NULLS LAST LIMIT $2"
            ),
        };
        let sql = format!(
            "WITH nn AS ({nearest}) \
             SELECT nn.document_id, nn.chunk_index, {title}, nn.content, nn.distance \
             FROM nn LEFT JOIN {docs} d ON d.{id} = nn.document_id \
             WHERE nn.distance IS NOT NULL ORDER BY nn.distance, nn.document_id, nn.chunk_index"
        );
        Ok(Searcher {
            pool,
            embedder,
            storage,
            ef_search: cfg.vector.ef_search,
            sql,
        })
    }

    /// The chunk table's storage, as checked when the searcher was built.
    pub fn storage(&self) -> Storage {
        self.storage
    }

    /// The SQL of a search (`$1` the query vector as `real[]`, `$2` the limit), e.g. for
    /// `EXPLAIN`.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The `limit` nearest chunks to `query`.
    pub async fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        if query.trim().is_empty() {
            return Err(SearchError::BadRequest("the query is empty".into()));
        }
        if query.len() > MAX_QUERY_BYTES {
            return Err(SearchError::BadRequest(format!(
                "the query is {} bytes, more than {MAX_QUERY_BYTES}",
                query.len()
            )));
        }
        check_limit(limit)?;
        let mut v = self.embedder.embed(&[query.to_owned()]).await?;
        let v = v
            .pop()
            .ok_or_else(|| EmbedError::Unavailable("no vector for the query".into()))?;
        self.search_vector(&v, limit).await
    }

    /// The `limit` nearest chunks to the vector `v` (already embedded).
    pub async fn search_vector(&self, v: &[f32], limit: usize) -> Result<Vec<Hit>, SearchError> {
        check_limit(limit)?;
        if v.iter().any(|x| !x.is_finite()) {
            return Err(SearchError::BadRequest(
                "the query vector has a NaN or infinite value".into(),
            ));
        }
        if let Storage::Pgvector { dimensions, .. } = self.storage
            && v.len() != dimensions
        {
            return Err(SearchError::BadRequest(format!(
                "the query vector has {} dimensions, the chunks {dimensions}",
                v.len()
            )));
        }
        let mut tx = self.pool.begin().await.map_err(SearchError::Database)?;
        if matches!(self.storage, Storage::Pgvector { .. }) {
            // The index returns at most ef_search candidates: never fewer than asked for.
            let ef = (self.ef_search as usize).max(limit).min(MAX_LIMIT);
            sqlx::query("SELECT set_config('hnsw.ef_search', $1, true)")
                .bind(ef.to_string())
                .execute(&mut *tx)
                .await
                .map_err(SearchError::Database)?;
        }
        let rows: Vec<(i64, i32, Option<String>, String, f64)> =
            sqlx::query_as(AssertSqlSafe(self.sql.as_str()))
                .bind(v)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *tx)
                .await
                .map_err(SearchError::Database)?;
        tx.commit().await.map_err(SearchError::Database)?;
        Ok(rows
            .into_iter()
            .map(|(document_id, chunk_index, title, content, distance)| Hit {
                document_id,
                chunk_index,
                title,
                snippet: snippet(&content),
                distance,
            })
            .collect())
    }
}

fn check_limit(limit: usize) -> Result<(), SearchError> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(SearchError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {limit}"
        )));
    }
    Ok(())
}

/// The first words of a chunk, whitespace collapsed, cut at a character boundary.
fn snippet(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= SNIPPET_CHARS {
        return flat;
    }
    let mut s: String = flat.chars().take(SNIPPET_CHARS).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_collapse_whitespace_and_cut_on_characters() {
        assert_eq!(snippet("  a\n\n b\tc "), "a b c");
        let long = "é".repeat(500);
        let s = snippet(&long);
        assert_eq!(s.chars().count(), SNIPPET_CHARS + 1);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn limits_are_checked() {
        assert!(check_limit(0).is_err());
        assert!(check_limit(MAX_LIMIT + 1).is_err());
        check_limit(10).unwrap();
    }
}
