//! Who did something: the operator behind a command (`$USER@host`) or the dashboard's user,
//! as written in the audit log and in cancel reasons.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The person or process an operator action is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// `user@host` from `$USER` (or `$LOGNAME`) and the given host name.
    pub fn operator(host: &str) -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "unknown".into());
        Actor(format!("{user}@{host}"))
    }

    /// An actor named by another front end (the dashboard's signed-in user, say).
    pub fn named(name: impl Into<String>) -> Actor {
        Actor(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
