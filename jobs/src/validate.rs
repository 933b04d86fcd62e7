//! Payload checks by kind, apart from the handlers: what a producer (`worker enqueue`) needs to
//! refuse a bad payload before it is sent. Building them takes only the `[jobs]` settings, never
//! a database pool or an embedding provider, so an operator's shell without the provider's API
//! key can still enqueue; the key is needed where the handlers are built (`worker run`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::{JobError, Registry};

/// One kind's check.
pub type Check = Arc<dyn Fn(&Value) -> Result<(), JobError> + Send + Sync>;

/// The kinds a producer may send, each with its payload check.
#[derive(Clone, Default)]
pub struct Validators {
    kinds: BTreeMap<String, Check>,
}

impl Validators {
    /// No kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the check of `kind`.
    pub fn insert(
        &mut self,
        kind: impl Into<String>,
        check: impl Fn(&Value) -> Result<(), JobError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.kinds.insert(kind.into(), Arc::new(check));
        self
    }

    /// Adds every kind of `other`, replacing checks of the same kind.
    pub fn extend(&mut self, other: Validators) -> &mut Self {
        self.kinds.extend(other.kinds);
        self
    }

    /// Checks `payload` as a `kind` job; `None` when the kind is not known here.
    pub fn check(&self, kind: &str, payload: &Value) -> Option<Result<(), JobError>> {
        self.kinds.get(kind).map(|c| c(payload))
    }

    /// Known kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

/// The checks of already built handlers (their own `validate`), for kinds that have no
/// separate check: tests' handlers, the worker's diagnostic kinds.
impl From<&Registry> for Validators {
    fn from(r: &Registry) -> Self {
        let mut v = Validators::new();
        for kind in r.kinds() {
            let handler = r.get(kind).expect("listed kind").handler.clone();
            v.insert(kind, move |p| handler.validate(p));
        }
        v
    }
}
