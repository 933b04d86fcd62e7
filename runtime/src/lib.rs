//! What the `worker` and `scheduler` binaries share, and nothing that runs jobs: the config
//! file as plain data with its validation, logging and metrics set-up, the admin HTTP port
//! (`/healthz`, `/readyz`, `/metrics`), the health of the services a process needs (a bounded
//! connect at start, a monitor that `/readyz` reports), the one shutdown token both binaries
//! stop on, and the host id they put in error histories, leases and audit lines.
//!
//! The `[jobs]` and `[retry]` sections belong to the job code; this crate carries them as raw
//! TOML and the worker decodes them with the `jobs` crate's types (see `docs/decisions.md`,
//! "The shared runtime crate").

pub mod admin;
pub mod config;
pub mod health;
pub mod host;
pub mod shutdown;
pub mod telemetry;

pub use config::{Config, ConfigError};
pub use shutdown::Shutdown;
