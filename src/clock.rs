//! Wall-clock timestamps as ARCP writes them: RFC 3339, UTC, `Z` suffix (§9.5).

use std::{
    cell::Cell,
    time::{Duration, SystemTime},
};

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

    /// The instant an RFC 3339 text names, with any offset; `None` if it is not RFC 3339.
    /// Years past 9999, which [`Timestamp::to_rfc3339`] writes with a sign as chrono does,
    /// parse too.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        DateTime::parse_from_rfc3339(text)
            .or_else(|_| DateTime::parse_from_str(text, "%+"))
            .ok()
            .map(|t| Timestamp(t.with_timezone(&Utc).into()))
    }

    /// RFC 3339 with milliseconds and a `Z` suffix, e.g. `2026-05-13T19:42:13.000Z`.
    ///
    /// Every event frame carries one, so the common case (after 1970, four-digit years) is
    /// written by hand: chrono's general formatter cost more than the rest of the frame's
    /// conversion. Other instants go through chrono.
    pub fn to_rfc3339(self) -> String {
        self.rfc3339().as_str().to_owned()
    }

    /// Whether `text` is exactly what [`Timestamp::rfc3339`] writes for the instant it names,
    /// so that an encoder may copy it as it is rather than parse and format it again.
    ///
    /// A logged event's timestamp is checked on every delivery; all the events of one second
    /// share its text up to the milliseconds, so each thread parses a second's text once and
    /// then only compares it.
    pub fn is_as_written(text: &str) -> bool {
        let bytes = text.as_bytes();
        let Some((second, millis)) = bytes.split_first_chunk::<SECOND_TEXT>() else {
            return false;
        };
        let [b'.', m1, m2, m3, b'Z'] = *millis else {
            return false;
        };
        if ![m1, m2, m3].iter().all(u8::is_ascii_digit) {
            return false;
        }
        if CHECKED_SECOND.with(|checked| checked.get() == Some(*second)) {
            return true;
        }
        let as_written =
            Timestamp::parse_rfc3339(text).is_some_and(|t| t.rfc3339().as_str() == text);
        if as_written {
            CHECKED_SECOND.with(|checked| checked.set(Some(*second)));
        }
        as_written
    }

    /// [`Timestamp::to_rfc3339`] without allocating, for encoders that copy the text anyway.
    pub fn rfc3339(self) -> Rfc3339 {
        match self.0.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(since) if since.as_secs() < MAX_FOUR_DIGIT_SECS => {
                Rfc3339(Text::Inline(rfc3339_millis(since)))
            }
            _ => Rfc3339(Text::Formatted(
                DateTime::<Utc>::from(self.0).to_rfc3339_opts(SecondsFormat::Millis, true),
            )),
        }
    }
}

/// The text of a [`Timestamp`].
pub struct Rfc3339(Text);

enum Text {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, always ASCII.
    Inline([u8; 24]),
    Formatted(String),
}

impl Rfc3339 {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Text::Inline(bytes) => {
                debug_assert!(bytes.is_ascii());
                // SAFETY: inline text is built only from the ASCII template and ASCII digits
                // (`rfc3339_second`, `put_digits`). Checking it again cost every event frame
                // two UTF-8 validations, one to measure it and one to write it.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            }
            Text::Formatted(text) => text,
        }
    }
}

/// Seconds from 1970 to 10000-01-01T00:00:00Z.
const MAX_FOUR_DIGIT_SECS: u64 = 253_402_300_800;

thread_local! {
    /// The second this thread formatted last, and its text. A chatty job stamps thousands of
    /// events a second, so the calendar arithmetic is done once a second and each event writes
    /// only its milliseconds.
    static LAST_SECOND: Cell<(u64, [u8; 24])> = const { Cell::new((u64::MAX, [0; 24])) };
}

/// `YYYY-MM-DDTHH:MM:SS`: the part of a written timestamp shared by a whole second.
const SECOND_TEXT: usize = 19;

thread_local! {
    /// The second whose text this thread last found as written (`Timestamp::is_as_written`):
    /// any milliseconds after it are as written too.
    static CHECKED_SECOND: Cell<Option<[u8; SECOND_TEXT]>> = const { Cell::new(None) };
}

/// Formats `since` the Unix epoch, which must be before the year 10000.
fn rfc3339_millis(since: Duration) -> [u8; 24] {
    let secs = since.as_secs();
    let mut text = LAST_SECOND.with(|last| match last.get() {
        (cached, text) if cached == secs => text,
        _ => {
            let text = rfc3339_second(secs);
            last.set((secs, text));
            text
        }
    });
    put_digits(&mut text, 20, u64::from(since.subsec_millis()), 3);
    text
}

/// The text of whole second `secs` after the Unix epoch, with `.000` milliseconds.
fn rfc3339_second(secs: u64) -> [u8; 24] {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let mut text = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut text, 0, year, 4);
    put_digits(&mut text, 5, month, 2);
    put_digits(&mut text, 8, day, 2);
    put_digits(&mut text, 11, of_day / 3600, 2);
    put_digits(&mut text, 14, of_day / 60 % 60, 2);
    put_digits(&mut text, 17, of_day % 60, 2);
    text
}

/// Writes `value` as `digits` decimal digits, zero-padded, at `text[at..]`.
fn put_digits(text: &mut [u8; 24], at: usize, value: u64, digits: usize) {
    let mut value = value;
    for i in (at..at + digits).rev() {
        text[i] = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian (year, month, day) of a count of days since 1970-01-01, by Howard
/// Hinnant's `civil_from_days`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrono_text(t: SystemTime) -> String {
        DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    #[test]
    fn hand_formatting_matches_chrono() {
        let epoch = SystemTime::UNIX_EPOCH;
        let mut instants = vec![
            epoch,
            epoch + Duration::from_millis(999),
            epoch + Duration::from_secs(951_782_400), // 2000-02-29
            epoch + Duration::from_secs(4_107_542_399) + Duration::from_nanos(999_999_999),
            epoch + Duration::from_secs(MAX_FOUR_DIGIT_SECS - 1),
            epoch + Duration::from_secs(MAX_FOUR_DIGIT_SECS),
            epoch - Duration::from_millis(1),
            SystemTime::now(),
        ];
        // Every day of four centuries, at an odd time of day, and a spread of later instants.
        let day = 86_400;
        instants.extend((0..146_097u64).map(|d| epoch + Duration::from_secs(d * day + 45_296)));
        let span_ms = (MAX_FOUR_DIGIT_SECS + 1) * 1000;
        instants.extend((0..100_000u64).map(|i| {
            epoch + Duration::from_millis(i.wrapping_mul(2_534_023_007_999_991_117) % span_ms)
        }));
        for t in instants {
            assert_eq!(Timestamp(t).to_rfc3339(), chrono_text(t), "{t:?}");
        }
    }

    #[test]
    fn only_text_as_this_runtime_writes_it_is_as_written() {
        let t = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_123_456));
        let text = t.to_rfc3339();
        assert!(Timestamp::is_as_written(&text));
        // The same second with other milliseconds, once the second is known.
        assert!(Timestamp::is_as_written(&text.replace(".456Z", ".999Z")));
        for other in [
            text.replace(".456Z", ".45xZ"),
            text.replace('Z', "+00:00"),
            text.replace(".456", ""),
            text.replace("-11-", "-13-"),
            "2025-02-30T10:00:00.000Z".to_owned(),
            "2025-06-30T23:59:60.000Z".to_owned(),
            String::new(),
        ] {
            assert!(!Timestamp::is_as_written(&other), "{other:?}");
        }
    }

    #[test]
    fn a_seconds_text_is_reused_only_within_that_second() {
        let second = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
        for t in [
            second + Duration::from_millis(5),
            second + Duration::from_millis(999),
            second + Duration::from_millis(1_000),
            second + Duration::from_millis(1),
            second - Duration::from_millis(1),
        ] {
            assert_eq!(Timestamp(t).to_rfc3339(), chrono_text(t), "{t:?}");
        }
    }

    #[test]
    fn rfc3339_text_parses_back_to_its_instant() {
        let t = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123));
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse_rfc3339("2025-11-24T17:00:00.123+01:00"),
            Some(Timestamp(
                SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123)
            ))
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn now_is_whole_milliseconds() {
        let since = Timestamp::now()
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        assert_eq!(since.subsec_nanos() % 1_000_000, 0);
    }
}
