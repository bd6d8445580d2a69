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
    let negative = micros < 0;
    let abs = micros.unsigned_abs();
    let units = abs / MICROS_PER_UNIT as u64;
    let frac = abs % MICROS_PER_UNIT as u64;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    out.push_str(&units.to_string());
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out
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
    }
}
