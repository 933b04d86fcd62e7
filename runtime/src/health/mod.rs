//! Whether the services a process needs answer, and what `/readyz` says about them.
//!
//! At start each service is connected within a bound ([`startup`]): a process never starts
//! blind. While it runs, a [`Health`] monitor probes every service on a fixed interval, logs a
//! change of state once (WARN when a service stops answering, INFO when it is back), keeps the
//! `jobfleet_service_up{service}` gauge, and answers `/readyz` from the last probes: not ready,
//! naming the service and its (redacted) URL. An outage is never fatal; the work that needs the
//! service fails meanwhile and goes through its normal retry path.

pub mod broker;
pub mod database;
pub mod startup;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use startup::{StartError, Unreachable, connect_within};

/// One probe of a service: `Ok` when it answers, else why not.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Wraps an async closure as a [`Probe`].
pub fn probe<F, Fut>(f: F) -> Probe
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

struct Service {
    name: &'static str,
    url: String,
    probe: Probe,
    /// Why the last probe failed; `None` while the service answers.
    down: Option<String>,
}

/// The services of one process and what their last probe said; clones share one state.
#[derive(Clone, Default)]
pub struct Health {
    services: Arc<Mutex<Vec<Service>>>,
}

impl Health {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name` (e.g. `database`, `broker`) at `url` (redacted here). It counts as answering
    /// until a probe says otherwise: it is added right after its start-up connect succeeded.
    pub fn watch(&self, name: &'static str, url: &str, probe: Probe) {
        metrics::gauge!("jobfleet_service_up", "service" => name).set(1.0);
        self.lock().push(Service {
            name,
            url: queues::redact_url(url),
            probe,
            down: None,
        });
    }

    /// `Ok` when every service answered its last probe, else which ones did not and why.
    pub fn status(&self) -> Result<(), String> {
        let down: Vec<String> = self
            .lock()
            .iter()
            .filter_map(|s| {
                s.down
                    .as_ref()
                    .map(|why| format!("{} at {} does not answer: {why}", s.name, s.url))
            })
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(down.join("; "))
        }
    }

    /// Probes every service once, all at the same time, each bounded by `timeout`, and records
    /// the answers (logging a change of state).
    pub async fn probe_all(&self, timeout: Duration) {
        let probes: Vec<(usize, Probe)> = self
            .lock()
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.probe.clone()))
            .collect();
        let answers = futures::future::join_all(probes.into_iter().map(|(i, p)| async move {
            let answer = match tokio::time::timeout(timeout, p()).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                )),
            };
            (i, answer)
        }))
        .await;
        let mut services = self.lock();
        for (i, answer) in answers {
            let s = &mut services[i];
            match (&s.down, answer) {
                (None, Err(why)) => {
                    tracing::warn!(service = s.name, url = %s.url, error = %why,
                        "{} does not answer; retrying, /readyz reports not ready", s.name);
                    metrics::gauge!("jobfleet_service_up", "service" => s.name).set(0.0);
                    s.down = Some(why);
                }
                (Some(_), Err(why)) => s.down = Some(why),
                (Some(_), Ok(())) => {
                    tracing::info!(service = s.name, url = %s.url, "{} answers again", s.name);
                    metrics::gauge!("jobfleet_service_up", "service" => s.name).set(1.0);
                    s.down = None;
                }
                (None, Ok(())) => {}
            }
        }
    }

    /// Probes every `every` (each probe bounded by `timeout`) until `stop` resolves.
    pub async fn monitor(
        self,
        every: Duration,
        timeout: Duration,
        stop: impl Future<Output = ()> + Send,
    ) {
        let probing = async {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.probe_all(timeout).await;
            }
        };
        tokio::select! {
            () = probing => {}
            () = stop => {}
        }
    }

    /// `/readyz` from the last probes.
    pub fn ready_check(&self) -> crate::admin::ReadyCheck {
        let health = self.clone();
        Arc::new(move || {
            let status = health.status();
            Box::pin(async move { status })
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Service>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_failed_probe_is_reported_with_the_redacted_url_until_it_answers_again() {
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        let health = Health::new();
        health.watch(
            "database",
            "postgres://app:secret@db:5432/x",
            probe(move || {
                let ok = flag.load(Ordering::SeqCst);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("connection refused".into())
                    }
                }
            }),
        );
        health.watch(
            "broker",
            "redis://127.0.0.1:6379",
            probe(std::future::pending),
        );
        health.probe_all(Duration::from_millis(50)).await;
        let why = health.status().unwrap_err();
        assert!(
            why.starts_with(
                "broker at redis://127.0.0.1:6379 does not answer: no answer within 50ms"
            ),
            "{why}"
        );
        assert!(!why.contains("database"), "{why}");

        up.store(false, Ordering::SeqCst);
        health.probe_all(Duration::from_millis(50)).await;
        let why = health.status().unwrap_err();
        assert!(
            why.contains(
                "database at postgres://app:***@db:5432/x does not answer: connection refused"
            ),
            "{why}"
        );
        assert!(!why.contains("secret"), "{why}");

        up.store(true, Ordering::SeqCst);
        health.probe_all(Duration::from_millis(50)).await;
        let why = health.status().unwrap_err();
        assert!(!why.contains("database"), "{why}");
    }

    #[tokio::test]
    async fn no_services_or_all_answering_is_ready() {
        let health = Health::new();
        assert_eq!(health.status(), Ok(()));
        health.watch("broker", "memory://", probe(|| async { Ok(()) }));
        health.probe_all(Duration::from_secs(1)).await;
        assert_eq!(health.status(), Ok(()));
    }
}
