//! Provisioned credentials (§9.8): short-lived secrets a runtime issues to one job, scoped to
//! its lease, and revokes when the job ends, even if the process that issued them did not
//! live to see it end (§14).
//!
//! - `provisioner`: [`CredentialProvisioner`], the upstream (an LLM gateway, a secrets broker)
//!   as the runtime sees it.
//! - `memory`: [`MemoryProvisioner`], an in-process upstream, whose credentials die with it.
//! - `http`: [`HttpProvisioner`], an upstream over HTTP that outlives the process
//!   (`docs/credentials.md` is its contract).
//! - `provisioning`: [`Provisioning`], an upstream with the ledger of the credentials it
//!   issued and has not revoked (`store::credentials`): recorded before a job sees them,
//!   revoked when it ends, retried by the sweep (here, after a restart, or by the replica that
//!   took over a lost one) until the upstream accepts.
//!
//! A gateway advertises `provisioned_credentials` only when an upstream is configured.

mod http;
mod memory;
mod provisioner;
mod provisioning;

pub use self::{
    http::HttpProvisioner,
    memory::MemoryProvisioner,
    provisioner::CredentialProvisioner,
    provisioning::{Provisioning, IN_JOB_ATTEMPTS, SWEEP_RETRY_FIRST, SWEEP_RETRY_MOST},
};
