//! [`Connection`]: what a store sends its commands on, to a single Redis (or a primary with
//! replicas) or to a Redis Cluster, with one type, so that the stores' code is the same on
//! both. On a Cluster every command goes to the primary of its first key's slot, and so does a
//! pipeline whose commands keep to one slot. A pipeline that spans slots is sent as its
//! commands, each to its own slot's primary, all at once (still one round trip's wait, if more
//! packets), unless it is a transaction (`MULTI`), which must keep to one slot, as must every
//! script: they are refused (`CROSSSLOT`), which is why each store keeps what one atomic call
//! touches under one hash tag.

use ::redis::{
    aio::{ConnectionLike, ConnectionManager},
    cluster_async::ClusterConnection,
    Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value,
};
use futures::{future::try_join_all, FutureExt};

/// A multiplexed connection to one Redis, or to every primary of a Cluster; cheap to clone,
/// and reconnecting by itself.
#[derive(Clone)]
pub(crate) enum Connection {
    /// One server: its connection manager.
    Single(ConnectionManager),
    /// A Cluster: its connection, which follows the slots as they move.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => async move {
                match conn.req_packed_commands(pipeline, offset, count).await {
                    // Refused before anything was sent: the commands go one by one.
                    Err(e)
                        if e.kind() == ErrorKind::Server(ServerErrorKind::CrossSlot)
                            && !pipeline.is_transaction() =>
                    {
                        let sent = pipeline.cmd_iter().map(|cmd| {
                            let mut conn = conn.clone();
                            async move { conn.req_packed_command(cmd).await }
                        });
                        let answers = try_join_all(sent).await?;
                        Ok(answers.into_iter().skip(offset).take(count).collect())
                    }
                    other => other,
                }
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}
