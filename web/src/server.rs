//! Starting the dashboard: the bind policy (loopback by default; any other address only with a
//! token operators sign in with), the routes, and the headers every response carries
//! (Content-Security-Policy without inline script, no framing, no sniffing, no caching).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use queues::Broker;
use runtime::{Config, Shutdown};
use tokio::net::TcpListener;

use crate::error::WebError;
use crate::state::{AppState, Inner};
use crate::{assets, auth, pages, sampler, tasks};

/// How `worker web` was asked to run.
#[derive(Debug, Clone)]
pub struct WebOptions {
    pub addr: SocketAddr,
    /// Show no action and refuse every state-changing request.
    pub read_only: bool,
    /// `JOBFLEET_WEB_TOKEN`: when set, everyone signs in with it.
    pub token: Option<String>,
    /// How often the queues are sampled (charts, live refresh).
    pub sample_every: Duration,
    /// The scheduler's lease key, for "which replica leads".
    pub lease_name: String,
    /// The job kinds this build runs, which the queue page may limit (empty: any).
    pub kinds: Vec<String>,
}

impl WebOptions {
    /// Defaults for `addr`: read-write, no token, a sample every 2 s.
    pub fn new(addr: SocketAddr) -> WebOptions {
        WebOptions {
            addr,
            read_only: false,
            token: None,
            sample_every: Duration::from_secs(2),
            lease_name: scheduler::DEFAULT_LEASE_NAME.to_owned(),
            kinds: Vec::new(),
        }
    }
}

/// Refuses a non-loopback address without a token, and a blank token anywhere.
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> Result<(), WebError> {
    match token {
        Some(t) if t.trim().is_empty() => Err(WebError::EmptyToken),
        Some(_) => Ok(()),
        None if addr.ip().is_loopback() => Ok(()),
        None => Err(WebError::NeedsToken { addr }),
    }
}

/// Checks the bind policy and takes the port; call before [`serve`] so a refusal comes before
/// anything else is connected or printed.
pub async fn bind(opts: &WebOptions) -> Result<TcpListener, WebError> {
    check_bind(opts.addr, opts.token.as_deref())?;
    TcpListener::bind(opts.addr)
        .await
        .map_err(|source| WebError::Bind {
            addr: opts.addr,
            source,
        })
}

/// The routes over `state`, with the session/CSRF guard and the security headers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::overview::show))
        .route("/live", get(pages::overview::live))
        .route("/chart/{queue}/{metric}", get(pages::queue::chart))
        .route("/queues/{queue}", get(pages::queue::show))
        .route("/queues/{queue}/pause", post(pages::control::pause))
        .route("/queues/{queue}/resume", post(pages::control::resume))
        .route("/queues/{queue}/limits", post(pages::limits::change))
        .route("/queues/{queue}/dlq", get(pages::dlq::show))
        .route("/queues/{queue}/dlq/groups", get(pages::groups::show))
        .route("/queues/{queue}/dlq/entry", get(pages::entry::show))
        .route("/queues/{queue}/dlq/plan", post(pages::action::plan))
        .route("/queues/{queue}/dlq/run", post(pages::action::run))
        .route("/tasks/{id}", get(pages::task::show))
        .route("/tasks/{id}/json", get(pages::task::json))
        .route("/job", get(pages::job::show))
        .route("/job/cancel", post(pages::control::cancel))
        .route("/workers", get(pages::workers::show))
        .route("/schedules", get(pages::schedules::show))
        .route("/audit", get(pages::audit::show))
        .route("/login", get(pages::login::show).post(pages::login::submit))
        .route("/logout", post(pages::login::logout))
        .route("/static/{file}", get(assets::serve))
        .layer(middleware::from_fn_with_state(state.clone(), auth::guard))
        .layer(middleware::from_fn(headers))
        .with_state(state)
}

/// Serves on `listener` until `shutdown`: samples the queues in the background, runs the
/// pages. `pool` is the jobs' database (audit log, scheduler state).
pub async fn serve(
    listener: TcpListener,
    cfg: Config,
    broker: Arc<dyn Broker>,
    pool: sqlx::PgPool,
    opts: WebOptions,
    shutdown: Shutdown,
) -> Result<(), WebError> {
    let samples = sampler::Samples::new(opts.sample_every);
    let state: AppState = Arc::new(Inner {
        cfg,
        broker,
        store: fleet::Store::new(pool),
        sessions: auth::Sessions::default(),
        samples: samples.clone(),
        tasks: tasks::Tasks::default(),
        opts,
    });
    let sampling = tokio::spawn(sampler::run(state.clone(), shutdown.clone()));
    let app = router(state);
    let stop = shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.wait().await })
        .await;
    shutdown.trigger();
    let _ = sampling.await;
    served.map_err(WebError::Io)
}

/// The headers every response gets. No inline script is allowed: the one script is
/// `/static/app.js`; charts are SVG images from this origin.
async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under `no-referrer` browsers send `Origin: null` on
    // form POSTs, which the guard must refuse as cross-site.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_loopback_needs_a_token() {
        let lo: SocketAddr = "127.0.0.1:9300".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9300".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9300".parse().unwrap();
        assert!(check_bind(lo, None).is_ok());
        assert!(check_bind(lo6, None).is_ok());
        let err = check_bind(any, None).unwrap_err();
        assert!(err.to_string().contains("JOBFLEET_WEB_TOKEN"), "{err}");
        assert!(check_bind(any, Some("s3cret-long-enough")).is_ok());
        assert!(matches!(
            check_bind(lo, Some("  ")),
            Err(WebError::EmptyToken)
        ));
    }
}
