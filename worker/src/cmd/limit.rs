//! `worker limit KIND --rate 100/min | --concurrency N | --clear` (`--queue` for a queue's
//! limit) and `worker limits [--json]`: the operator's run-time overrides of the fleet-wide
//! limits. A change is one row in `jobfleet.limit_overrides` plus its audit row, written
//! together; every worker applies it within one `sample_interval`. Everything is checked
//! before anything is written: a bad rate, a kind this build does not know or a queue the
//! config lacks is exit code 2 with nothing changed.

use comfy_table::Table;
use fleet::limits::Scope;
pub use fleet::limits::view::LimitRow;
use fleet::limits::view::source;
use fleet::{Actor, Store};
use runtime::Config;
use runtime::config::Rate;

use crate::cmd::CliError;
use crate::config::JobSettings;

/// `worker limit` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LimitArgs {
    /// The job kind (with --queue: the queue) to limit; leave out to list the limits.
    pub target: Option<String>,
    /// TARGET is a queue: the limit covers every job received from it.
    #[arg(long)]
    pub queue: bool,
    /// Starts allowed fleet-wide, COUNT/UNIT: 3000/min, 50/s, 100000/h, 5/10s.
    #[arg(long, value_name = "COUNT/UNIT")]
    pub rate: Option<String>,
    /// Jobs running at once, fleet-wide.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// Remove the run-time override: the config file's limit (if any) applies again.
    #[arg(long, conflicts_with_all = ["rate", "concurrency"])]
    pub clear: bool,
    #[arg(long)]
    pub json: bool,
}

/// `worker limits` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListArgs {
    #[arg(long)]
    pub json: bool,
}

/// A checked request: nothing reaches the database before this exists.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Set {
        scope: Scope,
        rate: Option<Rate>,
        concurrency: Option<u32>,
    },
    Clear {
        scope: Scope,
    },
}

/// Checks the arguments against the config and the kinds this build runs; `None` when they
/// ask for the listing.
pub fn check(
    cfg: &Config,
    settings: &JobSettings,
    args: &LimitArgs,
) -> Result<Option<Change>, CliError> {
    let Some(target) = &args.target else {
        if args.rate.is_some() || args.concurrency.is_some() || args.clear || args.queue {
            return Err(CliError::Usage(
                "name the kind (or, with --queue, the queue) to limit: worker limit KIND --rate 100/min".into(),
            ));
        }
        return Ok(None);
    };
    let scope = if args.queue {
        crate::cmd::check_queue(cfg, target)?;
        Scope::Queue(target.clone())
    } else {
        let known = crate::app::validators(settings)?;
        if !known.kinds().any(|k| k == target) {
            return Err(CliError::Usage(format!(
                "`{target}` is not a job kind this worker runs (kinds: {}); for a queue's limit add --queue",
                known.kinds().collect::<Vec<_>>().join(", ")
            )));
        }
        Scope::Kind(target.clone())
    };
    if args.clear {
        return Ok(Some(Change::Clear { scope }));
    }
    let rate = args
        .rate
        .as_deref()
        .map(str::parse::<Rate>)
        .transpose()
        .map_err(|e| CliError::Usage(format!("--rate: {e}")))?;
    if args.concurrency == Some(0) {
        return Err(CliError::Usage(
            "--concurrency 0: must be at least 1 (to stop a queue, pause it)".into(),
        ));
    }
    if rate.is_none() && args.concurrency.is_none() {
        return Err(CliError::Usage(format!(
            "nothing to change for {scope}: give --rate COUNT/UNIT and/or --concurrency N, or --clear"
        )));
    }
    Ok(Some(Change::Set {
        scope,
        rate,
        concurrency: args.concurrency,
    }))
}

/// The table (or JSON) of `worker limits`.
pub fn render(rows: &[LimitRow], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(rows).expect("rows serialize");
    }
    if rows.is_empty() {
        return "no limits in force (set one: worker limit KIND --rate 100/min)".into();
    }
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "scope",
        "name",
        "rate",
        "from",
        "concurrency",
        "from",
        "slots held",
        "workers",
        "set by",
    ]);
    for r in rows {
        t.add_row(vec![
            r.scope.clone(),
            r.name.clone(),
            r.rate.clone().unwrap_or_else(|| "-".into()),
            source(r.config.rate.is_some(), r.override_rate.is_some()).into(),
            r.concurrency.map_or("-".into(), |c| c.to_string()),
            source(
                r.config.concurrency.is_some(),
                r.override_concurrency.is_some(),
            )
            .into(),
            r.slots_held.to_string(),
            r.workers.to_string(),
            match (&r.set_by, r.set_at) {
                (Some(who), Some(at)) => format!("{who} at {}", at.format("%Y-%m-%d %H:%M:%SZ")),
                _ => "-".into(),
            },
        ]);
    }
    t.to_string()
}

async fn store(cfg: &Config) -> Result<Store, CliError> {
    if !cfg.fleet.enabled {
        return Err(CliError::Usage(
            "[fleet] enabled = false in this config: there is no fleet-wide state to change".into(),
        ));
    }
    crate::app::fleet_store(cfg).await
}

fn failed(e: fleet::Error) -> CliError {
    match e {
        fleet::Error::Invalid(m) => CliError::Usage(m),
        e => CliError::Failed(e.to_string()),
    }
}

/// Applies `change` (with its audit row) and returns the limits in force afterwards.
pub async fn apply(
    cfg: &Config,
    store: &Store,
    change: &Change,
    actor: &Actor,
) -> Result<Vec<LimitRow>, CliError> {
    match change {
        Change::Set {
            scope,
            rate,
            concurrency,
        } => {
            store
                .set_limit(scope, *rate, *concurrency, actor)
                .await
                .map_err(failed)?;
        }
        Change::Clear { scope } => {
            store.clear_limit(scope, actor).await.map_err(failed)?;
        }
    }
    list(cfg, store).await
}

/// The rows of `worker limits`.
pub async fn list(cfg: &Config, store: &Store) -> Result<Vec<LimitRow>, CliError> {
    store.limit_rows(&cfg.limits).await.map_err(failed)
}

/// `worker limit ...`: checks, applies, prints what is in force now.
pub async fn execute(
    cfg: &Config,
    settings: &JobSettings,
    args: &LimitArgs,
) -> Result<(), CliError> {
    let change = check(cfg, settings, args)?;
    let store = store(cfg).await?;
    let Some(change) = change else {
        println!("{}", render(&list(cfg, &store).await?, args.json));
        return Ok(());
    };
    let actor = Actor::operator(&runtime::host::hostname());
    let rows = apply(cfg, &store, &change, &actor).await?;
    if args.json {
        println!("{}", render(&rows, true));
        return Ok(());
    }
    let (verb, scope) = match &change {
        Change::Set { scope, .. } => ("set", scope),
        Change::Clear { scope } => ("override cleared", scope),
    };
    let now = rows.iter().find(|r| r.is(scope));
    let in_force = match now {
        Some(r) => format!(
            "rate {}, concurrency {}",
            r.rate.as_deref().unwrap_or("unlimited"),
            r.concurrency.map_or("unlimited".into(), |c| c.to_string())
        ),
        None => "no limit".into(),
    };
    println!(
        "{scope}: {verb} by {actor}; in force: {in_force}. Every worker applies it within {} (worker.sample_interval).",
        humantime::format_duration(cfg.worker.sample_interval)
    );
    println!("{}", render(&rows, false));
    Ok(())
}

/// `worker limits [--json]`.
pub async fn execute_list(cfg: &Config, args: &ListArgs) -> Result<(), CliError> {
    let store = store(cfg).await?;
    println!("{}", render(&list(cfg, &store).await?, args.json));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: Option<&str>) -> LimitArgs {
        LimitArgs {
            target: target.map(str::to_owned),
            ..LimitArgs::default()
        }
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let cfg = Config::default();
        let s = JobSettings::default();
        let usage = |a: &LimitArgs| match check(&cfg, &s, a) {
            Err(e @ CliError::Usage(_)) => e.to_string(),
            other => panic!("expected a usage error, got {other:?}"),
        };
        let mut a = args(Some("noop"));
        a.rate = Some("3000/fortnight".into());
        let e = usage(&a);
        assert!(
            e.contains("`3000/fortnight`") && e.contains("--rate"),
            "{e}"
        );
        let mut a = args(Some("no_such_kind"));
        a.rate = Some("10/s".into());
        let e = usage(&a);
        assert!(e.contains("`no_such_kind`") && e.contains("noop"), "{e}");
        let mut a = args(Some("nowhere"));
        a.queue = true;
        a.concurrency = Some(2);
        assert!(usage(&a).contains("`nowhere`"));
        let mut a = args(Some("noop"));
        a.concurrency = Some(0);
        assert!(usage(&a).contains("--concurrency 0"));
        assert!(usage(&args(Some("noop"))).contains("nothing to change"));
        let mut a = args(None);
        a.rate = Some("1/s".into());
        assert!(usage(&a).contains("name the kind"));
    }

    #[test]
    fn good_input_becomes_a_change() {
        let cfg = Config::default();
        let s = JobSettings::default();
        let mut a = args(Some("noop"));
        a.rate = Some("100/min".into());
        assert_eq!(
            check(&cfg, &s, &a).unwrap(),
            Some(Change::Set {
                scope: Scope::Kind("noop".into()),
                rate: Some("100/min".parse().unwrap()),
                concurrency: None
            })
        );
        let mut a = args(Some("embeddings"));
        a.queue = true;
        a.clear = true;
        assert_eq!(
            check(&cfg, &s, &a).unwrap(),
            Some(Change::Clear {
                scope: Scope::Queue("embeddings".into())
            })
        );
        assert_eq!(check(&cfg, &s, &args(None)).unwrap(), None);
    }
}
