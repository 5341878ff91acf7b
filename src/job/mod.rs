//! One job as it runs: its record, and the path its frames take into session logs.
//!
//! - [`record`]: the job's state: spec, lifecycle, authority, cancellation, outcome.
//! - `emission`: the one place its frames leave from, under the emission lock that keeps
//!   the terminal frame last and subscriptions gap-free.
//! - `flights`: its frames on their way into a log that pipelines appends, ahead of their
//!   answers.
//! - [`delivery`]: how a frame enters one session's log (features, redaction,
//!   back-pressure) and how a job is paced to its reader.
//! - [`listing`]: `session.list_jobs` filters and cursors (§6.6).
//! - [`running`]: the jobs this replica runs, as a drain waits for them and ends the rest.
//!
//! Jobs do not depend on a connection: they keep running and appending while the client is
//! away (§6.4). The engine that starts them is [`crate::engine`].

pub mod delivery;
mod emission;
mod flights;
pub mod listing;
pub mod record;
pub mod running;

use std::sync::Arc;

use crate::{config::GatewayConfig, credentials::Provisioning, store::log::EventLog};

use self::{delivery::DeliveryPolicy, running::Running};

/// What every job of an engine shares: how its frames are delivered, the logs it reaches, the
/// credential upstream, and the settings it runs under.
pub struct JobServices {
    /// How frames enter session logs.
    pub delivery: DeliveryPolicy,
    /// Every session's log, for subscribers' sessions.
    pub logs: Arc<dyn EventLog>,
    /// Issues and revokes provisioned credentials (§9.8), keeping them in the ledger until
    /// they are revoked, when an upstream is configured.
    pub provisioner: Option<Arc<Provisioning>>,
    /// The settings.
    pub settings: GatewayConfig,
    /// The jobs running on this replica.
    pub running: Running,
}
