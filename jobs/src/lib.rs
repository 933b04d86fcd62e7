//! jobfleet's job handlers, all against PostgreSQL and all idempotent: document embedding,
//! analytics rollups, materialized-view refresh and monthly partition creation, plus the
//! [`Registry`] that maps an envelope's `kind` to its handler and retry policy.

pub mod handler;

pub use handler::{
    Handler, JobContext, JobError, Noop, Outcome, Registered, Registry, RetryPolicy,
};
