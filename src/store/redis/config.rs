//! How the connections of one replica to Redis time out and reconnect, so that a call against
//! a Redis that is down, stopped or cut off fails within about three seconds instead of
//! hanging.

use std::time::Duration;

use ::redis::{aio::ConnectionManagerConfig, cluster::ClusterClientBuilder};

/// How long Redis may take to answer one command. Every script the stores run is bounded work
/// (an append batch is at most 64 frames and 256 KiB) that takes well under a millisecond, so
/// a second is a thousand times a normal answer, and longer than the pauses a healthy Redis
/// makes (a fork for a snapshot or an AOF rewrite stalls it for tens to hundreds of
/// milliseconds on a large data set); yet short enough that a caller learns within a second
/// that Redis is stopped or cut off. A call that only timed out may have been applied; see
/// `store::redis` for what the stores make of that.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one connection attempt may take, the handshake included: a connect to a live
/// Redis takes a round trip or two; a stopped one accepts the TCP connection (the kernel does)
/// and then never answers the handshake.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// After a connection is lost, one attempt, then one more after a jittered delay of up to
/// twice [`RECONNECT_DELAY`]: at most about 2.2 s for a caller waiting on the reconnect,
/// plus its own command's [`RESPONSE_TIMEOUT`]. A reconnect that fails is tried again by the
/// next call that needs the connection (the probe makes one each second), so giving up early
/// loses nothing but makes every call during an outage fail in bounded time.
const RECONNECT_RETRIES: usize = 1;
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// The connection manager settings every connection of a replica uses; see the constants.
pub(super) fn connection_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(RECONNECT_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
}

/// The same bounds for a Redis Cluster's connection: each command waits
/// [`RESPONSE_TIMEOUT`] for its node, and about twice that in all, so that following a slot
/// that moved (a `MOVED` or `ASK` answer, a failover) costs a retry or two, not a failure.
pub(super) fn cluster_config(builder: ClusterClientBuilder) -> ClusterClientBuilder {
    builder
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .overall_response_timeout(Some(2 * RESPONSE_TIMEOUT + RECONNECT_MAX_DELAY))
        .retries(RECONNECT_RETRIES as u32 + 2)
        .min_retry_wait(RECONNECT_DELAY.as_millis() as u64)
        .max_retry_wait(RECONNECT_MAX_DELAY.as_millis() as u64)
}
