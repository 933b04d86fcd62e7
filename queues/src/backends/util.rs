//! Small helpers every backend needs the same way: a lock that survives poisoning, the split of
//! client errors into "unreachable" and "the broker said no", and durations as whole milliseconds.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{BoxError, QueueError};

/// Locks `m` even if a panic poisoned it. Backends only keep plain maps and counters behind
/// their mutexes, each updated in a single step, so the data is still consistent after a panic
/// elsewhere and refusing to go on would only turn one bug into an outage.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Maps a client error from `backend` during `op`: trouble with the connection itself is
/// [`QueueError::Unavailable`] naming the (redacted) URL, any other answer is
/// [`QueueError::Backend`]. Which errors count as connection trouble is the caller's call,
/// since every client library reports it differently.
pub(crate) fn client_error(
    backend: &'static str,
    url: &str,
    op: &'static str,
    connection_lost: bool,
    e: impl Into<BoxError>,
) -> QueueError {
    if connection_lost {
        QueueError::unavailable(backend, url, e)
    } else {
        QueueError::backend(backend, op, e)
    }
}

/// `d` in whole milliseconds, saturating at `i64::MAX` (PostgreSQL intervals, AMQP headers).
pub(crate) fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `d` in whole milliseconds, saturating at `u64::MAX` (Redis arguments).
pub(crate) fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Msg;

    #[test]
    fn millis_saturate() {
        assert_eq!(millis_i64(Duration::from_millis(1500)), 1500);
        assert_eq!(millis_u64(Duration::from_micros(2999)), 2);
        assert_eq!(millis_i64(Duration::MAX), i64::MAX);
        assert_eq!(millis_u64(Duration::MAX), u64::MAX);
    }

    #[test]
    fn lock_survives_poison() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn client_error_splits_connection_trouble() {
        let e = client_error(
            "redis",
            "redis://:pw@h:1",
            "xadd",
            true,
            Msg("reset".into()),
        );
        assert!(
            matches!(&e, QueueError::Unavailable { url, .. } if url == "redis://:***@h:1"),
            "{e}"
        );
        let e = client_error(
            "redis",
            "redis://h:1",
            "xadd",
            false,
            Msg("WRONGTYPE".into()),
        );
        assert!(matches!(e, QueueError::Backend { op: "xadd", .. }), "{e}");
    }
}
