//! Long-poll wake-ups: one `LISTEN` connection per broker, fanned out to the consumers waiting
//! on each queue of this namespace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::DEGRADED_RECHECK;
use crate::backends::util;

/// Per-queue wake-ups fed by the one LISTEN connection.
#[derive(Default)]
pub(super) struct Wakers {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
    /// False while the listener is reconnecting (notifications may be missed meanwhile).
    pub(super) healthy: AtomicBool,
}

impl Wakers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        util::lock(&self.queues)
    }

    pub(super) fn get(&self, queue: &str) -> Arc<Notify> {
        self.lock().entry(queue.to_owned()).or_default().clone()
    }

    fn wake(&self, queue: &str) {
        if let Some(n) = self.lock().get(queue) {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for n in self.lock().values() {
            n.notify_waiters();
        }
    }
}

pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forwards notifications to the waiting consumers of this namespace. When the connection drops,
/// PgListener reconnects and re-LISTENs; whatever was sent meanwhile was not notified, so every
/// waiter is woken to look for itself.
pub(super) async fn listen_loop(mut listener: PgListener, ns: String, wakers: Arc<Wakers>) {
    let prefix = format!("{ns}:");
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                if let Some(queue) = n.payload().strip_prefix(&prefix) {
                    wakers.wake(queue);
                }
            }
            Ok(None) => {
                wakers.healthy.store(true, Ordering::Relaxed);
                wakers.wake_all();
            }
            Err(e) => {
                if wakers.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "postgres queue listener lost its connection; retrying");
                }
                wakers.wake_all();
                tokio::time::sleep(DEGRADED_RECHECK).await;
            }
        }
    }
}
