//! [`CredentialProvisioner`]: the upstream (an LLM gateway, a secrets broker) that issues,
//! rotates and revokes credentials, as the runtime sees it.

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::JobId,
    protocol::{credential::Credential, Json},
};

/// The upstream that issues, rotates and revokes credentials.
#[async_trait]
pub trait CredentialProvisioner: Send + Sync + 'static {
    /// Issues a fresh credential for `job`; `constraints` is what the upstream is asked to
    /// enforce (§9.8.3): `cost.budget`, `model.use`, `expires_at`.
    async fn issue(
        &self,
        job: &JobId,
        constraints: serde_json::Map<String, Json>,
    ) -> Result<Credential, ArcpError>;

    /// Replaces the value of credential `id` and revokes the old value; the credential keeps
    /// its id (§9.8.1: stable within the job).
    async fn rotate(&self, id: &str) -> Result<Credential, ArcpError>;

    /// Revokes credential `id`. Revoking an unknown or revoked credential succeeds; a failure
    /// is one the runtime tries again.
    async fn revoke(&self, id: &str) -> Result<(), ArcpError>;
}
