//! The admin HTTP port of `worker` and `scheduler`: `/healthz` (the process is alive),
//! `/readyz` (its dependencies answer; a load balancer or K8s stops sending work otherwise) and
//! `/metrics` (Prometheus text).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// A readiness probe: `Ok` when ready, else what is not.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    ready: ReadyCheck,
}

/// The router, for tests that call it without a socket.
pub fn router(metrics: PrometheusHandle, ready: ReadyCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState { metrics, ready })
}

async fn readyz(State(st): State<AdminState>) -> (StatusCode, String) {
    match (st.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn render_metrics(State(st): State<AdminState>) -> String {
    st.metrics.render()
}

/// Binds `addr` and serves until `shutdown` resolves. Returns the bound address (port 0 picks
/// a free one) once listening, and the server task.
pub async fn serve(
    addr: SocketAddr,
    metrics: PrometheusHandle,
    ready: ReadyCheck,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("admin HTTP cannot listen on {addr}: {e} (set worker.admin_addr or JOBFLEET_ADMIN_ADDR)"),
        )
    })?;
    let bound = listener.local_addr()?;
    let app = router(metrics, ready);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_answer() {
        let handle = crate::telemetry::metrics_handle();
        metrics::counter!("admin_test_total").increment(1);
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        let ready: ReadyCheck = Arc::new(move || {
            let ok = f.load(std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                if ok {
                    Ok(())
                } else {
                    Err("broker down".into())
                }
            })
        });
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            handle,
            ready,
            std::future::pending(),
        )
        .await
        .unwrap();
        let get = |path: &str| {
            let url = format!("http://{addr}{path}");
            async move { http_get(&url).await }
        };
        assert_eq!(get("/healthz").await, (200, "ok\n".into()));
        let (code, body) = get("/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("broker down"));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get("/readyz").await.0, 200);
        let (code, body) = get("/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("admin_test_total"), "{body}");
    }

    async fn http_get(url: &str) -> (u16, String) {
        let r = reqwest::get(url).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}
