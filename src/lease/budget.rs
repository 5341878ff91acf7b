//! The `cost.budget` capability (§9.6): amount strings, per-currency counters, and the mapping
//! from agent-reported `cost.*` metrics to charges.
//!
//! Amounts are fixed-point integers in millionths rather than floats so that a budget spent in
//! exact steps lands exactly on zero: `USD:1.00` charged `0.1` ten times must be exhausted,
//! which binary floating point gets wrong.

use std::{collections::BTreeMap, fmt};

use crate::error::{excerpt, ArcpError, EXCERPT_CHARS};

/// Fractional digits an amount may carry. Six covers every fiat minor unit and the
/// sub-cent prices of per-token inference without overflowing `i64` for any sane budget.
pub const AMOUNT_DECIMALS: u32 = 6;

const SCALE: i64 = 1_000_000;

/// A money amount in millionths of a currency unit. Signed because a counter may be driven
/// below zero by a charge larger than what is left; parsing never yields a negative amount.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Amount(i64);

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// The amount of `millionths` millionths of a unit.
    pub const fn from_millionths(millionths: i64) -> Amount {
        Amount(millionths)
    }

    /// The amount in millionths of a unit.
    pub const fn millionths(self) -> i64 {
        self.0
    }

    /// Parses the decimal half of an amount string (`5.00`, `10`, `0.000001`): digits,
    /// optionally a point and one to six more digits. Signs, exponents and a bare point are
    /// refused so every accepted string has exactly one meaning.
    pub fn parse(s: &str) -> Result<Amount, ArcpError> {
        let invalid = |why: &str| {
            ArcpError::InvalidRequest(format!(
                "invalid amount {}: {why}",
                excerpt(s, EXCERPT_CHARS)
            ))
        };
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (s, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("expected digits before any decimal point"));
        }
        let mut units: i64 = 0;
        for b in whole.bytes() {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(i64::from(b - b'0')))
                .ok_or_else(|| invalid("too large"))?;
        }
        let mut fraction: i64 = 0;
        if let Some(frac) = frac {
            if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("expected digits after the decimal point"));
            }
            if frac.len() > AMOUNT_DECIMALS as usize {
                return Err(invalid("more than 6 fractional digits"));
            }
            for b in frac.bytes() {
                fraction = fraction * 10 + i64::from(b - b'0');
            }
            // Right-pad so `.5` means half a unit, not five millionths.
            fraction *= 10_i64.pow(AMOUNT_DECIMALS - frac.len() as u32);
        }
        units
            .checked_mul(SCALE)
            .and_then(|u| u.checked_add(fraction))
            .map(Amount)
            .ok_or_else(|| invalid("too large"))
    }

    /// Converts a reported value, rounding to the nearest millionth. NaN, infinities,
    /// negatives and values beyond the fixed-point range are `INVALID_REQUEST`: §9.6 refuses
    /// negative costs, and the others cannot be charged meaningfully.
    pub fn from_f64(value: f64) -> Result<Amount, ArcpError> {
        if !value.is_finite() {
            return Err(ArcpError::InvalidRequest(format!(
                "amount {value} is not a finite number"
            )));
        }
        if value < 0.0 {
            return Err(ArcpError::InvalidRequest(format!(
                "amount {value} is negative; negative values refused"
            )));
        }
        let scaled = (value * SCALE as f64).round();
        // `i64::MAX as f64` rounds up to 2^63, which does not fit, hence `>=`.
        if scaled >= i64::MAX as f64 {
            return Err(ArcpError::InvalidRequest(format!(
                "amount {value} is too large"
            )));
        }
        Ok(Amount(scaled as i64))
    }

    /// The amount as a float, for metrics and display; never fed back into counters.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }

    /// `self - other`, or `None` on overflow.
    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    /// `self - other`, clamped to the representable range so a runaway counter cannot wrap
    /// round to a large positive budget.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// Whether anything is left: §9.6 counts a counter at or below zero as exhausted.
    pub fn is_positive(self) -> bool {
        self.0 > 0
    }
}

impl fmt::Display for Amount {
    /// Shortest exact decimal form: `5`, `1.5`, `0.000001`, `-0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = SCALE.unsigned_abs();
        let (units, frac) = (abs / scale, abs % scale);
        if frac == 0 {
            write!(f, "{sign}{units}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{sign}{units}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// Whether `s` is a currency name: `[A-Za-z][A-Za-z0-9_]*`. Covers ISO codes (`USD`) and
/// runtime-defined units (`credits`) while keeping `:` and whitespace out, so an amount
/// string splits unambiguously.
pub fn is_currency(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses one `cost.budget` pattern, `CURRENCY:AMOUNT` (`USD:5.00`, `credits:1000`).
pub fn parse_budget_entry(s: &str) -> Result<(String, Amount), ArcpError> {
    let Some((currency, amount)) = s.split_once(':') else {
        return Err(ArcpError::InvalidRequest(format!(
            "invalid cost.budget entry {}: expected CURRENCY:AMOUNT",
            excerpt(s, EXCERPT_CHARS)
        )));
    };
    if !is_currency(currency) {
        return Err(ArcpError::InvalidRequest(format!(
            "invalid cost.budget entry {}: {} is not a currency name",
            excerpt(s, EXCERPT_CHARS),
            excerpt(currency, EXCERPT_CHARS)
        )));
    }
    let amount = Amount::parse(amount).map_err(|_| {
        ArcpError::InvalidRequest(format!(
            "invalid cost.budget entry {}: {} is not a non-negative decimal with at most \
             {AMOUNT_DECIMALS} fractional digits",
            excerpt(s, EXCERPT_CHARS),
            excerpt(amount, EXCERPT_CHARS)
        ))
    })?;
    Ok((currency.to_owned(), amount))
}

/// Per-currency budget counters. Built at job acceptance from the lease's `cost.budget` and
/// decremented by reported costs; each currency is independent (§9.6).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Budget {
    counters: BTreeMap<String, Amount>,
}

impl Budget {
    /// Builds counters from a `cost.budget` list. Naming a currency twice is `INVALID_REQUEST`:
    /// neither the sum nor either entry is an obviously intended ceiling.
    pub fn from_patterns<S: AsRef<str>>(patterns: &[S]) -> Result<Budget, ArcpError> {
        let mut counters = BTreeMap::new();
        for pattern in patterns {
            let (currency, amount) = parse_budget_entry(pattern.as_ref())?;
            if counters.contains_key(&currency) {
                return Err(ArcpError::InvalidRequest(format!(
                    "cost.budget names currency {currency:?} more than once"
                )));
            }
            counters.insert(currency, amount);
        }
        Ok(Budget { counters })
    }

    /// The counter for `currency`, if it is budgeted.
    pub fn get(&self, currency: &str) -> Option<Amount> {
        self.counters.get(currency).copied()
    }

    /// Every counter, by currency.
    pub fn counters(&self) -> &BTreeMap<String, Amount> {
        &self.counters
    }

    /// Whether no currency is budgeted, i.e. the budget constrains nothing.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Decrements `currency` by `amount` and returns what is left, or `None` when the currency
    /// is not budgeted (§9.6: only costs in a budgeted currency are enforced). A negative
    /// `amount` charges nothing, since a refund would let an agent mint itself budget.
    pub fn charge(&mut self, currency: &str, amount: Amount) -> Option<Amount> {
        let counter = self.counters.get_mut(currency)?;
        *counter = counter.saturating_sub(amount.max(Amount::ZERO));
        Some(*counter)
    }

    /// Whether any counter is at or below zero, which blocks every further operation.
    pub fn is_exhausted(&self) -> bool {
        self.counters.values().any(|a| !a.is_positive())
    }

    /// `BUDGET_EXHAUSTED` naming the first spent currency, for the check §9.6 requires before
    /// authorising any operation.
    pub fn ensure_available(&self) -> Result<(), ArcpError> {
        match self.counters.iter().find(|(_, a)| !a.is_positive()) {
            Some((currency, left)) => Err(ArcpError::BudgetExhausted(format!(
                "cost.budget for {currency} is exhausted ({left} {currency} remaining)"
            ))),
            None => Ok(()),
        }
    }

    /// The counters as floats, the shape of `cost.budget.remaining` metrics.
    pub fn remaining(&self) -> BTreeMap<String, f64> {
        self.counters
            .iter()
            .map(|(c, a)| (c.clone(), a.to_f64()))
            .collect()
    }
}

/// Prefix of the runtime's own budget gauges (`cost.budget.remaining`). Such metrics report
/// state rather than spending, so counting them as charges would bill the budget twice.
const GAUGE_PREFIX: &str = "cost.budget.";

/// Maps a `metric` event to a charge (§9.6): a metric named `cost.*` with a currency `unit`
/// costs `value` in that currency. Whether the currency is budgeted is the [`Budget`]'s call.
///
/// Returns `Ok(None)` for every other metric, including the `cost.budget.*` gauges, and
/// `INVALID_REQUEST` for a cost whose value is negative or not finite, which must produce no
/// decrement.
pub fn cost_of_metric(
    name: &str,
    value: f64,
    unit: Option<&str>,
) -> Result<Option<(String, Amount)>, ArcpError> {
    let is_cost = name.len() > "cost.".len() && name.starts_with("cost.");
    if !is_cost || name.starts_with(GAUGE_PREFIX) {
        return Ok(None);
    }
    let Some(currency) = unit.filter(|u| is_currency(u)) else {
        return Ok(None);
    };
    if !value.is_finite() || value < 0.0 {
        return Err(ArcpError::InvalidRequest(format!(
            "metric {name} reports cost {value} {currency}: negative values refused"
        )));
    }
    let amount = Amount::from_f64(value).map_err(|e| match e {
        ArcpError::InvalidRequest(why) => {
            ArcpError::InvalidRequest(format!("metric {name}: {why}"))
        }
        other => other,
    })?;
    Ok(Some((currency.to_owned(), amount)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amt(s: &str) -> Amount {
        Amount::parse(s).expect("valid test amount")
    }

    #[test]
    fn amounts_parse_to_millionths() {
        assert_eq!(amt("5.00"), Amount::from_millionths(5_000_000));
        assert_eq!(amt("10"), Amount::from_millionths(10_000_000));
        assert_eq!(amt("0.5"), Amount::from_millionths(500_000));
        assert_eq!(amt("0.000001"), Amount::from_millionths(1));
        assert_eq!(amt("007.250"), Amount::from_millionths(7_250_000));
        assert_eq!(amt("0"), Amount::ZERO);
    }

    #[test]
    fn malformed_amounts_are_invalid_requests() {
        for bad in [
            "",
            ".5",
            "5.",
            "-1",
            "+1",
            "1e3",
            "1.0000001",
            "1,5",
            " 1",
            "1 ",
            "abc",
            "1.2.3",
            "99999999999999999999",
        ] {
            assert!(
                matches!(Amount::parse(bad), Err(ArcpError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
        // The largest whole number of units that fits.
        assert!(Amount::parse("9223372036854").is_ok());
        assert!(Amount::parse("9223372036855").is_err());
    }

    #[test]
    fn floats_round_to_the_nearest_millionth() {
        assert_eq!(Amount::from_f64(0.1), Ok(Amount::from_millionths(100_000)));
        assert_eq!(
            Amount::from_f64(0.0234),
            Ok(Amount::from_millionths(23_400))
        );
        assert_eq!(Amount::from_f64(0.0000004), Ok(Amount::ZERO));
        assert_eq!(Amount::from_f64(0.0000006), Ok(Amount::from_millionths(1)));
        assert_eq!(Amount::from_f64(-0.0), Ok(Amount::ZERO));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.01, 1e13] {
            assert!(
                matches!(Amount::from_f64(bad), Err(ArcpError::InvalidRequest(_))),
                "{bad}"
            );
        }
        assert_eq!(amt("1.42").to_f64(), 1.42);
    }

    #[test]
    fn subtraction_is_checked_or_saturating() {
        assert_eq!(amt("1").checked_sub(amt("0.25")), Some(amt("0.75")));
        assert_eq!(
            amt("0.1").checked_sub(amt("0.3")),
            Some(Amount::from_millionths(-200_000))
        );
        let min = Amount::from_millionths(i64::MIN);
        assert_eq!(min.checked_sub(amt("1")), None);
        assert_eq!(min.saturating_sub(amt("1")), min);
    }

    #[test]
    fn amounts_display_exactly() {
        assert_eq!(amt("5.00").to_string(), "5");
        assert_eq!(amt("1.50").to_string(), "1.5");
        assert_eq!(amt("0.000001").to_string(), "0.000001");
        assert_eq!(Amount::from_millionths(-100_000).to_string(), "-0.1");
    }

    #[test]
    fn currencies_follow_the_grammar() {
        for good in ["USD", "EUR", "credits", "x", "tok_2"] {
            assert!(is_currency(good), "{good}");
        }
        for bad in ["", "1USD", "_x", "US D", "US-D", "USD:"] {
            assert!(!is_currency(bad), "{bad}");
        }
    }

    #[test]
    fn budget_entries_parse() {
        assert_eq!(
            parse_budget_entry("USD:5.00"),
            Ok(("USD".to_owned(), amt("5")))
        );
        assert_eq!(
            parse_budget_entry("credits:1000"),
            Ok(("credits".to_owned(), amt("1000")))
        );
        for bad in [
            "USD", "USD:", ":5", "USD:-1", "U$D:5", "USD:5:5", "5:USD", "USD: 5",
        ] {
            assert!(
                matches!(parse_budget_entry(bad), Err(ArcpError::InvalidRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn budgets_track_currencies_independently() {
        let mut b = Budget::from_patterns(&["USD:5.00", "credits:1000"]).expect("valid");
        assert_eq!(b.charge("USD", amt("3")), Some(amt("2")));
        assert_eq!(b.charge("credits", amt("1")), Some(amt("999")));
        assert_eq!(b.charge("EUR", amt("1")), None);
        assert_eq!(b.get("USD"), Some(amt("2")));
        assert_eq!(b.get("EUR"), None);
        assert!(!b.is_exhausted());
        assert_eq!(b.ensure_available(), Ok(()));
        let remaining = b.remaining();
        assert_eq!(remaining.get("USD"), Some(&2.0));
        assert_eq!(remaining.get("credits"), Some(&999.0));
        assert_eq!(remaining.len(), 2);
    }

    #[test]
    fn a_currency_named_twice_is_an_invalid_request() {
        assert!(matches!(
            Budget::from_patterns(&["USD:5", "USD:1"]),
            Err(ArcpError::InvalidRequest(_))
        ));
        assert!(matches!(
            Budget::from_patterns(&["USD:5", "nonsense"]),
            Err(ArcpError::InvalidRequest(_))
        ));
    }

    #[test]
    fn ten_dimes_exhaust_a_dollar_exactly() {
        let mut b = Budget::from_patterns(&["USD:1.00"]).expect("valid");
        let dime = Amount::from_f64(0.1).expect("finite");
        for i in 1..=9 {
            let left = b.charge("USD", dime).expect("budgeted");
            assert_eq!(left, Amount::from_millionths(1_000_000 - i * 100_000));
            assert!(!b.is_exhausted());
        }
        assert_eq!(b.charge("USD", dime), Some(Amount::ZERO));
        assert!(b.is_exhausted());
        assert_eq!(b.remaining().get("USD"), Some(&0.0));
        assert!(matches!(
            b.ensure_available(),
            Err(ArcpError::BudgetExhausted(m)) if m.contains("USD")
        ));
    }

    #[test]
    fn overspending_goes_negative_and_stays_exhausted() {
        let mut b = Budget::from_patterns(&["USD:0.20", "EUR:10"]).expect("valid");
        assert_eq!(
            b.charge("USD", amt("0.3")),
            Some(Amount::from_millionths(-100_000))
        );
        assert!(b.is_exhausted());
        assert_eq!(b.remaining().get("USD"), Some(&-0.1));
        // A negative charge is not a refund.
        assert_eq!(
            b.charge("USD", Amount::from_millionths(-1_000_000)),
            Some(Amount::from_millionths(-100_000))
        );
    }

    #[test]
    fn a_zero_budget_is_exhausted_from_the_start() {
        let b = Budget::from_patterns(&["USD:0"]).expect("valid");
        assert!(b.is_exhausted());
        let empty = Budget::from_patterns::<&str>(&[]).expect("valid");
        assert!(empty.is_empty());
        assert!(!empty.is_exhausted());
    }

    #[test]
    fn cost_metrics_become_charges() {
        assert_eq!(
            cost_of_metric("cost.inference", 0.0234, Some("USD")),
            Ok(Some(("USD".to_owned(), amt("0.0234"))))
        );
        assert_eq!(
            cost_of_metric("cost.search", 3.0, Some("credits")),
            Ok(Some(("credits".to_owned(), amt("3"))))
        );
        assert_eq!(
            cost_of_metric("cost.free", 0.0, Some("USD")),
            Ok(Some(("USD".to_owned(), Amount::ZERO)))
        );
    }

    #[test]
    fn other_metrics_are_not_charges() {
        assert_eq!(cost_of_metric("latency", 12.0, Some("ms")), Ok(None));
        assert_eq!(cost_of_metric("costly", 1.0, Some("USD")), Ok(None));
        assert_eq!(cost_of_metric("cost.", 1.0, Some("USD")), Ok(None));
        assert_eq!(cost_of_metric("cost.inference", 1.0, None), Ok(None));
        assert_eq!(cost_of_metric("cost.inference", 1.0, Some("US$")), Ok(None));
        assert_eq!(
            cost_of_metric("cost.budget.remaining", 1.42, Some("USD")),
            Ok(None)
        );
        // Values only matter once the metric is a cost.
        assert_eq!(cost_of_metric("temperature", -4.0, Some("C")), Ok(None));
    }

    #[test]
    fn negative_or_non_finite_costs_are_refused() {
        for bad in [-0.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(
                matches!(
                    cost_of_metric("cost.inference", bad, Some("USD")),
                    Err(ArcpError::InvalidRequest(m)) if m.contains("negative values refused")
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            cost_of_metric("cost.inference", 1e20, Some("USD")),
            Err(ArcpError::InvalidRequest(_))
        ));
    }
}
