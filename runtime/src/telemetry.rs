//! Process-wide logging and metrics setup shared by `worker` and `scheduler`: `tracing` as text
//! or JSON, and the one Prometheus recorder behind `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Sets up `tracing` for the process (`RUST_LOG` overrides `log.level`). Safe to call twice;
/// the second call does nothing.
pub fn init_tracing(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs the Prometheus recorder once per process and returns its handle (for `/metrics`).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0,
                ])
                .expect("static, non-empty buckets")
                .set_buckets_for_metric(
                    Matcher::Full("jobfleet_job_wait_seconds".into()),
                    &wait_buckets(),
                )
                .expect("non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Tests may have installed another recorder first; then metrics go there and this
            // handle renders an empty page, which is fine for them.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Bucket bounds of `jobfleet_job_wait_seconds` (enqueue -> start): 1 ms to an hour, each 25 %
/// above the last, so a quantile read off them (`histogram_quantile`) is within ~12 % at any
/// scale. The duration buckets are too coarse for a wait that is the queue's main signal.
pub fn wait_buckets() -> Vec<f64> {
    std::iter::successors(Some(0.001_f64), |b| Some(b * 1.25))
        .take_while(|b| *b <= 3600.0)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn wait_buckets_rise_by_a_quarter_from_a_millisecond_to_an_hour() {
        let b = super::wait_buckets();
        assert_eq!(b[0], 0.001);
        assert!(b.windows(2).all(|w| (w[1] / w[0] - 1.25).abs() < 1e-9));
        assert!(*b.last().unwrap() <= 3600.0 && b.last().unwrap() * 1.25 > 3600.0);
    }
}
