//! `worker pause QUEUE [--reason TEXT]` and `worker resume QUEUE`: stop (or restart) receiving
//! from a queue on every worker of the fleet. Each worker sees the change within one
//! `worker.sample_interval`; running jobs finish; the queue's backlog stops counting toward
//! scaling while it is paused. Both write the audit row in the same transaction as the change.

use fleet::pause::Change;
use fleet::{Actor, Store};
use runtime::Config;
use serde::Serialize;

use crate::cmd::{CliError, check_queue};

/// `worker pause` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PauseArgs {
    /// A queue of the config.
    pub queue: String,
    /// Why: kept with the pause, shown by `worker queues` and the audit log.
    #[arg(long, default_value = "")]
    pub reason: String,
    #[arg(long)]
    pub json: bool,
}

/// `worker resume` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ResumeArgs {
    /// A queue of the config.
    pub queue: String,
    #[arg(long)]
    pub json: bool,
}

/// What `worker pause` / `worker resume` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PauseResult {
    pub queue: String,
    /// `true` after a pause, `false` after a resume.
    pub paused: bool,
    /// `false` when the queue already was in that state.
    pub changed: bool,
    pub by: String,
    /// How long the workers take to follow, at most (`worker.sample_interval`).
    pub within_ms: u64,
}

/// Pauses `queue` for the fleet; the library call behind the command (and the dashboard).
pub async fn pause(
    store: &Store,
    cfg: &Config,
    actor: &Actor,
    queue: &str,
    reason: &str,
) -> Result<PauseResult, CliError> {
    check_queue(cfg, queue)?;
    let change = store.pause(actor, queue, reason).await.map_err(fleet_error)?;
    Ok(result(cfg, actor, queue, true, change))
}

/// Resumes `queue` for the fleet.
pub async fn resume(
    store: &Store,
    cfg: &Config,
    actor: &Actor,
    queue: &str,
) -> Result<PauseResult, CliError> {
    check_queue(cfg, queue)?;
    let change = store.resume(actor, queue).await.map_err(fleet_error)?;
    Ok(result(cfg, actor, queue, false, change))
}

fn result(cfg: &Config, actor: &Actor, queue: &str, paused: bool, change: Change) -> PauseResult {
    PauseResult {
        queue: queue.to_owned(),
        paused,
        changed: change == Change::Done,
        by: actor.to_string(),
        within_ms: cfg.worker.sample_interval.as_millis() as u64,
    }
}

/// A control-state error as a CLI error: bad input exits 2, the rest 1.
pub(crate) fn fleet_error(e: fleet::Error) -> CliError {
    match e {
        fleet::Error::Invalid(m) => CliError::Usage(m),
        other => CliError::Failed(other.to_string()),
    }
}

/// `worker pause`.
pub async fn execute_pause(cfg: &Config, args: &PauseArgs) -> Result<(), CliError> {
    // The queue is checked before connecting: a typo answers at once, whatever the database.
    check_queue(cfg, &args.queue)?;
    let store = crate::app::fleet_store(cfg).await?;
    let actor = Actor::operator(&runtime::host::hostname());
    let r = pause(&store, cfg, &actor, &args.queue, &args.reason).await?;
    println!("{}", render(&r, args.json));
    Ok(())
}

/// `worker resume`.
pub async fn execute_resume(cfg: &Config, args: &ResumeArgs) -> Result<(), CliError> {
    check_queue(cfg, &args.queue)?;
    let store = crate::app::fleet_store(cfg).await?;
    let actor = Actor::operator(&runtime::host::hostname());
    let r = resume(&store, cfg, &actor, &args.queue).await?;
    println!("{}", render(&r, args.json));
    Ok(())
}

/// The line (or JSON) printed.
pub fn render(r: &PauseResult, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(r).expect("result serializes");
    }
    let within = humantime::format_duration(std::time::Duration::from_millis(r.within_ms));
    match (r.paused, r.changed) {
        (true, true) => format!(
            "paused `{q}` for the fleet (by {by}): every worker stops receiving from it within {within}; running jobs finish. Resume with: worker resume {q}",
            q = r.queue,
            by = r.by
        ),
        (true, false) => format!(
            "`{q}` was already paused; its reason now reads as given (by {by}). Resume with: worker resume {q}",
            q = r.queue,
            by = r.by
        ),
        (false, true) => format!(
            "resumed `{}` for the fleet (by {}): workers receive from it again within {within}",
            r.queue, r.by
        ),
        (false, false) => format!("`{}` was not paused; nothing changed", r.queue),
    }
}
