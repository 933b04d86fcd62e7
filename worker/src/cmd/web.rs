//! `worker web [--addr 127.0.0.1:9300] [--read-only]`: the dashboard (crate `web`) over this
//! config's broker and database. Off loopback it needs `JOBFLEET_WEB_TOKEN` (read from the
//! environment only, so it never shows in `ps`).

use std::net::SocketAddr;
use std::time::Duration;

use runtime::{Config, Shutdown};

use crate::cmd::CliError;
use crate::config::JobSettings;

/// The environment variable holding the dashboard's sign-in token.
pub const TOKEN_ENV: &str = "JOBFLEET_WEB_TOKEN";

/// `worker web` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where to listen. Anything but loopback needs JOBFLEET_WEB_TOKEN.
    #[arg(long, default_value = "127.0.0.1:9300")]
    pub addr: SocketAddr,
    /// Show everything, change nothing: no action buttons, every POST refused.
    #[arg(long)]
    pub read_only: bool,
    /// How often the dashboard samples the queues (charts, live refresh).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
}

/// Checks the bind policy, connects, serves until SIGTERM/SIGINT.
pub async fn execute(cfg: Config, settings: &JobSettings, args: &Args) -> Result<(), CliError> {
    let mut opts = ::web::WebOptions::new(args.addr);
    // The kinds `worker limit` accepts, so the queue page limits exactly those.
    opts.kinds = crate::app::validators(settings)?
        .kinds()
        .map(str::to_owned)
        .collect();
    opts.read_only = args.read_only;
    opts.token = std::env::var(TOKEN_ENV).ok();
    opts.sample_every = args.sample_every;
    // Refuse before connecting anything: a wrong address is a usage error.
    let listener = ::web::server::bind(&opts).await.map_err(|e| match e {
        e @ (::web::WebError::NeedsToken { .. } | ::web::WebError::EmptyToken) => {
            CliError::Usage(e.to_string())
        }
        e => CliError::Failed(e.to_string()),
    })?;
    let broker = crate::app::connect(&cfg).await?;
    runtime::health::database::connect(&cfg.database.url, cfg.worker.connect_timeout).await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy(&cfg.database.url)
        .map_err(|e| CliError::Usage(format!("database.url is not usable: {e}")))?;
    // The audit log's table; the same one migrator `worker migrate` runs.
    migrations::ensure(&pool)
        .await
        .map_err(|e| CliError::Failed(format!("applying migrations: {e}")))?;
    let shutdown = Shutdown::new();
    shutdown.on_signals(|| {});
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    println!(
        "jobfleet dashboard on http://{local}/{}{}",
        if args.read_only { " (read-only)" } else { "" },
        if opts.token.is_some() {
            " (sign in with JOBFLEET_WEB_TOKEN)"
        } else {
            ""
        }
    );
    ::web::serve(listener, cfg, broker, pool, opts, shutdown)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}
