//! What every request handler shares: the config, the broker, the control-state store, the
//! sessions, the samples and the running tasks.

use std::sync::Arc;

use queues::Broker;
use runtime::Config;

use crate::auth::Sessions;
use crate::sampler::Samples;
use crate::server::WebOptions;
use crate::tasks::Tasks;

/// The dashboard's shared state. Cheap to clone.
pub type AppState = Arc<Inner>;

/// See [`AppState`].
pub struct Inner {
    pub cfg: Config,
    pub broker: Arc<dyn Broker>,
    /// The jobs' database: the audit log, the scheduler's lease and ledger.
    pub store: fleet::Store,
    pub opts: WebOptions,
    pub sessions: Sessions,
    pub samples: Samples,
    pub tasks: Tasks,
}

impl Inner {
    /// The queue if the config has it, else a 404 naming the configured ones.
    pub fn queue(&self, name: &str) -> Result<&runtime::config::QueueConfig, crate::WebError> {
        self.cfg.queues.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.cfg.queues.keys().map(String::as_str).collect();
            crate::WebError::NotFound(format!(
                "queue `{name}` is not configured (configured: {})",
                known.join(", ")
            ))
        })
    }
}
