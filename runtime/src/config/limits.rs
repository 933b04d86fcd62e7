//! `[limits.<kind>]` and `[limits.queue.<name>]`: fleet-wide caps on how fast and how many jobs
//! of a kind (or of a queue) start, across all worker processes together, and `[fleet]`, the
//! switch for the control plane that enforces them. Plain data and the rate notation
//! (`"3000/min"`); the `fleet` crate leases the tokens and slots, the worker applies them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A rate: `count` jobs per `per`. Written `"3000/min"`, `"50/s"`, `"100000/h"`, `"5/10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Jobs allowed in one period; at least 1.
    pub count: u64,
    /// The period; at least 1 ms.
    pub per: Duration,
}

/// Why a rate does not parse; the text names the value and the accepted shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a rate: {why} (write COUNT/UNIT, e.g. 3000/min, 50/s, 100000/h, 5/10s)")]
pub struct RateError {
    pub value: String,
    pub why: &'static str,
}

impl Rate {
    /// Jobs per second.
    pub fn per_sec(&self) -> f64 {
        self.count as f64 / self.per.as_secs_f64()
    }
}

fn unit(u: &str) -> Option<Duration> {
    Some(Duration::from_secs(match u {
        "ms" => return Some(Duration::from_millis(1)),
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => return None,
    }))
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Rate, RateError> {
        let err = |why| RateError {
            value: s.to_owned(),
            why,
        };
        let (count, period) = s.trim().split_once('/').ok_or_else(|| err("no `/`"))?;
        let count: u64 = count
            .trim()
            .parse()
            .map_err(|_| err("the count is not a whole number"))?;
        if count == 0 {
            return Err(err(
                "the count must be at least 1 (use --clear to lift a limit)",
            ));
        }
        let period = period.trim();
        let digits = period.len()
            - period
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        let (n, u) = period.split_at(digits);
        let n: u32 = if n.is_empty() {
            1
        } else {
            n.parse()
                .map_err(|_| err("the period's number is too large"))?
        };
        let u = u.trim();
        let per = unit(u).ok_or_else(|| err("unknown unit; use ms, s, min, h or d"))? * n;
        if per.is_zero() {
            return Err(err("the period must be longer than 0"));
        }
        Ok(Rate { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.per.as_millis();
        let (n, u) = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "min"),
            (1000, "s"),
        ]
        .into_iter()
        .find(|(size, _)| ms.is_multiple_of(*size))
        .map_or((ms, "ms"), |(size, u)| (ms / size, u));
        if n == 1 {
            write!(f, "{}/{u}", self.count)
        } else {
            write!(f, "{}/{n}{u}", self.count)
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One limit: a rate, a concurrency cap, or both. Both absent means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Starts allowed per period, fleet-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Jobs running at once, fleet-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl LimitConfig {
    /// Neither a rate nor a concurrency cap.
    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.concurrency.is_none()
    }
}

/// `[limits]`: per kind (`[limits.embed_document]`) and per queue (`[limits.queue.embeddings]`).
/// A job needs a permit from each limit that applies to it: its kind's and its queue's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LimitsConfig {
    /// Per queue: `[limits.queue.<name>]`. (So no job kind can be called `queue`.)
    #[serde(default)]
    pub queue: BTreeMap<String, LimitConfig>,
    /// Per kind: `[limits.<kind>]`.
    #[serde(flatten)]
    pub kinds: BTreeMap<String, LimitConfig>,
}

impl LimitsConfig {
    /// Whether no limit is configured at all.
    pub fn is_empty(&self) -> bool {
        self.queue
            .values()
            .chain(self.kinds.values())
            .all(LimitConfig::is_empty)
    }

    /// Checks the values serde cannot; `known_queue` says whether a queue is configured. The
    /// error names the key (`limits.embed.concurrency`).
    pub fn validate(&self, known_queue: impl Fn(&str) -> bool) -> Result<(), (String, String)> {
        for (name, l) in &self.queue {
            if !known_queue(name) {
                return Err((
                    format!("limits.queue.{name}"),
                    format!("names queue `{name}`, which is not under [queues]"),
                ));
            }
            check(&format!("limits.queue.{name}"), l)?;
        }
        for (kind, l) in &self.kinds {
            check(&format!("limits.{kind}"), l)?;
        }
        Ok(())
    }
}

fn check(key: &str, l: &LimitConfig) -> Result<(), (String, String)> {
    if l.is_empty() {
        return Err((key.to_owned(), "sets neither rate nor concurrency".into()));
    }
    if l.concurrency == Some(0) {
        return Err((
            format!("{key}.concurrency"),
            "must be at least 1 (pause the queue to stop it)".into(),
        ));
    }
    Ok(())
}

/// `[fleet]`: the control plane (fleet-wide state in the jobs' PostgreSQL database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Off: the worker reads and writes no fleet state (no runtime limit changes; configured
    /// limits then hold per process, not per fleet). For benchmarks and single-process setups.
    pub enabled: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { enabled: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        for (text, count, per, shown) in [
            ("3000/min", 3000, 60_000, "3000/min"),
            ("50/s", 50, 1000, "50/s"),
            ("100000/h", 100_000, 3_600_000, "100000/h"),
            (" 5 / 10s ", 5, 10_000, "5/10s"),
            ("1/d", 1, 86_400_000, "1/d"),
            ("7/250ms", 7, 250, "7/250ms"),
            ("120/minute", 120, 60_000, "120/min"),
        ] {
            let r: Rate = text.parse().unwrap();
            assert_eq!((r.count, r.per.as_millis()), (count, per), "{text}");
            assert_eq!(r.to_string(), shown);
            assert_eq!(shown.parse::<Rate>().unwrap(), r);
        }
        assert!(("600/min".parse::<Rate>().unwrap().per_sec() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn bad_rates_name_the_value() {
        for bad in [
            "3000/fortnight",
            "3000",
            "x/min",
            "0/min",
            "-5/s",
            "5/0s",
            "/min",
            "",
        ] {
            let e = bad.parse::<Rate>().unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{bad}: {e}");
        }
        let e = "3000/fortnight".parse::<Rate>().unwrap_err().to_string();
        assert!(e.contains("unknown unit"), "{e}");
    }

    #[test]
    fn sections_decode_and_bad_ones_name_the_key() {
        let l: LimitsConfig = toml::from_str(
            "[embed_document]\nrate = \"3000/min\"\n[diag_sleep]\nconcurrency = 5\n[queue.embeddings]\nrate = \"10/s\"\nconcurrency = 2\n",
        )
        .unwrap();
        assert_eq!(l.kinds["embed_document"].rate.unwrap().count, 3000);
        assert_eq!(l.kinds["diag_sleep"].concurrency, Some(5));
        assert_eq!(l.queue["embeddings"].concurrency, Some(2));
        assert!(!l.is_empty());
        l.validate(|q| q == "embeddings").unwrap();
        let (key, _) = l.validate(|_| false).unwrap_err();
        assert_eq!(key, "limits.queue.embeddings");

        let e = toml::from_str::<LimitsConfig>("[k]\nrate = \"3000/fortnight\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("3000/fortnight"), "{e}");
        let e = toml::from_str::<LimitsConfig>("[k]\nrat = \"3/s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rat"), "{e}");
        let l: LimitsConfig = toml::from_str("[k]\nconcurrency = 0\n").unwrap();
        assert_eq!(l.validate(|_| true).unwrap_err().0, "limits.k.concurrency");
        let l: LimitsConfig = toml::from_str("[k]\n").unwrap();
        assert_eq!(l.validate(|_| true).unwrap_err().0, "limits.k");
    }
}
