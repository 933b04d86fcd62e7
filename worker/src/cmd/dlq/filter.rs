//! The DLQ filter flags shared by `list`, `replay` and `purge` (defined once, flattened into
//! each), and the time syntax they take.

use chrono::{DateTime, Utc};
use queues::dlq::DlqFilter;
use regex::Regex;

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
    /// Parses into a [`DlqFilter`]; a bad regex or time is a usage error.
    pub fn parse(&self) -> Result<DlqFilter, CliError> {
        let error = self
            .error
            .as_deref()
            .map(|r| {
                Regex::new(r)
                    .map_err(|e| CliError::Usage(format!("--error `{r}` is not a regex: {e}")))
            })
            .transpose()?;
        let since = self.since.as_deref().map(parse_time).transpose()?;
        let until = self.until.as_deref().map(parse_time).transpose()?;
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            return Err(CliError::Usage("--since must be before --until".into()));
        }
        Ok(DlqFilter {
            kind: self.kind.clone(),
            error,
            since,
            until,
            min_attempts: self.min_attempts,
        })
    }
}

/// A time on the command line: RFC 3339 (`2026-11-22T10:00:00Z`) or an age like `2h`, `30m`,
/// `1d 6h` (that long ago).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, CliError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| {
        CliError::Usage(format!(
            "`{s}` is not a time: use RFC 3339 (2026-11-22T10:00:00Z) or an age like 2h, 30m, 7d"
        ))
    })?;
    let ago = chrono::Duration::from_std(ago)
        .map_err(|_| CliError::Usage(format!("`{s}` is too far back")))?;
    Ok(Utc::now() - ago)
}
