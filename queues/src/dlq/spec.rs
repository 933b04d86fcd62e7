//! The DLQ filter as an operator types it — on the command line (`worker dlq list --error ...`)
//! or into the dashboard's filter form — parsed in one place into a [`DlqFilter`], so both front
//! ends accept and refuse exactly the same input with the same words.

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::DlqFilter;

/// The filter fields as text. Empty strings count as unset (a submitted form sends them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterSpec {
    /// Only this job kind.
    pub kind: Option<String>,
    /// A regex over the reason and every error of the history.
    pub error: Option<String>,
    /// Dead-lettered at or after: RFC 3339 or an age like `2h`.
    pub since: Option<String>,
    /// Dead-lettered before: RFC 3339 or an age like `30m`.
    pub until: Option<String>,
    /// Only entries that failed at least this many times.
    pub min_attempts: Option<u32>,
}

/// Why a filter was refused; each names the value it could not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `error` does not compile.
    #[error("error `{value}` is not a regex: {message}")]
    BadRegex { value: String, message: String },
    /// `since` / `until` is neither RFC 3339 nor an age.
    #[error("`{0}` is not a time: use RFC 3339 (2026-11-22T10:00:00Z) or an age like 2h, 30m, 7d")]
    BadTime(String),
    /// An age so large that the instant is out of range.
    #[error("`{0}` is too far back")]
    TooFarBack(String),
    /// `since` is not before `until`.
    #[error("since must be before until")]
    SinceNotBeforeUntil,
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl FilterSpec {
    /// Parses into a [`DlqFilter`] (times relative to now).
    pub fn parse(&self) -> Result<DlqFilter, FilterError> {
        let error = set(&self.error)
            .map(|r| {
                Regex::new(r).map_err(|e| FilterError::BadRegex {
                    value: r.to_owned(),
                    message: e.to_string(),
                })
            })
            .transpose()?;
        let since = set(&self.since).map(parse_time).transpose()?;
        let until = set(&self.until).map(parse_time).transpose()?;
        if let (Some(s), Some(u)) = (since, until)
            && s >= u
        {
            return Err(FilterError::SinceNotBeforeUntil);
        }
        Ok(DlqFilter {
            kind: set(&self.kind).map(str::to_owned),
            error,
            since,
            until,
            min_attempts: self.min_attempts,
            ids: None,
        })
    }

    /// Whether no condition is set.
    pub fn is_empty(&self) -> bool {
        set(&self.kind).is_none()
            && set(&self.error).is_none()
            && set(&self.since).is_none()
            && set(&self.until).is_none()
            && self.min_attempts.is_none()
    }
}

/// A time as operators write it: RFC 3339 (`2026-11-22T10:00:00Z`) or an age like `2h`, `30m`,
/// `1d 6h` (that long ago).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, FilterError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(s).map_err(|_| FilterError::BadTime(s.to_owned()))?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| FilterError::TooFarBack(s.to_owned()))?;
    Utc::now()
        .checked_sub_signed(ago)
        .ok_or_else(|| FilterError::TooFarBack(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_fields_are_unset_and_bad_ones_are_named() {
        let blank = FilterSpec {
            kind: Some(String::new()),
            error: Some("  ".into()),
            ..Default::default()
        };
        assert!(blank.is_empty());
        let f = blank.parse().unwrap();
        assert!(f.kind.is_none() && f.error.is_none());

        let bad = FilterSpec {
            error: Some("(".into()),
            ..Default::default()
        };
        let err = bad.parse().unwrap_err();
        assert!(
            err.to_string().starts_with("error `(` is not a regex"),
            "{err}"
        );

        let t = FilterSpec {
            since: Some("yesterday".into()),
            ..Default::default()
        };
        assert_eq!(
            t.parse().unwrap_err(),
            FilterError::BadTime("yesterday".into())
        );

        let order = FilterSpec {
            since: Some("1h".into()),
            until: Some("2h".into()),
            ..Default::default()
        };
        assert_eq!(order.parse().unwrap_err(), FilterError::SinceNotBeforeUntil);
    }

    #[test]
    fn times_read_both_ways() {
        let t = parse_time("2026-11-22T10:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-22T10:00:00+00:00");
        let ago = parse_time("2h").unwrap();
        let diff = Utc::now() - ago;
        assert!((diff.num_minutes() - 120).abs() <= 1, "{diff}");
    }
}
