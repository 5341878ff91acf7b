//! `lease_constraints.expires_at` (§9.5): parsing and validation at submission.

use std::time::SystemTime;

use chrono::{DateTime, Utc};

use crate::{
    clock::Timestamp,
    error::{excerpt, ArcpError, EXCERPT_CHARS},
};

/// Parses an `expires_at` value: RFC 3339 in UTC written with a `Z` suffix, strictly later
/// than `now`. Anything else is `INVALID_REQUEST` naming the value.
///
/// Numeric offsets, even `+00:00`, are refused because §9.5 requires the `Z` form; accepting
/// equivalent spellings would let two clients' identical-looking leases differ on the wire.
/// A value at or before `now` is refused because such a lease could authorise nothing.
pub fn parse_expires_at(s: &str, now: SystemTime) -> Result<SystemTime, ArcpError> {
    let invalid = |why: &str| {
        ArcpError::InvalidRequest(format!(
            "invalid lease expires_at {}: {why}",
            excerpt(s, EXCERPT_CHARS)
        ))
    };
    if !s.ends_with('Z') {
        return Err(invalid("must be UTC with a Z suffix"));
    }
    // chrono also accepts a space or a lowercase `t` between date and time; §9.5 does not.
    if s.as_bytes().get(10) != Some(&b'T') {
        return Err(invalid(
            "expected an RFC 3339 timestamp such as 2026-05-13T23:42:00Z",
        ));
    }
    let parsed = DateTime::parse_from_rfc3339(s)
        .map_err(|_| invalid("expected an RFC 3339 timestamp such as 2026-05-13T23:42:00Z"))?;
    let at = SystemTime::from(parsed.with_timezone(&Utc));
    if at <= now {
        return Err(invalid(&format!(
            "must be in the future (now is {})",
            Timestamp(now).to_rfc3339()
        )));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// 2026-05-13T19:42:13Z.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_778_701_333)
    }

    fn invalid_message(s: &str) -> String {
        match parse_expires_at(s, now()) {
            Err(ArcpError::InvalidRequest(m)) => m,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    #[test]
    fn future_utc_timestamps_parse() {
        assert_eq!(Timestamp(now()).to_rfc3339(), "2026-05-13T19:42:13.000Z");
        assert_eq!(
            parse_expires_at("2026-05-13T23:42:00Z", now()),
            Ok(UNIX_EPOCH + Duration::from_secs(1_778_715_720))
        );
        assert_eq!(
            parse_expires_at("2026-05-13T19:42:13.5Z", now()),
            Ok(now() + Duration::from_millis(500))
        );
    }

    #[test]
    fn offsets_other_than_z_are_refused() {
        for s in [
            "2026-05-13T23:42:00+00:00",
            "2026-05-13T23:42:00-00:00",
            "2026-05-14T01:42:00+02:00",
            "2026-05-13T23:42:00",
            "2026-05-13T23:42:00z",
        ] {
            let m = invalid_message(s);
            assert!(m.contains(s), "{m}");
            assert!(m.contains("Z suffix"), "{m}");
        }
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for s in [
            "",
            "Z",
            "2026-05-13 23:42:00Z",
            "2026-05-13t23:42:00Z",
            "2026-13-13T23:42:00Z",
            "2026-05-13T25:42:00Z",
            "2026-05-13Z",
            "tomorrow Z",
            "1778715720Z",
        ] {
            let m = invalid_message(s);
            assert!(m.contains(&format!("{s:?}")), "{m}");
        }
    }

    #[test]
    fn past_and_present_are_refused() {
        let m = invalid_message("2026-05-13T19:42:13Z");
        assert!(m.contains("future"), "{m}");
        assert!(m.contains("2026-05-13T19:42:13Z"), "{m}");
        let m = invalid_message("2020-01-01T00:00:00Z");
        assert!(m.contains("future"), "{m}");
        assert!(parse_expires_at("2026-05-13T19:42:13.001Z", now()).is_ok());
    }
}
