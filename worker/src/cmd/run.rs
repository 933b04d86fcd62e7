//! `worker run`: the pools with admin HTTP and CloudWatch, until SIGTERM/SIGINT drains them (a
//! second signal exits at once with 130; jobs still running come back after their visibility
//! timeout).

use runtime::{Config, Shutdown};

use crate::app::{App, Serve};
use crate::cmd::CliError;
use crate::config::JobSettings;

/// Runs the worker until a signal.
pub async fn execute(cfg: Config, settings: JobSettings) -> Result<(), CliError> {
    let shutdown = Shutdown::new();
    shutdown.on_signals(|| {
        tracing::info!("signal received: draining (send it again to exit at once)");
    });
    let app = App::new(cfg.clone(), &settings).await?;
    crate::app::check_vectors(&cfg, &settings).await?;
    app.run(shutdown, Serve::Everything).await?;
    Ok(())
}
