//! Runs the shared conformance suite (`queues::conformance`) once per backend, against the real
//! services on localhost (see `scripts/services.sh`). One module per backend; each module's
//! tests are named `<backend>::<case>`, so `cargo nextest run -E 'test(/^redis::/)'` runs one.

mod memory;
mod postgres;
mod rabbitmq;
mod redis;
mod redis_cluster;
mod sqs;
mod support;
