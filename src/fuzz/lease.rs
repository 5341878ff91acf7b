//! Lease requests (§9): a map of namespaces to patterns or budget entries, validated into an
//! [`EffectiveLease`], and `lease_constraints.expires_at` (§9.5) with the timestamps the
//! runtime writes back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bolero::{check, generator::TypeGenerator};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::{
    clock::Timestamp,
    error::ErrorCode,
    lease::{glob::MAX_PATTERN_LEN, parse_expires_at, Budget, EffectiveLease, Namespace, Pattern},
    protocol::Lease,
};

use super::{seeds, spell, Alphabet};

const TARGET: &str = "lease";

/// 2026-05-13T19:42:13Z, the "now" every check runs at.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_778_701_333)
}

#[derive(Clone, Debug, TypeGenerator)]
enum Key {
    Reserved(u8),
    Unknown,
    Uppercase,
    Free(String),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::Reserved(i) => Namespace::ALL[usize::from(*i) % Namespace::ALL.len()]
                .as_str()
                .to_owned(),
            Key::Unknown => "shell.exec".to_owned(),
            Key::Uppercase => "FS.READ".to_owned(),
            Key::Free(s) => s.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, TypeGenerator)]
enum Sym {
    A,
    Slash,
    Star,
    Question,
    Colon,
    Digit,
    Point,
    U,
}

impl Alphabet for Sym {
    fn text(self) -> &'static str {
        match self {
            Sym::A => "a",
            Sym::Slash => "/",
            Sym::Star => "*",
            Sym::Question => "?",
            Sym::Colon => ":",
            Sym::Digit => "5",
            Sym::Point => ".",
            Sym::U => "USD",
        }
    }
}

#[derive(Clone, Debug, TypeGenerator)]
enum Entry {
    /// A glob pattern, or a budget entry, from a shared alphabet: each namespace sees the
    /// other's kind of entry too.
    Shaped(#[generator(bolero::produce::<Vec<Sym>>().with().len(0..24usize))] Vec<Sym>),
    /// `CURRENCY:AMOUNT` with one of a few currencies.
    Budget {
        currency: u8,
        units: u32,
        cents: u8,
    },
    Empty,
    TooLong,
    Free(String),
}

impl Entry {
    fn text(&self) -> String {
        match self {
            Entry::Shaped(syms) => spell(syms),
            Entry::Budget {
                currency,
                units,
                cents,
            } => {
                let currency = ["USD", "EUR", "credits"][usize::from(*currency) % 3];
                format!("{currency}:{units}.{:02}", cents % 100)
            }
            Entry::Empty => String::new(),
            Entry::TooLong => "a".repeat(MAX_PATTERN_LEN + 1),
            Entry::Free(s) => s.clone(),
        }
    }
}

#[derive(Clone, Debug, TypeGenerator)]
struct Request {
    #[generator(bolero::produce::<Vec<(Key, Vec<Entry>)>>().with().len(0..6usize).values((bolero::produce::<Key>(), bolero::produce::<Vec<Entry>>().with().len(0..6usize))))]
    entries: Vec<(Key, Vec<Entry>)>,
    default_model_use: Option<Vec<Entry>>,
    expires: Expires,
}

/// An `expires_at`: RFC 3339-shaped text with the parts that §9.5 constrains varied, or
/// anything.
#[derive(Clone, Debug, TypeGenerator)]
enum Expires {
    Shaped {
        seconds: u32,
        fraction: Option<u32>,
        separator: Separator,
        offset: Offset,
    },
    Free(String),
}

#[derive(Clone, Copy, Debug, TypeGenerator)]
enum Separator {
    T,
    LowerT,
    Space,
}

#[derive(Clone, Copy, Debug, TypeGenerator)]
enum Offset {
    Z,
    LowerZ,
    Zero,
    East,
    None,
}

impl Expires {
    /// The text, around "now": `seconds` from 2026-01-01 spans the past and the future.
    fn text(&self) -> String {
        match self {
            Expires::Shaped {
                seconds,
                fraction,
                separator,
                offset,
            } => {
                let base = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
                let at = DateTime::<Utc>::from(base + Duration::from_secs(u64::from(*seconds)));
                let sep = match separator {
                    Separator::T => "T",
                    Separator::LowerT => "t",
                    Separator::Space => " ",
                };
                let frac = fraction.map(|f| format!(".{f}")).unwrap_or_default();
                let offset = match offset {
                    Offset::Z => "Z",
                    Offset::LowerZ => "z",
                    Offset::Zero => "+00:00",
                    Offset::East => "+02:00",
                    Offset::None => "",
                };
                format!(
                    "{}{sep}{}{frac}{offset}",
                    at.format("%Y-%m-%d"),
                    at.format("%H:%M:%S")
                )
            }
            Expires::Free(s) => s.clone(),
        }
    }
}

/// Whether `lease` (with `defaults` for an absent `model.use`) is a valid request, decided
/// from the rules of §9.2 rather than by the code under test.
fn valid(lease: &Lease, defaults: Option<&[String]>) -> bool {
    let pattern_ok = |p: &String| !p.is_empty() && p.len() <= MAX_PATTERN_LEN;
    let entries_ok = lease
        .iter()
        .all(|(key, patterns)| match Namespace::parse(key) {
            None => false,
            Some(Namespace::CostBudget) => Budget::from_patterns(patterns).is_ok(),
            Some(_) => patterns.iter().all(pattern_ok),
        });
    let defaults_ok = lease.contains_key(Namespace::ModelUse.as_str())
        || defaults.is_none_or(|d| d.iter().all(pattern_ok));
    entries_ok && defaults_ok
}

fn check_lease(lease: &Lease, defaults: Option<&[String]>, expires_at: Option<SystemTime>) {
    let parsed = EffectiveLease::from_request(lease, expires_at, defaults);
    let l = match (valid(lease, defaults), parsed) {
        (true, Ok(l)) => l,
        (false, Err(e)) => {
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{lease:?}: {e}");
            return;
        }
        (expected, got) => panic!("{lease:?}: valid {expected}, parsed {got:?}"),
    };
    // The wire form is the request as sent, plus a defaulted model.use.
    let mut wire = lease.clone();
    if let Some(defaults) = defaults {
        wire.entry(Namespace::ModelUse.as_str().to_owned())
            .or_insert_with(|| defaults.to_vec());
    }
    assert_eq!(l.to_wire(), wire);
    assert_eq!(l.expires_at(), expires_at);
    assert_eq!(
        l.budget().is_some(),
        lease.contains_key(Namespace::CostBudget.as_str())
    );
    // Every lease may delegate itself.
    assert_eq!(l.check_subset(&l, None), Ok(()), "{lease:?}");
    if let Some(caps) = l.budget() {
        assert_eq!(l.check_subset(&l, Some(caps)), Ok(()), "{lease:?}");
    }
    let before = expires_at.map_or(now(), |at| at - Duration::from_nanos(1));
    for ns in Namespace::ALL {
        if ns == Namespace::CostBudget {
            let refused = l.authorize(ns, "USD:1", before);
            assert_eq!(
                refused.map_err(|e| e.code()),
                Err(ErrorCode::InvalidRequest)
            );
            continue;
        }
        // A granted literal authorises itself until the lease expires, and nothing after.
        for pattern in l.patterns(ns) {
            let literal = !pattern.as_str().contains(['*', '?']);
            if literal {
                assert_eq!(l.authorize(ns, pattern.as_str(), before), Ok(()));
            }
            if let Some(at) = expires_at {
                let late = l.authorize(ns, pattern.as_str(), at).map_err(|e| e.code());
                assert_eq!(late, Err(ErrorCode::LeaseExpired));
            }
        }
        // A resource no pattern matches is denied.
        let denied = !l.patterns(ns).iter().any(|p| p.matches("/nowhere"));
        if denied {
            let outcome = l.authorize(ns, "/nowhere", before).map_err(|e| e.code());
            assert_eq!(outcome, Err(ErrorCode::PermissionDenied));
        }
    }
    // Each granted pattern, parsed alone, is the pattern the lease holds.
    for ns in Namespace::ALL {
        for pattern in l.patterns(ns) {
            assert_eq!(Pattern::parse(pattern.as_str()).as_ref(), Ok(pattern));
        }
    }
}

fn check_expires(text: &str) -> Option<SystemTime> {
    let parsed = parse_expires_at(text, now());
    let chrono = DateTime::parse_from_rfc3339(text).ok();
    let shaped = text.ends_with('Z') && text.as_bytes().get(10) == Some(&b'T');
    let expected = chrono
        .filter(|_| shaped)
        .map(|t| SystemTime::from(t.with_timezone(&Utc)))
        .filter(|at| *at > now());
    match (expected, parsed) {
        (Some(want), Ok(at)) => {
            assert_eq!(at, want, "{text:?}");
            // What the runtime writes back (milliseconds, `Z`) parses to the same instant,
            // to the millisecond.
            let written = Timestamp(at).to_rfc3339();
            let reread = Timestamp::parse_rfc3339(&written).map(|t| t.0);
            assert_eq!(
                reread,
                Some(truncate_to_millis(at)),
                "{text:?} as {written:?}"
            );
            Some(at)
        }
        (None, Err(e)) => {
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{text:?}: {e}");
            None
        }
        (expected, got) => panic!("{text:?}: expected {expected:?}, parsed {got:?}"),
    }
}

fn truncate_to_millis(t: SystemTime) -> SystemTime {
    let since = t.duration_since(UNIX_EPOCH).expect("after 1970");
    UNIX_EPOCH + Duration::from_millis(since.as_millis() as u64)
}

/// The hand-written formatter agrees with chrono's, inside its fast range and beyond it.
fn check_timestamp(seconds: u64, nanos: u32) {
    // Up to about the year 192000, well inside chrono's range.
    let seconds = seconds % 6_000_000_000_000;
    let t = UNIX_EPOCH + Duration::new(seconds, nanos % 1_000_000_000);
    let want = DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true);
    assert_eq!(Timestamp(t).to_rfc3339(), want, "{seconds}s {nanos}ns");
    let reread = Timestamp::parse_rfc3339(&want).map(|t| t.0);
    assert_eq!(reread, Some(truncate_to_millis(t)), "{want}");
}

fn to_lease(entries: &[(Key, Vec<Entry>)]) -> Lease {
    entries
        .iter()
        .map(|(k, v)| (k.text(), v.iter().map(Entry::text).collect()))
        .collect()
}

#[test]
fn lease() {
    // A seed line is either `expires_at <text>` or a JSON lease request.
    for seed in seeds(TARGET) {
        match seed.strip_prefix("expires_at ") {
            Some(text) => {
                check_expires(text);
            }
            None => {
                let lease: Lease = serde_json::from_str(&seed)
                    .unwrap_or_else(|e| panic!("seed {seed:?} is not a lease: {e}"));
                check_lease(&lease, None, None);
                check_lease(&lease, Some(&["tier-fast/*".to_owned()]), None);
                check_lease(&lease, Some(&[String::new()]), Some(now()));
            }
        }
    }
    for (seconds, nanos) in [(0, 0), (253_402_300_799, 999_999_999), (253_402_300_800, 0)] {
        check_timestamp(seconds, nanos);
    }
    check!(name = TARGET)
        .with_type::<(Request, u64, u32)>()
        .for_each(|(request, seconds, nanos): &(Request, u64, u32)| {
            let lease = to_lease(&request.entries);
            let defaults: Option<Vec<String>> = request
                .default_model_use
                .as_ref()
                .map(|d| d.iter().map(Entry::text).collect());
            let expires_at = check_expires(&request.expires.text());
            check_lease(&lease, defaults.as_deref(), expires_at);
            check_timestamp(*seconds, *nanos);
        });
}
