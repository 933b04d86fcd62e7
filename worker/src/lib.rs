//! The jobfleet worker: prioritized pools whose concurrency follows queue depth, retries with
//! backoff, dead-lettering, graceful drain, metrics and admin HTTP, and the operator CLI.

pub mod admin;
pub mod cloudwatch;
pub mod config;
pub mod stats;
pub mod telemetry;

pub use config::Config;
