//! sqs backend (being built; see issue 2).

use crate::config::BrokerConfig;
use crate::error::{QueueError, Result};

/// Placeholder until the backend lands.
pub struct SqsBroker;

impl SqsBroker {
    /// Not implemented yet.
    pub async fn connect(_cfg: &BrokerConfig) -> Result<crate::memory::MemoryBroker> {
        Err(QueueError::Unsupported {
            backend: "sqs",
            what: "this backend (not built yet)",
        })
    }
}
