//! The audit trail of DLQ replays and purges: who did what to which queue with which filter,
//! and the outcome, as a `target: audit` log line and, on request, one JSON line appended to a
//! file.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use queues::dlq::ScanReport;
use serde::Serialize;

use crate::cmd::CliError;

/// Replay or purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DlqAction {
    Replay,
    Purge,
}

impl DlqAction {
    /// `replay` or `purge`.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqAction::Replay => "replay",
            DlqAction::Purge => "purge",
        }
    }
}

/// The audit record of one replay or purge.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub user: String,
    pub host: String,
    pub action: DlqAction,
    pub queue: String,
    pub filter: String,
    pub dry_run: bool,
    pub limit: Option<u64>,
    pub rate: Option<f64>,
    pub report: ScanReport,
}

/// The operator: `$USER` (or `$LOGNAME`), else `unknown`.
pub fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

impl AuditRecord {
    /// Logs the record (`target: audit`) and, when `path` is given, appends it as a JSON line.
    pub fn write(&self, path: Option<&Path>) -> Result<(), CliError> {
        tracing::info!(
            target: "audit",
            action = ?self.action,
            user = %self.user,
            host = %self.host,
            queue = %self.queue,
            filter = %self.filter,
            dry_run = self.dry_run,
            matched = self.report.matched,
            done = self.report.done,
            skipped = self.report.skipped,
            failed = self.report.failed,
            interrupted = self.report.interrupted,
            "DLQ {}",
            self.action.as_str()
        );
        match path {
            Some(p) => append(p, self),
            None => Ok(()),
        }
    }
}

fn append(path: &Path, record: &AuditRecord) -> Result<(), CliError> {
    let line = serde_json::to_string(record).expect("audit record serializes");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot append to audit log {}: {e}",
                path.display()
            ))
        })
}
