//! Signing in with `JOBFLEET_WEB_TOKEN` (and out). A successful sign-in replaces the session,
//! so an id planted before it is worth nothing; the name given is who the audit log names.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use fleet::Actor;
use maud::{DOCTYPE, html};

use crate::auth::{Viewer, cookie, expired_cookie, same_secret};
use crate::pages::form::Fields;
use crate::state::AppState;

fn form(viewer: &Viewer, problem: Option<&str>) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { "Sign in · jobfleet" }
                    link rel="stylesheet" href="/static/app.css";
                }
                body {
                    main.login {
                        h1 { "jobfleet dashboard" }
                        @if let Some(p) = problem { p.error { (p) } }
                        form method="post" action="/login" {
                            input type="hidden" name="csrf" value=(viewer.session.csrf);
                            label { "Your name (for the audit log) " input name="name" required maxlength="64" autocomplete="username"; }
                            label { "Token " input type="password" name="token" required autocomplete="current-password"; }
                            button type="submit" { "Sign in" }
                        }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// `GET /login`.
pub async fn show(State(st): State<AppState>, Extension(viewer): Extension<Viewer>) -> Response {
    if st.opts.token.is_none() || viewer.session.actor.is_some() {
        return Redirect::to("/").into_response();
    }
    form(&viewer, None).into_response()
}

/// `POST /login`.
pub async fn submit(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    body: Bytes,
) -> Response {
    let Some(token) = &st.opts.token else {
        return Redirect::to("/").into_response();
    };
    let f = Fields::parse(&body);
    let name = f.get("name").map(str::trim).unwrap_or("");
    let given = f.get("token").unwrap_or("");
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return (
            StatusCode::BAD_REQUEST,
            form(
                &viewer,
                Some("Give your name (up to 64 characters): the audit log records it."),
            ),
        )
            .into_response();
    }
    if !same_secret(given, token) {
        tracing::warn!(name, "dashboard sign-in with a wrong token");
        // Slows guessing down; the token should be long and random anyway.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return (StatusCode::FORBIDDEN, form(&viewer, Some("Wrong token."))).into_response();
    }
    st.sessions.remove(&viewer.session.id);
    let s = st
        .sessions
        .create(Some(Actor::named(format!("{name} (web)"))));
    tracing::info!(name, "dashboard sign-in");
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie(&s.id));
    resp
}

/// `POST /logout`.
pub async fn logout(State(st): State<AppState>, Extension(viewer): Extension<Viewer>) -> Response {
    st.sessions.remove(&viewer.session.id);
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, expired_cookie());
    resp
}
