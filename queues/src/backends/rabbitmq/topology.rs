//! Broker-side names, queue arguments and message headers of the RabbitMQ backend: everything
//! another client (pika, `rabbitmqadmin`, an operator) has to agree on lives here, and
//! `docs/backends/rabbitmq.md` describes the same thing in prose.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use crate::backends::util;

/// `app_id` of messages jobfleet writes; others are "foreign" (see `consume::not_before`).
pub const APP_ID: &str = "jobfleet";

/// Header: deliveries this body had before it was republished (delayed nack, hop of a long
/// delay), so `receive_count` survives a republish.
pub const H_RECEIVE_COUNT: &str = "x-jobfleet-receive-count";
/// Header: not to be handed out before this instant (milliseconds since the Unix epoch).
pub const H_NOT_BEFORE: &str = "x-jobfleet-not-before";
/// DLQ header: why the message was dead-lettered.
pub const H_REASON: &str = "x-jobfleet-reason";
/// DLQ header: when it was dead-lettered (RFC 3339).
pub const H_DEAD_AT: &str = "x-jobfleet-dead-lettered-at";
/// DLQ header: the queue (as jobs name it, without namespace) a replay sends it back to.
pub const H_SOURCE: &str = "x-jobfleet-source-queue";
/// DLQ header: the broker id the message had in the source queue (id of malformed bodies).
pub const H_BROKER_ID: &str = "x-jobfleet-broker-id";
/// Set by quorum queues on redeliveries: how many times the message was returned.
pub const H_DELIVERY_COUNT: &str = "x-delivery-count";

/// Delay buckets are powers of two seconds, 1 s .. 2^16 s (about 18 h). A delay is split into
/// hops through the largest bucket that fits, so no message is ever delivered early and the
/// number of queues per job queue stays small.
pub const MAX_BUCKET_EXP: u32 = 16;

/// Remainders shorter than this are delivered at once rather than hopping again.
pub const HOP_SLACK: Duration = Duration::from_millis(50);

/// Names of one job queue's broker objects.
#[derive(Debug, Clone)]
pub struct Names {
    ns: String,
}

impl Names {
    pub fn new(ns: &str) -> Self {
        Names { ns: ns.to_owned() }
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The quorum queue jobs are consumed from: `<ns>.<queue>`.
    pub fn main(&self, queue: &str) -> String {
        format!("{}.{queue}", self.ns)
    }

    /// The classic DLQ: `<ns>.<queue>.dlq`.
    pub fn dlq(&self, queue: &str) -> String {
        format!("{}.{queue}.dlq", self.ns)
    }

    /// The delay bucket of 2^`exp` seconds: `<ns>.<queue>.delay.<secs>s`.
    pub fn bucket(&self, queue: &str, exp: u32) -> String {
        format!("{}.{queue}.delay.{}s", self.ns, 1u64 << exp)
    }
}

impl Names {
    /// The exponent of a bucket name of `queue` (`<ns>.<queue>.delay.<2^exp>s`), if it is one.
    pub fn bucket_exp(&self, queue: &str, name: &str) -> Option<u32> {
        let secs: u64 = name
            .strip_prefix(&self.main(queue))?
            .strip_prefix(".delay.")?
            .strip_suffix('s')?
            .parse()
            .ok()?;
        let exp = secs.checked_ilog2()?;
        (secs.is_power_of_two() && exp <= MAX_BUCKET_EXP).then_some(exp)
    }
}

/// The delay buckets of `queue` a message came out of, as the broker's `x-death` header records
/// them (one entry per queue it was dead-lettered from).
pub fn buckets_passed(names: &Names, queue: &str, h: Option<&FieldTable>) -> Vec<u32> {
    let Some(AMQPValue::FieldArray(deaths)) = h.and_then(|h| h.inner().get("x-death")) else {
        return Vec::new();
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|d| match d {
            AMQPValue::FieldTable(t) => header_str(Some(t), "queue"),
            _ => None,
        })
        .filter_map(|name| names.bucket_exp(queue, &name))
        .collect()
}

/// The bucket for (the first hop of) `delay`: the largest power of two seconds not above it,
/// and 1 s for anything shorter (rounded up: never early).
pub fn bucket_for(delay: Duration) -> u32 {
    let secs = delay.as_secs();
    if secs <= 1 {
        return 0;
    }
    (63 - secs.leading_zeros()).min(MAX_BUCKET_EXP)
}

pub fn main_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), long_str("quorum"));
    t
}

pub fn dlq_args() -> FieldTable {
    let mut t = FieldTable::default();
    // Classic: requeued (listed-and-released) messages go back to their original position,
    // which keeps offset cursors stable.
    t.insert("x-queue-type".into(), long_str("classic"));
    t
}

/// Lifetime of an unused bucket queue. Longer than its TTL with margin, and buckets are
/// redeclared (which renews it) at least every quarter of it while in use, so a bucket can never
/// expire with a message still inside.
pub fn bucket_expiry(exp: u32) -> Duration {
    Duration::from_secs((1u64 << exp) * 2 + 600)
}

pub fn bucket_args(main: &str, exp: u32) -> FieldTable {
    let ttl_ms = (1i64 << exp) * 1000;
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), long_str("classic"));
    t.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
    t.insert("x-dead-letter-exchange".into(), long_str(""));
    t.insert("x-dead-letter-routing-key".into(), long_str(main));
    t.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(util::millis_i64(bucket_expiry(exp))),
    );
    t
}

pub fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A short string (AMQP limit 255 bytes), cut at a char boundary instead of panicking on a
/// long id from a foreign client.
pub fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

/// An integer header, whatever integer type the writer chose.
pub fn header_u64(h: Option<&FieldTable>, key: &str) -> Option<u64> {
    let v = h?.inner().get(key)?;
    let n: i128 = match v {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::Timestamp(n) => (*n).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        AMQPValue::ShortString(s) => s.as_str().parse().ok()?,
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// A string header (long or short string).
pub fn header_str(h: Option<&FieldTable>, key: &str) -> Option<String> {
    match h?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The headers a republished copy keeps: the writer's own, minus what the broker or this
/// backend adds per hop (they would otherwise grow or lie about the new copy).
pub fn carried_headers(h: Option<&FieldTable>) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(h) = h {
        for (k, v) in h.inner() {
            let k_str = k.as_str();
            let broker_added = k_str == H_DELIVERY_COUNT
                || k_str == "x-death"
                || k_str.starts_with("x-first-death")
                || k_str.starts_with("x-last-death")
                || k_str == H_RECEIVE_COUNT
                || k_str == H_NOT_BEFORE;
            if !broker_added {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// A stable id for a body that carries none (FNV-1a): the same foreign message gets the same
/// id on every listing, so `dlq get` works for it.
pub fn body_id(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("body-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_never_round_up_past_the_delay() {
        assert_eq!(bucket_for(Duration::from_millis(300)), 0);
        assert_eq!(bucket_for(Duration::from_secs(1)), 0);
        assert_eq!(bucket_for(Duration::from_millis(2999)), 1);
        assert_eq!(bucket_for(Duration::from_secs(3)), 1);
        assert_eq!(bucket_for(Duration::from_secs(4)), 2);
        assert_eq!(bucket_for(Duration::from_secs(3600)), 11);
        assert_eq!(bucket_for(Duration::from_secs(86_400 * 30)), MAX_BUCKET_EXP);
    }

    #[test]
    fn names_and_ids() {
        let n = Names::new("jf");
        assert_eq!(n.main("mail"), "jf.mail");
        assert_eq!(n.dlq("mail"), "jf.mail.dlq");
        assert_eq!(n.bucket("mail", 3), "jf.mail.delay.8s");
        assert_eq!(body_id(b"x"), body_id(b"x"));
        assert_ne!(body_id(b"x"), body_id(b"y"));
        assert_eq!(short(&"é".repeat(200)).as_str().len(), 254);
    }

    #[test]
    fn bucket_names_read_back() {
        let n = Names::new("jf");
        for exp in [0, 3, MAX_BUCKET_EXP] {
            assert_eq!(n.bucket_exp("mail", &n.bucket("mail", exp)), Some(exp));
        }
        assert_eq!(n.bucket_exp("mail", "jf.mail.delay.3s"), None);
        assert_eq!(n.bucket_exp("mail", "jf.mail.delay.0s"), None);
        assert_eq!(n.bucket_exp("mail", "jf.mail.delay.131072s"), None);
        assert_eq!(n.bucket_exp("mail", &n.bucket("other", 2)), None);
        assert_eq!(n.bucket_exp("mail", "jf.mail.dlq"), None);

        let death = |queue: &str| {
            let mut t = FieldTable::default();
            t.insert("queue".into(), long_str(queue));
            t.insert("reason".into(), long_str("expired"));
            AMQPValue::FieldTable(t)
        };
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(
                vec![
                    death(&n.bucket("mail", 4)),
                    death("jf.elsewhere"),
                    death(&n.bucket("mail", 0)),
                ]
                .into(),
            ),
        );
        assert_eq!(buckets_passed(&n, "mail", Some(&h)), vec![4, 0]);
        assert!(buckets_passed(&n, "mail", None).is_empty());
    }

    #[test]
    fn headers_of_any_int_type() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongInt(3));
        t.insert("b".into(), AMQPValue::LongLongInt(-1));
        t.insert("c".into(), long_str("7"));
        assert_eq!(header_u64(Some(&t), "a"), Some(3));
        assert_eq!(header_u64(Some(&t), "b"), None);
        assert_eq!(header_u64(Some(&t), "c"), Some(7));
        assert_eq!(header_u64(None, "a"), None);
    }
}
