//! `[jobs]` config section: how the handlers find the application's tables and tune their work.
//! (Skeleton: the jobs issue fills this in.)

use serde::{Deserialize, Serialize};

/// Settings of the four handlers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {}
