//! The DLQ filter flags shared by `list`, `replay` and `purge` (defined once, flattened into
//! each). Parsing is `queues::dlq::FilterSpec`'s, the same the dashboard's filter form uses.

use chrono::{DateTime, Utc};
use queues::dlq::{DlqFilter, FilterError, FilterSpec};

use crate::cmd::CliError;

/// The DLQ filters as typed on the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only this job kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only entries whose reason or error history matches this regex.
    #[arg(long)]
    pub error: Option<String>,
    /// Dead-lettered at or after: RFC 3339 or an age like 2h.
    #[arg(long)]
    pub since: Option<String>,
    /// Dead-lettered before: RFC 3339 or an age like 30m.
    #[arg(long)]
    pub until: Option<String>,
    /// Only entries that failed at least this many times.
    #[arg(long)]
    pub min_attempts: Option<u32>,
}

impl FilterArgs {
    /// The flags as the shared filter text.
    pub fn spec(&self) -> FilterSpec {
        FilterSpec {
            kind: self.kind.clone(),
            error: self.error.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            min_attempts: self.min_attempts,
        }
    }

    /// Parses into a [`DlqFilter`]; a bad regex or time is a usage error.
    pub fn parse(&self) -> Result<DlqFilter, CliError> {
        self.spec().parse().map_err(usage)
    }
}

/// The shared parser's refusal in the words of the flags.
fn usage(e: FilterError) -> CliError {
    CliError::Usage(match e {
        FilterError::BadRegex { value, message } => {
            format!("--error `{value}` is not a regex: {message}")
        }
        FilterError::SinceNotBeforeUntil => "--since must be before --until".into(),
        other => other.to_string(),
    })
}

/// A time on the command line: RFC 3339 (`2026-11-22T10:00:00Z`) or an age like `2h`, `30m`,
/// `1d 6h` (that long ago).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, CliError> {
    queues::dlq::parse_time(s).map_err(usage)
}
