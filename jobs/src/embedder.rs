//! Embedding providers behind one trait: the built-in deterministic [`LocalEmbedder`] (offline,
//! feature hashing) and [`OpenAiEmbedder`] for any OpenAI-compatible `/embeddings` endpoint.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::JobError;
use crate::config::{DEFAULT_LOCAL_DIMENSIONS, EmbedConfig, OpenAiConfig, Provider};

/// Longest `Retry-After` we honour; a server asking for more gets this and the job retries then.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

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
    }
}

/// Deterministic bag-of-words embedder: lower-cased word unigrams and bigrams are hashed
/// (FNV-1a, fixed, so vectors never change between releases) into `dim` signed buckets and the
/// result is L2-normalised. Texts sharing words get a positive cosine similarity.
#[derive(Debug, Clone)]
pub struct LocalEmbedder {
    dim: usize,
    batch_size: usize,
}

impl LocalEmbedder {
    /// An embedder producing `dim`-long vectors.
    pub fn new(dim: usize, batch_size: usize) -> Self {
        LocalEmbedder {
            dim: dim.max(1),
            batch_size: batch_size.max(1),
        }
    }

    /// The vector of one text (all zeros for a text without words).
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        let mut prev: Option<u64> = None;
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = fnv1a(word.chars().flat_map(char::to_lowercase));
            self.add(&mut v, h, 1.0);
            if let Some(p) = prev {
                // Bigrams carry some word order; weighted lower than the words themselves.
                self.add(&mut v, p.rotate_left(17) ^ h, 0.5);
            }
            prev = Some(h);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    fn add(&self, v: &mut [f32], h: u64, w: f32) {
        let idx = (h % self.dim as u64) as usize;
        let sign = if (h >> 63) == 0 { 1.0 } else { -1.0 };
        v[idx] += sign * w;
    }
}

fn fnv1a(chars: impl Iterator<Item = char>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chars {
        let mut buf = [0u8; 4];
        for b in c.encode_utf8(&mut buf).bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model_id(&self) -> String {
        format!("local-fnv-v1/{}", self.dim)
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

/// OpenAI-compatible HTTP provider: `POST {base_url}/embeddings` with
/// `{"model", "input": [...], "dimensions"?}`.
#[derive(Debug, Clone)]
pub struct OpenAiEmbedder {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    dimensions: Option<usize>,
    batch_size: usize,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: Vec<f32>,
}

impl OpenAiEmbedder {
    /// A provider for `cfg`, authenticating with `api_key` when given.
    pub fn new(
        cfg: &OpenAiConfig,
        api_key: Option<String>,
        dimensions: Option<usize>,
        batch_size: usize,
    ) -> Result<Self, crate::SetupError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| crate::SetupError::Config(format!("jobs.embed.openai: {e}")))?;
        Ok(OpenAiEmbedder {
            client,
            url: format!("{}/embeddings", cfg.base_url.trim_end_matches('/')),
            model: cfg.model.clone(),
            api_key,
            dimensions,
            batch_size: batch_size.max(1),
        })
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

fn snippet(body: &str) -> String {
    body.chars().take(300).collect()
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn model_id(&self) -> String {
        match self.dimensions {
            Some(d) => format!("openai/{}/{d}", self.model),
            None => format!("openai/{}", self.model),
        }
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut body = serde_json::json!({ "model": self.model, "input": texts });
        if let Some(d) = self.dimensions {
            body["dimensions"] = d.into();
        }
        let mut req = self.client.post(&self.url).json(&body);
        if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| EmbedError::Unavailable(format!("POST {}: {e}", self.url)))?;
        let status = resp.status();
        if status.as_u16() == 429 {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            return Err(EmbedError::RateLimited(after));
        }
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let msg = format!("HTTP {status}: {}", snippet(&text));
            return Err(if status.is_server_error() || status.as_u16() == 408 {
                EmbedError::Unavailable(msg)
            } else {
                EmbedError::Rejected(msg)
            });
        }
        let parsed: EmbeddingsResponse = resp
            .json()
            .await
            .map_err(|e| EmbedError::Unavailable(format!("bad embeddings response: {e}")))?;
        if parsed.data.len() != texts.len() {
            return Err(EmbedError::Unavailable(format!(
                "asked for {} embeddings, got {}",
                texts.len(),
                parsed.data.len()
            )));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for item in parsed.data {
            let slot = out.get_mut(item.index).ok_or_else(|| {
                EmbedError::Unavailable(format!("embedding index {} out of range", item.index))
            })?;
            *slot = Some(item.embedding);
        }
        let out: Vec<Vec<f32>> = out
            .into_iter()
            .collect::<Option<_>>()
            .ok_or_else(|| EmbedError::Unavailable("duplicate embedding index".into()))?;
        let dim = out.first().map_or(0, Vec::len);
        if dim == 0 || out.iter().any(|v| v.len() != dim) {
            return Err(EmbedError::Unavailable(
                "embeddings of differing or zero length".into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_is_deterministic_normalised_and_similar_for_similar_text() {
        let e = LocalEmbedder::new(128, 8);
        let a = e.embed_one("The quick brown fox jumps over the lazy dog");
        let b = e.embed_one("the QUICK brown fox jumps over the lazy dog!");
        let c = e.embed_one("Quarterly revenue grew in every region");
        assert_eq!(a.len(), 128);
        assert_eq!(a, b);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
        let near = e.embed_one("a quick brown fox");
        assert!(dot(&a, &near) > dot(&a, &c));
        assert!(e.embed_one("  ,. ").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn errors_map_to_retry_decisions() {
        let after = Duration::from_secs(3);
        assert!(matches!(
            JobError::from(EmbedError::RateLimited(Some(after))),
            JobError::RetryAfter { after: a, .. } if a == after
        ));
        assert!(matches!(
            JobError::from(EmbedError::Unavailable("x".into())),
            JobError::Retry(_)
        ));
        assert!(matches!(
            JobError::from(EmbedError::Rejected("x".into())),
            JobError::Permanent(_)
        ));
    }
}
