//! Diagnostic job kinds for smoke tests, demos and the worker's own process-level tests
//! (SIGTERM drain, SIGKILL redelivery). They are registered only when the environment has
//! `JOBFLEET_DIAGNOSTIC_KINDS=1`, so a production worker never runs them.
//!
//! - `diag_sleep {"ms": N}`: sleeps N milliseconds (cancellable), then succeeds.
//! - `diag_fail {"message": "...", "permanent": false}`: always fails, as a retryable or a
//!   permanent error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jobs::{Handler, JobContext, JobError, Outcome, Registry, RetryPolicy};
use serde_json::Value;

/// The environment variable that turns the diagnostic kinds on.
pub const ENV: &str = "JOBFLEET_DIAGNOSTIC_KINDS";

/// Whether the environment asks for the diagnostic kinds.
pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Adds `diag_sleep` and `diag_fail` to `r` with the default policy.
pub fn register(r: &mut Registry) {
    r.register(Arc::new(Sleep), RetryPolicy::default());
    r.register(Arc::new(Fail), RetryPolicy::default());
}

/// `diag_sleep`.
pub struct Sleep;

fn ms(payload: &Value) -> Option<u64> {
    payload.get("ms").and_then(Value::as_u64)
}

#[async_trait]
impl Handler for Sleep {
    fn kind(&self) -> &'static str {
        "diag_sleep"
    }

    fn validate(&self, payload: &Value) -> Result<(), JobError> {
        ms(payload)
            .map(|_| ())
            .ok_or_else(|| JobError::bad_payload("diag_sleep", "needs {\"ms\": <integer>}"))
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let ms = ms(payload).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Outcome::new(format!("slept {ms} ms")))
    }
}

/// `diag_fail`.
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    fn kind(&self) -> &'static str {
        "diag_fail"
    }

    fn validate(&self, _payload: &Value) -> Result<(), JobError> {
        Ok(())
    }

    async fn run(&self, _ctx: &JobContext, payload: &Value) -> Result<Outcome, JobError> {
        let msg = payload
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("diag_fail always fails")
            .to_owned();
        if payload.get("permanent").and_then(Value::as_bool) == Some(true) {
            Err(JobError::Permanent(msg))
        } else {
            Err(JobError::Retry(msg))
        }
    }
}
