//! [`QueueName`]: a queue name checked once, where it enters the system (the config file, the
//! CLI, a message body), so the backends can use it in broker-side names without checking again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::QueueError;

/// Longest queue name: leaves room for the namespace and suffixes in broker-side names
/// (SQS queue names, Redis keys, RabbitMQ queues).
pub const MAX_LEN: usize = 64;

/// A valid queue name: 1-64 characters of `[A-Za-z0-9_-]`. The alphabet is what every backend
/// accepts inside its own names (SQS queue names, Redis keys, RabbitMQ queues, table rows).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct QueueName(String);

/// Why a string is not a [`QueueName`]; the text names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue name `{0}` must be 1-64 characters of [A-Za-z0-9_-]")]
pub struct InvalidQueueName(pub String);

impl From<InvalidQueueName> for QueueError {
    fn from(e: InvalidQueueName) -> Self {
        QueueError::Config(e.to_string())
    }
}

impl QueueName {
    /// Checks `name`.
    pub fn new(name: impl Into<String>) -> Result<QueueName, InvalidQueueName> {
        let name = name.into();
        if Self::is_valid(&name) {
            Ok(QueueName(name))
        } else {
            Err(InvalidQueueName(name))
        }
    }

    /// Whether `name` would make a [`QueueName`], without allocating.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_LEN
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a `String`.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for QueueName {
    type Err = InvalidQueueName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueueName::new(s)
    }
}

impl TryFrom<String> for QueueName {
    type Error = InvalidQueueName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        QueueName::new(s)
    }
}

impl TryFrom<&str> for QueueName {
    type Error = InvalidQueueName;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        QueueName::new(s)
    }
}

impl<'de> Deserialize<'de> for QueueName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        QueueName::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for QueueName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<QueueName> for String {
    fn from(q: QueueName) -> String {
        q.0
    }
}

impl PartialEq<str> for QueueName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for QueueName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_safe_alphabet() {
        for ok in ["embeddings", "a", "A-b_9", &"x".repeat(64)] {
            let q: QueueName = ok.parse().expect(ok);
            assert_eq!(q.as_str(), ok);
            assert_eq!(q.to_string(), ok);
            assert_eq!(q, ok);
        }
    }

    #[test]
    fn rejects_naming_the_value() {
        for bad in ["", "a b", "a.b", "ü", "a:b", "q\n", &"x".repeat(65)] {
            let err = QueueName::new(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("queue name `{bad}` must be 1-64 characters of [A-Za-z0-9_-]")
            );
            assert!(!QueueName::is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn converts_to_the_queue_error_validate_gave() {
        let e = QueueError::from(QueueName::try_from("a b".to_owned()).unwrap_err());
        assert_eq!(
            e.to_string(),
            "invalid queue configuration: queue name `a b` must be 1-64 characters of [A-Za-z0-9_-]"
        );
    }

    #[test]
    fn serde_checks_on_the_way_in() {
        let q: QueueName = serde_json::from_str("\"maintenance\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&q).expect("serializes"),
            "\"maintenance\""
        );
        let err = serde_json::from_str::<QueueName>("\"no spaces\"").unwrap_err();
        assert!(err.to_string().contains("queue name `no spaces`"), "{err}");
    }
}
