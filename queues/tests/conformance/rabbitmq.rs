//! The RabbitMQ backend against the suite, on the local broker (`RABBITMQ_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f). Foreign messages are written with pika, the way a
//! Python API would enqueue a job.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use queues::conformance::Harness;
use queues::rabbitmq::RabbitBroker;
use queues::{BackendKind, Broker, BrokerConfig, QueueError};

use crate::support;

const NAMESPACE: &str = "jftest";

struct Rabbit {
    url: String,
}

impl Rabbit {
    fn new() -> Self {
        Rabbit {
            url: support::env_or("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        }
    }

    fn config(&self, url: &str) -> BrokerConfig {
        let mut cfg = BrokerConfig::new(BackendKind::Rabbitmq, url);
        cfg.namespace = NAMESPACE.into();
        cfg
    }
}

/// What another language's API does: publish the JSON to the default exchange with the queue's
/// broker name as routing key, persistent, mandatory, with publisher confirms.
const PIKA_SEND: &str = r#"
import sys, pika
url, queue, body = sys.argv[1], sys.argv[2], sys.stdin.read()
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.confirm_delivery()
ch.basic_publish(exchange="", routing_key=queue, body=body.encode(), mandatory=True,
                 properties=pika.BasicProperties(content_type="application/json", delivery_mode=2))
conn.close()
"#;

#[async_trait]
impl Harness for Rabbit {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(
            RabbitBroker::connect(&self.config(&self.url)).await?,
        ))
    }

    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        let routing_key = format!("{NAMESPACE}.{queue}");
        support::run(
            &support::python(),
            &["-c", PIKA_SEND, &self.url, &routing_key],
            Some(body),
        )
        .await?;
        Ok(())
    }

    async fn connect_unreachable(&self) -> Option<Result<Arc<dyn Broker>, QueueError>> {
        let cfg = self.config("amqp://guest:guest@127.0.0.1:1/%2f");
        Some(
            RabbitBroker::connect(&cfg)
                .await
                .map(|b| Arc::new(b) as Arc<dyn Broker>),
        )
    }

    fn short_visibility(&self) -> Duration {
        Duration::from_secs(2)
    }
}

queues::conformance_suite!(Rabbit::new());
