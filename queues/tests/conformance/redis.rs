//! The Redis backend against the shared suite, on the Redis at `$REDIS_URL`
//! (default `redis://127.0.0.1:6379`). Each harness uses its own random key namespace, and
//! foreign-client messages are written with `redis-cli`, exactly as another language would.

use std::sync::Arc;

use async_trait::async_trait;
use queues::conformance::Harness;
use queues::redis::RedisBroker;
use queues::{BackendKind, Broker, BrokerConfig, QueueError};

use crate::support::{env_or, run};

struct Redis {
    cfg: BrokerConfig,
}

impl Redis {
    fn new() -> Self {
        let mut cfg = BrokerConfig::new(
            BackendKind::Redis,
            env_or("REDIS_URL", "redis://127.0.0.1:6379"),
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        cfg.namespace = format!("jftest-{}", &id[..12]);
        Redis { cfg }
    }
}

#[async_trait]
impl Harness for Redis {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(RedisBroker::connect(&self.cfg).await?))
    }

    /// The documented one-command enqueue: `LPUSH <namespace>:<queue>:ready '<json>'`.
    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        let url = self.cfg.url_or_default();
        let key = format!("{}:{queue}:ready", self.cfg.namespace);
        run("redis-cli", &["-u", url, "LPUSH", &key, body], None).await?;
        Ok(())
    }

    async fn connect_unreachable(&self) -> Option<Result<Arc<dyn Broker>, QueueError>> {
        let cfg = BrokerConfig {
            url: Some("redis://127.0.0.1:1".into()),
            ..self.cfg.clone()
        };
        Some(RedisBroker::connect(&cfg).await.map(|b| Arc::new(b) as Arc<dyn Broker>))
    }
}

queues::conformance_suite!(Redis::new());
