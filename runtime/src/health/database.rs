//! The PostgreSQL database both binaries need (the jobs' tables; the scheduler's lease and
//! ledger): the bounded connect at start and the probe the [`Health`](super::Health) monitor
//! runs. The probe keeps one connection of its own, so a pool busy with long jobs never reads
//! as an outage, and reconnects after a failure.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use super::startup::{StartError, Unreachable, connect_within};
use super::{Probe, probe};

/// The service name in errors, logs and `/readyz`.
pub const SERVICE: &str = "database";

/// What an operator should check when the database does not answer.
pub const HINT: &str =
    "is PostgreSQL running and reachable from here? check [database] url or JOBFLEET_DATABASE_URL";

/// Connects to `url` within `timeout` (retrying while nothing answers), or says why not.
pub async fn connect(url: &str, timeout: Duration) -> Result<PgConnection, Unreachable> {
    let refused = |reason: String| Unreachable {
        service: SERVICE.into(),
        url: queues::redact_url(url),
        timeout: None,
        reason,
        hint: HINT.into(),
    };
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| refused(format!("not a PostgreSQL URL: {e}")))?;
    connect_within(SERVICE, url, HINT, timeout, is_transient, || opts.connect())
        .await
        .map_err(|e| match e {
            StartError::Fatal(e) => refused(e.to_string()),
            StartError::Unreachable(u) => u,
        })
}

/// Errors a later attempt can get past: nothing listening yet, the network, a server still
/// starting (SQLSTATE class 57, e.g. `57P03` "the database system is starting up").
fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57")),
        _ => false,
    }
}

/// A probe of the database at `url` that starts from `conn` (the start-up connection, when
/// the caller kept it) and opens a new one when it has none or the last one failed.
pub fn prober(url: &str, conn: Option<PgConnection>) -> Probe {
    let opts: Option<PgConnectOptions> = url.parse().ok();
    let held = Arc::new(tokio::sync::Mutex::new(conn));
    probe(move || {
        let held = held.clone();
        let opts = opts.clone();
        async move {
            let mut slot = held.lock().await;
            // Taken out while in use: a probe cut off by its timeout drops a connection in an
            // unknown state instead of putting it back.
            let mut conn = match slot.take() {
                Some(c) => c,
                None => {
                    let opts = opts.ok_or("not a PostgreSQL URL")?;
                    opts.connect().await.map_err(|e| e.to_string())?
                }
            };
            conn.ping().await.map_err(|e| e.to_string())?;
            *slot = Some(conn);
            Ok(())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_named_within_the_bound_with_the_password_hidden() {
        // Port 1 on loopback: nothing listens there.
        let url = "postgres://app:hunter2@127.0.0.1:1/x";
        let t0 = std::time::Instant::now();
        let err = connect(url, Duration::from_millis(600)).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        let text = err.to_string();
        assert!(
            text.starts_with(
                "cannot connect to the database at postgres://app:***@127.0.0.1:1/x within 600ms:"
            ),
            "{text}"
        );
        assert!(text.contains("JOBFLEET_DATABASE_URL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[tokio::test]
    async fn a_real_database_connects_and_probes() {
        let url = std::env::var("JOBFLEET_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let conn = connect(&url, Duration::from_secs(5)).await.unwrap();
        let p = prober(&url, Some(conn));
        p().await.unwrap();
        p().await.unwrap();
    }
}
