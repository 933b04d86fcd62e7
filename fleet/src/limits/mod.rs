//! Fleet-wide rate and concurrency limits. A limit applies to a [`Scope`] (a job kind, or a
//! queue); its value is the config file's `[limits.*]` with the operator's run-time override
//! (`worker limit`, table `jobfleet.limit_overrides`) on top, field by field ([`effective`]).
//!
//! Enforcement is a [`Limiter`] in each worker process: jobs take permits from it before their
//! handler starts, and a background task leases the permits from PostgreSQL once per tick
//! (tokens of a shared bucket, slots of a shared cap), so no job ever waits on a database round
//! trip of its own. [`alloc`] holds the arithmetic, [`store`] the SQL, [`limiter`] the handle,
//! [`view`] the rows operators read (`worker limits`, the dashboard).

pub mod alloc;
pub mod limiter;
pub mod store;
pub mod view;

use std::collections::BTreeMap;
use std::fmt;

use runtime::config::{LimitConfig, LimitsConfig};

pub use limiter::{Admission, Limiter, Permit, Timing};
pub use store::Override;
pub use view::LimitRow;

/// What a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every job of this kind, whichever queue carries it.
    Kind(String),
    /// Every job received from this queue.
    Queue(String),
}

impl Scope {
    /// The key stored in the tables: `kind:<kind>` or `queue:<queue>`.
    pub fn key(&self) -> String {
        match self {
            Scope::Kind(k) => format!("kind:{k}"),
            Scope::Queue(q) => format!("queue:{q}"),
        }
    }

    /// Reads a stored key back; `None` for a shape this binary does not know.
    pub fn from_key(key: &str) -> Option<Scope> {
        match key.split_once(':')? {
            ("kind", k) if !k.is_empty() => Some(Scope::Kind(k.to_owned())),
            ("queue", q) if !q.is_empty() => Some(Scope::Queue(q.to_owned())),
            _ => None,
        }
    }

    /// `kind` or `queue`: the `scope` label of the metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Scope::Kind(_) => "kind",
            Scope::Queue(_) => "queue",
        }
    }

    /// The kind or queue name: the `name` label of the metrics.
    pub fn name(&self) -> &str {
        match self {
            Scope::Kind(n) | Scope::Queue(n) => n,
        }
    }
}

/// As its stored key, `kind:<kind>` / `queue:<queue>`.
impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.key())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Kind(k) => write!(f, "kind `{k}`"),
            Scope::Queue(q) => write!(f, "queue `{q}`"),
        }
    }
}

/// The limits in force: the config file's, with each override's fields replacing the file's
/// (an override setting only `rate` keeps the file's `concurrency`). Scopes left with neither
/// field are absent.
pub fn effective(config: &LimitsConfig, overrides: &[Override]) -> BTreeMap<Scope, LimitConfig> {
    let mut out: BTreeMap<Scope, LimitConfig> = config
        .kinds
        .iter()
        .map(|(k, l)| (Scope::Kind(k.clone()), *l))
        .chain(
            config
                .queue
                .iter()
                .map(|(q, l)| (Scope::Queue(q.clone()), *l)),
        )
        .collect();
    for o in overrides {
        let l = out.entry(o.scope.clone()).or_default();
        if o.rate.is_some() {
            l.rate = o.rate;
        }
        if o.concurrency.is_some() {
            l.concurrency = o.concurrency;
        }
    }
    out.retain(|_, l| !l.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_round_trip() {
        for s in [
            Scope::Kind("embed_document".into()),
            Scope::Queue("q".into()),
        ] {
            assert_eq!(Scope::from_key(&s.key()), Some(s));
        }
        assert_eq!(Scope::from_key("tenant:x"), None);
        assert_eq!(Scope::from_key("kind:"), None);
    }

    #[test]
    fn overrides_win_field_by_field() {
        let config: LimitsConfig = toml::from_str(
            "[embed]\nrate = \"3000/min\"\nconcurrency = 8\n[other]\nconcurrency = 2\n",
        )
        .unwrap();
        let now = chrono::Utc::now();
        let o = |scope, rate: Option<&str>, concurrency| Override {
            scope,
            rate: rate.map(|r| r.parse().unwrap()),
            concurrency,
            set_by: "op@host".into(),
            set_at: now,
        };
        let e = effective(
            &config,
            &[
                o(Scope::Kind("embed".into()), Some("100/min"), None),
                o(Scope::Queue("q".into()), None, Some(3)),
            ],
        );
        let embed = e[&Scope::Kind("embed".into())];
        assert_eq!(embed.rate.unwrap().to_string(), "100/min");
        assert_eq!(embed.concurrency, Some(8), "the file's concurrency stays");
        assert_eq!(e[&Scope::Kind("other".into())].concurrency, Some(2));
        assert_eq!(e[&Scope::Queue("q".into())].concurrency, Some(3));
        assert_eq!(e.len(), 3);
        assert!(effective(&LimitsConfig::default(), &[]).is_empty());
    }
}
