//! The one error type of the queue layer. Every variant names the backend (and, for connection
//! problems, the redacted URL) so an operator reading a log line knows which broker to look at.

use std::fmt;

/// A boxed source error from a client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result of every queue operation.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// What went wrong in the queue layer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker could not be reached (or the connection dropped). Retrying later is right.
    #[error(
        "{backend} at {url} is unreachable: {source} (is it running? check the URL in the config)"
    )]
    Unavailable {
        backend: &'static str,
        url: String,
        #[source]
        source: BoxError,
    },
    /// The named queue does not exist on the broker.
    #[error(
        "{backend}: queue `{queue}` does not exist (check the name, or run the worker once to declare it)"
    )]
    QueueNotFound {
        backend: &'static str,
        queue: String,
    },
    /// The broker answered with an error.
    #[error("{backend}: {op} failed: {source}")]
    Backend {
        backend: &'static str,
        op: &'static str,
        #[source]
        source: BoxError,
    },
    /// The delivery's lease is gone (visibility expired, channel closed, or already settled):
    /// the message may already be with another consumer.
    #[error("{backend}: the lease on message {id} is lost (it expired or was settled already)")]
    LeaseLost { backend: &'static str, id: String },
    /// A URL or option the backend cannot use.
    #[error("invalid queue configuration: {0}")]
    Config(String),
    /// The operation makes no sense for this backend.
    #[error("{backend}: {what} is not supported")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
}

impl QueueError {
    /// Wraps a client error from `backend` during `op`.
    pub fn backend(
        backend: &'static str,
        op: &'static str,
        source: impl Into<BoxError>,
    ) -> QueueError {
        QueueError::Backend {
            backend,
            op,
            source: source.into(),
        }
    }

    /// Wraps a connection error, naming the URL with its password hidden.
    pub fn unavailable(
        backend: &'static str,
        url: &str,
        source: impl Into<BoxError>,
    ) -> QueueError {
        QueueError::Unavailable {
            backend,
            url: redact_url(url),
            source: source.into(),
        }
    }

    /// Whether this is the broker being out of reach (connection refused, reset, timed out)
    /// rather than an answer from it. The one case where repeating a settle on the same lease
    /// can help; a `LeaseLost` or a refusal would only fail again.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, QueueError::Unavailable { .. })
    }

    /// Whether retrying the same operation later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            QueueError::Unavailable { .. } | QueueError::Backend { .. }
        )
    }
}

/// Hides the password of a URL for logs and error messages: the one place every printed URL
/// goes through. Both spellings PostgreSQL accepts are covered (`user:pw@host` and
/// `?password=pw`); a string that does not parse as a URL still has whatever stands between
/// `://` and the last `@` hidden, since it may be a password with an unescaped character.
pub fn redact_url(raw: &str) -> String {
    const HIDDEN: &str = "***";
    let Ok(mut u) = url::Url::parse(raw) else {
        return match (raw.find("://"), raw.rfind('@')) {
            (Some(s), Some(at)) if at > s + 3 => format!("{}{HIDDEN}{}", &raw[..s + 3], &raw[at..]),
            _ => raw.to_owned(),
        };
    };
    if u.password().is_some() {
        let _ = u.set_password(Some(HIDDEN));
    }
    if u.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    HIDDEN.into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// A string error for places that have only a message.
#[derive(Debug)]
pub struct Msg(pub String);

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

impl From<String> for Msg {
    fn from(s: String) -> Self {
        Msg(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("postgres://app@db:5432/x?password=secret&sslmode=require"),
            "postgres://app@db:5432/x?password=***&sslmode=require"
        );
        // Not a URL (the port is not a number): the user-info part is hidden anyway.
        let bad = redact_url("postgres://app:s3cret@db:port/x");
        assert!(!bad.contains("s3cret"), "{bad}");
        assert_eq!(bad, "postgres://***@db:port/x");
    }

    #[test]
    fn unavailable_names_backend_and_url() {
        let e = QueueError::unavailable("redis", "redis://:pw@h:1", Msg("refused".into()));
        let s = e.to_string();
        assert!(s.contains("redis at redis://:***@h:1"), "{s}");
        assert!(s.contains("refused"));
        assert!(e.is_transient());
        assert!(e.is_unreachable());
        let lost = QueueError::LeaseLost {
            backend: "redis",
            id: "j1".into(),
        };
        assert!(!lost.is_unreachable());
        assert!(!QueueError::backend("redis", "ack", Msg("no".into())).is_unreachable());
    }
}
