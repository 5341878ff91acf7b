//! Wall-clock timestamps as ARCP writes them: RFC 3339, UTC, `Z` suffix (§9.5).

use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};

/// A point in wall-clock time. Kept as `SystemTime` on the hot path and formatted only when a
/// frame is encoded.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// Now, to the millisecond: the precision timestamps have on the wire, so comparing two
    /// timestamps gives the answer a client comparing their text would get.
    pub fn now() -> Timestamp {
        let now = SystemTime::now();
        let sub_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| Duration::from_nanos(u64::from(d.subsec_nanos() % 1_000_000)))
            .unwrap_or_default();
        Timestamp(now - sub_ms)
    }

    /// RFC 3339 with milliseconds and a `Z` suffix, e.g. `2026-05-13T19:42:13.000Z`.
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from(self.0).to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}
