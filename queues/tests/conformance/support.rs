//! Helpers the backend harnesses share: running a native client and reading service URLs.

use std::process::Stdio;

use anyhow::{Context, bail};

/// URL of a local service: `$VAR` when set, else the default.
pub fn env_or(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Runs `program args…`, feeding `stdin`, and fails with its stderr when it exits non-zero.
pub async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting {program} (run scripts/services.sh up to install it)")
        })?;
    let mut pipe = child.stdin.take().context("stdin")?;
    if let Some(input) = stdin {
        pipe.write_all(input.as_bytes()).await?;
    }
    drop(pipe);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The PostgreSQL the suite uses: the PostgreSQL backend's database, and the store of unique
/// jobs' keys for RabbitMQ and SQS (`broker.dedup_url`).
pub fn pg_url() -> String {
    env_or("JOBFLEET_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
}

/// The Python of the project's virtualenv (boto3, pika), made by `scripts/services.sh up`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("JOBFLEET_PYTHON") {
        return p;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let venv = format!("{root}/.venv/bin/python");
    if std::path::Path::new(&venv).exists() {
        venv
    } else {
        "python3".into()
    }
}

/// docs/backends/redis.md, "Unique jobs": KEYS dedup ready, ARGV body job-id window-ms.
pub const REDIS_UNIQUE_PUSH: &str = "if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ARGV[3]) then return redis.call('LPUSH', KEYS[2], ARGV[1]) end return 0";

/// The keys and arguments of [`REDIS_UNIQUE_PUSH`] for a job `body` on the queue whose keys
/// start with `prefix` (`ns:queue`, or `ns:{queue}` on a cluster).
pub fn unique_push_args(prefix: &str, body: &serde_json::Value) -> [String; 5] {
    let key = body["dedup_key"].as_str().unwrap_or_default();
    let id = body["id"].as_str().unwrap_or_default();
    let ms = (body["unique_for"].as_f64().unwrap_or(3600.0) * 1000.0).ceil() as u64;
    [
        format!("{prefix}:dedup:{key}"),
        format!("{prefix}:ready"),
        body.to_string(),
        id.to_owned(),
        ms.to_string(),
    ]
}
