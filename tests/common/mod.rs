//! A real gateway on an ephemeral port, and small clients that speak frames to it.
//!
//! Split by role: [`server`] starts and stops the gateway in this process, on the stores
//! [`each_store`] chooses, and [`process`] as a child process, each serving an `Endpoint`;
//! [`grpc`] is the gRPC client, [`raw_grpc`] a gRPC stream that sends whatever bytes a test
//! writes, and [`ws`] the WebSocket client;
//! [`health`] watches gRPC health, [`frames`] builds client payloads and reads server frames,
//! [`agents`] holds test agents and [`agents_file`] gateways with an agents file, [`log`] reads
//! a session's log straight from the gateway, [`metrics`] scrapes the Prometheus endpoint,
//! [`python`] builds the Python environment the interoperability tests run, and [`node`] the
//! Node one, each under the [`install_lock`] of its own,
//! [`tls`] makes certificates and speaks both transports over TLS, [`cutter`] is a TCP proxy
//! that drops its connections on demand, [`terminal`] runs a command in a pseudo-terminal,
//! [`wait`] waits on state the test observes and [`raw`] opens plain TCP connections that
//! never become useful; [`redis`] runs the `redis-server`s shared stores are tested on (and [`redis_cluster`]
//! Redis Clusters of them),
//! [`deployment`] runs replicas as processes on one of them, and [`haproxy`] puts a real proxy
//! in front of replicas.
//! Everything is re-exported here, so a test says `use common::*;`.
// Each test crate uses a subset of these helpers.
#![allow(dead_code)]

use std::time::Duration;

mod agents;
mod agents_file;
mod cutter;
mod deployment;
mod each_store;
mod frames;
mod grpc;
mod haproxy;
mod health;
mod install_lock;
mod log;
mod metrics;
mod node;
mod process;
mod python;
mod raw;
mod raw_grpc;
mod redis;
mod redis_cluster;
mod server;
mod terminal;
mod tls;
mod wait;
mod ws;

// A test crate that uses nothing of a module leaves its re-export unused.
#[allow(unused_imports)]
pub use self::{
    agents::*, agents_file::*, cutter::*, deployment::*, each_store::*, frames::*, grpc::*,
    haproxy::*, health::*, install_lock::*, log::*, metrics::*, node::*, process::*, python::*,
    raw::*, raw_grpc::*, redis::*, redis_cluster::*, server::*, terminal::*, tls::*, wait::*,
    ws::*,
};

/// How long a test waits for a frame before failing. A guard against hangs, not a timing
/// assertion: every frame the tests wait for is due in milliseconds.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// The features the runtime implements, offered by the tests' hellos.
pub const FEATURES: &[&str] = &["progress", "agent_versions"];

/// A W3C `traceparent` for frames that carry a trace id.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
