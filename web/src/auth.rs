//! Who is at the dashboard, and what they may send. Every browser gets a session (a random id
//! in a cookie that is `HttpOnly` and `SameSite=Strict`) holding its CSRF token; with
//! `JOBFLEET_WEB_TOKEN` set the session is anonymous until its user signs in with the token.
//! [`guard`] runs before every handler: it refuses a POST that comes from another site, lacks
//! the session's CSRF token, arrives while the dashboard is `--read-only`, or comes from a
//! session that has not signed in; it sends unsigned-in pages to the login form.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use fleet::Actor;
use rand::Rng;

use crate::state::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "jobfleet_session";
/// A session unused this long is forgotten.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; anonymous ones are cheap to make, so old ones go first.
const MAX_SESSIONS: usize = 10_000;
/// Largest form body the guard reads (filters and a page of selected ids fit easily).
const MAX_FORM: usize = 1 << 20;

/// One browser's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    /// Sent back with every form and `fetch` POST.
    pub csrf: String,
    /// Who the audit log names; `None` until signed in (token mode).
    pub actor: Option<Actor>,
    last_seen: Instant,
}

/// The sessions of this process (a restart signs everyone out, which is fine for a dashboard).
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

fn random_token() -> String {
    hex::encode(rand::rng().random::<[u8; 32]>())
}

impl Sessions {
    /// The live session with this id, touched.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.0.lock().expect("sessions lock");
        let s = map.get_mut(id)?;
        if s.last_seen.elapsed() > IDLE {
            map.remove(id);
            return None;
        }
        s.last_seen = Instant::now();
        Some(s.clone())
    }

    /// A new session for `actor` (`None`: must sign in).
    pub fn create(&self, actor: Option<Actor>) -> Session {
        let s = Session {
            id: random_token(),
            csrf: random_token(),
            actor,
            last_seen: Instant::now(),
        };
        let mut map = self.0.lock().expect("sessions lock");
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.last_seen.elapsed() < Duration::from_secs(600));
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    /// Forgets a session (sign out, or replaced at sign in so a planted id is worthless).
    pub fn remove(&self, id: &str) {
        self.0.lock().expect("sessions lock").remove(id);
    }
}

/// What a handler knows about the request's user.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub session: Session,
    pub read_only: bool,
    /// Whether the dashboard asks for the token (shows "sign out").
    pub token_mode: bool,
}

impl Viewer {
    /// Who the audit log names for this request (the guard lets no anonymous POST through).
    pub fn actor(&self) -> Actor {
        self.session
            .actor
            .clone()
            .unwrap_or_else(|| Actor::named("anonymous (web)"))
    }

    /// Whether action buttons are shown.
    pub fn can_act(&self) -> bool {
        !self.read_only && self.session.actor.is_some()
    }
}

/// The actor of everyone at a token-less (so loopback) dashboard: whoever can reach loopback
/// on this host acts as the user running it.
pub fn local_actor() -> Actor {
    Actor::named(format!(
        "{} (web)",
        Actor::operator(&runtime::host::hostname())
    ))
}

/// The `Set-Cookie` value for a session.
pub fn cookie(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        IDLE.as_secs()
    ))
    .expect("hex id is a valid header")
}

/// The `Set-Cookie` value that drops the session cookie.
pub fn expired_cookie() -> HeaderValue {
    HeaderValue::from_static("jobfleet_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Equal without telling, by timing, how much of a guess was right.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn forbidden(msg: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        crate::layout::error_page(StatusCode::FORBIDDEN, msg),
    )
        .into_response()
}

/// Whether the browser says the request comes from another site: an `Origin` that is not this
/// host, or `Sec-Fetch-Site: cross-site`.
fn cross_site(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or(origin);
    origin == "null" || bare != host
}

/// The session, CSRF and read-only gate in front of every route but the static assets.
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/static/") {
        return next.run(req).await;
    }
    let token_mode = st.opts.token.is_some();
    let existing = cookie_id(req.headers()).and_then(|id| st.sessions.get(&id));
    let fresh = existing.is_none();
    let session = existing.unwrap_or_else(|| {
        st.sessions.create(if token_mode {
            None
        } else {
            Some(local_actor())
        })
    });
    let at_login = path == "/login";
    let req = if req.method() == Method::POST {
        if st.opts.read_only && !at_login && path != "/logout" {
            return forbidden(
                "this dashboard runs --read-only: it changes nothing (use the CLI, or a dashboard started without --read-only)",
            );
        }
        if cross_site(req.headers()) {
            return forbidden("cross-site request refused");
        }
        if fresh {
            return forbidden("no session: reload the page and try again");
        }
        let (parts, body) = req.into_parts();
        let Ok(bytes) = to_bytes(body, MAX_FORM).await else {
            return forbidden("request body too large");
        };
        let sent = parts
            .headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| {
                form_urlencoded::parse(&bytes)
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v.into_owned())
            });
        if !sent.is_some_and(|t| same_secret(&t, &session.csrf)) {
            return forbidden("missing or wrong CSRF token: reload the page and try again");
        }
        if session.actor.is_none() && !at_login {
            return forbidden("sign in first");
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        if session.actor.is_none() && !at_login {
            let mut resp = Redirect::to("/login").into_response();
            if fresh {
                resp.headers_mut()
                    .insert(header::SET_COOKIE, cookie(&session.id));
            }
            return resp;
        }
        req
    };
    let mut req = req;
    req.extensions_mut().insert(Viewer {
        session: session.clone(),
        read_only: st.opts.read_only,
        token_mode,
    });
    let mut resp = next.run(req).await;
    if fresh && !resp.headers().contains_key(header::SET_COOKIE) {
        resp.headers_mut()
            .insert(header::SET_COOKIE, cookie(&session.id));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_secrets() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; jobfleet_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_id(&h).as_deref(), Some("abc"));
        let c = cookie("abc").to_str().unwrap().to_owned();
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
        assert!(
            same_secret("abc", "abc") && !same_secret("abc", "abd") && !same_secret("abc", "ab")
        );
    }

    #[test]
    fn origin_of_another_site_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:9300".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:9300".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        let mut s = HeaderMap::new();
        s.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&s));
    }

    #[test]
    fn sessions_are_random_and_removable() {
        let s = Sessions::default();
        let a = s.create(None);
        let b = s.create(Some(Actor::named("x")));
        assert_ne!(a.id, b.id);
        assert_ne!(a.csrf, a.id);
        assert_eq!(a.id.len(), 64);
        assert!(s.get(&a.id).is_some());
        s.remove(&a.id);
        assert!(s.get(&a.id).is_none());
    }
}
