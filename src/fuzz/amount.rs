//! `cost.budget` amounts (`5.00`) and entries (`USD:5.00`), checked against a model of the
//! grammar: digits, then optionally a point and one to six digits, at most `i64::MAX`
//! millionths.

use bolero::{check, generator::TypeGenerator};

use crate::{
    error::ErrorCode,
    lease::{
        budget::{is_currency, parse_budget_entry},
        Amount, Budget,
    },
};

use super::{seeds, spell, Alphabet};

const TARGET: &str = "amount";

#[derive(Clone, Copy, Debug, TypeGenerator)]
enum Digit {
    D0,
    D1,
    D2,
    D5,
    D7,
    D9,
}

impl Alphabet for Digit {
    fn text(self) -> &'static str {
        match self {
            Digit::D0 => "0",
            Digit::D1 => "1",
            Digit::D2 => "2",
            Digit::D5 => "5",
            Digit::D7 => "7",
            Digit::D9 => "9",
        }
    }
}

/// What may stand where a digit should, to test that nothing but ASCII digits is taken.
#[derive(Clone, Copy, Debug, TypeGenerator)]
enum Stray {
    Minus,
    Plus,
    Point,
    Colon,
    Exponent,
    Space,
    Comma,
    Underscore,
    ArabicDigit,
    FullwidthDigit,
    Nul,
}

impl Alphabet for Stray {
    fn text(self) -> &'static str {
        match self {
            Stray::Minus => "-",
            Stray::Plus => "+",
            Stray::Point => ".",
            Stray::Colon => ":",
            Stray::Exponent => "e",
            Stray::Space => " ",
            Stray::Comma => ",",
            Stray::Underscore => "_",
            Stray::ArabicDigit => "\u{663}",
            Stray::FullwidthDigit => "\u{ff11}",
            Stray::Nul => "\0",
        }
    }
}

/// An amount string: mostly grammar-shaped, so that most inputs reach the overflow and digit
/// count checks rather than failing on their first character.
#[derive(Clone, Debug, TypeGenerator)]
enum AmountText {
    /// `whole[.frac]` with an optional stray character spliced in.
    Shaped {
        whole: Vec<Digit>,
        frac: Option<Vec<Digit>>,
        stray: Option<(u8, Stray)>,
    },
    /// The decimal text of a number of millionths, with `pad` trailing zeros kept: every
    /// non-negative `i64` has such spellings, and each must parse back to it.
    Of { millionths: i64, pad: u8 },
    /// Anything at all.
    Free(String),
}

impl AmountText {
    fn text(&self) -> String {
        match self {
            AmountText::Shaped { whole, frac, stray } => {
                let mut text = spell(whole);
                if let Some(frac) = frac {
                    text.push('.');
                    text.push_str(&spell(frac));
                }
                if let Some((at, stray)) = stray {
                    let at = floor_char_boundary(&text, usize::from(*at));
                    text.insert_str(at, stray.text());
                }
                text
            }
            AmountText::Of { millionths, pad } => spelled(millionths.unsigned_abs(), *pad),
            AmountText::Free(text) => text.clone(),
        }
    }
}

/// `value` millionths written with six fractional digits, then trimmed of trailing zeros down
/// to `keep` fractional digits (none: no point).
fn spelled(value: u64, keep: u8) -> String {
    let keep = usize::from(keep % 7);
    let (units, frac) = (value / 1_000_000, value % 1_000_000);
    let digits = format!("{frac:06}");
    let significant = digits.trim_end_matches('0').len().max(keep);
    if significant == 0 {
        units.to_string()
    } else {
        format!("{units}.{}", &digits[..significant])
    }
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The grammar, independently of the parser: the number of millionths `text` denotes, or
/// `None` if it is not an amount.
fn model(text: &str) -> Option<i64> {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || frac.is_some_and(|f| !digits(f) || f.len() > 6) {
        return None;
    }
    let mut value: i128 = 0;
    for b in whole.bytes() {
        value = value * 10 + i128::from(b - b'0');
        if value > i128::from(i64::MAX) {
            return None;
        }
    }
    let frac = frac.unwrap_or("");
    let padded = format!("{frac:0<6}");
    value = value * 1_000_000 + padded.parse::<i128>().ok()?;
    i64::try_from(value).ok()
}

/// A currency name as the entry grammar has it: `[A-Za-z][A-Za-z0-9_]*`.
fn currency_model(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_amount(text: &str) {
    let parsed = Amount::parse(text);
    match (model(text), &parsed) {
        (Some(expected), Ok(amount)) => {
            assert_eq!(amount.millionths(), expected, "{text:?}");
            // The display form is canonical and denotes the same amount.
            let shown = amount.to_string();
            assert_eq!(
                Amount::parse(&shown),
                Ok(*amount),
                "{text:?} shown as {shown:?}"
            );
            assert_eq!(shown, spelled(expected as u64, 0), "{text:?}");
        }
        (None, Err(e)) => assert_eq!(e.code(), ErrorCode::InvalidRequest, "{text:?}"),
        (expected, got) => panic!("{text:?}: the grammar says {expected:?}, the parser {got:?}"),
    }
}

fn check_entry(currency: &str, amount: &str) {
    let text = format!("{currency}:{amount}");
    let expected = (currency_model(currency) && !currency.contains(':'))
        .then(|| model(amount))
        .flatten();
    assert_eq!(
        is_currency(currency),
        currency_model(currency),
        "{currency:?}"
    );
    match (expected, parse_budget_entry(&text)) {
        (Some(v), Ok((c, a))) => {
            assert_eq!((c.as_str(), a.millionths()), (currency, v), "{text:?}")
        }
        (None, Err(e)) => assert_eq!(e.code(), ErrorCode::InvalidRequest, "{text:?}"),
        (expected, got) => panic!("{text:?}: the grammar says {expected:?}, the parser {got:?}"),
    }
    // A budget of the entry twice names its currency twice: refused, never summed.
    let twice = Budget::from_patterns(&[text.as_str(), text.as_str()]);
    assert!(twice.is_err(), "{text:?} twice gave {twice:?}");
}

fn check_number(millionths: i64) {
    // Every counter prints, even one driven below zero or to `i64::MIN`.
    let shown = Amount::from_millionths(millionths).to_string();
    let unsigned = shown.strip_prefix('-');
    assert_eq!(
        unsigned.is_some(),
        millionths < 0,
        "{millionths} shown as {shown}"
    );
    let magnitude = unsigned.unwrap_or(&shown);
    assert_eq!(magnitude, spelled(millionths.unsigned_abs(), 0));
    if millionths >= 0 {
        assert_eq!(
            Amount::parse(&shown).map(Amount::millionths),
            Ok(millionths)
        );
    } else {
        assert!(Amount::parse(&shown).is_err(), "{shown} parsed");
    }
}

fn check_float(value: f64) {
    let scaled = (value * 1e6).round();
    let fits = value.is_finite() && value >= 0.0 && scaled < i64::MAX as f64;
    match Amount::from_f64(value) {
        Ok(a) => {
            assert!(fits, "{value} accepted as {a:?}");
            assert_eq!(a.millionths() as f64, scaled, "{value}");
        }
        Err(e) => {
            assert!(!fits, "{value} refused: {e}");
            assert_eq!(e.code(), ErrorCode::InvalidRequest);
        }
    }
}

/// One input: an amount, the same amount after a currency, a counter value and a reported
/// cost.
#[derive(Clone, Debug, TypeGenerator)]
struct Input {
    amount: AmountText,
    currency: CurrencyText,
    millionths: i64,
    float: f64,
}

#[derive(Clone, Debug, TypeGenerator)]
enum CurrencyText {
    Usd,
    Credits,
    Underscored,
    LeadingDigit,
    Empty,
    Dollar,
    Free(String),
}

impl CurrencyText {
    fn text(&self) -> &str {
        match self {
            CurrencyText::Usd => "USD",
            CurrencyText::Credits => "credits",
            CurrencyText::Underscored => "tok_2",
            CurrencyText::LeadingDigit => "1USD",
            CurrencyText::Empty => "",
            CurrencyText::Dollar => "U$D",
            CurrencyText::Free(text) => text,
        }
    }
}

#[test]
fn amount() {
    for seed in seeds(TARGET) {
        check_amount(&seed);
        if let Some((currency, amount)) = seed.split_once(':') {
            check_entry(currency, amount);
        }
    }
    check!(name = TARGET)
        .with_type::<Input>()
        .for_each(|input: &Input| {
            let amount = input.amount.text();
            check_amount(&amount);
            check_entry(input.currency.text(), &amount);
            check_number(input.millionths);
            check_float(input.float);
        });
}
