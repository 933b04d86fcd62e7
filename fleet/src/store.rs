//! The handle every control-state module takes: the jobs' database pool.

use sqlx::PgPool;

/// The fleet's control state in PostgreSQL. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Over an existing pool; the tables come from `jobfleet_migrations::ensure` / `worker migrate`.
    pub fn new(pool: PgPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
