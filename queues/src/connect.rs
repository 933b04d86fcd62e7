//! The factory from [`BrokerConfig`] to a running backend. It lives apart from the config (which
//! every backend reads) so that no backend imports a module that imports every backend.

use std::sync::Arc;

use crate::broker::Broker;
use crate::config::{BackendKind, BrokerConfig};
use crate::error::{QueueError, Result};

/// Connects to the configured broker.
pub async fn connect(cfg: &BrokerConfig) -> Result<Arc<dyn Broker>> {
    cfg.validate()?;
    match cfg.backend {
        #[cfg(feature = "memory")]
        BackendKind::Memory => Ok(Arc::new(crate::backends::memory::MemoryBroker::new())),
        #[cfg(feature = "sqs")]
        BackendKind::Sqs => Ok(Arc::new(
            crate::backends::sqs::SqsBroker::connect(cfg).await?,
        )),
        #[cfg(feature = "rabbitmq")]
        BackendKind::Rabbitmq => Ok(Arc::new(
            crate::backends::rabbitmq::RabbitBroker::connect(cfg).await?,
        )),
        #[cfg(feature = "redis")]
        BackendKind::Redis => Ok(Arc::new(
            crate::backends::redis::RedisBroker::connect(cfg).await?,
        )),
        #[cfg(feature = "postgres")]
        BackendKind::Postgres => Ok(Arc::new(
            crate::backends::postgres::PgBroker::connect(cfg).await?,
        )),
        #[allow(unreachable_patterns)]
        other => Err(QueueError::Config(format!(
            "backend `{other}` is not compiled into this build (enable the `{other}` feature)"
        ))),
    }
}
