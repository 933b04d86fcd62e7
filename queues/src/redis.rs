//! redis backend (being built; see issue 2).

use crate::config::BrokerConfig;
use crate::error::{QueueError, Result};

/// Placeholder until the backend lands.
pub struct RedisBroker;

impl RedisBroker {
    /// Not implemented yet.
    pub async fn connect(_cfg: &BrokerConfig) -> Result<crate::memory::MemoryBroker> {
        Err(QueueError::Unsupported {
            backend: "redis",
            what: "this backend (not built yet)",
        })
    }
}
