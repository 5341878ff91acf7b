//! [`MemoryProvisioner`]: an in-process upstream. It mints `sk-virt-` values and answers
//! whether a value is live, which is what an upstream enforces; its credentials die with the
//! process, so nothing it issued outlives a crash.

use std::collections::HashMap;

use async_trait::async_trait;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use parking_lot::Mutex;
use rand::RngCore;

use crate::{
    error::ArcpError,
    ids::JobId,
    protocol::{credential::Credential, Json},
};

use super::provisioner::CredentialProvisioner;

/// An in-process upstream.
pub struct MemoryProvisioner {
    endpoint: String,
    profile: Option<String>,
    live: Mutex<HashMap<String, Credential>>,
}

impl MemoryProvisioner {
    /// Credentials valid at `endpoint`, speaking `profile`.
    pub fn new(endpoint: impl Into<String>, profile: Option<String>) -> Self {
        MemoryProvisioner {
            endpoint: endpoint.into(),
            profile,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `value` would be accepted upstream now.
    pub fn is_live(&self, value: &str) -> bool {
        self.live.lock().values().any(|c| c.value == value)
    }

    /// How many credentials are live.
    pub fn outstanding(&self) -> usize {
        self.live.lock().len()
    }
}

fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[async_trait]
impl CredentialProvisioner for MemoryProvisioner {
    async fn issue(
        &self,
        _job: &JobId,
        constraints: serde_json::Map<String, Json>,
    ) -> Result<Credential, ArcpError> {
        let credential = Credential {
            id: format!("cred_{}", uuid::Uuid::now_v7().simple()),
            scheme: "bearer".into(),
            value: secret("sk-virt-"),
            endpoint: self.endpoint.clone(),
            profile: self.profile.clone(),
            constraints,
        };
        self.live
            .lock()
            .insert(credential.id.clone(), credential.clone());
        Ok(credential)
    }

    async fn rotate(&self, id: &str) -> Result<Credential, ArcpError> {
        let mut live = self.live.lock();
        let credential = live
            .get_mut(id)
            .ok_or_else(|| ArcpError::InvalidRequest(format!("credential {id} is not live")))?;
        credential.value = secret("sk-virt-");
        Ok(credential.clone())
    }

    async fn revoke(&self, id: &str) -> Result<(), ArcpError> {
        self.live.lock().remove(id);
        Ok(())
    }
}
