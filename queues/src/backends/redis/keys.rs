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
    /// Prefix of the queue's taken `dedup_key`s (one string key each, value the job id, expiring
    /// with the window): built like the others so it shares the queue's hash slot.
    dedup_prefix: String,
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
            dedup_prefix: k("dedup:"),
        }
    }

    /// The key that holds `dedup_key` taken for this queue.
    pub(super) fn dedup(&self, dedup_key: &str) -> String {
        format!("{}{dedup_key}", self.dedup_prefix)
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
        assert_eq!(k.dedup("doc-42"), "jobfleet:embeddings:dedup:doc-42");
    }
}
