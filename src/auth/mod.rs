//! Bearer-token authentication (§6.1): token in, principal out; static tokens, and JWTs
//! from an identity provider ([`jwt`]); and [`throttle`], which slows the answers to repeated
//! failures.

pub mod jwt;
pub mod throttle;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use self::jwt::JwtVerifier;
use crate::{error::ArcpError, ids::Principal};

/// Maps bearer tokens to principals.
#[derive(Clone)]
pub enum Authenticator {
    /// Every non-empty token is accepted; its principal is `bearer:` plus a digest prefix, so
    /// distinct tokens are distinct principals and no token text ever reaches a log.
    Open,
    /// Only the configured tokens are accepted. Only their digests are kept.
    Tokens(Vec<([u8; 32], Principal)>),
    /// The configured tokens (maybe none), and JWTs the verifier accepts.
    WithJwt {
        tokens: Vec<([u8; 32], Principal)>,
        jwt: Arc<JwtVerifier>,
    },
}

impl Authenticator {
    /// An authenticator for `(token, principal)` pairs; `Open` when there are none.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, Principal)>) -> Authenticator {
        let tokens: Vec<_> = pairs
            .into_iter()
            .map(|(token, principal)| (digest(&token), principal))
            .collect();
        if tokens.is_empty() {
            Authenticator::Open
        } else {
            Authenticator::Tokens(tokens)
        }
    }

    /// Also accepts the JWTs `jwt` verifies; no longer open.
    pub fn with_jwt(self, jwt: Arc<JwtVerifier>) -> Authenticator {
        let tokens = match self {
            Authenticator::Open => Vec::new(),
            Authenticator::Tokens(tokens) | Authenticator::WithJwt { tokens, .. } => tokens,
        };
        Authenticator::WithJwt { tokens, jwt }
    }

    /// Whether any bearer token is accepted.
    pub fn is_open(&self) -> bool {
        matches!(self, Authenticator::Open)
    }

    /// The principal behind `token`.
    pub fn authenticate(&self, token: &str) -> Result<Principal, ArcpError> {
        if token.is_empty() {
            return Err(ArcpError::Unauthenticated("empty bearer token".into()));
        }
        let presented = digest(token);
        match self {
            Authenticator::Open => Ok(Principal::new(format!(
                "bearer:{}",
                presented[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ))),
            Authenticator::Tokens(tokens) => find(tokens, &presented)
                .ok_or_else(|| ArcpError::Unauthenticated("bearer token not recognised".into())),
            Authenticator::WithJwt { tokens, jwt } => match find(tokens, &presented) {
                Some(principal) => Ok(principal),
                None => jwt.verify(token),
            },
        }
    }
}

/// The principal of the static token whose digest is `presented`. Compares against every
/// entry, without an early exit, so the time taken says nothing about which entry (if any)
/// matched.
fn find(tokens: &[([u8; 32], Principal)], presented: &[u8; 32]) -> Option<Principal> {
    let mut found: Option<&Principal> = None;
    for (known, principal) in tokens {
        let hit: Choice = known.ct_eq(presented);
        if bool::from(hit) {
            found = Some(principal);
        }
    }
    found.cloned()
}

/// The principal a connection's transport establishes, from a bearer token in its metadata
/// and/or its client certificate; when both name one, they must agree.
pub fn transport_principal(
    bearer: Option<Principal>,
    certificate: Option<Principal>,
) -> Result<Option<Principal>, ArcpError> {
    match (bearer, certificate) {
        (Some(a), Some(b)) if a != b => Err(ArcpError::Unauthenticated(
            "the bearer token and the client certificate name different principals".into(),
        )),
        (Some(p), _) | (None, Some(p)) => Ok(Some(p)),
        (None, None) => Ok(None),
    }
}

/// The scheme every credential must name (§6.1 defines no other).
pub const BEARER: &str = "bearer";

/// Checks the `auth.scheme` of a hello: `bearer` in any case (schemes are case-insensitive,
/// RFC 7235 §2.1). A hello that names no scheme means bearer, the only one there is.
pub fn check_scheme(scheme: Option<&str>) -> Result<(), ArcpError> {
    match scheme {
        None => Ok(()),
        Some(scheme) if scheme.eq_ignore_ascii_case(BEARER) => Ok(()),
        Some(_) => Err(ArcpError::Unauthenticated(
            "auth.scheme must be \"bearer\", the only scheme this runtime accepts".into(),
        )),
    }
}

/// Extracts the token from an `authorization: Bearer <token>` header value.
pub fn bearer_from_header(value: &str) -> Result<&str, ArcpError> {
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        ArcpError::Unauthenticated("authorization must be `Bearer <token>`".into())
    })?;
    if !scheme.eq_ignore_ascii_case(BEARER) {
        return Err(ArcpError::Unauthenticated(
            "only the bearer scheme is supported".into(),
        ));
    }
    Ok(token.trim())
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_tokens_map_to_principals() {
        let auth = Authenticator::from_pairs([
            ("s3cret".to_string(), Principal::new("alice")),
            ("other".to_string(), Principal::new("bob")),
        ]);
        assert_eq!(auth.authenticate("other").unwrap(), Principal::new("bob"));
        assert!(auth.authenticate("nope").is_err());
        assert!(auth.authenticate("").is_err());
    }

    #[test]
    fn open_mode_derives_a_principal_that_hides_the_token() {
        let auth = Authenticator::from_pairs([]);
        let p = auth.authenticate("tok-123").unwrap();
        assert!(!p.as_str().contains("tok-123"));
        assert_eq!(p, auth.authenticate("tok-123").unwrap());
        assert_ne!(p, auth.authenticate("tok-456").unwrap());
    }

    #[test]
    fn only_the_bearer_scheme_is_accepted_in_any_case() {
        for ok in [None, Some("bearer"), Some("Bearer"), Some("BEARER")] {
            assert!(check_scheme(ok).is_ok(), "{ok:?}");
        }
        for bad in [Some("basic"), Some(""), Some("bearer "), Some("signed_url")] {
            let error = check_scheme(bad).expect_err("refused");
            assert_eq!(error.code(), crate::error::ErrorCode::Unauthenticated);
        }
    }

    #[test]
    fn parses_bearer_headers() {
        assert_eq!(bearer_from_header("Bearer abc").unwrap(), "abc");
        assert!(bearer_from_header("Basic abc").is_err());
        assert!(bearer_from_header("abc").is_err());
    }
}
