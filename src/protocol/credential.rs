//! Provisioned credentials (§9.8.1).

use super::Json;

/// A provisioned credential (§9.8.1). Its `value` is a secret: only the job's submitter ever
/// receives it, and it never reaches a log.
#[derive(Clone, PartialEq)]
pub struct Credential {
    /// Stable within the job; correlates rotation and revocation.
    pub id: String,
    /// `bearer`.
    pub scheme: String,
    /// The secret.
    pub value: String,
    /// The only URL the credential may be presented to.
    pub endpoint: String,
    /// The API dialect to speak at `endpoint`.
    pub profile: Option<String>,
    /// What the upstream enforces, echoed for information.
    pub constraints: serde_json::Map<String, Json>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}
