//! The connections of the Redis backend, one node or a cluster behind one type, so that the
//! broker's operations are written once: a single node through a `ConnectionManager` (it
//! reconnects by itself), a cluster through redis-rs's async cluster client (it follows
//! `MOVED`/`ASK` and refreshes its slot map after a failover).

use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::keys::Layout;
use crate::error::{QueueError, Result};

/// How long connecting may take before the broker counts as unreachable.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Scripts touch at most a few hundred keys; anything slower than this is a sick server.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect: one node, or a cluster by its seed nodes.
#[derive(Clone)]
pub(super) enum Target {
    Single(Client),
    Cluster {
        /// For everything but blocking waits: each request bounded by [`RESPONSE_TIMEOUT`].
        client: Box<ClusterClient>,
        /// For `BLMOVE`, which holds its connection for the whole wait: no response timeout
        /// (the caller bounds the wait itself).
        blocking: Box<ClusterClient>,
    },
}

impl Target {
    /// Parses `url`: `redis://…` is one node, `redis+cluster://h:p,h:p` a cluster.
    pub(super) fn open(url: &str) -> Result<Target> {
        let bad = |e: redis::RedisError| {
            QueueError::Config(format!(
                "broker.url `{}` is not a Redis URL: {e}",
                crate::error::redact_url(url)
            ))
        };
        let Some(seeds) = crate::config::redis_cluster_seeds(url) else {
            return Client::open(url).map(Target::Single).map_err(bad);
        };
        let seeds = seeds?;
        // A failover takes the cluster a few seconds (node timeout plus election): retry
        // redirections and refused connections quickly, but give up within the response
        // timeout so the caller sees a transient error instead of a hang.
        let builder = || {
            ClusterClientBuilder::new(seeds.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .retries(6)
                .min_retry_wait(50)
                .max_retry_wait(1_000)
        };
        Ok(Target::Cluster {
            client: Box::new(
                builder()
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()
                    .map_err(bad)?,
            ),
            blocking: Box::new(
                builder()
                    .overall_response_timeout(None)
                    .build()
                    .map_err(bad)?,
            ),
        })
    }

    pub(super) fn layout(&self) -> Layout {
        match self {
            Target::Single(_) => Layout::Single,
            Target::Cluster { .. } => Layout::Cluster,
        }
    }

    /// The shared, multiplexed connection.
    pub(super) async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                Ok(Conn::Single(
                    client.get_connection_manager_with_config(cfg).await?,
                ))
            }
            Target::Cluster { client, .. } => {
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A connection of its own for one blocking wait at a time.
    pub(super) async fn blocking(&self) -> RedisResult<Conn> {
        match self {
            Target::Single(client) => {
                let cfg = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                Ok(Conn::Blocking(
                    client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await?,
                ))
            }
            Target::Cluster { blocking, .. } => {
                Ok(Conn::Cluster(blocking.get_async_connection().await?))
            }
        }
    }
}

/// A connection to one node or to the cluster. Cloning shares it.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Blocking(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    /// `PING`. On a cluster, answered by any master: the health of the cluster as a whole (a
    /// shard that is down shows up in the queues it holds, not as the whole broker down).
    pub(super) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Conn::Cluster(c) => {
                let routing = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::OneSucceeded),
                ));
                c.route_command(redis::cmd("PING"), routing).await?;
                Ok(())
            }
            other => redis::cmd("PING").query_async(other).await,
        }
    }

    /// The cluster connection, when this is one.
    pub(super) fn cluster(&self) -> Option<&ClusterConnection> {
        match self {
            Conn::Cluster(c) => Some(c),
            _ => None,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Blocking(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Blocking(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Blocking(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
