//! Payload templating: lets one schedule say "roll up the hour before this tick".
//!
//! Inside any JSON string of a schedule's payload, these placeholders are replaced:
//!
//! | placeholder              | becomes                                                    |
//! |--------------------------|------------------------------------------------------------|
//! | `{{tick}}`               | the scheduled tick time, RFC 3339 in UTC (`2026-11-22T10:00:00Z`) |
//! | `{{tick - 1h}}`          | the tick minus a fixed duration; units `s`, `m`, `h`, `d`, `w`, combinable (`1h5m`) |
//! | `{{tick + 30m}}`         | the tick plus a fixed duration                             |
//! | `{{schedule}}`           | the schedule's name                                        |
//!
//! The tick is the *scheduled* time, not the time the job happened to be enqueued, so a
//! catch-up or a re-send after failover produces the same payload as the on-time tick would
//! have. `d` is 24 hours and `w` is 7 days (fixed durations, not calendar arithmetic in the
//! schedule's time zone). Anything else inside `{{ }}` is an error, found when the config is
//! validated, not at 3 a.m. Keys are never templated, only string values.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::Value;

/// A placeholder that can't be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload placeholder `{{{{{placeholder}}}}}`: {reason}")]
pub struct TemplateError {
    /// The text between the braces.
    pub placeholder: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What placeholders are replaced with.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    /// The scheduled tick.
    pub tick: DateTime<Utc>,
    /// The schedule's name.
    pub schedule: &'a str,
}

/// Renders every string in `payload` (recursively through arrays and objects).
pub fn render(payload: &Value, vars: &TemplateVars<'_>) -> Result<Value, TemplateError> {
    Ok(match payload {
        Value::String(s) => Value::String(render_str(s, vars)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, vars)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

fn render_str(s: &str, vars: &TemplateVars<'_>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError {
                placeholder: after.to_owned(),
                reason: "is not closed with `}}`".into(),
            });
        };
        out.push_str(&expand(after[..end].trim(), vars)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(expr: &str, vars: &TemplateVars<'_>) -> Result<String, TemplateError> {
    let err = |reason: &str| TemplateError {
        placeholder: expr.to_owned(),
        reason: reason.to_owned(),
    };
    if expr == "schedule" {
        return Ok(vars.schedule.to_owned());
    }
    let Some(rest) = expr.strip_prefix("tick") else {
        return Err(err(
            "unknown; use tick, tick - <n><unit>, tick + <n><unit> or schedule",
        ));
    };
    let rest = rest.trim();
    let at = if rest.is_empty() {
        vars.tick
    } else {
        let (sign, amount) = match rest.split_at(1) {
            ("-", a) => (-1, a.trim()),
            ("+", a) => (1, a.trim()),
            _ => return Err(err("expected `+` or `-` after `tick`")),
        };
        let offset = parse_offset(amount).ok_or_else(|| {
            err("offset must be a whole number and a unit s, m, h, d or w (like 1h)")
        })?;
        if sign < 0 {
            vars.tick - offset
        } else {
            vars.tick + offset
        }
    };
    Ok(at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// `1h`, `90s`, or several parts like `1h5m` (summed).
fn parse_offset(s: &str) -> Option<Duration> {
    let mut total = Duration::zero();
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit())?;
        let (num, tail) = rest.split_at(split);
        let n: i64 = num.parse().ok()?;
        let unit = tail.chars().next()?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        total = total.checked_add(&Duration::try_seconds(n.checked_mul(secs)?)?)?;
        rest = tail[unit.len_utf8()..].trim_start();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            tick: "2026-11-22T10:00:00Z".parse().unwrap(),
            schedule: "rollup_hourly",
        }
    }

    #[test]
    fn renders_tick_and_offsets() {
        let p = json!({
            "granularity": "hour",
            "from": "{{tick - 1h}}",
            "to": "{{ tick }}",
            "nested": ["{{tick - 1d}}", "{{tick+2w}}", 3, null],
            "label": "{{schedule}} at {{tick - 90s}}",
            "compound": "{{tick - 1d15m}}",
        });
        let out = render(&p, &vars()).unwrap();
        assert_eq!(
            out,
            json!({
                "granularity": "hour",
                "from": "2026-11-22T09:00:00Z",
                "to": "2026-11-22T10:00:00Z",
                "nested": ["2026-11-21T10:00:00Z", "2026-12-06T10:00:00Z", 3, null],
                "label": "rollup_hourly at 2026-11-22T09:58:30Z",
                "compound": "2026-11-21T09:45:00Z",
            })
        );
    }

    #[test]
    fn plain_payloads_pass_through() {
        let p = json!({"table": "jobfleet.events", "months_ahead": 3});
        assert_eq!(render(&p, &vars()).unwrap(), p);
    }

    #[test]
    fn bad_placeholders_are_errors() {
        for bad in [
            "{{now}}",
            "{{tick * 2}}",
            "{{tick - 1y}}",
            "{{tick - h}}",
            "{{tick - 1h x}}",
            "{{tick - }}",
            "{{tick",
        ] {
            let err = render(&json!(bad), &vars()).unwrap_err();
            assert!(!err.reason.is_empty(), "{bad}");
        }
    }
}
