//! The bounded connect at start: try a service until it answers or the configured
//! `connect_timeout` runs out, then give up with an error that says which service, which URL
//! (password hidden) and what to check, so the binary exits 1 instead of starting blind.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// A service could not be used at start: it did not answer within the bound, or it answered
/// with something retrying cannot change (bad credentials, no such database).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the {service} at {url}{}: {reason} ({hint})", within(*.timeout))]
pub struct Unreachable {
    /// `database`, `broker`, …
    pub service: String,
    /// Its URL, password hidden.
    pub url: String,
    /// The bound that ran out; `None` when the service refused outright.
    pub timeout: Option<Duration>,
    /// The last attempt's error, or that nothing answered.
    pub reason: String,
    /// What the operator should check.
    pub hint: String,
}

fn within(timeout: Option<Duration>) -> String {
    timeout
        .map(|t| format!(" within {}", humantime::format_duration(t)))
        .unwrap_or_default()
}

/// Why a bounded connect gave up.
#[derive(Debug, thiserror::Error)]
pub enum StartError<E> {
    /// An answer that retrying cannot change (a bad URL, bad credentials): returned as is.
    #[error(transparent)]
    Fatal(E),
    /// Nothing usable answered within the bound.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}

/// Runs `attempt` until it succeeds, fails with an error `retryable` rejects, or `timeout` has
/// passed since the first try (attempts are retried with a short backoff, so a service that is
/// still starting is waited for). `service`, `url` and `hint` go into the error.
pub async fn connect_within<T, E, F, Fut>(
    service: &str,
    url: &str,
    hint: &str,
    timeout: Duration,
    retryable: impl Fn(&E) -> bool,
    attempt: F,
) -> Result<T, StartError<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last: Option<String> = None;
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .without_max_times();
    let retrying = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e| retryable(e))
        .notify(|e, _| last = Some(e.to_string()));
    let outcome = tokio::time::timeout(timeout, retrying).await;
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StartError::Fatal(e)),
        Err(_) => Err(StartError::Unreachable(Unreachable {
            service: service.to_owned(),
            url: queues::redact_url(url),
            timeout: Some(timeout),
            reason: last.unwrap_or_else(|| "no answer".into()),
            hint: hint.to_owned(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gives_up_after_the_bound_naming_service_url_and_last_error() {
        let t0 = std::time::Instant::now();
        let mut tries = 0;
        let err = connect_within(
            "database",
            "postgres://app:secret@127.0.0.1:1/x",
            "check [database] url",
            Duration::from_millis(400),
            |_: &String| true,
            || {
                tries += 1;
                async { Err::<(), String>("connection refused".into()) }
            },
        )
        .await
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(tries > 1, "retried within the bound ({tries} tries)");
        assert_eq!(
            err.to_string(),
            "cannot connect to the database at postgres://app:***@127.0.0.1:1/x within 400ms: \
             connection refused (check [database] url)"
        );
    }

    #[tokio::test]
    async fn a_fatal_error_is_returned_at_once_and_a_late_answer_is_taken() {
        let err = connect_within(
            "broker",
            "x://",
            "",
            Duration::from_secs(10),
            |_: &String| false,
            || async { Err::<(), String>("bad URL".into()) },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, StartError::Fatal(ref e) if e == "bad URL"),
            "{err}"
        );

        let mut tries = 0;
        let v = connect_within(
            "broker",
            "x://",
            "",
            Duration::from_secs(10),
            |_: &String| true,
            || {
                tries += 1;
                let n = tries;
                async move {
                    if n < 3 {
                        Err("starting".to_owned())
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 3);
    }
}
