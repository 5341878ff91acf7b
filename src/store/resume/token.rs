//! Resume tokens: `rt_<session id>.<256 random bits, base64url>`, or, from a registry that can
//! lose its data (one in Redis), `rt_<session id>.<store incarnation>.<random bits>`.
//!
//! The session id inside the token lets a registry find the entry to compare against without
//! a lookup keyed by secret material; the random part is what makes the token unguessable.
//! The store incarnation names the life of the store that issued the token, so that a
//! registry that no longer has the token's entry can tell a store that lost its data since
//! (another incarnation, or none) from a token that is merely unknown or out of date. It is no
//! secret: it says nothing about any session.

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
        ResumeToken::generate_in(session, None)
    }

    /// A fresh token for `session`, naming the store incarnation `origin` if given. An
    /// incarnation is made of letters and digits only.
    pub fn generate_in(session: &SessionId, origin: Option<&str>) -> ResumeToken {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        ResumeToken(match origin {
            Some(origin) => format!("{PREFIX}{session}.{origin}.{secret}"),
            None => format!("{PREFIX}{session}.{secret}"),
        })
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
        parts(presented).map(|(session, _)| SessionId::new(session))
    }

    /// The store incarnation a presented token names, if it is well-formed and names one.
    pub fn origin_of(presented: &str) -> Option<&str> {
        parts(presented).and_then(|(_, origin)| origin)
    }
}

/// A presented token's session and store incarnation. The secret is base64url, without dots,
/// and neither are session ids nor incarnations.
fn parts(presented: &str) -> Option<(&str, Option<&str>)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let mut parts = rest.split('.');
    let (session, middle, last) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    let (origin, secret) = match last {
        Some(secret) => (Some(middle), secret),
        None => (None, middle),
    };
    let empty = session.is_empty() || secret.is_empty() || origin.is_some_and(str::is_empty);
    (!empty).then_some((session, origin))
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
        assert_eq!(ResumeToken::origin_of(a.expose()), None);
    }

    #[test]
    fn a_token_names_the_store_incarnation_it_was_issued_in() {
        let s = SessionId::generate();
        let t = ResumeToken::generate_in(&s, Some("0123abcd"));
        assert_eq!(ResumeToken::session_of(t.expose()), Some(s.clone()));
        assert_eq!(ResumeToken::origin_of(t.expose()), Some("0123abcd"));
        assert_ne!(t, ResumeToken::generate_in(&s, Some("0123abcd")));
        for bad in [
            "rt_sess_x..secret",
            "rt_sess_x.a.b.c",
            "rt_.a.b",
            "rt_sess_x.a.",
        ] {
            assert_eq!(ResumeToken::session_of(bad), None, "{bad}");
        }
    }
}
