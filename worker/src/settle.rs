//! Carries out a [`Verdict`] on the broker: the one place a delivery is acked, retried,
//! dead-lettered or handed back. A write that could not reach the broker is tried again with
//! backoff while the lease holds, where the backend allows it ([`Delivery::settle_retryable`]),
//! so a short broker outage between a job's end and its ack neither runs the job twice nor
//! makes it wait out its visibility timeout. A write that still fails is logged with what
//! happens next (the broker redelivers after the visibility timeout) and reported to the
//! caller, which then counts the delivery as abandoned.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use queues::{Delivery, Envelope, QueueError};
use tokio::time::Instant;

use crate::lease::LeaseClock;
use crate::verdict::Verdict;

/// Backoff between settle attempts: quick at first (most outages seen are a restart or a
/// dropped connection, back within a second or two), capped so a longer one is still noticed
/// soon after it ends. Jittered, so the jobs caught by one outage don't retry in lockstep.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The write a verdict comes to, ready to be repeated.
enum Write<'a> {
    Ack,
    Retry(&'a Envelope, Duration),
    DeadLetter(Option<&'a Envelope>, &'a str),
    HandBack,
}

impl Write<'_> {
    async fn run(&self, delivery: &dyn Delivery) -> Result<(), QueueError> {
        match self {
            Write::Ack => delivery.ack().await,
            Write::Retry(env, delay) => delivery.retry(env, *delay).await,
            Write::DeadLetter(env, reason) => delivery.dead_letter(*env, reason).await,
            Write::HandBack => delivery.nack(Duration::ZERO).await,
        }
    }
}

/// Acts on `verdict` for `delivery`. `env` is the parsed envelope (absent for a malformed
/// body); a retry or dead-letter first records the verdict's error in its history under
/// `worker_id`. `lease` bounds the retries of a write that could not reach the broker.
/// Returns whether the broker took the write (`LeaveAlone` writes nothing: true).
pub async fn settle(
    delivery: &dyn Delivery,
    env: Option<&Envelope>,
    verdict: &Verdict,
    worker_id: &str,
    lease: &LeaseClock,
) -> bool {
    // Only a retry or a dead-letter writes the envelope back, with the failure recorded: the
    // one path that needs a copy of its own.
    let updated = match verdict {
        Verdict::Retry { error, .. } | Verdict::DeadLetter { error, .. } => env.map(|e| {
            let mut e = e.clone();
            e.record_failure(error, worker_id);
            e
        }),
        _ => None,
    };
    let write = match verdict {
        Verdict::Ack => Write::Ack,
        Verdict::Retry { error, delay } => match &updated {
            Some(env) => Write::Retry(env, *delay),
            // Nothing to re-send without an envelope; the verdict never asks for it.
            None => Write::DeadLetter(None, error),
        },
        Verdict::DeadLetter { reason, .. } => Write::DeadLetter(updated.as_ref(), reason),
        Verdict::HandBack => Write::HandBack,
        // The envelope as it came: `retry` writes a new body, so the broker's receive count
        // starts afresh and being held back never looks like a crash loop.
        Verdict::PutBack { delay } => match &updated {
            Some(env) => Write::Retry(env, *delay),
            None => Write::HandBack,
        },
        Verdict::LeaveAlone => return true,
    };
    let Err(e) = write_while_leased(delivery, &write, lease).await else {
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
        Verdict::PutBack { .. } => tracing::warn!(
            error = %e,
            "putting back a job held by a limit failed; it returns after its visibility timeout"
        ),
        Verdict::LeaveAlone => {}
    }
    false
}

/// Runs `write`; while it fails because the broker is out of reach, and the backend can take
/// the same write again, tries again with backoff until [`LeaseClock::retry_deadline`]. Each
/// attempt is cut off at that deadline too (a connect can hang on a black-holed address).
/// Between attempts the lease is renewed when half of it has gone by, as the heartbeat would
/// have done, so a write that finally lands late still meets its own lease.
async fn write_while_leased(
    delivery: &dyn Delivery,
    write: &Write<'_>,
    lease: &LeaseClock,
) -> Result<(), QueueError> {
    let mut err = match write.run(delivery).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if !delivery.settle_retryable() {
        return Err(err);
    }
    let mut delays = backoff();
    let mut attempts = 1u32;
    while err.is_unreachable() {
        let Some(delay) = delays.next() else { break };
        let deadline = lease.retry_deadline();
        if Instant::now() + delay >= deadline {
            tracing::debug!(
                attempts,
                "no time left on the lease for another settle attempt"
            );
            break;
        }
        if attempts == 1 {
            tracing::warn!(error = %err, "settle could not reach the broker; retrying while the lease holds");
        }
        tokio::time::sleep(delay).await;
        renew_if_due(delivery, lease).await;
        let deadline = lease.retry_deadline();
        attempts += 1;
        err = match tokio::time::timeout_at(deadline, write.run(delivery)).await {
            Ok(Ok(())) => {
                tracing::info!(attempts, "settled after the broker came back");
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(_) => break,
        };
        tracing::debug!(attempts, error = %err, "settle attempt failed");
    }
    Err(err)
}

/// Extends the lease if half of it has gone by since the last renewal. A failure is left to
/// the retry loop: it either finds the broker back or gives up at the deadline.
async fn renew_if_due(delivery: &dyn Delivery, lease: &LeaseClock) {
    let asked = Instant::now();
    if !lease.renewal_due(asked) {
        return;
    }
    let deadline = lease.retry_deadline();
    if let Ok(Ok(())) = tokio::time::timeout_at(deadline, delivery.extend(lease.visibility())).await
    {
        lease.renewed(asked);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;
    use queues::Message;
    use queues::error::Msg;

    use super::*;

    /// A delivery whose broker is out of reach for its first `fail` settle calls (or for good),
    /// recording when each call was made.
    struct Outage {
        msg: Message,
        retryable: bool,
        fail: u32,
        error: fn() -> QueueError,
        calls: Mutex<Vec<Instant>>,
        extends: AtomicU32,
    }

    fn unreachable() -> QueueError {
        QueueError::unavailable(
            "postgres",
            "postgres://db",
            Msg("connection refused".into()),
        )
    }

    fn lost() -> QueueError {
        QueueError::LeaseLost {
            backend: "postgres",
            id: "j1".into(),
        }
    }

    impl Outage {
        fn new(fail: u32, error: fn() -> QueueError) -> Self {
            Outage {
                msg: Message::new(b"{}".to_vec(), 1, "1"),
                retryable: true,
                fail,
                error,
                calls: Mutex::new(Vec::new()),
                extends: AtomicU32::new(0),
            }
        }

        fn call(&self) -> Result<(), QueueError> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            if calls.len() as u32 <= self.fail {
                Err((self.error)())
            } else {
                Ok(())
            }
        }

        fn calls(&self) -> Vec<Instant> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Delivery for Outage {
        fn message(&self) -> &Message {
            &self.msg
        }
        async fn ack(&self) -> queues::Result<()> {
            self.call()
        }
        async fn nack(&self, _: Duration) -> queues::Result<()> {
            self.call()
        }
        async fn retry(&self, _: &Envelope, _: Duration) -> queues::Result<()> {
            self.call()
        }
        async fn extend(&self, _: Duration) -> queues::Result<()> {
            self.extends.fetch_add(1, Ordering::SeqCst);
            Err(unreachable())
        }
        async fn dead_letter(&self, _: Option<&Envelope>, _: &str) -> queues::Result<()> {
            self.call()
        }
        fn settle_retryable(&self) -> bool {
            self.retryable
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_before_the_lease_expires() {
        let lease = LeaseClock::started(Duration::from_secs(10));
        let d = Outage::new(u32::MAX, unreachable);
        assert!(!settle(&d, None, &Verdict::Ack, "w", &lease).await);
        let calls = d.calls();
        assert!(calls.len() > 3, "only {} attempts", calls.len());
        let last = *calls.last().unwrap();
        assert!(
            last <= lease.retry_deadline() && lease.retry_deadline() < lease.until(),
            "an attempt started past the retry deadline"
        );
        // And it gave up no later than the deadline rather than sleeping on.
        assert!(Instant::now() <= lease.retry_deadline());
        assert!(
            d.extends.load(Ordering::SeqCst) > 0,
            "no renewal tried meanwhile"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_shorter_than_the_lease_is_ridden_out() {
        let lease = LeaseClock::started(Duration::from_secs(30));
        let d = Outage::new(4, unreachable);
        let env = Envelope::new("k", "q", serde_json::json!({}));
        let retry = Verdict::Retry {
            error: "boom".into(),
            delay: Duration::ZERO,
        };
        assert!(settle(&d, Some(&env), &retry, "w", &lease).await);
        assert_eq!(d.calls().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_or_a_non_retryable_backend_is_not_retried() {
        let lease = LeaseClock::started(Duration::from_secs(30));
        let d = Outage::new(u32::MAX, lost);
        assert!(!settle(&d, None, &Verdict::Ack, "w", &lease).await);
        assert_eq!(d.calls().len(), 1);

        let mut d = Outage::new(u32::MAX, unreachable);
        d.retryable = false;
        assert!(!settle(&d, None, &Verdict::HandBack, "w", &lease).await);
        assert_eq!(d.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_already_spent_gets_one_attempt() {
        let lease = LeaseClock::started(Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(3)).await;
        let d = Outage::new(u32::MAX, unreachable);
        assert!(!settle(&d, None, &Verdict::Ack, "w", &lease).await);
        assert_eq!(d.calls().len(), 1);
    }
}
