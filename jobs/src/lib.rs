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
pub mod validate;
pub mod vector;

use std::sync::Arc;

pub use config::JobsConfig;
pub use handler::{
    Handler, JobContext, JobError, Noop, Outcome, Registered, Registry, RetryPolicy,
};
pub use validate::Validators;

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

/// The payload check of every built-in kind (the same rules the handlers apply), from the
/// `[jobs]` settings alone: no pool, no provider, no API key.
pub fn validators(cfg: &JobsConfig) -> Result<Validators, SetupError> {
    cfg.validate()?;
    let max_window = cfg.analytics.max_window;
    let partitions_cfg = cfg.partitions.clone();
    let mut v = Validators::new();
    v.insert(embed::KIND, embed::validate_payload)
        .insert(rollup::KIND, move |p| {
            rollup::validate_payload(p, max_window)
        })
        .insert(matview::KIND, matview::validate_payload)
        .insert(partitions::KIND, move |p| {
            partitions::validate_payload(p, &partitions_cfg)
        })
        .insert(Noop.kind(), |_| Ok(()));
    Ok(v)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The checks and the handlers cover the same kinds and agree on what they refuse.
    #[tokio::test]
    async fn validators_match_the_registry_without_a_database() {
        let cfg = JobsConfig::default();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let registry = registry(pool, &cfg).unwrap();
        let checks = validators(&cfg).unwrap();
        assert_eq!(
            checks.kinds().collect::<Vec<_>>(),
            registry.kinds().collect::<Vec<_>>()
        );
        let payloads = [
            (embed::KIND, json!({"document_id": 1}), true),
            (embed::KIND, json!({"document": 1}), false),
            (
                rollup::KIND,
                json!({"granularity": "hour", "from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"}),
                true,
            ),
            (
                rollup::KIND,
                json!({"granularity": "day", "from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
                false,
            ),
            (matview::KIND, json!({"view": "jobfleet.v"}), true),
            (matview::KIND, json!({"view": "a.b.c.d"}), false),
            (
                partitions::KIND,
                json!({"table": "app.events", "months_ahead": 3}),
                true,
            ),
            (
                partitions::KIND,
                json!({"table": "app.events", "months_ahead": 500}),
                false,
            ),
            ("noop", json!({}), true),
        ];
        for (kind, payload, ok) in payloads {
            let by_check = checks.check(kind, &payload).unwrap();
            let by_handler = registry.get(kind).unwrap().handler.validate(&payload);
            assert_eq!(by_check, by_handler, "{kind} {payload}");
            assert_eq!(by_check.is_ok(), ok, "{kind} {payload}: {by_check:?}");
        }
        assert!(checks.check("mystery", &json!({})).is_none());
    }

    /// Building the checks needs no API key even with the OpenAI provider; building the
    /// handlers does, and says which variable.
    #[test]
    fn validators_need_no_provider_key() {
        let mut cfg = JobsConfig::default();
        cfg.embed.provider = config::Provider::Openai;
        cfg.embed.openai.api_key_env = "JOBFLEET_TEST_SURELY_UNSET_KEY".into();
        let checks = validators(&cfg).unwrap();
        assert!(
            checks
                .check(embed::KIND, &serde_json::json!({"document_id": 7}))
                .unwrap()
                .is_ok()
        );
        let err = embedder::from_config(&cfg.embed).err().unwrap().to_string();
        assert!(err.contains("JOBFLEET_TEST_SURELY_UNSET_KEY"), "{err}");
    }
}
