//! Monthly partition bounds: month arithmetic, the SQL literals of a month's bounds for each
//! supported key type, and reading the bounds PostgreSQL deparses for existing partitions.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// One side of a range partition's bound, comparable across partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Bound {
    Min,
    At(NaiveDateTime),
    Max,
}

/// The partition key's type; only time types can be split into months.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    Timestamptz,
    Timestamp,
    Date,
}

impl KeyType {
    pub(crate) fn from_catalog(t: &str) -> Option<KeyType> {
        match t {
            "timestamp with time zone" => Some(KeyType::Timestamptz),
            "timestamp without time zone" => Some(KeyType::Timestamp),
            "date" => Some(KeyType::Date),
            _ => None,
        }
    }

    pub(crate) fn sql(self) -> &'static str {
        match self {
            KeyType::Timestamptz => "timestamptz",
            KeyType::Timestamp => "timestamp",
            KeyType::Date => "date",
        }
    }

    /// A bound literal of month `m`; generated here, never taken from input.
    pub(crate) fn literal(self, m: i32) -> String {
        let d = month_start(m);
        match self {
            KeyType::Timestamptz => format!("{} 00:00:00+00", d.format("%Y-%m-%d")),
            KeyType::Timestamp => format!("{} 00:00:00", d.format("%Y-%m-%d")),
            KeyType::Date => d.format("%Y-%m-%d").to_string(),
        }
    }

    /// `expr` (an aggregate of the key) as a `timestamp` in UTC, so the month of a value is
    /// read the same way whatever the session's time zone.
    pub(crate) fn as_utc_timestamp(self, expr: &str) -> String {
        match self {
            KeyType::Timestamptz => format!("(({expr}) AT TIME ZONE 'UTC')"),
            KeyType::Timestamp => format!("({expr})"),
            KeyType::Date => format!("(({expr})::timestamp)"),
        }
    }
}

/// Months as one integer (`year * 12 + month0`) so ranges cross year boundaries trivially.
pub(crate) fn month_index(y: i32, m: u32) -> i32 {
    y * 12 + m as i32 - 1
}

/// First and one-past-last month index that backfill gives partitions: January of year 1 to
/// November 9999, so partition names stay `_pYYYYMM` and the end bound stays a 4-digit year.
/// Rows outside (e.g. `infinity`) stay in the default partition.
pub(crate) const FIRST_MONTH: i32 = 12;
pub(crate) const END_MONTH: i32 = 9999 * 12 + 11;

pub(crate) fn month_start(idx: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(idx.div_euclid(12), idx.rem_euclid(12) as u32 + 1, 1)
        .unwrap_or(NaiveDate::MIN)
}

pub(crate) fn month_bound(idx: i32) -> Bound {
    Bound::At(
        month_start(idx)
            .and_hms_opt(0, 0, 0)
            .unwrap_or(NaiveDateTime::MIN),
    )
}

/// `YYYY-MM` of month `idx`, for summaries.
pub(crate) fn month_label(idx: i32) -> String {
    month_start(idx).format("%Y-%m").to_string()
}

/// Reads one side of `FOR VALUES FROM (..) TO (..)` as deparsed with `TimeZone = UTC`.
fn parse_bound(s: &str) -> Option<Bound> {
    let s = s.trim();
    match s {
        "MINVALUE" => return Some(Bound::Min),
        "MAXVALUE" => return Some(Bound::Max),
        _ => {}
    }
    let v = s.strip_prefix('\'')?.strip_suffix('\'')?;
    match v {
        "-infinity" => return Some(Bound::Min),
        "infinity" => return Some(Bound::Max),
        _ => {}
    }
    if let Ok(t) = DateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(Bound::At(t.naive_utc()));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(Bound::At(t));
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(Bound::At)
}

/// `Some(None)` for the DEFAULT partition, `None` when the expression is not a range bound.
pub(crate) fn parse_range(expr: &str) -> Option<Option<(Bound, Bound)>> {
    if expr.trim() == "DEFAULT" {
        return Some(None);
    }
    let rest = expr.trim().strip_prefix("FOR VALUES FROM (")?;
    let rest = rest.strip_suffix(')')?;
    let (lo, hi) = rest.split_once(") TO (")?;
    Some(Some((parse_bound(lo)?, parse_bound(hi)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_cross_years() {
        let dec = month_index(2026, 12);
        assert_eq!(month_start(dec).to_string(), "2026-12-01");
        assert_eq!(month_start(dec + 1).to_string(), "2027-01-01");
        assert_eq!(month_start(dec - 12).to_string(), "2025-12-01");
        assert_eq!(month_label(dec + 1), "2027-01");
        assert_eq!(
            KeyType::Timestamptz.literal(dec + 1),
            "2027-01-01 00:00:00+00"
        );
        assert_eq!(month_start(FIRST_MONTH).to_string(), "0001-01-01");
        assert_eq!(month_start(END_MONTH).to_string(), "9999-12-01");
    }

    #[test]
    fn bounds_are_read() {
        let r =
            parse_range("FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')")
                .unwrap()
                .unwrap();
        assert_eq!(
            r,
            (
                month_bound(month_index(2026, 12)),
                month_bound(month_index(2027, 1))
            )
        );
        let r = parse_range("FOR VALUES FROM (MINVALUE) TO ('2026-01-01')")
            .unwrap()
            .unwrap();
        assert_eq!(r.0, Bound::Min);
        assert_eq!(
            parse_range("FOR VALUES FROM ('2026-01-01 05:00:00+05') TO (MAXVALUE)")
                .unwrap()
                .unwrap()
                .0,
            month_bound(month_index(2026, 1))
        );
        assert_eq!(parse_range("DEFAULT"), Some(None));
        assert_eq!(parse_range("FOR VALUES IN (1)"), None);
    }
}
