//! The `worker` subcommands, one file each: the command's arguments (clap derive on its own
//! type), what it does, and how its result is printed. Each is also a library function that
//! returns data, so tests call it without the binary.

pub mod audit;
pub mod cancel;
pub mod demo;
pub mod dlq;
pub mod enqueue;
pub mod error;
pub mod job;
pub mod limit;
pub mod migrate;
pub mod pause;
pub mod queues;
pub mod run;
pub mod search;
pub mod web;
pub mod workers;

use runtime::Config;

pub use error::CliError;

use crate::config::JobSettings;

/// `worker <command>`.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Run the pools until SIGTERM/SIGINT (a second signal exits at once).
    Run,
    /// Apply the database migrations (jobs' tables, queue tables).
    Migrate(migrate::Args),
    /// Depth of every configured queue, and the running worker's pool target when it answers.
    Queues(queues::Args),
    /// Enqueue one job.
    Enqueue(enqueue::EnqueueArgs),
    /// A one-minute tour: migrate, enqueue one job of every kind plus one that fails, run them,
    /// print the results, the queue table and the DLQ entry.
    Demo,
    /// The nearest embedded chunks to a query (semantic search).
    Search(search::SearchArgs),
    /// Set, change or clear a fleet-wide limit at run time: `worker limit KIND --rate 100/min`,
    /// `--concurrency N`, `--clear` (`--queue` for a queue); no KIND lists the limits.
    Limit(limit::LimitArgs),
    /// The fleet-wide limits in force: from the config, overridden at run time, slots held.
    Limits(limit::ListArgs),
    /// Inspect, replay or purge a queue's dead-letter queue.
    Dlq {
        #[command(subcommand)]
        cmd: dlq::DlqCmd,
    },
    /// The dashboard: queues, DLQ browser with replay/purge, schedules, audit (loopback by
    /// default; elsewhere it needs JOBFLEET_WEB_TOKEN).
    Web(web::Args),
    /// The fleet: every running worker process, its pools and counts, lost ones marked.
    Workers(workers::Args),
    /// Stop receiving from a queue on every worker (running jobs finish).
    Pause(pause::PauseArgs),
    /// Receive from a paused queue again, on every worker.
    Resume(pause::ResumeArgs),
    /// Cancel one job, waiting or running: it goes to the DLQ with who cancelled it and why.
    Cancel(cancel::Args),
    /// Where a job is: running on which worker (host, pid, since when), in which DLQ and why,
    /// which schedule tick enqueued it, its cancel requests.
    Job(job::Args),
    /// The operator audit log: who paused, cancelled, replayed, purged what, and when.
    Audit(audit::Args),
}

impl Cmd {
    /// Runs the command and prints its result.
    pub async fn execute(self, cfg: Config, settings: JobSettings) -> Result<(), CliError> {
        match self {
            Cmd::Run => run::execute(cfg, settings).await,
            Cmd::Migrate(args) => migrate::execute(&cfg, &settings, &args).await,
            Cmd::Queues(args) => queues::execute(&cfg, &args).await,
            Cmd::Enqueue(args) => enqueue::execute(&cfg, &settings, &args).await,
            Cmd::Demo => {
                println!("{}", demo::run(cfg, &settings).await?);
                Ok(())
            }
            Cmd::Search(args) => search::execute(&cfg, &settings, &args).await,
            Cmd::Limit(args) => limit::execute(&cfg, &settings, &args).await,
            Cmd::Limits(args) => limit::execute_list(&cfg, &args).await,
            Cmd::Dlq { cmd } => cmd.execute(&cfg).await,
            Cmd::Web(args) => web::execute(cfg, &settings, &args).await,
            Cmd::Workers(args) => workers::execute(&cfg, &args).await,
            Cmd::Pause(args) => pause::execute_pause(&cfg, &args).await,
            Cmd::Resume(args) => pause::execute_resume(&cfg, &args).await,
            Cmd::Cancel(args) => cancel::execute(&cfg, &args).await,
            Cmd::Job(args) => job::execute(&cfg, &args).await,
            Cmd::Audit(args) => audit::execute(&cfg, &args).await,
        }
    }
}

/// Refuses a queue the config does not have, listing the ones it does.
pub(crate) fn check_queue(cfg: &Config, queue: &str) -> Result<(), CliError> {
    if cfg.queues.contains_key(queue) {
        return Ok(());
    }
    let known: Vec<&str> = cfg.queues.keys().map(String::as_str).collect();
    Err(CliError::Usage(format!(
        "queue `{queue}` is not configured (configured: {}); check the name, or pass the worker's --config",
        known.join(", ")
    )))
}
