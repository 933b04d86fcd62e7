//! The Lua scripts that move a message between states atomically, one `.lua` file each under
//! `lua/` (with `prelude.lua` prepended to all of them), and one typed function per script that
//! lays out its KEYS and ARGV in the order the script reads them. Nothing else in the backend
//! names a script's keys or arguments.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, Script, ScriptInvocation, ServerErrorKind, ToRedisArgs};

use super::keys::Keys;

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// One script with its keys and arguments, ready to run on its own or to add to a pipeline.
pub(super) struct Call {
    script: &'static Lua,
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl Call {
    fn new(script: &'static Lua, keys: &[&String]) -> Call {
        Call {
            script,
            keys: keys.iter().map(|k| (*k).clone()).collect(),
            args: Vec::new(),
        }
    }

    fn arg(mut self, a: impl ToRedisArgs) -> Call {
        self.args.extend(a.to_redis_args());
        self
    }

    /// The script, for `SCRIPT LOAD` ahead of a pipeline that invokes it.
    pub(super) fn script(&self) -> &'static Script {
        &self.script.script
    }

    /// The invocation, for a pipeline (after [`Call::script`]'s `SCRIPT LOAD` in it).
    pub(super) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = self.script.script.prepare_invoke();
        for k in &self.keys {
            inv.key(k);
        }
        for a in &self.args {
            inv.arg(a.as_slice());
        }
        inv
    }

    /// Runs the script: `EVALSHA`, and when the node lacks it, `EVAL` with the source (which
    /// caches it there). Never a separate `SCRIPT LOAD`: on a cluster redis-rs sends that to
    /// every node and fails while any node is down, whereas `EVAL` goes to the one node that
    /// holds the keys, so the queues on the shards that are up keep working.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.command("EVALSHA").query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL").query_async(conn).await
            }
            other => other,
        }
    }

    fn command(&self, eval: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(eval);
        if eval == "EVAL" {
            cmd.arg(&self.script.source);
        } else {
            cmd.arg(self.script.script.get_hash());
        }
        cmd.arg(self.keys.len());
        for k in &self.keys {
            cmd.arg(k);
        }
        for a in &self.args {
            cmd.arg(a.as_slice());
        }
        cmd
    }
}

/// One script: its source and the `redis::Script` that knows its SHA1.
struct Lua {
    script: Script,
    source: String,
}

struct Scripts {
    receive: Lua,
    ack: Lua,
    ack_many: Lua,
    nack: Lua,
    retry: Lua,
    extend: Lua,
    dead_letter: Lua,
    send_delayed: Lua,
    send_unique: Lua,
    defer: Lua,
    depth: Lua,
    dlq_remove: Lua,
}

fn script(body: &str) -> Lua {
    let source = format!("{PRELUDE}\n{body}");
    Lua {
        script: Script::new(&source),
        source,
    }
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    receive: script(include_str!("lua/receive.lua")),
    ack: script(include_str!("lua/ack.lua")),
    ack_many: script(include_str!("lua/ack_many.lua")),
    nack: script(include_str!("lua/nack.lua")),
    retry: script(include_str!("lua/retry.lua")),
    extend: script(include_str!("lua/extend.lua")),
    dead_letter: script(include_str!("lua/dead_letter.lua")),
    send_delayed: script(include_str!("lua/send_delayed.lua")),
    send_unique: script(include_str!("lua/send_unique.lua")),
    defer: script(include_str!("lua/defer.lua")),
    depth: script(include_str!("lua/depth.lua")),
    dlq_remove: script(include_str!("lua/dlq_remove.lua")),
});

/// Promotes due work, then leases up to `max` messages. Reply: `[wake_ms, id, count, body, …]`.
pub(super) fn receive(k: &Keys, max: usize) -> Call {
    let keys = [
        &k.ready,
        &k.claimed,
        &k.msgs,
        &k.counts,
        &k.inflight,
        &k.delayed,
        &k.seq,
        &k.meta,
    ];
    Call::new(&SCRIPTS.receive, &keys).arg(max)
}

/// Drops the leased message `id` (lease `count`). Reply 1, or 0 when the lease is gone.
pub(super) fn ack(k: &Keys, id: &str, count: i64) -> Call {
    Call::new(&SCRIPTS.ack, &[&k.msgs, &k.counts, &k.inflight])
        .arg(id)
        .arg(count)
}

/// Drops every leased message of `acks` (id, lease count) at once. Reply: one 1 or 0 (lease
/// gone) per pair, in order.
pub(super) fn ack_many<'a>(k: &Keys, acks: impl IntoIterator<Item = (&'a str, i64)>) -> Call {
    let mut call = Call::new(&SCRIPTS.ack_many, &[&k.msgs, &k.counts, &k.inflight]);
    for (id, count) in acks {
        call = call.arg(id).arg(count);
    }
    call
}

/// Hands the leased message back, visible again after `delay_ms`. Reply 1 or 0 (lease gone).
pub(super) fn nack(k: &Keys, id: &str, count: i64, delay_ms: u64) -> Call {
    Call::new(&SCRIPTS.nack, &[&k.ready, &k.inflight, &k.delayed])
        .arg(id)
        .arg(count)
        .arg(delay_ms)
}

/// Replaces the leased message by `body`, due after `delay_ms`. Reply 1 or 0 (lease gone).
pub(super) fn retry(k: &Keys, id: &str, count: i64, body: &[u8], delay_ms: u64) -> Call {
    let keys = [
        &k.ready,
        &k.msgs,
        &k.counts,
        &k.inflight,
        &k.delayed,
        &k.seq,
    ];
    Call::new(&SCRIPTS.retry, &keys)
        .arg(id)
        .arg(count)
        .arg(body)
        .arg(delay_ms)
}

/// Pushes the lease deadline to `visibility_ms` from now. Reply 1 or 0 (lease gone).
pub(super) fn extend(k: &Keys, id: &str, count: i64, visibility_ms: u64) -> Call {
    Call::new(&SCRIPTS.extend, &[&k.ready, &k.inflight, &k.delayed])
        .arg(id)
        .arg(count)
        .arg(visibility_ms)
}

/// Moves the leased message to the DLQ stream, with `body` instead of the stored one when
/// given. Reply: the new stream id, or 0 when the lease is gone.
pub(super) fn dead_letter(
    k: &Keys,
    id: &str,
    count: i64,
    body: Option<&[u8]>,
    reason: &str,
    entry_id: &str,
    at: &str,
) -> Call {
    let keys = [&k.msgs, &k.counts, &k.inflight, &k.dlq, &k.dlq_index];
    Call::new(&SCRIPTS.dead_letter, &keys)
        .arg(id)
        .arg(count)
        .arg(if body.is_some() { "1" } else { "0" })
        .arg(body.unwrap_or_default())
        .arg(reason)
        .arg(entry_id)
        .arg(at)
}

/// Stores `body` to become visible at `due_ms` (Unix milliseconds). Reply: the new id.
pub(super) fn send_delayed(k: &Keys, body: &[u8], due_ms: i64) -> Call {
    let keys = [&k.ready, &k.msgs, &k.delayed, &k.inflight, &k.seq];
    Call::new(&SCRIPTS.send_delayed, &keys)
        .arg(body)
        .arg(due_ms)
}

/// Writes a job with a dedup key unless the key is taken: `due_ms` 0 for now. Reply 1 written,
/// 0 duplicate.
pub(super) fn send_unique(
    k: &Keys,
    dedup_key: &str,
    body: &[u8],
    job_id: &str,
    window_ms: u64,
    due_ms: i64,
) -> Call {
    let dedup = k.dedup(dedup_key);
    let keys = [&dedup, &k.ready, &k.msgs, &k.delayed, &k.inflight, &k.seq];
    Call::new(&SCRIPTS.send_unique, &keys)
        .arg(body)
        .arg(job_id)
        .arg(window_ms.max(1))
        .arg(due_ms)
}

/// Parks a first delivery until `due_ms` without counting it as delivered. Reply 1 or 0.
pub(super) fn defer(k: &Keys, id: &str, count: i64, due_ms: i64) -> Call {
    let keys = [&k.ready, &k.counts, &k.inflight, &k.delayed];
    Call::new(&SCRIPTS.defer, &keys)
        .arg(id)
        .arg(count)
        .arg(due_ms)
}

/// Counts by state without moving anything. Reply:
/// `[visible, in_flight, delayed, dead, oldest_body_or_empty]`.
pub(super) fn depth(k: &Keys) -> Call {
    let keys = [
        &k.ready,
        &k.claimed,
        &k.inflight,
        &k.delayed,
        &k.dlq,
        &k.msgs,
    ];
    Call::new(&SCRIPTS.depth, &keys)
}

/// Deletes DLQ stream entry `stream_id` and its index entry `entry_id` if it still points there.
pub(super) fn dlq_remove(k: &Keys, stream_id: &str, entry_id: &str) -> Call {
    Call::new(&SCRIPTS.dlq_remove, &[&k.dlq, &k.dlq_index])
        .arg(stream_id)
        .arg(entry_id)
}

#[cfg(test)]
mod tests {
    use super::super::keys::Layout;
    use super::*;

    /// The highest `NAME[n]` the script reads: a wrapper must pass exactly that many.
    fn highest(source: &str, name: &str) -> usize {
        let re = regex::Regex::new(&format!(r"\b{name}\[(\d+)\]")).expect("valid regex");
        re.captures_iter(source)
            .map(|c| c[1].parse::<usize>().expect("digits"))
            .max()
            .unwrap_or(0)
    }

    fn assert_arity(call: &Call, file: &str) {
        assert_eq!(call.keys.len(), highest(file, "KEYS"), "KEYS of\n{file}");
        assert_eq!(call.args.len(), highest(file, "ARGV"), "ARGV of\n{file}");
    }

    #[test]
    fn every_wrapper_passes_what_its_script_reads() {
        let k = Keys::new(Layout::Single, "ns", "q");
        let cases: Vec<(Call, &str)> = vec![
            (receive(&k, 10), include_str!("lua/receive.lua")),
            (ack(&k, "7", 1), include_str!("lua/ack.lua")),
            (nack(&k, "7", 1, 0), include_str!("lua/nack.lua")),
            (retry(&k, "7", 1, b"{}", 5), include_str!("lua/retry.lua")),
            (extend(&k, "7", 1, 30_000), include_str!("lua/extend.lua")),
            (
                dead_letter(&k, "7", 1, None, "why", "e1", "2026-01-01T00:00:00Z"),
                include_str!("lua/dead_letter.lua"),
            ),
            (
                send_delayed(&k, b"{}", 1_700_000_000_000),
                include_str!("lua/send_delayed.lua"),
            ),
            (
                send_unique(&k, "doc-1", b"{}", "j1", 60_000, 0),
                include_str!("lua/send_unique.lua"),
            ),
            (
                defer(&k, "7", 1, 1_700_000_000_000),
                include_str!("lua/defer.lua"),
            ),
            (depth(&k), include_str!("lua/depth.lua")),
            (
                dlq_remove(&k, "1-0", "e1"),
                include_str!("lua/dlq_remove.lua"),
            ),
        ];
        for (call, file) in &cases {
            assert_arity(call, file);
        }
    }

    /// `ack_many` reads ARGV in pairs by a loop, not by fixed index: check its layout directly.
    #[test]
    fn ack_many_passes_id_count_pairs() {
        let k = Keys::new(Layout::Single, "ns", "q");
        let file = include_str!("lua/ack_many.lua");
        let call = ack_many(&k, [("7", 1), ("8", 2)]);
        assert_eq!(call.keys.len(), highest(file, "KEYS"));
        assert_eq!(call.keys, ["ns:q:msgs", "ns:q:counts", "ns:q:inflight"]);
        let args: Vec<&[u8]> = call.args.iter().map(Vec::as_slice).collect();
        assert_eq!(args, [&b"7"[..], b"1", b"8", b"2"]);
        assert!(ack_many(&k, []).args.is_empty());
    }

    #[test]
    fn keys_and_args_keep_their_order() {
        let k = Keys::new(Layout::Single, "ns", "q");
        let call = dead_letter(&k, "7", 3, Some(b"new"), "boom", "e1", "at");
        assert_eq!(
            call.keys,
            [
                "ns:q:msgs",
                "ns:q:counts",
                "ns:q:inflight",
                "ns:q:dlq",
                "ns:q:dlq:index"
            ]
        );
        let args: Vec<&[u8]> = call.args.iter().map(Vec::as_slice).collect();
        assert_eq!(args, [&b"7"[..], b"3", b"1", b"new", b"boom", b"e1", b"at"]);
        let call = dead_letter(&k, "7", 3, None, "boom", "e1", "at");
        assert_eq!(call.args[2], b"0");
        assert_eq!(call.args[3], b"");
    }
}
