//! jobfleet's job handlers, all against PostgreSQL and all idempotent: document embedding,
//! analytics rollups, materialized-view refresh and monthly partition creation, plus the
//! [`Registry`] that maps an envelope's `kind` to its handler and retry policy, and semantic
//! search over the embedded chunks ([`search`], storage in [`vector`]).

pub mod config;
pub mod embed;
pub mod embedder;
pub mod handler;
pub mod ident;
pub mod matview;
pub mod partitions;
pub mod rollup;
pub mod search;
pub mod testkit;
pub mod vector;

use std::sync::Arc;

pub use config::JobsConfig;
pub use handler::{
    Handler, JobContext, JobError, Noop, Outcome, Registered, Registry, RetryPolicy,
};

/// The project's migrations (`migrations/*.sql`), applied by `worker migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Why the registry could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting in `[jobs]` is wrong.
    #[error("invalid [jobs] config: {0}")]
    Config(String),
}

/// Every built-in kind with its default policy, using `pool` for the application database.
pub fn registry(pool: sqlx::PgPool, cfg: &JobsConfig) -> Result<Registry, SetupError> {
    cfg.validate()?;
    let embedder: Arc<dyn embedder::Embedder> = Arc::from(embedder::from_config(&cfg.embed)?);
    let handlers: Vec<Arc<dyn Handler>> = vec![
        Arc::new(embed::EmbedDocument::new(
            pool.clone(),
            &cfg.embed,
            &cfg.documents,
            embedder,
        )?),
        Arc::new(rollup::RollupAnalytics::new(pool.clone(), &cfg.analytics)?),
        Arc::new(matview::RefreshMatview::new(pool.clone(), &cfg.matview)?),
        Arc::new(partitions::EnsurePartitions::new(pool, &cfg.partitions)?),
        Arc::new(Noop),
    ];
    let mut r = Registry::new();
    for h in handlers {
        let policy = h.default_policy();
        r.register(h, policy);
    }
    Ok(r)
}

/// Decodes a payload, which must be a JSON object (serde would also take an array for a
/// struct, which no producer means).
pub(crate) fn parse_payload<T: serde::de::DeserializeOwned>(
    kind: &str,
    payload: &serde_json::Value,
) -> Result<T, JobError> {
    if !payload.is_object() {
        return Err(JobError::bad_payload(kind, "payload must be a JSON object"));
    }
    T::deserialize(payload).map_err(|e| JobError::bad_payload(kind, e))
}
