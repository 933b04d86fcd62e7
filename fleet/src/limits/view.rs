//! The limits as operators read them, shared by `worker limits` and the dashboard's queue page
//! so the two never disagree: each scope in force, where each field comes from (config file or
//! run-time override), who set the override, and what the fleet holds of it now.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use runtime::config::{LimitConfig, LimitsConfig};
use serde::Serialize;

use super::{Override, Scope, effective};
use crate::{Result, Store};

/// One scope's limit in force.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LimitRow {
    /// `kind` or `queue`.
    pub scope: String,
    pub name: String,
    /// In force: the override's field, else the config file's.
    pub rate: Option<String>,
    pub concurrency: Option<u32>,
    /// From the config file.
    pub config: LimitConfig,
    /// The run-time override, when there is one.
    pub override_rate: Option<String>,
    pub override_concurrency: Option<u32>,
    pub set_by: Option<String>,
    pub set_at: Option<DateTime<Utc>>,
    /// Concurrency slots the fleet holds now, and the workers holding a live lease.
    pub slots_held: i64,
    pub workers: i64,
}

impl LimitRow {
    /// Whether this row is the limit of `scope`.
    pub fn is(&self, scope: &Scope) -> bool {
        self.scope == scope.class() && self.name == scope.name()
    }
}

/// Where a field in force comes from: `override`, `config`, or `-` (not limited).
pub fn source(config: bool, overridden: bool) -> &'static str {
    match (config, overridden) {
        (_, true) => "override",
        (true, false) => "config",
        (false, false) => "-",
    }
}

/// The limits in force, with where each comes from and what the fleet holds of it.
pub fn rows(
    config: &LimitsConfig,
    overrides: &[Override],
    usage: &[(String, i64, i64)],
) -> Vec<LimitRow> {
    let by_scope: BTreeMap<&Scope, &Override> = overrides.iter().map(|o| (&o.scope, o)).collect();
    let usage: BTreeMap<&str, (i64, i64)> = usage
        .iter()
        .map(|(k, h, w)| (k.as_str(), (*h, *w)))
        .collect();
    effective(config, overrides)
        .into_iter()
        .map(|(scope, l)| {
            let from_file = match &scope {
                Scope::Kind(k) => config.kinds.get(k),
                Scope::Queue(q) => config.queue.get(q),
            }
            .copied()
            .unwrap_or_default();
            let o = by_scope.get(&scope);
            let (slots_held, workers) = usage.get(scope.key().as_str()).copied().unwrap_or((0, 0));
            LimitRow {
                scope: scope.class().to_owned(),
                name: scope.name().to_owned(),
                rate: l.rate.map(|r| r.to_string()),
                concurrency: l.concurrency,
                config: from_file,
                override_rate: o.and_then(|o| o.rate).map(|r| r.to_string()),
                override_concurrency: o.and_then(|o| o.concurrency),
                set_by: o.map(|o| o.set_by.clone()),
                set_at: o.map(|o| o.set_at),
                slots_held,
                workers,
            }
        })
        .collect()
}

impl Store {
    /// [`rows`] over the overrides and lease usage read now.
    pub async fn limit_rows(&self, config: &LimitsConfig) -> Result<Vec<LimitRow>> {
        let overrides = self.limit_overrides().await?;
        let usage = self.limit_usage().await?;
        Ok(rows(config, &overrides, &usage))
    }
}
