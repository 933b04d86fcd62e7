//! The page shell every page shares (title, navigation, the job-lookup box, who is signed in,
//! the read-only banner) and the small formatters the pages use. Only maud splices values into
//! the HTML, and it escapes each one.

use axum::http::StatusCode;
use axum::response::Html;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::auth::Viewer;

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Workers,
    Schedules,
    Audit,
    Job,
    None,
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · jobfleet" }
            link rel="stylesheet" href="/static/app.css";
            script src="/static/app.js" defer {}
        }
    }
}

/// A full page for `viewer`.
pub fn page(viewer: &Viewer, title: &str, nav: Nav, body: Markup) -> Html<String> {
    let item = |n: Nav, href: &str, label: &str| {
        html! { a href=(href) class=[(nav == n).then_some("current")] { (label) } }
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(title))
                body data-csrf=(viewer.session.csrf) {
                    header {
                        a.brand href="/" { "jobfleet" }
                        nav {
                            (item(Nav::Overview, "/", "Overview"))
                            (item(Nav::Workers, "/workers", "Workers"))
                            (item(Nav::Schedules, "/schedules", "Schedules"))
                            (item(Nav::Audit, "/audit", "Audit"))
                        }
                        form.lookup method="get" action="/job" {
                            input type="search" name="id" placeholder="job id" aria-label="job id";
                            button type="submit" class=[(nav == Nav::Job).then_some("current")] { "Find job" }
                        }
                        span.who {
                            @if let Some(a) = &viewer.session.actor { (a.as_str()) }
                            @if viewer.token_mode {
                                form.inline method="post" action="/logout" {
                                    input type="hidden" name="csrf" value=(viewer.session.csrf);
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    @if viewer.read_only {
                        p.banner { "Read-only: this dashboard shows everything and changes nothing." }
                    }
                    main { h1 { (title) } (body) }
                }
            }
        }
        .into_string(),
    )
}

/// The page for a refused or failed request (no session needed).
pub fn error_page(status: StatusCode, message: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(status.canonical_reason().unwrap_or("Error")))
                body {
                    header { a.brand href="/" { "jobfleet" } }
                    main {
                        h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                        p.error { (message) }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// `2026-11-22 10:00:00Z`, or `-`.
pub fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

/// An age in seconds as `1h 2m`, or `-`.
pub fn age(secs: Option<f64>) -> String {
    secs.map_or("-".into(), |s| {
        humantime::format_duration(std::time::Duration::from_secs(s.max(0.0) as u64)).to_string()
    })
}

/// Jobs/s with one decimal, or `-` when no worker reported.
pub fn rate(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{r:.1}"))
}

/// A hidden CSRF field for a form.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name="csrf" value=(viewer.session.csrf); }
}

/// A query-string component, escaped.
pub fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
