//! A TCP proxy for tests that need a service to go away and come back (a broker or database
//! restart) without disturbing the shared server other tests use: [`TcpProxy::stop`] cuts every
//! connection and refuses new ones, [`TcpProxy::start`] on the same port brings it back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy from `127.0.0.1:port` to an upstream address.
pub struct TcpProxy {
    port: u16,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    /// Listens on `127.0.0.1:port` (0 picks a free one) and forwards each connection to
    /// `upstream`.
    pub async fn start(port: u16, upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let inner = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                lock(&inner).push(conn);
            }
        });
        lock(&tasks).push(accept);
        Ok(TcpProxy {
            port,
            upstream,
            tasks,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts it again on the same port after [`TcpProxy::stop`].
    pub async fn restart(&self) -> std::io::Result<TcpProxy> {
        TcpProxy::start(self.port, self.upstream).await
    }

    /// Cuts every open connection and stops listening (a client then sees connection refused).
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(tasks: &Mutex<Vec<JoinHandle<()>>>) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
    tasks.lock().unwrap_or_else(|p| p.into_inner())
}
