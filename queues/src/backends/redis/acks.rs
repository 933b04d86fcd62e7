//! Group commit for acks: the acks of one queue that arrive while earlier ones are being
//! written go together in one `ack_many` script call, instead of one script call each.

use std::sync::Arc;

use redis::Value;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::conn::Conn;
use super::keys::Keys;
use super::{BACKEND, bad_reply, connection_lost, scripts};
use crate::backends::util;
use crate::error::{Msg, Result};

/// An ack waiting for the group write: message id and receive count (the lease token).
pub(super) struct AckRequest {
    pub(super) id: String,
    pub(super) count: i64,
    /// `Ok(true)` settled, `Ok(false)` the lease was gone.
    pub(super) done: oneshot::Sender<Result<bool>>,
}

/// Most acks in one script call: enough to turn thousands of acks a second into a handful of
/// calls, few enough that one call holds Redis for well under a millisecond.
const ACK_BATCH: usize = 512;

/// Group writes in flight at once. On the multiplexed connection these pipeline; more than a
/// few only makes the batches smaller.
const ACK_FLUSHES: usize = 2;

/// Writes the acks of one queue. Acks that arrive while no write is in flight go at once (no
/// added delay when idle); acks that arrive while `ACK_FLUSHES` writes are in flight wait for
/// one of them and go together. Ends when every sender is gone.
pub(super) async fn ack_loop(
    conn: Conn,
    keys: Keys,
    url: String,
    mut rx: mpsc::UnboundedReceiver<AckRequest>,
) {
    let keys = Arc::new(keys);
    let flushing = Arc::new(Semaphore::new(ACK_FLUSHES));
    loop {
        // Taken before collecting: while every write is busy, acks pile up into a bigger batch.
        let Ok(permit) = flushing.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, ACK_BATCH).await == 0 {
            return;
        }
        let (conn, keys, url) = (conn.clone(), keys.clone(), url.clone());
        tokio::spawn(async move {
            flush(conn, &keys, &url, batch).await;
            drop(permit);
        });
    }
}

async fn flush(mut conn: Conn, keys: &Keys, url: &str, batch: Vec<AckRequest>) {
    let call = scripts::ack_many(keys, batch.iter().map(|r| (r.id.as_str(), r.count)));
    let reply = call.run::<Value>(&mut conn).await;
    match reply.map(|v| settled_flags(v, batch.len())) {
        Ok(Ok(flags)) => {
            for (r, ok) in batch.into_iter().zip(flags) {
                let _ = r.done.send(Ok(ok));
            }
        }
        Ok(Err(())) => {
            for r in batch {
                let _ = r.done.send(Err(bad_reply("ack", "ack_many reply")));
            }
        }
        Err(e) => {
            // One error for the whole batch; each waiter gets its own copy of what it says.
            let (lost, text) = (connection_lost(&e), e.to_string());
            for r in batch {
                let err = util::client_error(BACKEND, url, "ack", lost, Msg(text.clone()));
                let _ = r.done.send(Err(err));
            }
        }
    }
}

/// The script's reply as one flag per ack, or `Err` when it is not `n` integers.
fn settled_flags(v: Value, n: usize) -> std::result::Result<Vec<bool>, ()> {
    let Value::Array(items) = v else {
        return Err(());
    };
    if items.len() != n {
        return Err(());
    }
    items
        .into_iter()
        .map(|i| match i {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            _ => Err(()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_is_one_flag_per_ack_in_order() {
        let v = Value::Array(vec![Value::Int(1), Value::Int(0), Value::Int(1)]);
        assert_eq!(settled_flags(v, 3), Ok(vec![true, false, true]));
    }

    #[test]
    fn a_short_or_odd_reply_is_an_error_not_a_guess() {
        let two = Value::Array(vec![Value::Int(1), Value::Int(1)]);
        assert_eq!(settled_flags(two, 3), Err(()));
        assert_eq!(settled_flags(Value::Int(1), 1), Err(()));
        let odd = Value::Array(vec![Value::Int(2)]);
        assert_eq!(settled_flags(odd, 1), Err(()));
    }
}
