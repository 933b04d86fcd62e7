//! jobfleet's dashboard, served by `worker web`: what an operator keeps open at 3 a.m. Every
//! page is HTML rendered on the server ([`maud`], escaping every value it splices in), one file
//! per page under [`pages`]; the little script there is (live refresh, progress) and the
//! stylesheet are embedded in the binary ([`assets`]). It reads and acts through the same
//! library functions as the CLI (`queues::dlq`, `fleet`, `scheduler`), so the page and the
//! command never disagree.
//!
//! | module | what |
//! |---|---|
//! | [`server`] | [`serve`]: the bind policy (loopback, or a token), the router, the security headers |
//! | [`auth`] | sessions (cookie `HttpOnly`, `SameSite=Strict`), login, the CSRF and read-only guard |
//! | [`sampler`] | the web process's own sampling of every queue, an hour of it, for charts and live refresh |
//! | [`scrape`] | pool targets and job counters read from a worker's `/metrics` |
//! | [`chart`] | those samples as SVG |
//! | [`tasks`] | replays and purges started from the browser, running in the background with progress |
//! | [`layout`] | the page shell, navigation, small formatting helpers |
//! | [`pages`] | one file per page |

pub mod assets;
pub mod auth;
pub mod chart;
pub mod error;
pub mod layout;
pub mod pages;
pub mod sampler;
pub mod scrape;
pub mod server;
pub mod state;
pub mod tasks;

pub use error::WebError;
pub use server::{WebOptions, check_bind, serve};
pub use state::AppState;
