//! redis harness: not built yet.
