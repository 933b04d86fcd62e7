//! jobfleet's queue layer: the v1 [`Envelope`], the small async traits a backend implements
//! ([`Producer`], [`Consumer`], [`Inspector`], [`DeadLetters`], together [`Broker`]), generic
//! DLQ replay/purge ([`dlq`]), and one module per backend, each behind its own cargo feature.
//!
//! ```no_run
//! # async fn demo() -> Result<(), queues::QueueError> {
//! use queues::{BackendKind, BrokerConfig, Envelope};
//! let broker = queues::connect(&BrokerConfig::new(BackendKind::Redis, "redis://127.0.0.1:6379")).await?;
//! broker.send(&Envelope::new("embed_document", "embeddings", serde_json::json!({"document_id": 42}))).await?;
//! # Ok(()) }
//! ```

pub mod broker;
pub mod config;
pub mod dlq;
pub mod envelope;
pub mod error;

#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqs")]
pub mod sqs;

#[cfg(feature = "test-utils")]
pub mod conformance;

pub use broker::{
    Broker, Consumer, DeadLetters, Delivery, Depth, DlqEntry, DlqPage, DlqScan, Inspector, Message,
    Producer, QueueSpec,
};
pub use config::{BackendKind, BrokerConfig, connect, validate_queue_name};
pub use envelope::{Envelope, EnvelopeError, ErrorRecord};
pub use error::{QueueError, Result};
