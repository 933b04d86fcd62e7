//! Which broker to connect to, as it appears in the `[broker]` table of the config file: plain
//! data and its validation. Turning it into a running backend is [`crate::connect`]'s job.

use serde::{Deserialize, Serialize};

use crate::error::{QueueError, Result};

/// The backends this build knows. A backend left out at compile time is still named here so a
/// config that asks for it gets a clear "not compiled in" error instead of a parse error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Memory,
    Sqs,
    Rabbitmq,
    Redis,
    Postgres,
}

impl BackendKind {
    /// The lowercase name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Sqs => "sqs",
            BackendKind::Rabbitmq => "rabbitmq",
            BackendKind::Redis => "redis",
            BackendKind::Postgres => "postgres",
        }
    }

    /// The URL used when the config gives none: the local service on its standard port.
    pub fn default_url(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory://",
            BackendKind::Sqs => "http://127.0.0.1:5000",
            BackendKind::Rabbitmq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            BackendKind::Redis => "redis://127.0.0.1:6379",
            BackendKind::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Connection settings for one broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Which backend.
    pub backend: BackendKind,
    /// `redis://…`, `amqp://…`, `postgres://…`; for SQS the endpoint URL (moto, LocalStack),
    /// left out to use AWS's own endpoint for the region. A Redis Cluster is
    /// `redis+cluster://[user:password@]host:port[,host:port…]`: the seed nodes, any of which
    /// can answer for the rest.
    #[serde(default)]
    pub url: Option<String>,
    /// AWS region (SQS only); the SDK's default chain when left out.
    #[serde(default)]
    pub region: Option<String>,
    /// Prefix for broker-side names (SQS queue names, Redis keys, RabbitMQ queues, the
    /// PostgreSQL schema), so several deployments can share one broker.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// PostgreSQL that keeps unique jobs' `dedup_key`s for the brokers with no such check of
    /// their own (RabbitMQ, SQS); the worker and the scheduler default it to `[database] url`.
    /// Unused by the other backends. Without it, those two refuse a job with a `dedup_key`.
    #[serde(default)]
    pub dedup_url: Option<String>,
}

/// The default [`BrokerConfig::namespace`].
pub fn default_namespace() -> String {
    "jobfleet".into()
}

impl BrokerConfig {
    /// Settings for `backend` at `url`, default namespace.
    pub fn new(backend: BackendKind, url: impl Into<String>) -> Self {
        BrokerConfig {
            backend,
            url: Some(url.into()),
            region: None,
            namespace: default_namespace(),
            dedup_url: None,
        }
    }

    /// The URL to connect to: the configured one or the backend's local default.
    pub fn url_or_default(&self) -> &str {
        self.url
            .as_deref()
            .unwrap_or_else(|| self.backend.default_url())
    }

    /// Checks what can be checked without connecting.
    pub fn validate(&self) -> Result<()> {
        let ns_ok = !self.namespace.is_empty()
            && self.namespace.len() <= 40
            && self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ns_ok {
            return Err(QueueError::Config(format!(
                "broker.namespace `{}` must be 1-40 characters of [A-Za-z0-9_-]",
                self.namespace
            )));
        }
        if let Some(u) = &self.url {
            if let Some(seeds) = redis_cluster_seeds(u) {
                seeds?;
                return Ok(());
            }
            url::Url::parse(u).map_err(|e| {
                QueueError::Config(format!(
                    "broker.url `{}` is not a URL: {e}",
                    crate::error::redact_url(u)
                ))
            })?;
        }
        if let Some(u) = &self.dedup_url {
            let ok =
                url::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "postgres" | "postgresql"));
            if !ok {
                return Err(QueueError::Config(format!(
                    "broker.dedup_url `{}` must be a postgres:// URL",
                    crate::error::redact_url(u)
                )));
            }
        }
        Ok(())
    }
}

/// The scheme of a Redis Cluster URL.
pub const REDIS_CLUSTER_SCHEME: &str = "redis+cluster://";

/// The seed nodes of a `redis+cluster://[user:password@]host:port[,host:port…]` URL, each as a
/// plain `redis://[user:password@]host:port` URL (the port defaults to 6379); `None` for any
/// other URL. A list is not one URL (`url::Url` cannot hold several hosts), hence this parser.
pub fn redis_cluster_seeds(url: &str) -> Option<Result<Vec<String>>> {
    let rest = url.strip_prefix(REDIS_CLUSTER_SCHEME)?;
    let bad = |why: &str| {
        QueueError::Config(format!(
            "broker.url `{}` is not a Redis Cluster URL ({why}); expected \
             redis+cluster://[user:password@]host:port[,host:port...]",
            crate::error::redact_url(url)
        ))
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (auth, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    if hosts.contains(['/', '?', '#']) {
        return Some(Err(bad("no path or query: the cluster has no databases")));
    }
    let mut seeds = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        if host.is_empty() {
            return Some(Err(bad("empty seed node")));
        }
        let seed = if host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
            format!("redis://{auth}{host}")
        } else {
            format!("redis://{auth}{host}:6379")
        };
        match url::Url::parse(&seed) {
            Ok(u) if u.host().is_some() && u.port().is_some() => seeds.push(seed),
            _ => return Some(Err(bad(&format!("seed node `{host}` is not host:port")))),
        }
    }
    Some(Ok(seeds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let cfg: BrokerConfig =
            toml::from_str("backend = \"redis\"\nurl = \"redis://h:1\"").expect("valid");
        assert_eq!(cfg.backend, BackendKind::Redis);
        assert_eq!(cfg.namespace, "jobfleet");
        let err = toml::from_str::<BrokerConfig>("backend = \"redis\"\nurll = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `urll`"), "{err}");
        let err = toml::from_str::<BrokerConfig>("backend = \"kafka\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka"), "{err}");
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        let seeds = redis_cluster_seeds("redis+cluster://:pw@10.0.0.1:7000, h2:7001,h3/")
            .expect("a cluster URL")
            .expect("valid");
        assert_eq!(
            seeds,
            [
                "redis://:pw@10.0.0.1:7000",
                "redis://:pw@h2:7001",
                "redis://:pw@h3:6379"
            ]
        );
        assert!(redis_cluster_seeds("redis://h:1").is_none());
        for bad in [
            "redis+cluster://",
            "redis+cluster://h:1,,h:2",
            "redis+cluster://h:notaport",
            "redis+cluster://h:1/0",
        ] {
            let err = redis_cluster_seeds(bad).expect("cluster").unwrap_err();
            assert!(err.to_string().contains("host:port"), "{bad}: {err}");
            let cfg = BrokerConfig::new(BackendKind::Redis, bad);
            assert!(cfg.validate().is_err(), "{bad}");
        }
        let err = redis_cluster_seeds("redis+cluster://:s3cret@h:x")
            .unwrap()
            .unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn validates_names() {
        let mut cfg = BrokerConfig::new(BackendKind::Memory, "memory://");
        cfg.namespace = "bad name".into();
        assert!(cfg.validate().is_err());
        assert!(crate::QueueName::new("embeddings").is_ok());
        assert!(crate::QueueName::new("a b").is_err());
        assert!(crate::QueueName::new("").is_err());
    }
}
