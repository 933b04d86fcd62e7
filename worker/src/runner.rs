//! Runs one delivery from start to settlement: parse, look up the kind, check for a crash
//! loop, validate, run the handler (panics caught) with a timeout and a heartbeat. What that
//! comes to (an [`Outcome`]) is decided by the pure [`verdict`], carried out by
//! [`settle`](crate::settle::settle) and counted by the pool's [`Ledger`](crate::ledger::Ledger)
//! from the [`Settled`] this returns. Nothing a message contains can crash the worker: malformed
//! bodies, unknown kinds, bad payloads and panicking handlers all end in a settled delivery.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use fleet::Control;
use fleet::cancel::CancelRequest;
use fleet::limits::{Admission, Limiter};
use futures::FutureExt;
use jobs::{JobContext, Registered, Registry};
use queues::{Delivery, Envelope, QueueError};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::flag::until_set;
use crate::lease::LeaseClock;
pub use crate::ledger::Settled;
use crate::ledger::{self, MALFORMED_LABEL, UNKNOWN_LABEL};
use crate::running::RunningJobs;
use crate::settle::settle;
use crate::verdict::{self, Outcome, Verdict, verdict};

/// Runs deliveries against a registry. Cheap to share.
pub struct Runner {
    registry: Arc<Registry>,
    worker_id: String,
    /// The fleet's cancel requests, read from the snapshot (never from the database).
    control: Control,
    limiter: Limiter,
    /// The jobs whose handler is running, for the registry report.
    running: Arc<RunningJobs>,
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

/// Extends the lease every half visibility until it is lost; returns then. Transient errors
/// are retried on the next beat: the lease may still be alive. Each success moves `lease`, which
/// bounds how long a failed settle is retried afterwards.
async fn heartbeat(delivery: &dyn Delivery, lease: &LeaseClock) {
    let visibility = lease.visibility();
    let every = (visibility / 2).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let asked = Instant::now();
        match delivery.extend(visibility).await {
            Ok(()) => lease.renewed(asked),
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
            control: Control::detached(),
            limiter: Limiter::off(),
            running: Arc::default(),
        }
    }

    /// Honours the cancel requests of `control` (a fleet snapshot the worker keeps fresh).
    pub fn with_control(mut self, control: Control) -> Self {
        self.control = control;
        self
    }

    /// Takes permits from `limiter` before each handler starts (fleet-wide limits).
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// The worker id written into error histories.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The jobs whose handler is running now (kept once enabled).
    pub fn running(&self) -> &Arc<RunningJobs> {
        &self.running
    }

    /// Runs and settles one delivery from `queue`. `abort` turning true (shutdown grace over)
    /// cuts the handler off and hands the job back without delay. The caller counts the result
    /// ([`Ledger::record`](crate::ledger::Ledger::record)).
    pub async fn run(
        &self,
        queue: &str,
        visibility: Duration,
        delivery: Box<dyn Delivery>,
        abort: watch::Receiver<bool>,
    ) -> Settled {
        let lease = LeaseClock::started(visibility);
        let msg = delivery.message();
        // Borrowed, not cloned: the delivery outlives the run, and only a retry or a
        // dead-letter needs an envelope of its own (with the failure recorded).
        let env = match msg.envelope() {
            Ok(e) => e,
            Err(parse) => {
                let span =
                    tracing::warn_span!("job", job_id = %msg.id(), queue, kind = MALFORMED_LABEL);
                let outcome = Outcome::Malformed(parse.to_string());
                return self
                    .finish(&*delivery, &lease, None, None, MALFORMED_LABEL, outcome)
                    .instrument(span)
                    .await;
            }
        };
        let span = tracing::info_span!("job", job_id = %env.id, kind = %env.kind, queue, attempt = env.attempt + 1);
        async {
            let Some(reg) = self.registry.get(&env.kind) else {
                let outcome = Outcome::UnknownKind {
                    kind: env.kind.clone(),
                    known: self.registry.kinds().map(str::to_owned).collect(),
                };
                return self
                    .finish(&*delivery, &lease, Some(env), None, UNKNOWN_LABEL, outcome)
                    .await;
            };
            // Checked at receipt: on a backend that cannot delete a queued message by id
            // (SQS, RabbitMQ) this is where a cancel of a waiting job takes effect.
            let (outcome, cancel) = match self.control.cancel_for(queue, &env.id) {
                Some(req) => (cancelled(&req), Some(req)),
                None => {
                    let fleet = FleetHooks {
                        limiter: &self.limiter,
                        control: self.control.clone(),
                        running: &self.running,
                    };
                    attempt(queue, &lease, &*delivery, env, reg, fleet, abort).await
                }
            };
            let settled = self
                .finish(
                    &*delivery,
                    &lease,
                    Some(env),
                    Some(&reg.policy),
                    &env.kind,
                    outcome,
                )
                .await;
            if let (Some(req), Settled::DeadLettered { .. }) = (cancel, &settled) {
                self.control.met(&req);
            }
            settled
        }
        .instrument(span)
        .await
    }

    /// Decides, logs and settles; returns what the ledger counts.
    async fn finish(
        &self,
        delivery: &dyn Delivery,
        lease: &LeaseClock,
        env: Option<&Envelope>,
        policy: Option<&jobs::RetryPolicy>,
        kind: &str,
        outcome: Outcome,
    ) -> Settled {
        let v = verdict(env, policy, &outcome, rand::random::<f64>());
        log_decision(&outcome, &v);
        if !settle(delivery, env, &v, &self.worker_id, lease).await {
            return Settled::Abandoned;
        }
        match v {
            Verdict::Ack => Settled::Succeeded {
                kind: kind.to_owned(),
            },
            Verdict::Retry { .. } => Settled::Retried {
                kind: kind.to_owned(),
            },
            Verdict::DeadLetter { .. } => Settled::dead_lettered(kind, &outcome),
            Verdict::HandBack => Settled::HandedBack,
            Verdict::PutBack { .. } => Settled::HeldBack,
            Verdict::LeaveAlone => Settled::Abandoned,
        }
    }
}

fn cancelled(req: &CancelRequest) -> Outcome {
    Outcome::Cancelled {
        reason: req.dlq_reason(),
    }
}

/// What the fleet's control plane asks of one attempt: permits from the limits, a watch for
/// a cancel request, and the list of running jobs the registry report reads.
struct FleetHooks<'a> {
    limiter: &'a Limiter,
    control: Control,
    running: &'a RunningJobs,
}

/// Everything between finding the kind and deciding: the crash-loop check, `validate`, the
/// permits of the limits on its kind and queue, and the handler's run,
/// raced against the heartbeat, the abort flag and a cancel request arriving in the fleet
/// snapshot. Returns the cancel request that stopped it, if one did.
async fn attempt(
    queue: &str,
    lease: &LeaseClock,
    delivery: &dyn Delivery,
    env: &Envelope,
    reg: &Registered,
    fleet: FleetHooks<'_>,
    mut abort: watch::Receiver<bool>,
) -> (Outcome, Option<CancelRequest>) {
    let FleetHooks {
        limiter,
        mut control,
        running,
    } = fleet;
    let policy = &reg.policy;
    let receives = delivery.message().receive_count();
    if verdict::is_crash_loop(receives, env, policy) {
        return (Outcome::CrashLoop { receives }, None);
    }
    if let Err(e) = reg.handler.validate(&env.payload) {
        return (Outcome::Invalid(e), None);
    }
    // Held at most a quarter of the lease: the heartbeat only starts with the handler, and
    // the put-back must still find the lease alive.
    let hold = limiter.timing().refresh.min(lease.visibility() / 4);
    let _permit = tokio::select! {
        a = limiter.admit(queue, &env.kind, hold) => match a {
            Admission::Go(permit) => permit,
            Admission::HeldBack { scope, retry_after } => {
                tracing::debug!(%scope, retry_in_ms = retry_after.as_millis() as u64, "held back by a limit");
                return (Outcome::HeldBack { retry_after }, None);
            }
        },
        _ = until_set(&mut abort) => return (Outcome::Shutdown, None),
    };

    ledger::started(queue, &env.kind, env.enqueued_at);
    // Listed until this attempt returns, whichever way it ends.
    let _listed = running.start(&env.id, queue, &env.kind);
    let started = Instant::now();
    let ctx = JobContext {
        job_id: env.id.clone(),
        queue: queue.to_owned(),
        attempt: env.attempt + 1,
    };
    // Run in this task, not a spawned one: `catch_unwind` turns a panic into an outcome just as
    // a JoinError did, and leaving the select (lost lease, abort, timeout) drops the handler's
    // future, which cancels it. A spawn per job cost more than a no-op job's whole run.
    let run = AssertUnwindSafe(reg.handler.run(&ctx, &env.payload)).catch_unwind();
    let outcome = tokio::select! {
        r = tokio::time::timeout(policy.timeout, run) => match r {
            Err(_) => Outcome::TimedOut(policy.timeout),
            Ok(Ok(Ok(done))) => Outcome::Succeeded { summary: done.summary, elapsed: started.elapsed() },
            Ok(Ok(Err(e))) => Outcome::Failed(e),
            Ok(Err(panic)) => Outcome::Panicked(panic_message(panic)),
        },
        // Not settled: the redelivered twin owns the job now.
        _ = heartbeat(delivery, lease) => return (Outcome::LeaseLost, None),
        _ = until_set(&mut abort) => return (Outcome::Shutdown, None),
        // Leaving the select drops the handler's future: whatever transaction it holds is
        // rolled back, never committed.
        req = control.cancelled(queue, &env.id) => {
            tracing::warn!(requested_by = %req.requested_by, "cancel requested; stopping the handler");
            return (cancelled(&req), Some(req));
        }
    };
    ledger::ran(queue, &env.kind, started.elapsed());
    (outcome, None)
}

/// One log line per decision, at the level the case deserves.
fn log_decision(outcome: &Outcome, v: &Verdict) {
    match (outcome, v) {
        (Outcome::Succeeded { summary, elapsed }, _) => {
            tracing::info!(summary = %summary, elapsed_ms = elapsed.as_millis() as u64, "job succeeded");
        }
        (_, Verdict::Retry { error, delay }) => {
            tracing::info!(error = %error, retry_in_ms = delay.as_millis() as u64, "job failed; retrying");
        }
        (Outcome::Malformed(_), Verdict::DeadLetter { reason, .. }) => {
            tracing::warn!(reason = %reason, "malformed message; dead-lettering it as it came");
        }
        (Outcome::CrashLoop { .. }, Verdict::DeadLetter { reason, .. }) => {
            tracing::error!(%reason, "dead-lettering");
        }
        (Outcome::Invalid(_), Verdict::DeadLetter { reason, .. }) => {
            tracing::warn!(%reason, "payload failed validation; dead-lettering");
        }
        (_, Verdict::DeadLetter { reason, .. }) => tracing::warn!(%reason, "dead-lettering"),
        (_, Verdict::HandBack) => tracing::warn!("shutdown grace over; handing the job back"),
        // Logged (debug) where it was held; counted in jobfleet_limit_held_back_total.
        (_, Verdict::PutBack { .. }) => {}
        // The heartbeat logged the lost lease.
        (_, Verdict::Ack | Verdict::LeaveAlone) => {}
    }
}
