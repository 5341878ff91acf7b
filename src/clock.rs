//! Wall-clock timestamps as ARCP writes them: RFC 3339, UTC, `Z` suffix (§9.5).

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};

/// A point in wall-clock time. Kept as `SystemTime` on the hot path and formatted only when a
/// frame is encoded.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// Now.
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }

    /// RFC 3339 with milliseconds and a `Z` suffix, e.g. `2026-05-13T19:42:13.000Z`.
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from(self.0).to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}
