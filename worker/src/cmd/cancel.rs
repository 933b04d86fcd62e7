//! `worker cancel QUEUE JOB_ID [--reason TEXT]`: the job must not run, or go on running. The
//! request is stored in the fleet's control state with its audit row; the worker that meets the
//! job dead-letters it with the reason `cancelled by <who>: <reason>`, at receive (so it works on
//! every backend, SQS and RabbitMQ included) or, if it is running, by stopping its handler
//! within one `worker.sample_interval`. A replay from the DLQ runs it after all.

use fleet::cancel::{CancelRequest, check_job_id};
use fleet::{Actor, Store};
use runtime::Config;
use serde::Serialize;

use crate::cmd::pause::fleet_error;
use crate::cmd::{CliError, check_queue};

/// `worker cancel` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The queue the job was sent to (a queue of the config).
    pub queue: String,
    /// The job id (`worker enqueue` prints it; the DLQ and the logs show it).
    pub job_id: String,
    /// Why: part of the DLQ reason and the audit row.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

/// What `worker cancel` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CancelResult {
    #[serde(flatten)]
    pub request: CancelRequest,
    /// The reason the job will carry in the DLQ.
    pub dlq_reason: String,
    /// A running job's handler stops within this long (`worker.sample_interval`).
    pub within_ms: u64,
}

/// Records the cancel request; the library call behind the command (and the dashboard).
pub async fn cancel(
    store: &Store,
    cfg: &Config,
    actor: &Actor,
    queue: &str,
    job_id: &str,
    reason: &str,
) -> Result<CancelResult, CliError> {
    check_queue(cfg, queue)?;
    check_job_id(job_id).map_err(fleet_error)?;
    let request = store
        .cancel(actor, queue, job_id, reason)
        .await
        .map_err(fleet_error)?;
    Ok(CancelResult {
        dlq_reason: request.dlq_reason(),
        request,
        within_ms: cfg.worker.sample_interval.as_millis() as u64,
    })
}

/// `worker cancel`.
pub async fn execute(cfg: &Config, args: &Args) -> Result<(), CliError> {
    // Bad input answers before any connection, so nothing is half-applied.
    check_queue(cfg, &args.queue)?;
    check_job_id(&args.job_id).map_err(fleet_error)?;
    let store = crate::app::fleet_store(cfg).await?;
    let actor = Actor::operator(&runtime::host::hostname());
    let r = cancel(&store, cfg, &actor, &args.queue, &args.job_id, &args.reason).await?;
    println!("{}", render(&r, args.json));
    Ok(())
}

/// The summary (or JSON) printed.
pub fn render(r: &CancelResult, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(r).expect("result serializes");
    }
    let within = humantime::format_duration(std::time::Duration::from_millis(r.within_ms));
    format!(
        "cancel requested for job {id} on `{q}` (by {by}).\n\
         - waiting: dead-lettered by the first worker that receives it, never run\n\
         - running: its handler is stopped within {within} and its database work rolled back\n\
         It goes to the DLQ with the reason \"{reason}\"; to run it after all: worker dlq replay {q} --error 'cancelled by'",
        id = r.request.job_id,
        q = r.request.queue,
        by = r.request.requested_by,
        reason = r.dlq_reason,
    )
}
