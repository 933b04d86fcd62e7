//! A provider for any OpenAI-compatible `POST {base_url}/embeddings` endpoint, mapping HTTP
//! answers onto retry decisions (429 with `Retry-After`, 5xx, other 4xx).

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{EmbedError, Embedder};
use crate::config::OpenAiConfig;

/// Longest `Retry-After` we honour; a server asking for more gets this and the job retries then.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

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

    fn dimensions(&self) -> Option<usize> {
        self.dimensions
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
    use crate::JobError;

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
