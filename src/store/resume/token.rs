//! Resume tokens: `rt_<session id>.<256 random bits, base64url>`.
//!
//! The session id inside the token lets a registry find the entry to compare against without
//! a lookup keyed by secret material; the random part is what makes the token unguessable.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::SessionId;

const PREFIX: &str = "rt_";

/// A resume token as handed to a client. `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeToken(String);

/// The SHA-256 digest of a token: all a registry stores.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; 32]);

impl ResumeToken {
    /// A fresh token for `session`.
    pub fn generate(session: &SessionId) -> ResumeToken {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        ResumeToken(format!(
            "{PREFIX}{session}.{}",
            URL_SAFE_NO_PAD.encode(secret)
        ))
    }

    /// The token text, to put in a welcome. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its digest.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(&self.0)
    }

    /// The session a presented token claims to belong to, if it is well-formed.
    pub fn session_of(presented: &str) -> Option<SessionId> {
        let rest = presented.strip_prefix(PREFIX)?;
        let (session, secret) = rest.rsplit_once('.')?;
        if session.is_empty() || secret.is_empty() {
            return None;
        }
        Some(SessionId::new(session))
    }
}

impl fmt::Debug for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResumeToken(<redacted>)")
    }
}

impl TokenDigest {
    /// The digest of presented token text.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Constant-time equality.
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// A digest a store persisted, from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> TokenDigest {
        TokenDigest(bytes)
    }

    /// The raw digest bytes, for stores that persist them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_session_and_differ_every_time() {
        let s = SessionId::generate();
        let a = ResumeToken::generate(&s);
        let b = ResumeToken::generate(&s);
        assert_ne!(a, b);
        assert_eq!(ResumeToken::session_of(a.expose()), Some(s));
        assert!(a.digest().matches(&TokenDigest::of(a.expose())));
        assert!(!a.digest().matches(&b.digest()));
        assert_eq!(ResumeToken::session_of("garbage"), None);
        assert_eq!(ResumeToken::session_of("rt_sess_x."), None);
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
