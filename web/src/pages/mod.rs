//! One file per page. Each handler reads through the same library calls as the CLI command
//! of the same job and renders with [`crate::layout::page`].

pub mod action;
pub mod audit;
pub mod control;
pub mod dlq;
pub mod entry;
pub mod form;
pub mod groups;
pub mod job;
pub mod limits;
pub mod login;
pub mod overview;
pub mod queue;
pub mod schedules;
pub mod task;
pub mod workers;
