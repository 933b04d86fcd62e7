//! The `worker` binary: parses the command line, loads the config, runs one subcommand (each
//! is a module of `worker::cmd`), prints its error and picks the exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use worker::cmd::Cmd;

#[derive(Parser)]
#[command(name = "worker", version, about = "jobfleet worker and operator CLI")]
struct Cli {
    /// Config file (TOML); default: $JOBFLEET_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
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
    let result = rt.block_on(async {
        let (cfg, settings) = worker::app::load(args.config.as_deref())?;
        args.cmd.execute(cfg, settings).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
