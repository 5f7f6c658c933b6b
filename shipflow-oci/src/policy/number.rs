//! [`Decimal`]: a tag's number, compared exactly (a nanosecond timestamp has
//! more digits than an `f64` holds, and two of them must not tie).

use std::cmp::Ordering;

/// A decimal number: optional sign, digits, optional fraction (`-12`, `3.50`,
/// `1700000000123456789`). No exponent, infinity or NaN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    /// The integer digits without leading zeros.
    integer: String,
    /// The fraction digits without trailing zeros.
    fraction: String,
}

impl Decimal {
    /// Parses `text`, or `None` when it is not such a number.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (negative, unsigned) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if integer.is_empty() && fraction.is_empty() || !digits(integer) || !digits(fraction) {
            return None;
        }
        let integer = integer.trim_start_matches('0').to_owned();
        let fraction = fraction.trim_end_matches('0').to_owned();
        // -0 is 0.
        let negative = negative && !(integer.is_empty() && fraction.is_empty());
        Some(Self {
            negative,
            integer,
            fraction,
        })
    }

    fn cmp_magnitude(&self, other: &Self) -> Ordering {
        self.integer
            .len()
            .cmp(&other.integer.len())
            .then_with(|| self.integer.cmp(&other.integer))
            .then_with(|| self.fraction.cmp(&other.fraction))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::parse(text).unwrap_or_else(|| panic!("{text} is a number"))
    }

    #[test]
    fn orders_exactly() {
        let ascending = [
            "-10", "-2.5", "-2", "0", "0.25", "1", "2", "9", "10", "10.5", "100",
        ];
        for pair in ascending.windows(2) {
            assert!(d(pair[0]) < d(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert!(d("1700000000123456789") < d("1700000000123456790"));
        for (a, b) in [
            ("007", "7"),
            ("1.50", "1.5"),
            ("-0", "0"),
            ("+3", "3"),
            (".5", "0.5"),
        ] {
            assert_eq!(d(a), d(b), "{a} = {b}");
        }
        for text in [
            "", "-", ".", "1e5", "NaN", "inf", "1.2.3", "0x10", " 1", "v1",
        ] {
            assert_eq!(Decimal::parse(text), None, "{text:?}");
        }
    }
}
