//! The RabbitMQ [`Delivery`] and the lease that emulates a visibility timeout: a timer per
//! handed-out delivery requeues it unless it is settled or extended in time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::FutureExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::BasicAckOptions;
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::consume::{linger, prior_deliveries, requeue};
use super::topology;
use super::{BACKEND, Inner, Outgoing, Target};
use crate::backends::util::lock;
use crate::broker::{Delivery, Message};
use crate::envelope::Envelope;
use crate::error::{QueueError, Result};

pub(super) fn hand_out(
    inner: &Arc<Inner>,
    queue: &str,
    channel: &Channel,
    cancelled: &Arc<AtomicBool>,
    d: AmqpDelivery,
    vis: Duration,
    in_flight: &Arc<AtomicU64>,
) -> Box<dyn Delivery> {
    let receive_count = prior_deliveries(&d).saturating_add(1);
    let broker_id = d
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| topology::body_id(&d.data));
    let msg = Message::new(
        d.data,
        u32::try_from(receive_count).unwrap_or(u32::MAX),
        broker_id,
    );
    in_flight.fetch_add(1, Ordering::Relaxed);
    let lease = Arc::new(Lease {
        state: Mutex::new(State::Held(Instant::now() + vis)),
        timer: Mutex::new(None),
        in_flight: in_flight.clone(),
    });
    let timer = tokio::spawn(expire(lease.clone(), channel.clone(), d.delivery_tag));
    *lock(&lease.timer) = Some(timer.abort_handle());
    Box::new(RabbitDelivery {
        inner: inner.clone(),
        queue: queue.to_owned(),
        msg,
        props: d.properties,
        channel: channel.clone(),
        cancelled: cancelled.clone(),
        tag: d.delivery_tag,
        receive_count,
        lease,
    })
}

enum State {
    Held(Instant),
    Done,
}

enum Take {
    Mine,
    Expired,
    Gone,
}

struct Lease {
    state: Mutex<State>,
    timer: Mutex<Option<AbortHandle>>,
    in_flight: Arc<AtomicU64>,
}

impl Lease {
    /// Ends the lease; who ends it settles the message.
    fn take(&self) -> Take {
        let mut s = lock(&self.state);
        let State::Held(deadline) = *s else {
            return Take::Gone;
        };
        *s = State::Done;
        drop(s);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(t) = lock(&self.timer).take() {
            t.abort();
        }
        if Instant::now() < deadline {
            Take::Mine
        } else {
            Take::Expired
        }
    }
}

/// The visibility timer of one delivery.
async fn expire(lease: Arc<Lease>, channel: Channel, tag: u64) {
    loop {
        let deadline = match *lock(&lease.state) {
            State::Held(d) => d,
            State::Done => return,
        };
        tokio::time::sleep_until(deadline).await;
        let expired = {
            let mut s = lock(&lease.state);
            match *s {
                State::Held(d) if d <= Instant::now() => {
                    *s = State::Done;
                    true
                }
                State::Held(_) => false,
                State::Done => return,
            }
        };
        if expired {
            lease.in_flight.fetch_sub(1, Ordering::Relaxed);
            // Not aborted: this task is the one running.
            lock(&lease.timer).take();
            let _ = channel.basic_nack(tag, requeue()).await;
            return;
        }
    }
}

struct RabbitDelivery {
    inner: Arc<Inner>,
    queue: String,
    msg: Message,
    props: BasicProperties,
    channel: Channel,
    /// The consumer's: once it is cancelled, an ack keeps the channel open a while ([`linger`]).
    cancelled: Arc<AtomicBool>,
    tag: u64,
    receive_count: u64,
    lease: Arc<Lease>,
}

impl RabbitDelivery {
    fn lost(&self) -> QueueError {
        QueueError::LeaseLost {
            backend: BACKEND,
            id: self.msg.id().to_owned(),
        }
    }

    /// Takes the lease for settling; an expired one is requeued now (as the timer would).
    async fn begin(&self) -> Result<()> {
        match self.lease.take() {
            Take::Mine => Ok(()),
            Take::Expired => {
                self.give_back().await;
                Err(self.lost())
            }
            Take::Gone => Err(self.lost()),
        }
    }

    async fn give_back(&self) {
        let _ = self.channel.basic_nack(self.tag, requeue()).await;
    }

    async fn ack_now(&self) -> Result<()> {
        // AMQP 0-9-1 acks get no reply, so waiting for lapin's IO loop to write the frame
        // proves nothing more than queueing it does; the first poll queues it (or fails at
        // once on a closed channel, which means the broker has already requeued the message).
        // Not waiting for the write lets acks from many handlers share socket writes.
        match self
            .channel
            .basic_ack(self.tag, BasicAckOptions::default())
            .now_or_never()
        {
            Some(Err(e)) => {
                tracing::debug!(channel = self.channel.id(), tag = self.tag, error = %e, "ack refused: the channel is gone");
                Err(self.lost())
            }
            Some(Ok(())) | None => {
                if self.cancelled.load(Ordering::Relaxed) {
                    linger(self.channel.clone());
                }
                Ok(())
            }
        }
    }

    /// Writes `out` (confirmed), then acks this delivery; on a failed write the delivery is
    /// handed back so nothing is lost.
    async fn replace_with(&self, out: Outgoing) -> Result<()> {
        if let Err(e) = self.inner.publish_all(std::slice::from_ref(&out)).await {
            self.give_back().await;
            return Err(e);
        }
        self.ack_now().await
    }
}

#[async_trait]
impl Delivery for RabbitDelivery {
    fn message(&self) -> &Message {
        &self.msg
    }

    async fn ack(&self) -> Result<()> {
        self.begin().await?;
        self.ack_now().await
    }

    async fn nack(&self, retry_after: Duration) -> Result<()> {
        self.begin().await?;
        if retry_after.is_zero() {
            return self
                .channel
                .basic_nack(self.tag, requeue())
                .await
                .map_err(|_| self.lost());
        }
        let out = self.inner.delayed(
            &self.queue,
            self.msg.body().to_vec(),
            self.props.clone(),
            retry_after,
            self.receive_count,
        );
        self.replace_with(out).await
    }

    async fn retry(&self, updated: &Envelope, retry_after: Duration) -> Result<()> {
        self.begin().await?;
        let props = self
            .props
            .clone()
            .with_message_id(topology::short(&updated.id));
        let out = self
            .inner
            .delayed(&self.queue, updated.to_bytes(), props, retry_after, 0);
        self.replace_with(out).await
    }

    async fn extend(&self, visibility: Duration) -> Result<()> {
        {
            let mut s = lock(&self.lease.state);
            match *s {
                State::Held(d) if Instant::now() < d => {
                    *s = State::Held(Instant::now() + visibility);
                    return Ok(());
                }
                State::Held(_) => {}
                State::Done => return Err(self.lost()),
            }
        }
        self.begin().await
    }

    async fn dead_letter(&self, updated: Option<&Envelope>, reason: &str) -> Result<()> {
        self.begin().await?;
        let body = updated.map_or_else(|| self.msg.body().to_vec(), |e| e.to_bytes());
        let mut headers = topology::carried_headers(self.props.headers().as_ref());
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert(topology::H_REASON.into(), text(reason));
        headers.insert(topology::H_DEAD_AT.into(), text(&Utc::now().to_rfc3339()));
        headers.insert(topology::H_SOURCE.into(), text(&self.queue));
        headers.insert(topology::H_BROKER_ID.into(), text(self.msg.broker_id()));
        let props = self
            .props
            .clone()
            .with_delivery_mode(2)
            .with_message_id(topology::short(self.msg.broker_id()))
            .with_headers(headers);
        self.replace_with(Outgoing {
            target: Target::Dlq(self.queue.clone()),
            body,
            props,
        })
        .await
    }
}
