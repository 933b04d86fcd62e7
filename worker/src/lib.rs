//! The jobfleet worker: prioritized pools whose concurrency follows queue depth, retries with
//! backoff, dead-lettering, graceful drain, metrics and CloudWatch, and the operator CLI (one
//! module per subcommand under [`cmd`]). What it shares with the scheduler (config, admin HTTP,
//! telemetry, shutdown) is in the `runtime` crate.

pub mod app;
pub mod audit;
pub mod budget;
pub mod cloudwatch;
pub mod cmd;
pub mod config;
pub mod control;
pub mod diag;
pub mod flag;
pub mod lease;
pub mod ledger;
pub mod pool;
pub mod runner;
pub mod running;
pub mod settle;
pub mod stats;
pub mod verdict;
pub mod worker;

pub use runtime::{Config, Shutdown};
pub use worker::{DrainReport, PoolsView, Worker, WorkerError};
