//! The cluster's slot map as last seen (`CLUSTER SLOTS`), kept only so that an error can name
//! the node that served the queue's slot: during a failover the client library knows the node
//! is gone, but its error says only "connection refused". Routing itself is redis-rs's job.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use redis::cluster_async::ClusterConnection;
use tokio::time::Instant;

use crate::backends::util;

/// Refresh at most this often, however many errors come in.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// One contiguous slot range and the master serving it (`host:port`).
#[derive(Debug, Clone, PartialEq)]
struct Range {
    start: u16,
    end: u16,
    master: String,
}

#[derive(Default)]
struct State {
    ranges: Vec<Range>,
    refreshed: Option<Instant>,
    refreshing: bool,
}

/// The last known slot → master map.
#[derive(Default)]
pub(super) struct SlotMap {
    state: Mutex<State>,
}

impl SlotMap {
    /// The master that served `slot` when last seen.
    pub(super) fn master_of(&self, slot: u16) -> Option<String> {
        let st = util::lock(&self.state);
        st.ranges
            .iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .map(|r| r.master.clone())
    }

    /// Reads the map again in the background (after an error: the topology may have moved),
    /// unless that happened within the last second or is under way.
    pub(super) fn refresh_soon(self: &Arc<Self>, conn: &ClusterConnection) {
        {
            let mut st = util::lock(&self.state);
            if st.refreshing || st.refreshed.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
                return;
            }
            st.refreshing = true;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            util::lock(&self.state).refreshing = false;
            return;
        };
        let map = self.clone();
        let mut conn = conn.clone();
        rt.spawn(async move { map.refresh(&mut conn).await });
    }

    /// Reads `CLUSTER SLOTS` now. A failure keeps the old map: it still names the node that
    /// served the slot before the trouble, which is the one an operator should look at.
    pub(super) async fn refresh(&self, conn: &mut ClusterConnection) {
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(conn),
        )
        .await;
        let mut st = util::lock(&self.state);
        st.refreshing = false;
        st.refreshed = Some(Instant::now());
        if let Ok(Ok(v)) = reply {
            let ranges = parse(&v);
            if !ranges.is_empty() {
                st.ranges = ranges;
            }
        }
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [ip, port, id…], replica…], …]`.
fn parse(v: &Value) -> Vec<Range> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let [start, end, Value::Array(node), ..] = parts.as_slice() else {
                return None;
            };
            let [ip, port, ..] = node.as_slice() else {
                return None;
            };
            Some(Range {
                start: int(start)?,
                end: int(end)?,
                master: format!("{}:{}", text(ip)?, int(port)?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_masters_of_slot_ranges() {
        let node = |port| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]);
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7004),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node(7001)]),
            Value::Int(3),
        ]);
        let map = SlotMap::default();
        util::lock(&map.state).ranges = parse(&v);
        assert_eq!(map.master_of(0).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(map.master_of(5460).as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(map.master_of(5461).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(map.master_of(16383).as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(parse(&Value::Nil), Vec::new());
    }
}
