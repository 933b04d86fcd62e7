//! Embedding providers behind one trait: the built-in deterministic [`LocalEmbedder`] (offline,
//! feature hashing), [`OpenAiEmbedder`] for any OpenAI-compatible `/embeddings` endpoint and,
//! with the `minilm` feature, [`MiniLmEmbedder`] running all-MiniLM-L6-v2 in-process.

mod local;
#[cfg(feature = "minilm")]
mod minilm;
mod openai;

use std::time::Duration;

use async_trait::async_trait;

pub use local::LocalEmbedder;
#[cfg(feature = "minilm")]
pub use minilm::MiniLmEmbedder;
pub use openai::OpenAiEmbedder;

use crate::JobError;
use crate::config::{DEFAULT_LOCAL_DIMENSIONS, EmbedConfig, Provider};

/// Why a batch could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// 429: the provider asked us to slow down (for this long, when it said).
    #[error("embedding provider rate-limited the request")]
    RateLimited(Option<Duration>),
    /// Network error, timeout, 5xx, malformed answer: another attempt may work.
    #[error("embedding provider unavailable: {0}")]
    Unavailable(String),
    /// Any other 4xx: the request itself is wrong (bad key, model, input too long).
    #[error("embedding provider rejected the request: {0}")]
    Rejected(String),
}

impl From<EmbedError> for JobError {
    fn from(e: EmbedError) -> JobError {
        match e {
            EmbedError::RateLimited(Some(after)) => JobError::RetryAfter {
                after,
                message: e.to_string(),
            },
            EmbedError::RateLimited(None) | EmbedError::Unavailable(_) => {
                JobError::Retry(e.to_string())
            }
            EmbedError::Rejected(_) => JobError::Permanent(e.to_string()),
        }
    }
}

/// Turns texts into vectors. Implementations must be deterministic enough that the same
/// `model_id` means comparable vectors: it is part of a document's content hash.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// Identifies provider, model and dimension (stored with the chunks).
    fn model_id(&self) -> String;
    /// Texts per call to [`Embedder::embed`].
    fn batch_size(&self) -> usize;
    /// Length of every vector, when known before the first call (checked at start against
    /// the `vector(N)` column).
    fn dimensions(&self) -> Option<usize>;
    /// Character offsets (ascending, inside `text`) where `text` must be cut so that every
    /// piece fits the model's input window; empty when it fits or the model has no window.
    /// `embed_document` splits its chunks there instead of letting the model truncate them.
    fn window_cuts(&self, _text: &str) -> Vec<usize> {
        Vec::new()
    }
    /// One vector per text, in order.
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Builds the provider `cfg` names.
pub fn from_config(cfg: &EmbedConfig) -> Result<Box<dyn Embedder>, crate::SetupError> {
    match cfg.provider {
        Provider::Local => Ok(Box::new(LocalEmbedder::new(
            cfg.dimensions.unwrap_or(DEFAULT_LOCAL_DIMENSIONS),
            cfg.batch_size,
        ))),
        Provider::Openai => {
            let key = if cfg.openai.api_key_env.is_empty() {
                None
            } else {
                match std::env::var(&cfg.openai.api_key_env) {
                    Ok(k) if !k.is_empty() => Some(k),
                    _ => {
                        return Err(crate::SetupError::Config(format!(
                            "jobs.embed.openai.api_key_env: environment variable {} is not set",
                            cfg.openai.api_key_env
                        )));
                    }
                }
            };
            Ok(Box::new(OpenAiEmbedder::new(
                &cfg.openai,
                key,
                cfg.dimensions,
                cfg.batch_size,
            )?))
        }
        Provider::Minilm => minilm_from_config(cfg),
    }
}

/// The dimension the configured provider will produce, when known without calling it, and a
/// name for messages.
pub fn declared_dimensions(cfg: &EmbedConfig) -> (Option<usize>, String) {
    match cfg.provider {
        Provider::Local => {
            let d = cfg.dimensions.unwrap_or(DEFAULT_LOCAL_DIMENSIONS);
            (Some(d), format!("local-fnv-v1/{d}"))
        }
        Provider::Openai => (cfg.dimensions, format!("openai/{}", cfg.openai.model)),
        Provider::Minilm => (Some(384), "minilm/all-MiniLM-L6-v2".into()),
    }
}

/// The directory of the MiniLM files: the config's, else `JOBFLEET_MINILM_DIR`.
pub fn minilm_dir(cfg: &EmbedConfig) -> Result<std::path::PathBuf, crate::SetupError> {
    match &cfg.minilm.model_dir {
        Some(d) => Ok(d.clone()),
        None => match std::env::var_os("JOBFLEET_MINILM_DIR") {
            Some(d) if !d.is_empty() => Ok(d.into()),
            _ => Err(crate::SetupError::Config(
                "jobs.embed.minilm.model_dir is not set and neither is JOBFLEET_MINILM_DIR \
                 (scripts/services.sh minilm-dir prints the directory of the packaged model)"
                    .into(),
            )),
        },
    }
}

#[cfg(feature = "minilm")]
fn minilm_from_config(cfg: &EmbedConfig) -> Result<Box<dyn Embedder>, crate::SetupError> {
    Ok(Box::new(MiniLmEmbedder::load(
        &minilm_dir(cfg)?,
        cfg.batch_size,
    )?))
}

#[cfg(not(feature = "minilm"))]
fn minilm_from_config(_cfg: &EmbedConfig) -> Result<Box<dyn Embedder>, crate::SetupError> {
    Err(crate::SetupError::Config(
        "jobs.embed.provider = \"minilm\" needs a build with the `minilm` cargo feature \
         (cargo build --features minilm)"
            .into(),
    ))
}
