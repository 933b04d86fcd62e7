//! `scheduler` binary: argument parsing and process setup only; the work is in the library.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scheduler::{Fired, runner};
use worker::Config;

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
    let path = worker::config::config_path(cli.config.as_deref());
    let cfg = Config::load(path.as_deref())?;
    worker::telemetry::init_tracing(&cfg.log);
    let pool = runner::connect_db(&cfg)
        .await
        .with_context(|| "connecting to database.url")?;
    scheduler::ensure_schema(&pool).await?;
    let core = match cli.command {
        // Listing reads the ledger only, so it works while the broker is down.
        Command::List { .. } => runner::build_core_with(
            &cfg,
            pool.clone(),
            &cli.lease_name,
            Arc::new(runner::NoSend),
        )?,
        _ => runner::build_core(&cfg, pool.clone(), &cli.lease_name).await?,
    };
    match cli.command {
        Command::Run => {
            let handle = worker::telemetry::metrics_handle();
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let mut admin_stop = stop_rx.clone();
            let (addr, admin) = worker::admin::serve(
                cfg.scheduler.admin_addr,
                handle,
                runner::ready_check(pool),
                async move {
                    let _ = admin_stop.wait_for(|s| *s).await;
                },
            )
            .await?;
            tracing::info!(%addr, "admin HTTP listening");
            runner::run(core, shutdown_signal()).await?;
            let _ = stop_tx.send(true);
            let _ = admin.await;
        }
        Command::List { json } => {
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
        Command::Trigger { name } => match core.trigger(&name, chrono::Utc::now()).await? {
            Fired::Enqueued(id) => println!("enqueued {name}: job {id}"),
            other => anyhow::bail!("{name} was not enqueued: {other}"),
        },
    }
    Ok(())
}

/// SIGTERM (systemd, Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
