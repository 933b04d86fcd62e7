//! The contract between the worker and a job: a [`Handler`] per kind, what it may say about a
//! failure ([`JobError`]), its [`RetryPolicy`], and the [`Registry`] the worker looks kinds up in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a failed attempt should be treated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Try again after the policy's backoff (network blip, lock timeout, ...).
    #[error("{0}")]
    Retry(String),
    /// Try again after this long (a rate limit said so).
    #[error("{message} (retry after {})", humantime::format_duration(*.after))]
    RetryAfter { after: Duration, message: String },
    /// Retrying can't help (bad payload, missing row): dead-letter now.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl JobError {
    /// A permanent error for a payload that failed validation.
    pub fn bad_payload(kind: &str, err: impl std::fmt::Display) -> JobError {
        JobError::Permanent(format!("invalid {kind} payload: {err}"))
    }
}

/// What a successful run reports (for logs and the demo).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// One line for the log, e.g. "12 chunks written" or "skipped: content unchanged".
    pub summary: String,
}

impl Outcome {
    /// An outcome with this summary.
    pub fn new(summary: impl Into<String>) -> Self {
        Outcome {
            summary: summary.into(),
        }
    }
}

/// Retries and time limit of one kind. Configurable per kind under `[jobs.<kind>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts before the job is dead-lettered (the envelope's own `max_attempts` wins when
    /// the producer set a smaller one).
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt before jitter.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Largest retry delay.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// An attempt running longer than this is cancelled and counts as a failure.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
            timeout: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (1 = after the first failure): exponential backoff
    /// with full jitter, i.e. uniform in [0, min(cap, base·2^(attempt-1))], so a burst of
    /// failures does not come back as a burst.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.backoff_at(attempt, rand::random::<f64>())
    }

    /// [`RetryPolicy::backoff`] for a given jitter sample `unit` in [0, 1) (clamped): the
    /// deterministic part, so callers can decide with a sample drawn elsewhere and tests can
    /// pin it.
    pub fn backoff_at(&self, attempt: u32, unit: f64) -> Duration {
        let ceiling = self.backoff_ceiling(attempt);
        if ceiling.is_zero() || unit.is_nan() {
            return Duration::ZERO;
        }
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The upper bound of [`RetryPolicy::backoff`] for `attempt`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        let factor = 2f64.powi(attempt.saturating_sub(1).min(62) as i32);
        let raw = self.backoff_base.as_secs_f64() * factor;
        Duration::from_secs_f64(raw.min(self.backoff_cap.as_secs_f64()))
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Envelope id.
    pub job_id: String,
    /// Queue it came from.
    pub queue: String,
    /// This attempt, 1-based.
    pub attempt: u32,
}

/// One job kind. Handlers must be idempotent: a job can run more than once (at-least-once
/// delivery) and two workers may run the same job at once after a lease expired.
#[async_trait]
pub trait Handler: Send + Sync {
    /// The envelope `kind` this handles.
    fn kind(&self) -> &'static str;

    /// The retry policy and timeout this kind gets unless the worker's config overrides it.
    fn default_policy(&self) -> RetryPolicy {
        RetryPolicy::default()
    }

    /// Checks the payload without running anything; a bad payload is dead-lettered at once.
    fn validate(&self, payload: &Value) -> Result<(), JobError>;

    /// Runs one attempt. The worker cancels the future on timeout or lost lease, so work must
    /// be committed atomically (one transaction) or be safe to cut off.
    async fn run(&self, ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError>;
}

/// A registered kind: its handler and policy.
#[derive(Clone)]
pub struct Registered {
    /// The handler.
    pub handler: Arc<dyn Handler>,
    /// Its retry policy and timeout.
    pub policy: RetryPolicy,
}

/// Maps `kind` to handler and policy. The worker refuses (dead-letters) kinds not in here.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<String, Registered>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a kind.
    pub fn register(&mut self, handler: Arc<dyn Handler>, policy: RetryPolicy) -> &mut Self {
        self.kinds
            .insert(handler.kind().to_owned(), Registered { handler, policy });
        self
    }

    /// The handler and policy for `kind`.
    pub fn get(&self, kind: &str) -> Option<&Registered> {
        self.kinds.get(kind)
    }

    /// Overrides the policy of an already registered kind.
    pub fn set_policy(&mut self, kind: &str, policy: RetryPolicy) -> bool {
        match self.kinds.get_mut(kind) {
            Some(r) => {
                r.policy = policy;
                true
            }
            None => false,
        }
    }

    /// Registered kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

/// A handler that does nothing: for benchmarks and smoke tests of the worker.
pub struct Noop;

#[async_trait]
impl Handler for Noop {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn validate(&self, _payload: &Value) -> Result<(), JobError> {
        Ok(())
    }

    async fn run(&self, _ctx: &JobContext, _payload: &Value) -> Result<Outcome, JobError> {
        Ok(Outcome::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_at_scales_the_ceiling_by_the_sample() {
        let p = RetryPolicy {
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_at(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff_at(3, 0.25), Duration::from_secs(2));
        assert_eq!(p.backoff_at(3, 7.0), Duration::from_secs(8), "clamped to 1");
        assert_eq!(p.backoff_at(3, -1.0), Duration::ZERO, "clamped to 0");
        assert_eq!(p.backoff_at(3, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        let p = RetryPolicy {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_ceiling(1), Duration::from_secs(1));
        assert_eq!(p.backoff_ceiling(4), Duration::from_secs(8));
        assert_eq!(p.backoff_ceiling(30), Duration::from_secs(60));
        assert_eq!(p.backoff_ceiling(u32::MAX), Duration::from_secs(60));
        let samples: Vec<_> = (0..200).map(|_| p.backoff(4)).collect();
        assert!(samples.iter().all(|d| *d <= Duration::from_secs(8)));
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "not jittered");
    }

    #[test]
    fn policy_from_toml_rejects_unknown_keys() {
        let p: RetryPolicy = toml::from_str(
            "max_attempts = 3\nbackoff_base = \"500ms\"\nbackoff_cap = \"1m\"\ntimeout = \"10s\"",
        )
        .unwrap();
        assert_eq!(p.backoff_base, Duration::from_millis(500));
        assert!(toml::from_str::<RetryPolicy>("max_attempt = 3").is_err());
    }

    #[test]
    fn retry_after_reads_as_a_duration_not_debug() {
        let e = JobError::RetryAfter {
            after: Duration::from_millis(1500),
            message: "rate limited".into(),
        };
        assert_eq!(e.to_string(), "rate limited (retry after 1s 500ms)");
    }
}
