//! A queue's last hour as an SVG image: depth (visible, in flight, DLQ) or throughput
//! (succeeded and failed jobs/s). Served as `image/svg+xml` from this origin, so the page's
//! Content-Security-Policy needs no inline script or style for it, and the live page only
//! swaps the image's URL.

use chrono::{DateTime, Utc};
use maud::{Markup, html};

use crate::sampler::{QueueSample, WINDOW};

const W: f64 = 640.0;
const H: f64 = 160.0;
const PAD_L: f64 = 44.0;
const PAD_R: f64 = 8.0;
const PAD_T: f64 = 22.0;
const PAD_B: f64 = 18.0;

/// Which chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Depth,
    Rate,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        match s.trim_end_matches(".svg") {
            "depth" => Some(Metric::Depth),
            "rate" => Some(Metric::Rate),
            _ => None,
        }
    }
}

struct Line {
    label: &'static str,
    color: &'static str,
    points: Vec<(DateTime<Utc>, f64)>,
}

fn lines(samples: &[QueueSample], metric: Metric) -> Vec<Line> {
    let pick = |label, color, f: &dyn Fn(&QueueSample) -> Option<f64>| Line {
        label,
        color,
        points: samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.at, v)))
            .collect(),
    };
    match metric {
        Metric::Depth => vec![
            pick("visible", "#2563eb", &|s| Some(s.visible as f64)),
            pick("in flight", "#d97706", &|s| Some(s.in_flight as f64)),
            pick("DLQ", "#dc2626", &|s| Some(s.dead_lettered as f64)),
        ],
        Metric::Rate => vec![
            pick("succeeded/s", "#16a34a", &|s| s.succeeded_per_s),
            pick("failed/s", "#dc2626", &|s| s.failed_per_s),
        ],
    }
}

fn nice_max(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * mag)
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The chart of `samples` (oldest first) ending `now`.
pub fn svg(samples: &[QueueSample], metric: Metric, now: DateTime<Utc>) -> Markup {
    let lines = lines(samples, metric);
    let max = nice_max(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let span = WINDOW.as_secs_f64();
    let x = |t: DateTime<Utc>| {
        let ago = (now - t).num_milliseconds() as f64 / 1000.0;
        PAD_L + (W - PAD_L - PAD_R) * (1.0 - (ago / span).clamp(0.0, 1.0))
    };
    let y = |v: f64| PAD_T + (H - PAD_T - PAD_B) * (1.0 - v / max);
    let empty = lines.iter().all(|l| l.points.is_empty());
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(W) height=(H) viewBox={"0 0 " (W) " " (H)}
            font-family="sans-serif" font-size="11" {
            rect x="0" y="0" width=(W) height=(H) fill="#ffffff" {}
            @for frac in [0.0, 0.5, 1.0] {
                line x1=(PAD_L) x2=(W - PAD_R) y1=(y(max * frac)) y2=(y(max * frac))
                    stroke="#e5e7eb" {}
                text x=(PAD_L - 4.0) y=(y(max * frac) + 4.0) text-anchor="end" fill="#6b7280" {
                    (fmt_num(max * frac))
                }
            }
            text x=(PAD_L) y=(H - 4.0) fill="#6b7280" { "−60 min" }
            text x=(W - PAD_R) y=(H - 4.0) text-anchor="end" fill="#6b7280" { "now" }
            @for (i, l) in lines.iter().enumerate() {
                rect x=(PAD_L + 110.0 * i as f64) y="6" width="10" height="10" fill=(l.color) {}
                text x=(PAD_L + 14.0 + 110.0 * i as f64) y="15" fill="#374151" { (l.label) }
                @if l.points.len() > 1 {
                    polyline fill="none" stroke=(l.color) stroke-width="1.5"
                        points=(l.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ")) {}
                } @else if let Some((t, v)) = l.points.first() {
                    circle cx=(x(*t)) cy=(y(*v)) r="2" fill=(l.color) {}
                }
            }
            @if empty {
                text x=(W / 2.0) y=(H / 2.0) text-anchor="middle" fill="#9ca3af" {
                    @if metric == Metric::Rate { "no worker answered on the admin port yet" } @else { "no samples yet" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_line_per_series_scaled_to_a_round_maximum() {
        let now = Utc::now();
        let s = |secs_ago: i64, visible: u64| QueueSample {
            at: now - chrono::Duration::seconds(secs_ago),
            visible,
            ..Default::default()
        };
        let out = svg(&[s(60, 3), s(30, 70), s(0, 12)], Metric::Depth, now).into_string();
        assert_eq!(out.matches("<polyline").count(), 3, "{out}");
        assert!(out.contains(">100<"), "max rounds up to 100: {out}");
        let rate = svg(&[s(0, 1)], Metric::Rate, now).into_string();
        assert!(rate.contains("no worker answered"), "{rate}");
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.2), 5.0);
    }
}
