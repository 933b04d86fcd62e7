//! `worker demo`: a one-minute tour for newcomers. Applies the migrations, writes a few
//! documents and analytics events, enqueues one job of every kind plus one that fails, runs the
//! real worker machinery in-process until they are settled, and prints what happened in the
//! database, the queue table and the DLQ entry of the failed job.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DurationRound, Utc};
use queues::{Broker, Envelope};
use serde_json::json;

use runtime::{Config, Shutdown};

use crate::app::{App, Serve};
use crate::cmd::{CliError, dlq, migrate};
use crate::config::JobSettings;

/// How long the demo waits for its jobs before giving up.
const DEADLINE: Duration = Duration::from_secs(90);

/// Runs the tour and returns the text to print.
pub async fn run(cfg: Config, settings: &JobSettings) -> Result<String, CliError> {
    let mut out = String::new();
    migrate::apply(&cfg).await?;
    migrate::vectors(&cfg, settings).await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&cfg.database.url)
        .await
        .map_err(|e| db_error(&cfg, e))?;
    let app = App::new(cfg.clone(), settings).await?;
    let broker = app.broker();

    // Data for the jobs to work on.
    let text = "jobfleet demo document. ".repeat(200);
    let mut doc_ids = Vec::new();
    for title in ["Quarterly report", "Release notes", "Onboarding guide"] {
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO jobfleet.documents (title, content) VALUES ($1, $2) RETURNING id",
        )
        .bind(title)
        .bind(format!("{title}. {text}"))
        .fetch_one(&db)
        .await
        .map_err(|e| db_error(&cfg, e))?;
        doc_ids.push(id);
    }
    let hour = Utc::now()
        .duration_trunc(chrono::Duration::hours(1))
        .expect("an hour divides any timestamp");
    sqlx::query(
        "INSERT INTO jobfleet.analytics_events (occurred_at, name, user_id)
         SELECT $1 + (g % 3600) * interval '1 second', (ARRAY['signup','login','search'])[1 + g % 3], g % 17
         FROM generate_series(1, 500) g",
    )
    .bind(hour)
    .execute(&db)
    .await
    .map_err(|e| db_error(&cfg, e))?;

    let route = |kind: &str| cfg.route(kind).unwrap_or("embeddings").to_owned();
    let missing_doc = i64::MAX - 7;
    let mut jobs: Vec<Envelope> = doc_ids
        .iter()
        .map(|id| {
            Envelope::new(
                "embed_document",
                route("embed_document"),
                json!({ "document_id": id }),
            )
        })
        .collect();
    jobs.push(Envelope::new(
        "rollup_analytics",
        route("rollup_analytics"),
        json!({"granularity": "hour", "from": hour, "to": hour + chrono::Duration::hours(1)}),
    ));
    jobs.push(Envelope::new(
        "ensure_partitions",
        route("ensure_partitions"),
        json!({"table": "jobfleet.analytics_events", "months_ahead": 3}),
    ));
    jobs.push(Envelope::new(
        "refresh_materialized_view",
        route("refresh_materialized_view"),
        json!({"view": "jobfleet.analytics_daily_totals"}),
    ));
    let failing = Envelope::new(
        "embed_document",
        route("embed_document"),
        json!({ "document_id": missing_doc }),
    );
    let failing_id = failing.id.clone();
    jobs.push(failing.clone());
    broker.send_batch(&jobs).await?;
    writeln!(
        out,
        "enqueued {} jobs on the {} broker ({}): 3 × embed_document, rollup_analytics, \
         ensure_partitions, refresh_materialized_view, and embed_document of a document that \
         does not exist (it will fail)\n",
        jobs.len(),
        broker.backend(),
        broker.url()
    )
    .expect("writing to a String");

    // The real worker, in this process, until every job is settled.
    let shutdown = Shutdown::new();
    let running = tokio::spawn(app.run(shutdown.clone(), Serve::PoolsOnly));
    let settled = wait_settled(&*broker, &cfg, &failing).await;
    shutdown.trigger();
    let _ = running.await;
    settled?;

    // What the jobs did.
    let q = |sql: &'static str| sqlx::query_as::<_, (i64,)>(sql);
    let (chunks,) = q("SELECT count(*) FROM jobfleet.document_chunks WHERE document_id = ANY($1)")
        .bind(&doc_ids)
        .fetch_one(&db)
        .await
        .map_err(|e| db_error(&cfg, e))?;
    let (rollups,) = q("SELECT count(*) FROM jobfleet.analytics_rollup_hourly WHERE bucket = $1")
        .bind(hour)
        .fetch_one(&db)
        .await
        .map_err(|e| db_error(&cfg, e))?;
    let (partitions,) = q("SELECT count(*) FROM pg_inherits
         WHERE inhparent = 'jobfleet.analytics_events'::regclass")
    .fetch_one(&db)
    .await
    .map_err(|e| db_error(&cfg, e))?;
    let docs = doc_ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "done:\n  embed_document            {chunks} chunks with embeddings for documents {docs}\n  \
         rollup_analytics          {rollups} hourly rollup rows for {hour}\n  \
         ensure_partitions         jobfleet.analytics_events has {partitions} partitions (default + monthly)\n  \
         refresh_materialized_view jobfleet.analytics_daily_totals refreshed\n"
    )
    .expect("writing to a String");

    // A search over what the jobs just embedded.
    let query = "onboarding guide";
    let hits = super::search::search(&cfg, settings, query, 3).await?;
    let table = super::search::render(&hits, false);
    writeln!(out, "worker search \"{query}\" --limit 3:\n{table}\n").expect("writing to a String");

    let rows = super::queues::rows(&*broker, &cfg, &Default::default()).await?;
    writeln!(out, "queues:\n{}\n", super::queues::render(&rows, false))
        .expect("writing to a String");
    let entry = dlq::show::show(&*broker, &cfg, &failing.queue, &failing_id).await?;
    writeln!(
        out,
        "the failed job, in the DLQ of `{}`:\n{}\n\nnext: `worker dlq list {0}`, `worker dlq replay {0} --dry-run`; \
         run it for real with scripts/run.sh",
        failing.queue,
        dlq::show::render(&entry, false)
    )
    .expect("writing to a String");
    Ok(out)
}

/// Waits until no queue has work left and the failing job is in its DLQ.
async fn wait_settled(
    broker: &dyn Broker,
    cfg: &Config,
    failing: &Envelope,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut busy = 0;
        for queue in cfg.queues.keys() {
            let d = broker.depth(queue).await?;
            busy += d.visible + d.in_flight + d.delayed;
        }
        let dead = broker.dlq_get(&failing.queue, &failing.id).await?.is_some();
        if busy == 0 && dead {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(CliError::Failed(format!(
                "demo jobs not settled after {} ({busy} still queued or running); \
                 see the log above, and `worker queues`",
                humantime::format_duration(DEADLINE)
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn db_error(cfg: &Config, e: sqlx::Error) -> CliError {
    CliError::Failed(format!(
        "database at {}: {e} (is PostgreSQL running? scripts/services.sh up postgres)",
        queues::error::redact_url(&cfg.database.url)
    ))
}
