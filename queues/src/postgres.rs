//! postgres backend (being built; see issue 2).

use crate::config::BrokerConfig;
use crate::error::{QueueError, Result};

/// Placeholder until the backend lands.
pub struct PgBroker;

impl PgBroker {
    /// Not implemented yet.
    pub async fn connect(_cfg: &BrokerConfig) -> Result<crate::memory::MemoryBroker> {
        Err(QueueError::Unsupported {
            backend: "postgres",
            what: "this backend (not built yet)",
        })
    }
}
