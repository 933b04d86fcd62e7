//! Shared test setup: a pool on the local PostgreSQL and a fresh schema per test.
#![allow(dead_code)]

use jobs::JobsConfig;
use jobs::testkit;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(10)
        .connect(&database_url())
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (db test) must be running")
}

/// A schema with every jobs table in it, dropped when the guard is dropped... explicitly,
/// via `cleanup`, since async drop does not exist.
pub struct TestDb {
    pub pool: PgPool,
    pub schema: String,
    pub cfg: JobsConfig,
}

impl TestDb {
    pub async fn new(prefix: &str) -> TestDb {
        let pool = pool().await;
        let schema = testkit::random_schema(prefix);
        testkit::install_schema(&pool, &schema).await.unwrap();
        let cfg = testkit::config_for_schema(&schema);
        TestDb { pool, schema, cfg }
    }

    pub fn t(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }

    pub async fn exec(&self, sql: &str) {
        let sql = sql.replace("{s}", &self.schema);
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn cleanup(self) {
        testkit::drop_schema(&self.pool, &self.schema)
            .await
            .unwrap();
    }
}

pub fn ctx() -> jobs::JobContext {
    jobs::JobContext {
        job_id: "test".into(),
        queue: "test".into(),
        attempt: 1,
    }
}
