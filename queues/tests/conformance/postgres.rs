//! postgres harness: not built yet.
