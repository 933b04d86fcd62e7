//! The Redis key names of one queue (the table in this backend's module doc).
//!
//! On a cluster the queue name is a `{hash tag}`: `ns:{q}:ready`. Redis hashes only the part
//! inside the braces, so every key of one queue lives in one slot (each script touches keys of
//! one node, as the cluster requires) and different queues spread over the shards. A single
//! node keeps today's `ns:q:ready` layout, so existing data and native producers carry on.

/// Hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

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
    /// The queue, for errors that name where it lives.
    pub(super) queue: String,
}

/// Which key layout: the single node's, or the cluster's with the queue as hash tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    Single,
    Cluster,
}

impl Keys {
    pub(super) fn new(layout: Layout, namespace: &str, queue: &str) -> Keys {
        let k = |s: &str| match layout {
            Layout::Single => format!("{namespace}:{queue}:{s}"),
            Layout::Cluster => format!("{namespace}:{{{queue}}}:{s}"),
        };
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
            queue: queue.to_owned(),
        }
    }

    /// The key that holds `dedup_key` taken for this queue.
    pub(super) fn dedup(&self, dedup_key: &str) -> String {
        format!("{}{dedup_key}", self.dedup_prefix)
    }

    /// The cluster hash slot of the queue's keys (all of them share it on a cluster): CRC16
    /// of the hash tag, as Redis computes it (redis-rs keeps its slot number private).
    pub(super) fn slot(&self) -> u16 {
        crc16::State::<crc16::XMODEM>::calculate(self.queue.as_bytes()) % SLOTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn keys_are_namespaced() {
        let k = Keys::new(Layout::Single, "jobfleet", "embeddings");
        assert_eq!(k.ready, "jobfleet:embeddings:ready");
        assert_eq!(k.dlq_index, "jobfleet:embeddings:dlq:index");
        assert_eq!(k.dedup("doc-42"), "jobfleet:embeddings:dedup:doc-42");
    }

    #[test]
    fn cluster_keys_of_a_queue_share_one_slot() {
        let k = Keys::new(Layout::Cluster, "jobfleet", "embeddings");
        assert_eq!(k.ready, "jobfleet:{embeddings}:ready");
        let slot = Slot::for_key(&k.ready);
        for key in [&k.claimed, &k.msgs, &k.inflight, &k.dlq, &k.dlq_index] {
            assert_eq!(Slot::for_key(key), slot, "{key}");
        }
        // The slot is the queue name's alone, as `CLUSTER KEYSLOT embeddings` says.
        assert_eq!(k.slot(), 6199);
        assert_eq!(Slot::new(k.slot()), Some(slot));
        let other = Keys::new(Layout::Cluster, "jobfleet", "emails");
        assert_ne!(other.slot(), k.slot());
    }
}
