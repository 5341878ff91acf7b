//! Which stores a gateway keeps its state in, as chosen at start-up (`--store`).

use std::{fmt, str::FromStr};

/// Where the state lives.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// In this process: nothing to run beside it, and nothing survives it or is shared.
    Memory,
    /// In the Redis at this `redis://` or `rediss://` URL, or the Redis Cluster at this
    /// `redis-cluster://HOST:PORT,...` or `rediss-cluster://...` URL, shared by every replica
    /// using it.
    Redis(String),
}

impl FromStr for StoreChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            Ok(StoreChoice::Memory)
        } else if [
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
        ]
        .iter()
        .any(|scheme| s.starts_with(scheme))
        {
            Ok(StoreChoice::Redis(s.to_owned()))
        } else {
            Err(
                "expected `memory`, `redis://HOST:PORT/DB`, `rediss://HOST:PORT/DB` or \
                 `redis-cluster://HOST:PORT,HOST:PORT,...`"
                    .into(),
            )
        }
    }
}

impl fmt::Debug for StoreChoice {
    /// Without the URL's password, which may be in it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreChoice::Memory => f.write_str("memory"),
            StoreChoice::Redis(url) => match url.rsplit_once('@') {
                Some((_, host)) => write!(f, "redis (…@{host})"),
                None => write!(f, "redis ({url})"),
            },
        }
    }
}
