//! `worker search "query text" [--limit 10] [--json]`: the nearest embedded chunks to a query,
//! through [`jobs::search::Searcher`] with the configured provider and chunk table.

use std::sync::Arc;
use std::time::Duration;

use comfy_table::Table;
use jobs::search::{Hit, Searcher};

use runtime::Config;

use crate::cmd::CliError;
use crate::config::JobSettings;

/// Arguments of `worker search`.
#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    /// What to look for, in plain words.
    pub query: String,
    /// How many chunks to return.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Print the hits as a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Runs the search and prints the result.
pub async fn execute(
    cfg: &Config,
    settings: &JobSettings,
    args: &SearchArgs,
) -> Result<(), CliError> {
    let hits = search(cfg, settings, &args.query, args.limit).await?;
    println!("{}", render(&hits, args.json));
    Ok(())
}

/// The `limit` nearest chunks to `query`.
pub async fn search(
    cfg: &Config,
    settings: &JobSettings,
    query: &str,
    limit: usize,
) -> Result<Vec<Hit>, CliError> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&cfg.database.url)
        .await
        .map_err(|e| {
            CliError::Failed(format!(
                "cannot connect to the database at {}: {e}",
                queues::error::redact_url(&cfg.database.url)
            ))
        })?;
    let embedder = jobs::embedder::from_config(&settings.jobs.embed)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let searcher = Searcher::new(pool, &settings.jobs, Arc::from(embedder))
        .await
        .map_err(search_error)?;
    searcher.search(query, limit).await.map_err(search_error)
}

fn search_error(e: jobs::search::SearchError) -> CliError {
    use jobs::search::SearchError as E;
    match e {
        E::BadRequest(_) | E::Vector(jobs::vector::VectorError::Mismatch(_)) => {
            CliError::Usage(e.to_string())
        }
        _ => CliError::Failed(e.to_string()),
    }
}

/// The hits as a table (or JSON); "no matches" when there are none.
pub fn render(hits: &[Hit], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(hits).expect("hits serialise");
    }
    if hits.is_empty() {
        return "no matches (nothing embedded yet? enqueue embed_document jobs first)".into();
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["distance", "document", "chunk", "title", "snippet"]);
    for h in hits {
        t.add_row([
            format!("{:.4}", h.distance),
            h.document_id.to_string(),
            h.chunk_index.to_string(),
            h.title.clone().unwrap_or_default(),
            h.snippet.chars().take(80).collect(),
        ]);
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table_and_json() {
        let hits = vec![Hit {
            document_id: 7,
            chunk_index: 2,
            title: Some("Release notes".into()),
            snippet: "queues now drain".into(),
            distance: 0.1234,
        }];
        let t = render(&hits, false);
        assert!(
            t.contains("0.1234") && t.contains("Release notes") && t.contains('7'),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&render(&hits, true)).unwrap();
        assert_eq!(j[0]["document_id"], 7);
        assert_eq!(j[0]["title"], "Release notes");
        assert!(render(&[], false).contains("no matches"));
    }
}
