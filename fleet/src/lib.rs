//! The fleet's shared control state: what every `worker run` reads and reports so that an
//! operator steers all of them at once, whatever the broker. It lives in jobfleet-owned tables
//! of the jobs' PostgreSQL database (migrations `01NN_*.sql` in `migrations/`), because every
//! deployment has that database and it survives a restart of any process.
//!
//! Each concern has its own module; [`Store`] is the one handle they all take. The worker's job
//! path never waits on this crate: it reads a snapshot that a background task refreshes, and
//! keeps the last one it read while the database is away.

pub mod actor;
pub mod audit;
pub mod cancel;
pub mod error;
pub mod limits;
pub mod lookup;
pub mod pause;
pub mod registry;
pub mod snapshot;
pub mod store;

pub use actor::Actor;
pub use error::{Error, Result};
pub use snapshot::Control;
pub use store::Store;
