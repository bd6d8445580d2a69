//! Exact numbers (DESIGN.md §8): every `f64` field value and every sum is an integer count of micro-units
//! (10^-6 of the field's unit) in an `i128`.
//!
//! **The rule**, the same in the speed layer, the archive and the batch job:
//! - a JSON number is read from its *text*, never through a binary float, and rounded to 6 decimal places
//!   half away from zero (`1.2345675` -> `1.234568`, `-0.0000005` -> `-0.000001`, `2.5e-7` -> `0`);
//! - after rounding its magnitude must be at most [`MAX_ABS_UNITS`] (1e15); anything larger (`1e16`,
//!   `1e300`) is refused with a reason that goes to the dead-letter output. JSON has no NaN or infinity, so
//!   those arrive as text a JSON parser rejects and are dead-lettered as "not JSON";
//! - an `i64` field summed is the integer times 10^6, exactly;
//! - sums add in `i128` and saturate instead of wrapping. With values of at most 1e21 micro-units a sum
//!   needs more than 10^17 values to reach the `i128` range (1.7e38), so in practice sums are exact up to
//!   about 1e32 units, far past the 1e20 the design asks for.
//!
//! The archive stores these values as Parquet `DECIMAL(22, 6)` ([`ARCHIVE_PRECISION`]), whose unscaled
//! integer is the micro-unit count, so the batch job adds the same integers the speed layer adds.

/// Micro-units per unit: values and sums keep 6 decimal places exactly.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// Largest accepted magnitude of a single value, in units (1e15).
pub const MAX_ABS_UNITS: i128 = 1_000_000_000_000_000;

/// Largest accepted magnitude of a single value, in micro-units (1e21).
pub const MAX_ABS_MICROS: i128 = MAX_ABS_UNITS * MICROS_PER_UNIT as i128;

/// Decimal digits of the archive's value columns: 16 before the point (1e15 has 16) and 6 after.
pub const ARCHIVE_PRECISION: u8 = 22;

/// Decimal places kept.
pub const SCALE: i8 = 6;

/// Why a number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// Not the text of a JSON number.
    #[error("`{0}` is not a number")]
    Syntax(String),
    /// Beyond the accepted magnitude.
    #[error("{0} is out of range (numbers are accepted up to 1e15 in magnitude)")]
    OutOfRange(String),
}

/// Parses the text of a JSON number (`-12.5`, `3e-7`, `1E+3`) into micro-units by the rule above.
///
/// Errors: [`NumberError::Syntax`] for text that is not a JSON number, [`NumberError::OutOfRange`] for a
/// magnitude above 1e15 after rounding.
pub fn parse_micros(text: &str) -> Result<i128, NumberError> {
    let syntax = || NumberError::Syntax(text.to_owned());
    let bytes = text.as_bytes();
    let (negative, mut i) = match bytes.first() {
        Some(b'-') => (true, 1),
        _ => (false, 0),
    };
    // significant digits (leading zeros dropped) and the power of ten of the last digit read; only the
    // first KEPT can matter (22 digits at most are kept, plus the one that decides the rounding), the
    // rest are counted
    let mut digits = Digits::default();
    let mut point_shift: i64 = 0;
    let int_start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        digits.push(bytes[i] - b'0');
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && bytes[int_start] == b'0') {
        return Err(syntax()); // JSON: no empty integer part, no leading zero
    }
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            digits.push(bytes[i] - b'0');
            point_shift -= 1;
            i += 1;
        }
        if i == frac_start {
            return Err(syntax());
        }
    }
    let mut exponent: i64 = 0;
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = match bytes.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let exp_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            // saturate: an exponent this large is out of range (or rounds to zero) either way
            exponent = (exponent * 10 + i64::from(bytes[i] - b'0')).min(1_000_000);
            i += 1;
        }
        if i == exp_start {
            return Err(syntax());
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if i != bytes.len() {
        return Err(syntax());
    }
    // value = digits * 10^(point_shift + exponent); micro-units = digits * 10^(shift)
    let shift = point_shift + exponent + i64::from(SCALE);
    let out_of_range = || NumberError::OutOfRange(text.to_owned());
    let len = digits.len as i64;
    let magnitude: i128 = if len == 0 {
        0
    } else if shift >= 0 {
        // no rounding; 1e21 micro-units has 22 digits, so more than that is out of range
        if len + shift > 22 {
            return Err(out_of_range());
        }
        let mut v: i128 = 0;
        for k in 0..len as usize {
            v = v * 10 + i128::from(digits.get(k));
        }
        v * 10i128.pow(shift as u32)
    } else {
        let keep = len + shift; // digits left of the rounding point
        if keep > 22 {
            return Err(out_of_range());
        }
        let mut v: i128 = 0;
        for k in 0..keep.max(0) as usize {
            v = v * 10 + i128::from(digits.get(k));
        }
        // half away from zero: the first dropped digit decides (0.5 or more rounds the magnitude up)
        let first_dropped = (0..len).contains(&keep).then(|| digits.get(keep as usize));
        v + i128::from(first_dropped.is_some_and(|d| d >= 5))
    };
    if magnitude > MAX_ABS_MICROS {
        return Err(out_of_range());
    }
    Ok(if negative { -magnitude } else { magnitude })
}

/// Significant digits of a number as read: the first [`KEPT`] stored, the rest only counted (a value with
/// more than 22 digits left of the rounding point is out of range, so no later digit can change a result).
#[derive(Debug, Default)]
struct Digits {
    first: [u8; KEPT],
    /// Significant digits read (leading zeros are not significant).
    len: usize,
}

/// Digits that can matter: 22 (the most an accepted value has) and the one that decides the rounding.
const KEPT: usize = 23;

impl Digits {
    fn push(&mut self, digit: u8) {
        if self.len == 0 && digit == 0 {
            return;
        }
        if self.len < KEPT {
            self.first[self.len] = digit;
        }
        self.len += 1;
    }

    /// Digit `k` (0 = most significant); only called for `k < 23`.
    fn get(&self, k: usize) -> u8 {
        self.first[k]
    }
}

/// An integer in micro-units (`12` -> `12_000_000`); exact for every `i64`.
pub fn int_to_micros(value: i64) -> i128 {
    i128::from(value) * i128::from(MICROS_PER_UNIT)
}

/// Formats micro-units as a plain decimal: `12345670000` -> `"12345.67"`, `-5` -> `"-0.000005"`, `0` -> `"0"`.
///
/// The output is a valid JSON number, at most 6 places, trailing zeros removed.
pub fn format_micros(micros: i128) -> String {
    let mut out = Vec::with_capacity(48);
    write_micros(&mut out, micros);
    String::from_utf8(out).expect("digits are ASCII")
}

/// [`format_micros`] appended to `out` (no allocation beyond `out`).
pub fn write_micros(out: &mut Vec<u8>, micros: i128) {
    if micros < 0 {
        out.push(b'-');
    }
    let abs = micros.unsigned_abs();
    let (units, frac) = (abs / MICROS_PER_UNIT as u128, abs % MICROS_PER_UNIT as u128);
    out.extend_from_slice(itoa::Buffer::new().format(units).as_bytes());
    if frac != 0 {
        let mut digits = [b'0'; 6];
        let mut rest = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let used = 6 - digits.iter().rev().take_while(|&&d| d == b'0').count();
        out.push(b'.');
        out.extend_from_slice(&digits[..used]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_decimal_text_exactly_and_rounds_half_away_from_zero() {
        let ok = |s: &str| parse_micros(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("776.74"), 776_740_000);
        assert_eq!(ok("0"), 0);
        assert_eq!(ok("-0.0"), 0);
        assert_eq!(ok("12"), 12_000_000);
        assert_eq!(ok("7E+2"), 700_000_000);
        assert_eq!(ok("1.5e-3"), 1_500);
        assert_eq!(ok("0.0000005"), 1);
        assert_eq!(ok("-0.0000005"), -1);
        assert_eq!(ok("0.00000049999"), 0);
        assert_eq!(ok("2.5e-7"), 0);
        assert_eq!(ok("1e-400"), 0);
        assert_eq!(ok("1.2345675"), 1_234_568);
        assert_eq!(ok("-1.2345665"), -1_234_567);
        assert_eq!(ok("0.000001e6"), 1_000_000);
        assert_eq!(ok("123456789012345.123456"), 123_456_789_012_345_123_456);
        assert_eq!(ok("1e15"), MAX_ABS_MICROS);
        assert_eq!(ok("-1e15"), -MAX_ABS_MICROS);
        assert_eq!(ok("999999999999999.9999995"), MAX_ABS_MICROS, "rounds up onto the limit");
        assert_eq!(ok("1000000000000000.0000004"), MAX_ABS_MICROS, "rounds down onto the limit");
        // around 2^52..2^53 micro-units, where a binary float cannot hold every micro-unit
        assert_eq!(ok("4503599627.370497"), (1i128 << 52) + 1);
        assert_eq!(ok("9007199254.740993"), (1i128 << 53) + 1);
        assert_eq!(ok("9007199254.7409925"), (1i128 << 53) + 1);
        assert_eq!(ok("9007199254.7409915"), 1i128 << 53);
        // more significant digits than can matter: only the first 23 are looked at
        assert_eq!(ok("1.23456749999999999999999999999999999999999"), 1_234_567);
        assert_eq!(ok("0.00000000000000000000000000000000000000001234"), 0);
        assert_eq!(ok("123456789012345.1234565000000000000000000000000001"), 123_456_789_012_345_123_457);
    }

    #[test]
    fn refuses_what_is_out_of_range_or_not_a_number() {
        for s in ["1e16", "1e300", "-1e300", "1000000000000000.000001", "-1000000000000001", "1e1000000000000"] {
            assert!(matches!(parse_micros(s), Err(NumberError::OutOfRange(_))), "{s}");
            assert!(parse_micros(s).unwrap_err().to_string().contains("1e15"), "{s}");
        }
        for s in ["", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1x", "NaN", "inf", "--1", "1.2.3", " 1"] {
            assert!(matches!(parse_micros(s), Err(NumberError::Syntax(_))), "`{s}`");
        }
    }

    /// The parser against the definition computed another way: the exact decimal of a random
    /// (integer, 9-digit fraction) pair, rounded with integer arithmetic, over many magnitudes.
    #[test]
    fn agrees_with_integer_rounding_on_random_values() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..50_000 {
            let units = (next() % 1_000_000_000_000_000) as i128 >> (next() % 50);
            let nanos = (next() % 1_000_000_000) as i128;
            let negative = next() % 2 == 0;
            let text = format!("{}{units}.{nanos:09}", if negative { "-" } else { "" });
            // micro-units of the magnitude: units * 1e6 + round_half_up(nanos / 1000)
            let magnitude = units * 1_000_000 + nanos / 1_000 + i128::from(nanos % 1_000 >= 500);
            let want = if negative { -magnitude } else { magnitude };
            assert_eq!(parse_micros(&text), Ok(want), "{text}");
        }
    }

    #[test]
    fn formats_decimals() {
        assert_eq!(format_micros(12_345_670_000), "12345.67");
        assert_eq!(format_micros(0), "0");
        assert_eq!(format_micros(-5), "-0.000005");
        assert_eq!(format_micros(3_000_000), "3");
        assert_eq!(format_micros(i128::MIN), "-170141183460469231731687303715884.105728");
        assert_eq!(format_micros(i128::MAX), "170141183460469231731687303715884.105727");
        assert_eq!(format_micros(1_000_001), "1.000001");
        assert_eq!(format_micros(-10_000), "-0.01");
        // against the text of the exact decimal, for a spread of values
        for v in (-2_000_000i128..2_000_000).step_by(997).chain([999_999, 1_000_000, 123_456_789_012]) {
            let exact = format!(
                "{}{}.{:06}",
                if v < 0 { "-" } else { "" },
                v.unsigned_abs() / 1_000_000,
                v.unsigned_abs() % 1_000_000
            );
            let want = exact.trim_end_matches('0').trim_end_matches('.');
            assert_eq!(format_micros(v), if want == "-0" { "0" } else { want }, "{v}");
        }
        // parse and format are inverse on 6-place decimals
        for s in ["1000000000000000", "-999999999999999.999999", "0.000001", "42.5"] {
            assert_eq!(format_micros(parse_micros(s).unwrap()), s);
        }
    }
}
