//! `scheduler` binary: argument parsing and printing only; the work, including `run`'s
//! wiring, is in the library.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use runtime::Config;
use scheduler::{Fired, runner};

#[derive(Parser)]
#[command(
    name = "scheduler",
    version,
    about = "jobfleet cron scheduler: cron entries → enqueued jobs"
)]
struct Cli {
    /// Config file (else `JOBFLEET_CONFIG`, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Lease key; replicas with the same key elect one leader.
    #[arg(long, global = true, env = "JOBFLEET_SCHEDULER_LEASE", default_value = scheduler::DEFAULT_LEASE_NAME)]
    lease_name: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler (leader election, cron ticks, catch-up) until SIGTERM/Ctrl-C.
    Run,
    /// Each schedule with its next three fire times and its last enqueue.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue one job for schedule NAME now (no leadership needed).
    Trigger {
        /// Schedule name.
        name: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let path = runtime::config::config_path(cli.config.as_deref());
    let cfg = Config::load(path.as_deref())?;
    runtime::telemetry::init_tracing(&cfg.log);
    // Bounded by [scheduler] connect_timeout: an unreachable database or broker exits 1 naming
    // it, instead of a scheduler that runs blind.
    let pool = runner::connect_db(&cfg).await?;
    // Lease and ledger tables are needed before anything else; a first start applies the one
    // migrator (docs/decisions.md, "One migrator").
    migrations::ensure(&pool).await?;
    let core = |producer: Arc<dyn queues::Producer>| {
        runner::build_core_with(&cfg, pool.clone(), &cli.lease_name, producer)
    };
    match cli.command {
        Command::Run => {
            let broker = runner::connect_broker(&cfg).await?;
            runner::serve(&cfg, core(broker.clone())?, broker).await?;
        }
        // Listing reads the ledger only, so it works while the broker is down.
        Command::List { json } => {
            let core = core(Arc::new(runner::NoSend))?;
            let rows = core.overview(chrono::Utc::now(), 3).await?;
            let leader = core.lease().current_holder().await?;
            if json {
                println!("{}", scheduler::list::render_json(&rows, leader.as_deref()));
            } else {
                print!(
                    "{}",
                    scheduler::list::render_table(&rows, leader.as_deref())
                );
            }
        }
        Command::Trigger { name } => {
            let core = core(runner::connect_broker(&cfg).await?)?;
            match core.trigger(&name, chrono::Utc::now()).await? {
                Fired::Enqueued(id) => println!("enqueued {name}: job {id}"),
                other => anyhow::bail!("{name} was not enqueued: {other}"),
            }
        }
    }
    Ok(())
}
