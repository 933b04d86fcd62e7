//! Carries out a [`Verdict`] on the broker: the one place a delivery is acked, retried,
//! dead-lettered or handed back. A failed write is logged with what happens next (the broker
//! redelivers after the visibility timeout) and reported to the caller, which then counts the
//! delivery as abandoned.

use std::time::Duration;

use queues::{Delivery, Envelope, QueueError};

use crate::verdict::Verdict;

/// Acts on `verdict` for `delivery`. `env` is the parsed envelope (absent for a malformed
/// body); a retry or dead-letter first records the verdict's error in its history under
/// `worker_id`. Returns whether the broker took the write (`LeaveAlone` writes nothing: true).
pub async fn settle(
    delivery: &dyn Delivery,
    env: Option<Envelope>,
    verdict: &Verdict,
    worker_id: &str,
) -> bool {
    let result: Result<(), QueueError> = match verdict {
        Verdict::Ack => delivery.ack().await,
        Verdict::Retry { error, delay } => match env {
            Some(mut env) => {
                env.record_failure(error, worker_id);
                delivery.retry(&env, *delay).await
            }
            // Nothing to re-send without an envelope; the verdict never asks for it.
            None => delivery.dead_letter(None, error).await,
        },
        Verdict::DeadLetter { error, reason } => {
            let env = env.map(|mut e| {
                e.record_failure(error, worker_id);
                e
            });
            delivery.dead_letter(env.as_ref(), reason).await
        }
        Verdict::HandBack => delivery.nack(Duration::ZERO).await,
        Verdict::LeaveAlone => Ok(()),
    };
    let Err(e) = result else {
        return true;
    };
    match verdict {
        Verdict::Ack => tracing::warn!(
            error = %e,
            "job succeeded but the ack failed; it will run again (handlers are idempotent)"
        ),
        Verdict::Retry { .. } => tracing::warn!(
            error = %e,
            "retry write failed; the job returns after its visibility timeout"
        ),
        Verdict::DeadLetter { .. } => tracing::error!(
            error = %e,
            "dead-lettering failed; the message returns after its visibility timeout"
        ),
        Verdict::HandBack => tracing::warn!(
            error = %e,
            "hand-back failed; the job returns after its visibility timeout"
        ),
        Verdict::LeaveAlone => {}
    }
    false
}
