//! rabbitmq harness: not built yet.
