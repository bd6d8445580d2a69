//! Exact sums: metric sums are kept as integer micro-units (10^-6) and printed as decimals.

/// Micro-units per unit: sums keep 6 decimal places exactly.
pub const MICROS_PER_UNIT: i64 = 1_000_000;

/// Converts a float to micro-units, rounding half away from zero.
///
/// Exact for every decimal with at most 6 places whose magnitude is below ~9e9 (the f64 nearest the
/// decimal is within half a micro-unit of it). The batch job applies the same rule in Polars.
pub fn f64_to_micros(value: f64) -> i64 {
    (value * MICROS_PER_UNIT as f64).round() as i64
}

/// Formats micro-units as a plain decimal: `12345670000` -> `"12345.67"`, `-5` -> `"-0.000005"`, `0` -> `"0"`.
///
/// The output is a valid JSON number, rounded to (at most) 6 places with trailing zeros removed.
pub fn format_micros(micros: i64) -> String {
    let mut out = Vec::with_capacity(24);
    write_micros(&mut out, micros);
    String::from_utf8(out).expect("digits are ASCII")
}

/// [`format_micros`] appended to `out` (no allocation).
pub fn write_micros(out: &mut Vec<u8>, micros: i64) {
    if micros < 0 {
        out.push(b'-');
    }
    let abs = micros.unsigned_abs();
    let (units, frac) = (abs / MICROS_PER_UNIT as u64, abs % MICROS_PER_UNIT as u64);
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
    fn rounds_prices_exactly() {
        assert_eq!(f64_to_micros(776.74), 776_740_000);
        assert_eq!(f64_to_micros(0.1 + 0.2), 300_000);
        assert_eq!(f64_to_micros(-22.14), -22_140_000);
        assert_eq!(f64_to_micros(1e-7), 0);
    }

    #[test]
    fn formats_decimals() {
        assert_eq!(format_micros(12_345_670_000), "12345.67");
        assert_eq!(format_micros(0), "0");
        assert_eq!(format_micros(-5), "-0.000005");
        assert_eq!(format_micros(3_000_000), "3");
        assert_eq!(format_micros(i64::MIN), "-9223372036854.775808");
        assert_eq!(format_micros(i64::MAX), "9223372036854.775807");
        assert_eq!(format_micros(1_000_001), "1.000001");
        assert_eq!(format_micros(-10_000), "-0.01");
        // against the text of the exact decimal, for a spread of values
        for v in (-2_000_000i64..2_000_000).step_by(997).chain([999_999, 1_000_000, 123_456_789_012]) {
            let exact = format!(
                "{}{}.{:06}",
                if v < 0 { "-" } else { "" },
                v.unsigned_abs() / 1_000_000,
                v.unsigned_abs() % 1_000_000
            );
            let want = exact.trim_end_matches('0').trim_end_matches('.');
            assert_eq!(format_micros(v), if want == "-0" { "0" } else { want }, "{v}");
        }
    }
}
