//! The worker's reading of the two sections of the shared config file that belong to job code:
//! `[jobs]` (handler settings) and `[retry.<kind>]` (policy overrides). The `runtime` crate
//! carries them as raw TOML so the scheduler never links the job crate; this decodes them with
//! the job crate's own types, and errors name the full key (`jobs.embed.chunk_size`).

use std::collections::BTreeMap;

use jobs::{JobsConfig, RetryPolicy};
use runtime::{Config, ConfigError};
use serde::de::DeserializeOwned;

/// `[jobs]` and `[retry]`, decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSettings {
    /// Handler settings.
    pub jobs: JobsConfig,
    /// Per-kind overrides of the retry policy.
    pub retry: BTreeMap<String, RetryPolicy>,
}

impl JobSettings {
    /// Decodes and checks both sections of `cfg`.
    pub fn from_config(cfg: &Config) -> Result<JobSettings, ConfigError> {
        let jobs = decode::<JobsConfig>("jobs", &cfg.jobs)?;
        let mut retry = BTreeMap::new();
        for (kind, table) in &cfg.retry {
            let key = format!("retry.{kind}");
            let p = decode::<RetryPolicy>(&key, table)?;
            if p.max_attempts == 0 {
                return Err(invalid(format!("{key}.max_attempts"), "must be at least 1"));
            }
            if p.backoff_base > p.backoff_cap {
                return Err(invalid(
                    format!("{key}.backoff_base"),
                    "is above backoff_cap",
                ));
            }
            retry.insert(kind.clone(), p);
        }
        Ok(JobSettings { jobs, retry })
    }
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Decodes the table at `prefix`; an error names the key inside it that is wrong.
fn decode<T: DeserializeOwned>(prefix: &str, table: &toml::Table) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        invalid(key, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<JobSettings, ConfigError> {
        JobSettings::from_config(&Config::parse(text).unwrap())
    }

    #[test]
    fn defaults_decode_to_the_job_crates_defaults() {
        assert_eq!(settings("").unwrap(), JobSettings::default());
    }

    #[test]
    fn sections_decode_and_errors_name_the_full_key() {
        let s = settings(
            "[jobs.embed]\nchunk_size = 500\nchunk_overlap = 10\n[retry.noop]\nmax_attempts = 2\nbackoff_base = \"1s\"\nbackoff_cap = \"5s\"\ntimeout = \"9s\"\n",
        )
        .unwrap();
        assert_eq!(s.jobs.embed.chunk_size, 500);
        assert_eq!(s.retry["noop"].max_attempts, 2);

        let err = settings("[jobs.embed]\nchunk_sise = 5\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("jobs.embed.chunk_sise") && err.contains("unknown field"),
            "{err}"
        );
        let err = settings("[jobs.embed.openai]\ntimeout = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("jobs.embed.openai.timeout"), "{err}");
        let err = settings(
            "[retry.x]\nmax_attempts = 0\nbackoff_base = \"1s\"\nbackoff_cap = \"5s\"\ntimeout = \"9s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("retry.x.max_attempts"), "{err}");
        let err = settings("[retry.x]\nmax_attempts = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retry.x") && err.contains("backoff_base"),
            "{err}"
        );
    }
}
