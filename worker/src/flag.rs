//! The stop/abort flags the worker's loops and jobs watch (`watch::Receiver<bool>`), in a module
//! of their own so the pool, the runner and the control loop share them without importing each
//! other.

use tokio::sync::watch;

/// Resolves once the flag is true (or its sender is gone). A plain future, unlike
/// `wait_for`, whose guard is not `Send`.
pub async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
