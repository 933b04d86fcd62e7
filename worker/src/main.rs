//! The `worker` binary: argument parsing, signals, printing and exit codes. Everything else is
//! in the library (`worker::cli`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use worker::cli::{self, CliError};
use worker::{Config, Shutdown};

#[derive(Parser)]
#[command(name = "worker", version, about = "jobfleet worker and operator CLI")]
struct Cli {
    /// Config file (TOML); default: $JOBFLEET_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the pools until SIGTERM/SIGINT (a second signal exits at once).
    Run,
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, CliError> {
    let path = worker::config::config_path(path);
    let cfg = Config::load(path.as_deref())?;
    worker::telemetry::init_tracing(&cfg.log);
    Ok(cfg)
}

async fn dispatch(args: Cli) -> Result<(), CliError> {
    let cfg = load(args.config.as_deref())?;
    match args.cmd {
        Cmd::Run => {
            let shutdown = Shutdown::new();
            spawn_signal_handler(shutdown.clone());
            cli::run(cfg, shutdown).await?;
            Ok(())
        }
    }
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit now (jobs still running come back after
/// their visibility timeout).
fn spawn_signal_handler(shutdown: Shutdown) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            if n == 0 {
                tracing::info!("signal received: draining (send it again to exit at once)");
                shutdown.trigger();
            } else {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}
