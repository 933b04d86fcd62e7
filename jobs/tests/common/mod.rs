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

/// The PostgreSQL with pgvector (scripts/services.sh up pgvector).
pub fn pgvector_url() -> String {
    std::env::var("JOBFLEET_PGVECTOR_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".to_owned())
}

/// The all-MiniLM-L6-v2 files: `JOBFLEET_MINILM_DIR`, else what the services script says.
pub fn minilm_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("JOBFLEET_MINILM_DIR") {
        return d.into();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/services.sh");
    let out = std::process::Command::new("bash")
        .args([script, "minilm-dir"])
        .output()
        .expect("running scripts/services.sh minilm-dir");
    assert!(
        out.status.success(),
        "no MiniLM model: {} (run scripts/services.sh up pgvector)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
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
        TestDb::with_pool(pool().await, prefix).await
    }

    /// A schema on the pgvector server (its chunk table starts as `real[]`, as after the
    /// project's migrations); `None`, said loudly, when that server's pgvector cannot compute a
    /// 384-dimension distance on this CPU (see [`jobs::testkit::pgvector_runs_here`]).
    pub async fn pgvector(prefix: &str) -> Option<TestDb> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&pgvector_url())
            .await
            .expect("PostgreSQL with pgvector on 127.0.0.1:5433 must be running (scripts/services.sh up pgvector)");
        if !jobs::testkit::pgvector_runs_here(&pool, &pgvector_url()).await {
            return None;
        }
        Some(TestDb::with_pool(pool, prefix).await)
    }

    async fn with_pool(pool: PgPool, prefix: &str) -> TestDb {
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
