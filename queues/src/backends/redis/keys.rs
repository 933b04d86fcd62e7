//! The Redis key names of one queue (the table in this backend's module doc).

/// The key names of one queue.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) ready: String,
    pub(super) claimed: String,
    pub(super) msgs: String,
    pub(super) counts: String,
    pub(super) inflight: String,
    pub(super) delayed: String,
    pub(super) seq: String,
    pub(super) meta: String,
    pub(super) dlq: String,
    pub(super) dlq_index: String,
}

impl Keys {
    pub(super) fn new(namespace: &str, queue: &str) -> Keys {
        let k = |s: &str| format!("{namespace}:{queue}:{s}");
        Keys {
            ready: k("ready"),
            claimed: k("claimed"),
            msgs: k("msgs"),
            counts: k("counts"),
            inflight: k("inflight"),
            delayed: k("delayed"),
            seq: k("seq"),
            meta: k("meta"),
            dlq: k("dlq"),
            dlq_index: k("dlq:index"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced() {
        let k = Keys::new("jobfleet", "embeddings");
        assert_eq!(k.ready, "jobfleet:embeddings:ready");
        assert_eq!(k.dlq_index, "jobfleet:embeddings:dlq:index");
    }
}
