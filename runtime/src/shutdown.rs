//! The one stop signal of a process: a [`Shutdown`] token that the signal handler, a test or an
//! embedding application triggers, and that the worker's drain, the scheduler's loops, the
//! admin port and a DLQ replay all wait on or poll.

use std::sync::Arc;

use tokio::sync::watch;

/// A stop handle; clones share one state.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

impl Shutdown {
    /// A handle not yet triggered.
    pub fn new() -> Self {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Starts the graceful stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the stop has started.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once triggered.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// A receiver that sees the flag flip, for loops that `select!` on it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Wires the process signals to this token: the first SIGTERM or SIGINT calls `first` (to
    /// say what happens now) and triggers it; a second one exits the process at once with 130,
    /// for an operator who will not wait for the graceful path. Must be called inside a tokio
    /// runtime.
    pub fn on_signals(&self, first: impl FnOnce() + Send + 'static) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            // One listener for both signals, so none falls between two registrations.
            let mut signals = match Signals::new() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
            signals.next().await;
            first();
            shutdown.trigger();
            signals.next().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
    }
}

/// SIGTERM (systemd, Kubernetes, an Auto Scaling drain hook) and SIGINT (Ctrl-C).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_share_the_flag_and_wait_resolves() {
        let s = Shutdown::new();
        let c = s.clone();
        assert!(!c.is_triggered());
        let waiter = tokio::spawn(async move { c.wait().await });
        s.trigger();
        s.trigger();
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("wait resolves once triggered")
            .unwrap();
        assert!(s.is_triggered());
        assert!(*s.subscribe().borrow());
    }
}
