//! JWT bearer tokens (RFC 7519) from an identity provider, beside the static tokens: signed
//! with HS256, RS256 or ES256 by a key of a JWKS file (RFC 7517), reloaded when the file
//! changes; `exp` required, `nbf` checked, `aud` and `iss` checked when configured, all with a
//! small leeway; the principal is a configurable claim (`sub` by default).
//!
//! The algorithm is the key's, never the token's: a token is checked only against keys whose
//! algorithm is the one its header names, so `alg: none` and an RS256 public key used as an
//! HMAC secret are refused. No token text reaches a log or an error message.

use std::{path::PathBuf, sync::Arc, time::Duration};

use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm},
    Algorithm, DecodingKey, Validation,
};

use crate::{
    error::ArcpError,
    ids::Principal,
    reload::{self, digest, Reloaded},
};

/// Where the keys are, and what a token must say.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    /// The JWKS file: `{"keys": [...]}`.
    pub jwks: PathBuf,
    /// The `iss` a token must carry, if any.
    pub issuer: Option<String>,
    /// The `aud` a token must carry (one of), if any.
    pub audience: Option<String>,
    /// How far `exp` and `nbf` may be off, for clocks that disagree.
    pub leeway: Duration,
    /// The claim that names the principal; a string.
    pub principal_claim: String,
    /// How often the JWKS file is looked at for a change.
    pub reload_interval: Duration,
}

impl JwtSettings {
    /// Keys from `jwks`, no issuer or audience required, 30 s leeway, principal `sub`,
    /// looked at every 5 s.
    pub fn new(jwks: impl Into<PathBuf>) -> JwtSettings {
        JwtSettings {
            jwks: jwks.into(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            principal_claim: "sub".into(),
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// Why a JWKS file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

/// One verification key.
struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Checks JWT bearer tokens against the keys of a JWKS file.
pub struct JwtVerifier {
    settings: JwtSettings,
    keys: Reloaded<Arc<Vec<Key>>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .field("keys", &self.keys.current().len())
            .finish()
    }
}

impl JwtVerifier {
    /// Loads the keys `settings` names; fails if the file does not load or has no usable key.
    pub fn load(settings: JwtSettings) -> Result<Arc<JwtVerifier>, JwksError> {
        let text = read(&settings)?;
        let keys = parse(&settings, &text)?;
        Ok(Arc::new(JwtVerifier {
            keys: Reloaded::new(Arc::new(keys), digest(&text)),
            settings,
        }))
    }

    /// The settings it was loaded with.
    pub fn settings(&self) -> &JwtSettings {
        &self.settings
    }

    /// Reads the file again and, if it changed, switches to its keys; `Ok(true)` when it did.
    /// A change that does not load is an error and leaves the keys in use.
    pub fn reload(&self) -> Result<bool, JwksError> {
        let text = read(&self.settings)?;
        self.keys
            .offer(digest(&text), || parse(&self.settings, &text).map(Arc::new))
    }

    /// Looks at the file every [`JwtSettings::reload_interval`] for as long as `verifier` is
    /// held elsewhere, logging each change and each refused one.
    pub fn watch(verifier: &Arc<JwtVerifier>) -> tokio::task::JoinHandle<()> {
        reload::watch(
            verifier,
            verifier.settings.reload_interval,
            "the JWKS",
            |v| &v.keys,
            JwtVerifier::reload,
            |v| {
                tracing::info!(
                    jwks = %v.settings.jwks.display(),
                    keys = v.keys.current().len(),
                    "JWKS reloaded"
                )
            },
        )
    }

    /// The principal `token` names, if one of the keys signed it and its claims hold.
    pub fn verify(&self, token: &str) -> Result<Principal, ArcpError> {
        let refused =
            |why: &str| ArcpError::Unauthenticated(format!("bearer token refused: {why}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refused("not a JWT signed with a supported algorithm"))?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(refused("the algorithm is not HS256, RS256 or ES256"));
        }
        let keys = self.keys.current().clone();
        let candidates = keys.iter().filter(|key| {
            key.algorithm == header.alg
                && match (&header.kid, &key.id) {
                    (Some(kid), Some(id)) => kid == id,
                    (Some(_), None) | (None, _) => true,
                }
        });
        let validation = self.validation(header.alg);
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => {
                    return match data.claims.get(&self.settings.principal_claim) {
                        Some(serde_json::Value::String(p)) if !p.is_empty() => {
                            Ok(Principal::new(p.clone()))
                        }
                        _ => Err(refused(&format!(
                            "no {} claim naming the principal",
                            self.settings.principal_claim
                        ))),
                    };
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    let why = match e.kind() {
                        ErrorKind::InvalidSignature => "the signature does not verify",
                        ErrorKind::ExpiredSignature => "expired",
                        ErrorKind::ImmatureSignature => "not valid yet (nbf)",
                        ErrorKind::InvalidAudience => "wrong audience",
                        ErrorKind::InvalidIssuer => "wrong issuer",
                        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                        _ => "malformed",
                    };
                    // A signature that fails may verify under another key of the same kind.
                    let other_key_may_do = matches!(e.kind(), ErrorKind::InvalidSignature);
                    last = Some(why);
                    if !other_key_may_do {
                        break;
                    }
                }
            }
        }
        Err(refused(last.unwrap_or("no key for its algorithm and kid")))
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.settings.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

fn read(settings: &JwtSettings) -> Result<Vec<u8>, JwksError> {
    std::fs::read(&settings.jwks).map_err(|source| JwksError::Read {
        path: settings.jwks.clone(),
        source,
    })
}

/// The usable keys of a JWKS document; keys of other kinds are skipped with a warning.
fn parse(settings: &JwtSettings, text: &[u8]) -> Result<Vec<Key>, JwksError> {
    let invalid = |what: String| JwksError::Invalid {
        path: settings.jwks.clone(),
        what,
    };
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(text).map_err(|e| invalid(format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for (i, value) in set.keys.into_iter().enumerate() {
        match key(value) {
            Ok(key) => keys.push(key),
            Err(why) => {
                tracing::warn!(jwks = %settings.jwks.display(), key = i, "JWKS key skipped: {why}")
            }
        }
    }
    if keys.is_empty() {
        return Err(invalid("no HS256, RS256 or ES256 key".into()));
    }
    Ok(keys)
}

fn key(value: serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return Err("not an oct, RSA or P-256 key".into()),
    };
    let algorithm = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::HS256) if implied == Algorithm::HS256 => Algorithm::HS256,
        Some(KeyAlgorithm::RS256) if implied == Algorithm::RS256 => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) if implied == Algorithm::ES256 => Algorithm::ES256,
        Some(other) => return Err(format!("alg {other:?} is not supported for this key")),
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Key {
        id: jwk.common.key_id,
        algorithm,
        key,
    })
}
