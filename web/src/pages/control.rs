//! The fleet-wide actions of the queue and job pages: pause and resume a queue, cancel a job.
//! Each calls the `fleet` function `worker pause` / `worker resume` / `worker cancel` call,
//! which writes the audit row in the same transaction as the change, with the signed-in actor.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::q;
use crate::pages::form::Fields;
use crate::state::AppState;

/// `POST /queues/{queue}/pause` (field `reason`).
pub async fn pause(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
    body: Bytes,
) -> Result<Response, WebError> {
    st.queue(&queue)?;
    let f = Fields::parse(&body);
    let reason = f.get("reason").map(str::trim).unwrap_or("");
    let reason = if reason.is_empty() {
        "paused from the dashboard"
    } else {
        reason
    };
    st.store.pause(&viewer.actor(), &queue, reason).await?;
    crate::sampler::sample_once(&st, st.samples.latest().round).await;
    Ok(Redirect::to(&format!("/queues/{}", q(&queue))).into_response())
}

/// `POST /queues/{queue}/resume`.
pub async fn resume(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
) -> Result<Response, WebError> {
    st.queue(&queue)?;
    st.store.resume(&viewer.actor(), &queue).await?;
    crate::sampler::sample_once(&st, st.samples.latest().round).await;
    Ok(Redirect::to(&format!("/queues/{}", q(&queue))).into_response())
}

/// `POST /job/cancel` (fields `queue`, `id`, `reason`).
pub async fn cancel(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    body: Bytes,
) -> Result<Response, WebError> {
    let f = Fields::parse(&body);
    let queue = f.get("queue").unwrap_or("");
    let id = f.get("id").map(str::trim).unwrap_or("");
    st.queue(queue)?;
    let reason = f.get("reason").map(str::trim).filter(|r| !r.is_empty());
    st.store
        .cancel(
            &viewer.actor(),
            queue,
            id,
            reason.unwrap_or("cancelled from the dashboard"),
        )
        .await
        .map_err(|e| match e {
            fleet::Error::Invalid(m) => WebError::BadRequest(m),
            e => WebError::Fleet(e),
        })?;
    Ok(Redirect::to(&format!("/job?id={}", q(id))).into_response())
}
