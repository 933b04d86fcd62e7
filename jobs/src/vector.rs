//! The chunk table's vector column: which storage it has (pgvector `vector(N)` or `real[]`),
//! the start-up dimension check, and the online migration `real[]` → `vector(N)` with its HNSW
//! index that `worker migrate` runs.
//!
//! The migration runs next to working `embed_document` jobs: a trigger fills the new column for
//! rows written meanwhile, existing rows are converted in batches, the index is built
//! `CONCURRENTLY`, and only the final column swap takes a short exclusive lock. Old workers keep
//! writing after the swap: their `real[]` values are cast to `vector` on assignment.

use sqlx::{AssertSqlSafe, PgPool};

use crate::config::{JobsConfig, VectorConfig, VectorStorage};
use crate::ident::{QualifiedName, quote_ident};

/// How the chunk table stores embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// pgvector `vector(N)`; `indexed` when a valid HNSW index covers it.
    Pgvector { dimensions: usize, indexed: bool },
    /// `real[]`: any length, no index, exact-scan search.
    Array,
}

/// Why the vector column could not be checked or migrated.
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// Config and database (or provider) disagree; the message names both values.
    #[error("{0}")]
    Mismatch(String),
    /// The database refused.
    #[error("{what}: {source}")]
    Database {
        what: String,
        #[source]
        source: sqlx::Error,
    },
}

fn db(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> VectorError {
    let what = what.into();
    move |source| VectorError::Database { what, source }
}

/// The chunk table named by the config, parsed.
fn chunks_name(cfg: &JobsConfig) -> Result<QualifiedName, VectorError> {
    QualifiedName::parse(&cfg.documents.chunks_table)
        .map_err(|e| VectorError::Mismatch(format!("jobs.documents.chunks_table: {e}")))
}

/// Whether the server can `CREATE EXTENSION vector`.
pub async fn extension_available(pool: &PgPool) -> Result<bool, VectorError> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')",
    )
    .fetch_one(pool)
    .await
    .map_err(db("checking for the vector extension"))
}

/// The storage of `table`'s `embedding` column.
pub async fn detect(pool: &PgPool, table: &QualifiedName) -> Result<Storage, VectorError> {
    let quoted = table.quoted();
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT t.typname::text, format_type(a.atttypid, a.atttypmod) \
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = $1::regclass AND a.attname = 'embedding' AND NOT a.attisdropped",
    )
    .bind(&quoted)
    .fetch_optional(pool)
    .await
    .map_err(db(format!("reading the columns of {quoted}")))?;
    match row {
        Some((t, _)) if t == "_float4" => Ok(Storage::Array),
        Some((t, full)) if t == "vector" => {
            let dimensions = full
                .trim_start_matches("vector(")
                .trim_end_matches(')')
                .parse()
                .map_err(|_| {
                    VectorError::Mismatch(format!(
                        "{quoted}.embedding is {full}: a vector column needs a dimension, e.g. vector(384)"
                    ))
                })?;
            let indexed = hnsw_index(pool, &quoted)
                .await?
                .is_some_and(|(_, valid)| valid);
            Ok(Storage::Pgvector {
                dimensions,
                indexed,
            })
        }
        Some((_, full)) => Err(VectorError::Mismatch(format!(
            "{quoted}.embedding is {full}; expected real[] or vector(N)"
        ))),
        None => Err(VectorError::Mismatch(format!(
            "{quoted} has no embedding column"
        ))),
    }
}

/// The HNSW index on `table`, if any: (name, valid).
async fn hnsw_index(pool: &PgPool, table: &str) -> Result<Option<(String, bool)>, VectorError> {
    sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, i.indisvalid \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
         WHERE i.indrelid = $1::regclass AND am.amname = 'hnsw' ORDER BY i.indisvalid DESC LIMIT 1",
    )
    .bind(table)
    .fetch_optional(pool)
    .await
    .map_err(db(format!("reading the indexes of {table}")))
}

/// The start-up check: the provider's dimension (when it knows it) and the column's must both
/// equal `jobs.vector.dimensions`. Returns the storage.
pub async fn check(
    pool: &PgPool,
    cfg: &JobsConfig,
    provider_dimensions: Option<usize>,
    provider: &str,
) -> Result<Storage, VectorError> {
    let table = chunks_name(cfg)?;
    let storage = detect(pool, &table).await?;
    if let Storage::Pgvector { dimensions, .. } = storage {
        check_dimensions(
            &cfg.vector,
            dimensions,
            provider_dimensions,
            provider,
            &table,
        )?;
    } else if cfg.vector.storage == VectorStorage::Pgvector {
        return Err(VectorError::Mismatch(format!(
            "jobs.vector.storage is \"pgvector\" but {}.embedding is real[]: run `worker migrate`",
            table.quoted()
        )));
    }
    Ok(storage)
}

/// [`check`] with the provider that `cfg` configures (without loading it).
pub async fn check_configured(pool: &PgPool, cfg: &JobsConfig) -> Result<Storage, VectorError> {
    let (dims, provider) = crate::embedder::declared_dimensions(&cfg.embed);
    check(pool, cfg, dims, &provider).await
}

fn check_dimensions(
    v: &VectorConfig,
    column: usize,
    provider_dimensions: Option<usize>,
    provider: &str,
    table: &QualifiedName,
) -> Result<(), VectorError> {
    if column != v.dimensions {
        return Err(VectorError::Mismatch(format!(
            "{}.embedding is vector({column}) but jobs.vector.dimensions is {}",
            table.quoted(),
            v.dimensions
        )));
    }
    if let Some(p) = provider_dimensions
        && p != v.dimensions
    {
        return Err(VectorError::Mismatch(format!(
            "embedding provider {provider} produces {p} dimensions but jobs.vector.dimensions is {}",
            v.dimensions
        )));
    }
    Ok(())
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The storage afterwards.
    pub storage: Storage,
    /// Existing chunks converted from `real[]`.
    pub converted: u64,
    /// One line for the operator.
    pub summary: String,
}

/// Brings the chunk table to the configured storage: with pgvector available (and storage not
/// `array`), converts a `real[]` column to `vector(N)` online and builds the HNSW index
/// concurrently; idempotent, and safe to re-run after an interruption. `progress` is called
/// with the running count of converted rows.
pub async fn migrate(
    pool: &PgPool,
    cfg: &JobsConfig,
    mut progress: impl FnMut(u64),
) -> Result<MigrateReport, VectorError> {
    let v = &cfg.vector;
    let table = chunks_name(cfg)?;
    let q = table.quoted();
    let before = detect(pool, &table).await?;
    if v.storage == VectorStorage::Array {
        return Ok(MigrateReport {
            storage: before,
            converted: 0,
            summary: format!("{q}.embedding: storage = \"array\", left as it is"),
        });
    }
    if matches!(before, Storage::Array) && !extension_available(pool).await? {
        if v.storage == VectorStorage::Pgvector {
            return Err(VectorError::Mismatch(
                "jobs.vector.storage is \"pgvector\" but this PostgreSQL server has no vector \
                 extension (install pgvector, or set storage = \"auto\")"
                    .into(),
            ));
        }
        return Ok(MigrateReport {
            storage: before,
            converted: 0,
            summary: format!(
                "{q}.embedding stays real[]: this PostgreSQL server has no pgvector extension, \
                 so search is an exact scan without an index"
            ),
        });
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
        .execute(pool)
        .await
        .map_err(db("CREATE EXTENSION vector"))?;
    let mut converted = 0;
    match before {
        Storage::Pgvector { dimensions, .. } => {
            check_dimensions(v, dimensions, None, "", &table)?;
        }
        Storage::Array => {
            converted = convert(pool, v, &table, &mut progress).await?;
        }
    }
    // After a conversion the index exists already (built on the new column before the swap).
    let built = ensure_index(pool, v, &table, "embedding").await? || converted_now(&before);
    let storage = detect(pool, &table).await?;
    let summary = format!(
        "{q}.embedding is vector({}){}{}",
        v.dimensions,
        if matches!(before, Storage::Array) {
            format!(", {converted} chunks converted from real[]")
        } else {
            String::new()
        },
        if built {
            ", HNSW index built"
        } else {
            ", HNSW index present"
        }
    );
    Ok(MigrateReport {
        storage,
        converted,
        summary,
    })
}

fn converted_now(before: &Storage) -> bool {
    matches!(before, Storage::Array)
}

/// `real[]` → `vector(N)` next to running writers.
async fn convert(
    pool: &PgPool,
    v: &VectorConfig,
    table: &QualifiedName,
    progress: &mut impl FnMut(u64),
) -> Result<u64, VectorError> {
    let q = table.quoted();
    let n = v.dimensions;
    let bad: Option<(i64, Option<i32>)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), min(cardinality(embedding)) FROM {q} \
         WHERE cardinality(embedding) <> {n} HAVING count(*) > 0"
    )))
    .fetch_optional(pool)
    .await
    .map_err(db(format!("checking the lengths of {q}.embedding")))?;
    if let Some((count, len)) = bad {
        return Err(VectorError::Mismatch(format!(
            "{count} chunks in {q} have embeddings of length {} but jobs.vector.dimensions is {n}: \
             set it to the model's dimension, or re-embed those documents first",
            len.unwrap_or(0)
        )));
    }
    let schema = table
        .schema
        .as_deref()
        .map(|s| format!("{}.", quote_ident(s)))
        .unwrap_or_default();
    let func = format!(
        "{schema}{}",
        quote_ident(&format!("{}_embedding_vec_sync", table.name))
    );
    let trigger = quote_ident(&format!("{}_embedding_vec_sync", table.name));
    let check = quote_ident(&format!("{}_embedding_vec_not_null", table.name));
    let exec = |sql: String, what: &'static str| async move {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(pool)
            .await
            .map_err(db(what))
    };
    // 1. A new nullable column (no rewrite) and a trigger that keeps it in step with rows
    //    that running jobs write from now on.
    exec(
        format!(
            "ALTER TABLE {q} ADD COLUMN IF NOT EXISTS embedding_vec vector({n});
             CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN NEW.embedding_vec := NEW.embedding::vector({n}); RETURN NEW; END $f$;
             DROP TRIGGER IF EXISTS {trigger} ON {q};
             CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE OF embedding ON {q}
               FOR EACH ROW EXECUTE FUNCTION {func}();"
        ),
        "adding embedding_vec and its sync trigger",
    )
    .await?;
    // 2. Existing rows in batches, each its own short transaction; rows a job holds are
    //    skipped now and caught by the next pass.
    let batch = v.migrate_batch_size;
    let mut done = 0u64;
    for skip_locked in [true, false] {
        loop {
            let r = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {q} SET embedding_vec = embedding::vector({n}) WHERE ctid = ANY(ARRAY( \
                   SELECT ctid FROM {q} WHERE embedding_vec IS NULL LIMIT {batch} FOR UPDATE{}))",
                if skip_locked { " SKIP LOCKED" } else { "" }
            )))
            .execute(pool)
            .await
            .map_err(db(format!("converting a batch of {q}")))?;
            if r.rows_affected() == 0 {
                break;
            }
            done += r.rows_affected();
            progress(done);
        }
    }
    // 3. NOT NULL proven without an exclusive lock (VALIDATE takes SHARE UPDATE EXCLUSIVE),
    //    so the swap's SET NOT NULL does not scan the table.
    exec(
        format!(
            "ALTER TABLE {q} DROP CONSTRAINT IF EXISTS {check};
             ALTER TABLE {q} ADD CONSTRAINT {check} CHECK (embedding_vec IS NOT NULL) NOT VALID;"
        ),
        "adding the not-null check",
    )
    .await?;
    exec(
        format!("ALTER TABLE {q} VALIDATE CONSTRAINT {check}"),
        "validating the not-null check",
    )
    .await?;
    // 4. The index on the new column, built without blocking writers.
    ensure_index(pool, v, table, "embedding_vec").await?;
    // 5. The swap: brief ACCESS EXCLUSIVE; a lock timeout gives way to long transactions and
    //    is retried instead of queueing every reader behind it.
    let mut attempt = 0;
    loop {
        let mut tx = pool.begin().await.map_err(db("begin"))?;
        let r = sqlx::raw_sql(AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '2s';
             LOCK TABLE {q} IN ACCESS EXCLUSIVE MODE;
             UPDATE {q} SET embedding_vec = embedding::vector({n}) WHERE embedding_vec IS NULL;
             DROP TRIGGER {trigger} ON {q};
             ALTER TABLE {q} ALTER COLUMN embedding_vec SET NOT NULL;
             ALTER TABLE {q} DROP CONSTRAINT {check};
             ALTER TABLE {q} DROP COLUMN embedding;
             ALTER TABLE {q} RENAME COLUMN embedding_vec TO embedding;
             DROP FUNCTION {func}();"
        )))
        .execute(&mut *tx)
        .await;
        match r {
            Ok(_) => {
                tx.commit()
                    .await
                    .map_err(db("committing the column swap"))?;
                break;
            }
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("55P03") && attempt < 30 =>
            {
                attempt += 1;
                drop(tx);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(db(format!("swapping {q}.embedding to vector"))(e)),
        }
    }
    Ok(done)
}

/// Builds the HNSW index on `column` unless a valid one exists (an invalid leftover of an
/// interrupted concurrent build is dropped first). Returns whether it built one.
async fn ensure_index(
    pool: &PgPool,
    v: &VectorConfig,
    table: &QualifiedName,
    column: &str,
) -> Result<bool, VectorError> {
    let q = table.quoted();
    match hnsw_index(pool, &q).await? {
        Some((_, true)) => return Ok(false),
        Some((name, false)) => {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {name}"
            )))
            .execute(pool)
            .await
            .map_err(db(format!("dropping the invalid index {name}")))?;
        }
        None => {}
    }
    let idx = quote_ident(&format!("{}_embedding_hnsw", table.name));
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {idx} ON {q} \
         USING hnsw ({} vector_cosine_ops) WITH (m = {}, ef_construction = {})",
        quote_ident(column),
        v.hnsw_m,
        v.hnsw_ef_construction
    )))
    .execute(pool)
    .await
    .map_err(db(format!("building the HNSW index on {q}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimension_mismatches_name_both_numbers() {
        let v = VectorConfig::default();
        let t = QualifiedName::new("app", "chunks");
        let e = check_dimensions(&v, 768, Some(384), "p", &t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vector(768)") && e.contains("384"), "{e}");
        let e = check_dimensions(&v, 384, Some(256), "local-fnv-v1/256", &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("256") && e.contains("384") && e.contains("local-fnv-v1"),
            "{e}"
        );
        check_dimensions(&v, 384, Some(384), "p", &t).unwrap();
        check_dimensions(&v, 384, None, "p", &t).unwrap();
    }
}
