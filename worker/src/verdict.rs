//! The runner's decision, as a pure function: given what a delivery came to ([`Outcome`]), its
//! envelope and its kind's retry policy, [`verdict`] says what to do with it ([`Verdict`]). No
//! I/O and no clock; the backoff jitter comes in as a sample, so every row of the settlement
//! table in `worker/README.md` is a plain unit test below. Acting on the verdict is
//! `settle.rs`; counting it is `ledger.rs`.

use std::time::Duration;

use jobs::{JobError, RetryPolicy};
use queues::Envelope;

/// What one delivery came to, from receipt to the end of its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The body is not a v1 envelope: the parse error.
    Malformed(String),
    /// No handler is registered for `kind`; `known` lists the kinds this worker runs.
    UnknownKind { kind: String, known: Vec<String> },
    /// Delivered `receives` times, more than it may be attempted, without ever being settled:
    /// a worker most likely dies running it.
    CrashLoop { receives: u32 },
    /// The kind's `validate` refused the payload; the handler did not run.
    Invalid(JobError),
    /// The handler returned `Ok`.
    Succeeded { summary: String, elapsed: Duration },
    /// The handler returned an error.
    Failed(JobError),
    /// The handler ran past the policy's timeout and was cut off.
    TimedOut(Duration),
    /// The handler panicked (or its task ended otherwise): the message.
    Panicked(String),
    /// The heartbeat found the lease gone; the handler was cut off.
    LeaseLost,
    /// The shutdown grace ran out; the handler was cut off.
    Shutdown,
    /// An operator cancelled the job (`worker cancel`): it was not started, or its handler was
    /// cut off. `reason` is the DLQ reason, `cancelled by <who>: <why>`.
    Cancelled { reason: String },
}

impl Outcome {
    /// Whether an attempt was made and failed: the handler failed, timed out or panicked, or
    /// `validate` refused the payload. The one rule for "failed" in every count
    /// (docs/decisions.md, "One settle path"): a delivery that never reached its handler
    /// (malformed, unknown kind, crash loop) is dead-lettered but is not a failed attempt.
    pub fn is_failed_attempt(&self) -> bool {
        matches!(
            self,
            Outcome::Invalid(_) | Outcome::Failed(_) | Outcome::TimedOut(_) | Outcome::Panicked(_)
        )
    }
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done: acknowledge it.
    Ack,
    /// Record `error` in the envelope's history and deliver it again after `delay`.
    Retry { error: String, delay: Duration },
    /// Record `error` in the envelope's history (when there is an envelope) and move it to the
    /// DLQ with `reason`.
    DeadLetter { error: String, reason: String },
    /// Give it back unchanged, visible at once, for another worker.
    HandBack,
    /// Do not touch it: another delivery of the same job owns it now.
    LeaveAlone,
}

/// Attempts a job may have: the smaller of the envelope's and the policy's, at least 1.
pub fn max_attempts(env: &Envelope, policy: &RetryPolicy) -> u32 {
    env.max_attempts.min(policy.max_attempts).max(1)
}

/// Whether a delivery received `receives` times is a crash loop rather than a job to run: it
/// was handed out more often than it may be attempted, so earlier receipts never settled.
pub fn is_crash_loop(receives: u32, env: &Envelope, policy: &RetryPolicy) -> bool {
    receives > max_attempts(env, policy)
}

/// Decides what to do with a delivery. `env` is absent only for [`Outcome::Malformed`] and
/// `policy` only before a kind is known ([`Outcome::Malformed`], [`Outcome::UnknownKind`]); a
/// failure without an envelope is dead-lettered (there is nothing to send again), and without a
/// policy it is retried with no backoff. `jitter` is a uniform sample in [0, 1) that scales the backoff
/// ([`RetryPolicy::backoff_at`]).
pub fn verdict(
    env: Option<&Envelope>,
    policy: Option<&RetryPolicy>,
    outcome: &Outcome,
    jitter: f64,
) -> Verdict {
    let max = match (env, policy) {
        (Some(e), Some(p)) => max_attempts(e, p),
        (Some(e), None) => e.max_attempts.max(1),
        // No envelope to send again: whatever failed, it can only be dead-lettered.
        (None, _) => 1,
    };
    // The attempt that just ended (1-based), as the handler saw it.
    let attempt = env.map_or(1, |e| e.attempt.saturating_add(1));
    let dead = |reason: String| Verdict::DeadLetter {
        error: reason.clone(),
        reason,
    };
    let (error, after) = match outcome {
        Outcome::Malformed(parse) => return dead(parse.clone()),
        Outcome::UnknownKind { kind, known } => {
            return dead(format!(
                "unknown job kind `{kind}` (this worker runs: {})",
                known.join(", ")
            ));
        }
        Outcome::CrashLoop { receives } => {
            return dead(format!(
                "crash loop: delivered {receives} times without being settled (max_attempts {max}); a worker probably dies running it"
            ));
        }
        Outcome::Invalid(JobError::Permanent(m)) | Outcome::Failed(JobError::Permanent(m)) => {
            return dead(format!("permanent: {m}"));
        }
        Outcome::Invalid(other) => return dead(format!("permanent: invalid payload: {other}")),
        Outcome::Succeeded { .. } => return Verdict::Ack,
        Outcome::LeaseLost => return Verdict::LeaveAlone,
        Outcome::Shutdown => return Verdict::HandBack,
        // Never retried: the operator asked for it not to run; a DLQ replay brings it back.
        Outcome::Cancelled { reason } => return dead(reason.clone()),
        Outcome::Failed(JobError::RetryAfter { after, message }) => (message.clone(), Some(*after)),
        Outcome::Failed(JobError::Retry(m)) => (m.clone(), None),
        Outcome::TimedOut(t) => (
            format!("timed out after {}", humantime::format_duration(*t)),
            None,
        ),
        Outcome::Panicked(m) => (format!("panicked: {m}"), None),
    };
    if attempt >= max {
        return Verdict::DeadLetter {
            reason: format!("attempts exhausted ({attempt}/{max}): {error}"),
            error,
        };
    }
    let delay =
        after.unwrap_or_else(|| policy.map_or(Duration::ZERO, |p| p.backoff_at(attempt, jitter)));
    Verdict::Retry { error, delay }
}

#[cfg(test)]
mod tests {
    //! One test per row of "Settling a delivery" in `worker/README.md`.

    use super::*;
    use serde_json::json;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }

    /// An envelope whose previous attempts all failed: the one just made is `failed + 1`.
    fn env_after(failed: u32) -> Envelope {
        let mut e = Envelope::new("k", "q", json!({}));
        // High, so the policy's max_attempts is the one that counts unless a test lowers it.
        e.max_attempts = 1000;
        for n in 0..failed {
            e.record_failure(format!("failure {n}"), "w");
        }
        e
    }

    fn decide(failed: u32, max: u32, outcome: Outcome, jitter: f64) -> Verdict {
        verdict(
            Some(&env_after(failed)),
            Some(&policy(max)),
            &outcome,
            jitter,
        )
    }

    fn dlq_reason(v: Verdict) -> (String, String) {
        match v {
            Verdict::DeadLetter { error, reason } => (error, reason),
            other => panic!("expected DeadLetter, got {other:?}"),
        }
    }

    #[test]
    fn malformed_body_goes_to_the_dlq_with_the_parse_error() {
        let parse = "body is not valid JSON: expected value at line 1 column 1".to_owned();
        let v = verdict(None, None, &Outcome::Malformed(parse.clone()), 0.5);
        assert_eq!(
            v,
            Verdict::DeadLetter {
                error: parse.clone(),
                reason: parse
            }
        );
    }

    #[test]
    fn unknown_kind_is_dead_lettered_naming_the_kinds_this_worker_runs() {
        let outcome = Outcome::UnknownKind {
            kind: "x".into(),
            known: vec!["embed_document".into(), "noop".into()],
        };
        let (error, reason) = dlq_reason(verdict(Some(&env_after(0)), None, &outcome, 0.5));
        assert_eq!(
            reason,
            "unknown job kind `x` (this worker runs: embed_document, noop)"
        );
        assert_eq!(error, reason, "the refusal goes into the history too");
        assert!(!outcome.is_failed_attempt());
    }

    #[test]
    fn more_receipts_than_attempts_is_a_crash_loop() {
        let e = env_after(0);
        assert!(!is_crash_loop(3, &e, &policy(3)));
        assert!(is_crash_loop(4, &e, &policy(3)));
        let mut small = e.clone();
        small.max_attempts = 2;
        assert!(
            is_crash_loop(3, &small, &policy(5)),
            "the envelope's smaller max wins"
        );

        let outcome = Outcome::CrashLoop { receives: 4 };
        let (_, reason) = dlq_reason(decide(0, 3, outcome.clone(), 0.5));
        assert!(
            reason.starts_with(
                "crash loop: delivered 4 times without being settled (max_attempts 3)"
            ),
            "{reason}"
        );
        assert!(!outcome.is_failed_attempt());
    }

    #[test]
    fn failed_validation_is_dead_lettered_at_once() {
        let outcome = Outcome::Invalid(JobError::bad_payload("sleep", "ms: expected u64"));
        let (error, reason) = dlq_reason(decide(0, 8, outcome.clone(), 0.5));
        assert_eq!(reason, "permanent: invalid sleep payload: ms: expected u64");
        assert_eq!(error, reason);
        assert!(outcome.is_failed_attempt());
        // A validate that says "retry" is still a refusal: the payload will not change.
        let (_, reason) = dlq_reason(decide(
            0,
            8,
            Outcome::Invalid(JobError::Retry("no".into())),
            0.5,
        ));
        assert_eq!(reason, "permanent: invalid payload: no");
    }

    #[test]
    fn ok_is_acked() {
        let outcome = Outcome::Succeeded {
            summary: "3 chunks".into(),
            elapsed: Duration::from_millis(5),
        };
        // Even on the last attempt.
        assert_eq!(decide(7, 8, outcome.clone(), 0.5), Verdict::Ack);
        assert!(!outcome.is_failed_attempt());
    }

    #[test]
    fn permanent_is_dead_lettered_at_once() {
        let outcome = Outcome::Failed(JobError::Permanent("document 42 does not exist".into()));
        let (error, reason) = dlq_reason(decide(0, 8, outcome.clone(), 0.5));
        assert_eq!(reason, "permanent: document 42 does not exist");
        assert_eq!(error, reason);
        assert!(outcome.is_failed_attempt());
    }

    #[test]
    fn retry_timeout_and_panic_retry_after_the_backoff_of_this_attempt() {
        for (outcome, error) in [
            (
                Outcome::Failed(JobError::Retry("lock timeout".into())),
                "lock timeout",
            ),
            (
                Outcome::TimedOut(Duration::from_millis(300)),
                "timed out after 300ms",
            ),
            (
                Outcome::Panicked("handler blew up".into()),
                "panicked: handler blew up",
            ),
        ] {
            assert!(outcome.is_failed_attempt());
            // Third attempt of eight: the ceiling is base·2² = 4 s, scaled by the sample.
            assert_eq!(
                decide(2, 8, outcome.clone(), 0.5),
                Verdict::Retry {
                    error: error.into(),
                    delay: Duration::from_secs(2)
                }
            );
            assert_eq!(
                decide(2, 8, outcome.clone(), 0.0),
                Verdict::Retry {
                    error: error.into(),
                    delay: Duration::ZERO
                }
            );
        }
    }

    #[test]
    fn retry_after_the_last_attempt_is_dead_lettered_with_the_last_error() {
        for outcome in [
            Outcome::Failed(JobError::Retry("lock timeout".into())),
            Outcome::TimedOut(Duration::from_secs(1)),
            Outcome::Panicked("boom".into()),
        ] {
            let (error, reason) = dlq_reason(decide(2, 3, outcome, 0.5));
            assert!(reason.starts_with("attempts exhausted (3/3): "), "{reason}");
            assert!(reason.ends_with(&error), "{reason} / {error}");
        }
        let (error, reason) = dlq_reason(decide(
            2,
            3,
            Outcome::Failed(JobError::Retry("lock timeout".into())),
            0.5,
        ));
        assert_eq!(reason, "attempts exhausted (3/3): lock timeout");
        assert_eq!(error, "lock timeout", "the history holds the error itself");
        // The envelope's smaller max_attempts wins over the policy's.
        let mut e = env_after(1);
        e.max_attempts = 2;
        let (_, reason) = dlq_reason(verdict(
            Some(&e),
            Some(&policy(8)),
            &Outcome::Panicked("boom".into()),
            0.5,
        ));
        assert_eq!(reason, "attempts exhausted (2/2): panicked: boom");
    }

    #[test]
    fn retry_after_uses_the_handlers_delay_and_is_exhausted_the_same_way() {
        let outcome = Outcome::Failed(JobError::RetryAfter {
            after: Duration::from_millis(300),
            message: "429 from provider".into(),
        });
        assert!(outcome.is_failed_attempt());
        assert_eq!(
            decide(0, 5, outcome.clone(), 0.99),
            Verdict::Retry {
                error: "429 from provider".into(),
                delay: Duration::from_millis(300)
            }
        );
        let (_, reason) = dlq_reason(decide(4, 5, outcome, 0.5));
        assert_eq!(reason, "attempts exhausted (5/5): 429 from provider");
    }

    #[test]
    fn backoff_grows_per_attempt_and_stays_under_the_cap() {
        let retry = Outcome::Failed(JobError::Retry("x".into()));
        let delay = |failed: u32| match decide(failed, 100, retry.clone(), 0.999_999) {
            Verdict::Retry { delay, .. } => delay,
            other => panic!("{other:?}"),
        };
        assert!(delay(0) < delay(1) && delay(1) < delay(2), "exponential");
        assert!(delay(0) <= Duration::from_secs(1));
        assert!(delay(40) <= Duration::from_secs(60), "capped");
    }

    #[test]
    fn a_lost_lease_is_left_alone() {
        assert_eq!(decide(0, 8, Outcome::LeaseLost, 0.5), Verdict::LeaveAlone);
        assert!(!Outcome::LeaseLost.is_failed_attempt());
    }

    #[test]
    fn shutdown_hands_the_job_back() {
        assert_eq!(decide(0, 8, Outcome::Shutdown, 0.5), Verdict::HandBack);
        // Not a failure, even on the last attempt: nothing is recorded against it.
        assert_eq!(decide(7, 8, Outcome::Shutdown, 0.5), Verdict::HandBack);
        assert!(!Outcome::Shutdown.is_failed_attempt());
    }

    #[test]
    fn a_cancelled_job_is_dead_lettered_with_the_operators_reason_whatever_its_attempts() {
        let reason = "cancelled by alice@ops: wrong customer".to_owned();
        for failed in [0, 3] {
            let outcome = Outcome::Cancelled {
                reason: reason.clone(),
            };
            assert_eq!(
                dlq_reason(decide(failed, 8, outcome.clone(), 0.5)),
                (reason.clone(), reason.clone())
            );
            assert!(!outcome.is_failed_attempt());
        }
    }
}
