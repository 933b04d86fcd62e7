//! jobfleet's queue layer: the v1 [`Envelope`], the small async traits a backend implements
//! ([`Producer`], [`Consumer`], [`Inspector`], [`DeadLetters`], together [`Broker`]), generic
//! DLQ replay/purge ([`dlq`]), and one folder per backend under [`backends`], each behind its own
//! cargo feature. [`connect`] turns a [`BrokerConfig`] into the configured backend.
//!
//! | module | what |
//! |---|---|
//! | [`broker`] | the role traits and the types they pass ([`Message`], [`Depth`], [`DlqEntry`], …) |
//! | [`envelope`] | the v1 wire format, parsed and checked once per body |
//! | [`queue_name`] | [`QueueName`], checked where a name enters (config, CLI, envelope) |
//! | [`config`] | [`BrokerConfig`] and [`BackendKind`]: plain data and its validation |
//! | `connect` | the factory from config to backend |
//! | [`dlq`] | replay and purge over any backend's [`DlqScan`] |
//! | [`error`] | [`QueueError`], naming the backend and (redacted) URL |
//! | [`backends`] | `memory`, `postgres`, `redis`, `rabbitmq`, `sqs`: one folder each, the same shape |
//!
//! ```no_run
//! # async fn demo() -> Result<(), queues::QueueError> {
//! use queues::{BackendKind, BrokerConfig, Envelope};
//! let broker = queues::connect(&BrokerConfig::new(BackendKind::Redis, "redis://127.0.0.1:6379")).await?;
//! broker.send(&Envelope::new("embed_document", "embeddings", serde_json::json!({"document_id": 42}))).await?;
//! # Ok(()) }
//! ```

pub mod backends;
pub mod broker;
pub mod config;
mod connect;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod queue_name;

#[cfg(feature = "test-utils")]
pub mod conformance;
#[cfg(feature = "test-utils")]
pub mod tcp_proxy;

pub use broker::{
    Broker, Consumer, DeadLetters, Deliveries, Delivery, Depth, DlqEntry, DlqPage, DlqScan,
    Inspector, Message, Producer, QueueSpec, Sent,
};
pub use config::{BackendKind, BrokerConfig};
pub use connect::connect;
pub use envelope::{Envelope, EnvelopeError, ErrorRecord};
pub use error::{QueueError, Result, redact_url};
pub use queue_name::{InvalidQueueName, QueueName};
