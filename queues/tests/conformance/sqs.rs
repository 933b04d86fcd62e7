//! sqs harness: not built yet.
