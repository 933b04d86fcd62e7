//! The PostgreSQL backend against the suite, on `$JOBFLEET_PG_URL` (default: the local `test`
//! database). The native client is `psql`, running the INSERT an API in another language runs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queues::conformance::Harness;
use queues::postgres::PgBroker;
use queues::{BackendKind, Broker, BrokerConfig, QueueError};

use crate::support::{env_or, run};

fn url() -> String {
    env_or("JOBFLEET_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
}

struct Postgres;

#[async_trait]
impl Harness for Postgres {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        let cfg = BrokerConfig::new(BackendKind::Postgres, url());
        Ok(Arc::new(PgBroker::connect(&cfg).await?))
    }

    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        // psql variables (:'name') quote the values as SQL literals, so any body goes in as-is.
        let sql = "INSERT INTO jobfleet.messages (queue, body) VALUES (:'queue', :'body');\n";
        run(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                &format!("queue={queue}"),
                "-v",
                &format!("body={body}"),
                &url(),
            ],
            Some(sql),
        )
        .await?;
        Ok(())
    }

    async fn connect_unreachable(&self) -> Option<Result<Arc<dyn Broker>, QueueError>> {
        let cfg = BrokerConfig::new(BackendKind::Postgres, "postgres://postgres@127.0.0.1:1/test");
        Some(
            PgBroker::connect(&cfg)
                .await
                .map(|b| Arc::new(b) as Arc<dyn Broker>),
        )
    }

    fn short_visibility(&self) -> Duration {
        Duration::from_secs(2)
    }
}

queues::conformance_suite!(Postgres);
