//! The jobfleet worker: prioritized pools whose concurrency follows queue depth, retries with
//! backoff, dead-lettering, graceful drain, metrics and admin HTTP, and the operator CLI.

pub mod admin;
pub mod budget;
pub mod cli;
pub mod cloudwatch;
pub mod cmd_search; // [vector search, issue 14] lead: moves to cmd/search.rs
pub mod config;
pub mod control;
pub mod demo;
pub mod diag;
pub mod pool;
pub mod runner;
pub mod stats;
pub mod telemetry;
pub mod worker;

pub use config::Config;
pub use worker::{DrainReport, PoolsView, Shutdown, Worker, WorkerError};
