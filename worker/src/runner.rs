//! Runs one delivery from start to settlement: parse, look up the kind, validate, run the
//! handler with a timeout and a heartbeat, and then ack, retry with backoff, or dead-letter with
//! the whole error history. Nothing a message contains can crash the worker: malformed bodies,
//! unknown kinds, bad payloads and panicking handlers all end in a settled delivery.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use jobs::{JobContext, JobError, Registry, RetryPolicy};
use queues::{Delivery, Envelope, QueueError};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// How a delivery ended, for the pool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Ran and acked.
    Succeeded,
    /// Failed and put back with a delay.
    Retried,
    /// Moved to the DLQ; `failed` when an attempt ran (or was refused) and failed.
    DeadLettered { failed: bool },
    /// Handed back unrun or cut off on shutdown.
    HandedBack,
    /// Left alone: the lease was lost, or settling failed and the broker will redeliver it.
    Abandoned,
}

/// What one attempt came to.
enum Attempt {
    Done(jobs::Outcome),
    Failed(JobError),
    TimedOut(Duration),
    Panicked(String),
}

/// Runs deliveries against a registry. Cheap to share.
pub struct Runner {
    registry: Arc<Registry>,
    worker_id: String,
}

/// This process's id in error histories: `hostname/pid`.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(non-string panic payload)".into(),
        },
    }
}

/// Aborts the handler task when dropped, so no path can leave it running unattended.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Extends the lease every half visibility until it is lost; returns then. Transient errors
/// are retried on the next beat: the lease may still be alive.
async fn heartbeat(delivery: &dyn Delivery, visibility: Duration) {
    let every = (visibility / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        match delivery.extend(visibility).await {
            Ok(()) => {}
            Err(e @ QueueError::LeaseLost { .. }) => {
                tracing::warn!(error = %e, "lease lost while the job ran; cancelling it");
                return;
            }
            Err(e @ QueueError::Unsupported { .. }) => {
                // The backend holds leases by other means (e.g. a consumer channel): nothing
                // to extend, and nothing to cancel for.
                tracing::debug!(error = %e, "no heartbeat on this backend");
                std::future::pending::<()>().await;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed; trying again"),
        }
    }
}

impl Runner {
    /// A runner over `registry`, writing `worker_id` into error histories.
    pub fn new(registry: Arc<Registry>, worker_id: impl Into<String>) -> Self {
        Runner {
            registry,
            worker_id: worker_id.into(),
        }
    }

    /// The worker id written into error histories.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Runs and settles one delivery from `queue`. `abort` turning true (shutdown grace over)
    /// cuts the handler off and hands the job back without delay.
    pub async fn run(
        &self,
        queue: &str,
        visibility: Duration,
        delivery: Box<dyn Delivery>,
        abort: watch::Receiver<bool>,
    ) -> Settled {
        let msg = delivery.message();
        let env = match msg.envelope() {
            Ok(e) => e.clone(),
            Err(parse) => {
                let span =
                    tracing::warn_span!("job", job_id = %msg.id(), queue, kind = "(malformed)");
                let reason = parse.to_string();
                return async {
                    tracing::warn!(reason = %reason, "malformed message; dead-lettering it as it came");
                    count("jobfleet_jobs_dead_lettered_total", queue, "(malformed)");
                    settle_dlq(&*delivery, None, &reason, false).await
                }
                .instrument(span)
                .await;
            }
        };
        let span = tracing::info_span!("job", job_id = %env.id, kind = %env.kind, queue, attempt = env.attempt + 1);
        self.run_envelope(queue, visibility, &*delivery, env, abort)
            .instrument(span)
            .await
    }

    async fn run_envelope(
        &self,
        queue: &str,
        visibility: Duration,
        delivery: &dyn Delivery,
        mut env: Envelope,
        mut abort: watch::Receiver<bool>,
    ) -> Settled {
        let Some(reg) = self.registry.get(&env.kind) else {
            let known: Vec<&str> = self.registry.kinds().collect();
            let reason = format!(
                "unknown job kind `{}` (this worker runs: {})",
                env.kind,
                known.join(", ")
            );
            tracing::warn!(%reason, "dead-lettering");
            env.record_failure(&reason, &self.worker_id);
            // An arbitrary kind string must not become a metrics label (unbounded cardinality).
            count("jobfleet_jobs_dead_lettered_total", queue, "(unknown)");
            return settle_dlq(delivery, Some(&env), &reason, true).await;
        };
        let kind = env.kind.clone();
        let policy: RetryPolicy = reg.policy.clone();
        let max_attempts = env.max_attempts.min(policy.max_attempts).max(1);
        let attempt = env.attempt + 1;

        let receives = delivery.message().receive_count();
        if receives > max_attempts {
            let reason = format!(
                "crash loop: delivered {receives} times without being settled (max_attempts {max_attempts}); a worker probably dies running it"
            );
            tracing::error!(%reason, "dead-lettering");
            env.record_failure(&reason, &self.worker_id);
            count("jobfleet_jobs_dead_lettered_total", queue, &kind);
            return settle_dlq(delivery, Some(&env), &reason, true).await;
        }
        if let Err(e) = reg.handler.validate(&env.payload) {
            let reason = match e {
                JobError::Permanent(m) => format!("permanent: {m}"),
                other => format!("permanent: invalid payload: {other}"),
            };
            tracing::warn!(%reason, "payload failed validation; dead-lettering");
            env.record_failure(&reason, &self.worker_id);
            count("jobfleet_jobs_failed_total", queue, &kind);
            count("jobfleet_jobs_dead_lettered_total", queue, &kind);
            return settle_dlq(delivery, Some(&env), &reason, true).await;
        }

        count("jobfleet_jobs_started_total", queue, &kind);
        let started = Instant::now();
        let handler = reg.handler.clone();
        let ctx = JobContext {
            job_id: env.id.clone(),
            queue: queue.to_owned(),
            attempt,
        };
        let payload = env.payload.clone();
        // A task of its own, so a panic is caught by the runtime and comes back as a JoinError
        // instead of unwinding through the worker, and so it can be aborted on a lost lease.
        let task = tokio::spawn(async move { handler.run(&ctx, &payload).await }.in_current_span());
        let _guard = AbortOnDrop(task.abort_handle());
        let result = tokio::select! {
            r = tokio::time::timeout(policy.timeout, task) => match r {
                Err(_) => Attempt::TimedOut(policy.timeout),
                Ok(Ok(Ok(outcome))) => Attempt::Done(outcome),
                Ok(Ok(Err(e))) => Attempt::Failed(e),
                Ok(Err(join)) if join.is_panic() => Attempt::Panicked(panic_message(join.into_panic())),
                Ok(Err(join)) => Attempt::Panicked(format!("handler task ended: {join}")),
            },
            _ = heartbeat(delivery, visibility) => {
                // Not settled: the redelivered twin owns the job now.
                return Settled::Abandoned;
            }
            _ = crate::pool::until_set(&mut abort) => {
                tracing::warn!("shutdown grace over; handing the job back");
                if let Err(e) = delivery.nack(Duration::ZERO).await {
                    tracing::warn!(error = %e, "hand-back failed; the job returns after its visibility timeout");
                }
                return Settled::HandedBack;
            }
        };
        let elapsed = started.elapsed();
        metrics::histogram!("jobfleet_job_duration_seconds", "queue" => queue.to_owned(), "kind" => kind.clone())
            .record(elapsed.as_secs_f64());

        let (error, delay) = match result {
            Attempt::Done(outcome) => {
                return match delivery.ack().await {
                    Ok(()) => {
                        tracing::info!(summary = %outcome.summary, elapsed_ms = elapsed.as_millis() as u64, "job succeeded");
                        count("jobfleet_jobs_succeeded_total", queue, &kind);
                        Settled::Succeeded
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "job succeeded but the ack failed; it will run again (handlers are idempotent)");
                        Settled::Abandoned
                    }
                };
            }
            Attempt::Failed(JobError::Permanent(m)) => {
                let reason = format!("permanent: {m}");
                tracing::warn!(%reason, "job failed permanently; dead-lettering");
                env.record_failure(&reason, &self.worker_id);
                count("jobfleet_jobs_failed_total", queue, &kind);
                count("jobfleet_jobs_dead_lettered_total", queue, &kind);
                return settle_dlq(delivery, Some(&env), &reason, true).await;
            }
            Attempt::Failed(JobError::RetryAfter { after, message }) => (message, Some(after)),
            Attempt::Failed(JobError::Retry(m)) => (m, None),
            Attempt::TimedOut(t) => (
                format!("timed out after {}", humantime::format_duration(t)),
                None,
            ),
            Attempt::Panicked(m) => (format!("panicked: {m}"), None),
        };
        count("jobfleet_jobs_failed_total", queue, &kind);
        env.record_failure(&error, &self.worker_id);
        if env.attempt >= max_attempts {
            let reason = format!(
                "attempts exhausted ({}/{max_attempts}): {error}",
                env.attempt
            );
            tracing::warn!(%reason, "dead-lettering");
            count("jobfleet_jobs_dead_lettered_total", queue, &kind);
            return settle_dlq(delivery, Some(&env), &reason, true).await;
        }
        let delay = delay.unwrap_or_else(|| policy.backoff(attempt));
        match delivery.retry(&env, delay).await {
            Ok(()) => {
                tracing::info!(error = %error, retry_in_ms = delay.as_millis() as u64, "job failed; retrying");
                count("jobfleet_jobs_retried_total", queue, &kind);
                Settled::Retried
            }
            Err(e) => {
                tracing::warn!(error = %e, "retry write failed; the job returns after its visibility timeout");
                Settled::Abandoned
            }
        }
    }
}

fn count(name: &'static str, queue: &str, kind: &str) {
    metrics::counter!(name, "queue" => queue.to_owned(), "kind" => kind.to_owned()).increment(1);
}

async fn settle_dlq(
    delivery: &dyn Delivery,
    env: Option<&Envelope>,
    reason: &str,
    failed: bool,
) -> Settled {
    match delivery.dead_letter(env, reason).await {
        Ok(()) => Settled::DeadLettered { failed },
        Err(e) => {
            tracing::error!(error = %e, "dead-lettering failed; the message returns after its visibility timeout");
            Settled::Abandoned
        }
    }
}
