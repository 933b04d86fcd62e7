//! Why the dashboard could not start, and how a failed request is shown.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Start-up refusals and request failures.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A non-loopback address without `JOBFLEET_WEB_TOKEN`: anyone on the network could purge.
    #[error(
        "refusing to serve the dashboard on {addr} without a secret: it can replay and purge, so off loopback it needs JOBFLEET_WEB_TOKEN set (operators sign in with it), or bind 127.0.0.1"
    )]
    NeedsToken { addr: std::net::SocketAddr },
    /// The token is set but empty or blank.
    #[error("JOBFLEET_WEB_TOKEN is set but empty; give it a long random value or unset it")]
    EmptyToken,
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The broker said no.
    #[error(transparent)]
    Queue(#[from] queues::QueueError),
    /// The fleet's control state (audit log) said no.
    #[error(transparent)]
    Fleet(#[from] fleet::Error),
    /// The scheduler's state could not be read.
    #[error(transparent)]
    Scheduler(#[from] scheduler::SchedulerError),
    /// The request names something that does not exist (a queue, an entry).
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed; the message names the value.
    #[error("{0}")]
    BadRequest(String),
    /// Refused: no session, no CSRF token, read-only mode.
    #[error("{0}")]
    Forbidden(String),
    /// Serving failed.
    #[error("serving the dashboard: {0}")]
    Io(#[from] std::io::Error),
}

impl WebError {
    fn status(&self) -> StatusCode {
        match self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::Queue(queues::QueueError::Config(_)) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard request failed");
        }
        (status, crate::layout::error_page(status, &self.to_string())).into_response()
    }
}
