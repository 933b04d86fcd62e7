//! The audit log against a real PostgreSQL: written, counted in later, read back newest first.

use fleet::audit::{Action, Entry};
use fleet::{Actor, Store};
use serde_json::json;
use sqlx::PgPool;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database of its own, migrated, so parallel tests never see each other's rows.
async fn fresh_store() -> Store {
    let admin = PgPool::connect(ADMIN_URL)
        .await
        .expect("PostgreSQL on :5432");
    let name = format!("fleet_audit_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let pool = PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
        .await
        .unwrap();
    jobfleet_migrations::ensure(&pool).await.unwrap();
    Store::new(pool)
}

#[tokio::test]
async fn actions_are_recorded_with_who_and_read_back_newest_first() {
    let store = fresh_store().await;
    let pause = Entry {
        actor: Actor::named("alice@ops-1"),
        action: Action::Pause,
        target: "embeddings".into(),
        detail: json!({"reason": "provider incident"}),
        counts: None,
    };
    store.audit(&pause).await.unwrap();
    let replay = Entry {
        actor: Actor::named("bob@ops-2"),
        action: Action::DlqReplay,
        target: "rollups".into(),
        detail: json!({"kind": "rollup_analytics"}),
        counts: None,
    };
    let id = store.audit(&replay).await.unwrap();
    store
        .audit_counts(id, &json!({"replayed": 7, "skipped": 1, "failed": 0}))
        .await
        .unwrap();

    let all = store.audit_since(None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].actor, "bob@ops-2");
    assert_eq!(all[0].known_action(), Some(Action::DlqReplay));
    assert_eq!(
        all[0].counts,
        Some(json!({"replayed": 7, "skipped": 1, "failed": 0}))
    );
    assert_eq!(all[1].target, "embeddings");
    assert_eq!(all[1].detail["reason"], "provider incident");

    let later = store
        .audit_since(Some(all[0].at + chrono::Duration::seconds(1)), 10)
        .await
        .unwrap();
    assert!(later.is_empty(), "nothing after the newest: {later:?}");
}
