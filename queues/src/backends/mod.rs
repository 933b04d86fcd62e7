//! The five backends, one folder each with the same shape: `mod.rs` (the broker type, `connect`,
//! the Producer/Consumer/Inspector impls), `delivery.rs` (its [`crate::Delivery`]), `dlq.rs`
//! (its [`crate::DeadLetters`] and [`crate::DlqScan`]), plus what that broker needs. Each sits
//! behind its own cargo feature; `util` holds the few helpers they all share.

pub(crate) mod util;

#[cfg(any(feature = "rabbitmq", feature = "sqs"))]
pub mod dedup_store;

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
