//! The in-memory backend against the suite: the reference for the semantics.

use std::sync::Arc;

use async_trait::async_trait;
use queues::backends::memory::MemoryBroker;
use queues::conformance::Harness;
use queues::{Broker, Envelope, Producer};
use serde_json::Value;

struct Memory(MemoryBroker);

#[async_trait]
impl Harness for Memory {
    async fn connect(&self) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(self.0.clone()))
    }

    async fn native_send(&self, queue: &str, body: &str) -> anyhow::Result<()> {
        self.0.push_raw(queue, body.as_bytes());
        Ok(())
    }

    /// In-process, the native producer is Rust: the envelope goes through `send`.
    async fn native_send_unique(&self, _queue: &str, body: &Value) -> anyhow::Result<()> {
        let env = Envelope::parse(body.to_string().as_bytes())?;
        self.0.send(&env).await?;
        Ok(())
    }
}

queues::conformance_suite!(Memory(MemoryBroker::new()));
