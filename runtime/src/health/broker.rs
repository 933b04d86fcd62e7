//! The broker both binaries need: the bounded connect at start and the probe the
//! [`Health`](super::Health) monitor runs (the backend's own `ping`).

use std::sync::Arc;
use std::time::Duration;

use queues::{BackendKind, Broker, BrokerConfig, QueueError};

use super::startup::{StartError, connect_within};
use super::{Probe, probe};

/// The service name in errors, logs and `/readyz`.
pub const SERVICE: &str = "broker";

/// Connects the configured broker within `timeout`, retrying while it is unreachable. A
/// configuration error (bad URL, backend not built in) comes back at once as
/// [`StartError::Fatal`].
pub async fn connect(
    cfg: &BrokerConfig,
    timeout: Duration,
) -> Result<Arc<dyn Broker>, StartError<QueueError>> {
    cfg.validate().map_err(StartError::Fatal)?;
    let url = cfg
        .url
        .clone()
        .unwrap_or_else(|| "(the SDK's default endpoint)".into());
    let service = format!("{SERVICE} ({})", cfg.backend);
    connect_within(
        &service,
        &url,
        &hint(cfg),
        timeout,
        |e: &Attempt| e.0.is_transient(),
        || async { queues::connect(cfg).await.map_err(Attempt) },
    )
    .await
    .map_err(|e| match e {
        StartError::Fatal(Attempt(e)) => StartError::Fatal(e),
        StartError::Unreachable(u) => StartError::Unreachable(u),
    })
}

/// A probe of `broker`: its backend's cheapest round trip.
pub fn prober(broker: Arc<dyn Broker>) -> Probe {
    probe(move || {
        let broker = broker.clone();
        async move { broker.ping().await.map_err(|e| reason(&e)) }
    })
}

fn hint(cfg: &BrokerConfig) -> String {
    let check = match cfg.backend {
        BackendKind::Postgres => {
            "check [broker] url or JOBFLEET_BROKER_URL (without one, the PostgreSQL broker uses [database] url)"
        }
        BackendKind::Sqs => {
            "check [broker] url / region, JOBFLEET_BROKER_URL and the AWS credentials"
        }
        _ => "check [broker] url or JOBFLEET_BROKER_URL",
    };
    format!(
        "is {} running and reachable from here? {check}",
        cfg.backend
    )
}

/// One failed attempt, shown without what the start-up error says around it: an
/// `Unavailable` error already names the backend and URL, so only its cause is kept.
#[derive(Debug)]
struct Attempt(QueueError);

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&reason(&self.0))
    }
}

fn reason(e: &QueueError) -> String {
    match e {
        QueueError::Unavailable { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_broker_is_named_within_the_bound() {
        let cfg = BrokerConfig::new(BackendKind::Postgres, "postgres://app:pw@127.0.0.1:1/x");
        let err = connect(&cfg, Duration::from_millis(500))
            .await
            .err()
            .expect("nothing listens on port 1");
        let text = err.to_string();
        assert!(matches!(err, StartError::Unreachable(_)), "{text}");
        assert!(
            text.starts_with(
                "cannot connect to the broker (postgres) at postgres://app:***@127.0.0.1:1/x within 500ms: "
            ),
            "{text}"
        );
        assert!(!text.contains(":pw@"), "{text}");
    }

    #[tokio::test]
    async fn a_config_error_is_not_retried() {
        let mut cfg = BrokerConfig::new(BackendKind::Redis, "redis://127.0.0.1:1");
        cfg.namespace = "not a namespace".into();
        let t0 = std::time::Instant::now();
        let err = connect(&cfg, Duration::from_secs(30)).await.err().unwrap();
        assert!(
            matches!(err, StartError::Fatal(QueueError::Config(_))),
            "{err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
