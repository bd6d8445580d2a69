//! A reference decoding of events under the schema, written apart from `common::schema::Decoder` so the
//! decoder can be held against it (issue 12, item 3): by `tests/decoder_corpus.rs` over a corpus and its
//! mutations, and by the fuzz target `fuzz/fuzz_targets/decode.rs` over whatever libFuzzer generates. Both
//! include this file by path; it needs only `common` (the config and the value type), serde, serde_json
//! (with `raw_value`) and chrono.
//!
//! serde_json splits the object into its (key, raw value) pairs, repeats kept in order; each schema field's
//! raw text is then typed by plain string rules (integers by `str::parse`, decimals by digit shifting with
//! round half away from zero, times by chrono's own parsers). JSON syntax itself is serde_json's on both
//! sides.

use std::fmt;

use chrono::{DateTime, NaiveDateTime};
use common::config::FieldType;
use common::schema::Value;
use common::Config;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The object's (key, raw value) pairs in order, repeats kept.
struct Pairs(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(pair);
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON number's text -> micro-units, rounded half away from zero at the 6th place; `None` past 1e15
/// in magnitude or for text that is not a JSON number.
pub fn reference_micros(text: &str) -> Option<i128> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => {
            let e = &rest[i + 1..];
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // clamp: anything this large is out of range or zero either way
            let magnitude: i64 = digits.trim_start_matches('0').get(..7).unwrap_or(digits).parse().unwrap_or(0);
            let magnitude = if digits.trim_start_matches('0').len() > 7 { 9_999_999 } else { magnitude };
            (&rest[..i], if e.starts_with('-') { -magnitude } else { magnitude })
        }
        None => (rest, 0),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return None,
        None => (mantissa, ""),
    };
    if int.is_empty()
        || (int.len() > 1 && int.starts_with('0'))
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // value = digits * 10^(exponent - frac.len()); micro-units: shift by 6 more
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let shift = exponent - frac.len() as i64 + 6;
    let magnitude: i128 = if digits.is_empty() {
        0
    } else if shift >= 0 {
        if digits.len() as i64 + shift > 22 {
            return None;
        }
        format!("{digits}{}", "0".repeat(shift as usize)).parse().ok()?
    } else {
        let cut = -shift;
        if cut > digits.len() as i64 {
            0
        } else {
            let (kept, dropped) = digits.split_at(digits.len() - cut as usize);
            if kept.len() > 22 {
                return None;
            }
            let kept: i128 = if kept.is_empty() { 0 } else { kept.parse().ok()? };
            kept + i128::from(dropped.as_bytes()[0] >= b'5')
        }
    };
    if magnitude > 1_000_000_000_000_000_000_000 {
        return None;
    }
    Some(if negative { -magnitude } else { magnitude })
}

/// The reference decoding under the default schema: the values (schema order) and the event time, or
/// `None` for a record that must be dead-lettered.
pub fn reference(config: &Config, payload: &[u8]) -> Option<(Vec<Value>, i64)> {
    if payload.len() > config.schema.max_record_bytes {
        return None;
    }
    let Pairs(pairs) = serde_json::from_slice(payload).ok()?;
    let fields = &config.schema.fields;
    let mut values = vec![Value::Null; fields.len()];
    for (key, raw) in &pairs {
        let Some(i) = fields.iter().position(|f| &f.name == key) else { continue };
        let text = raw.get();
        values[i] = if text == "null" {
            Value::Null
        } else {
            match fields[i].ty {
                FieldType::String => Value::Str(serde_json::from_str::<String>(text).ok()?),
                FieldType::I64 => {
                    let digits = text.strip_prefix('-').unwrap_or(text);
                    // `-0` is read as a float by JSON parsers (the decoder's documented rule)
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || text == "-0" {
                        return None;
                    }
                    Value::I64(text.parse().ok()?)
                }
                FieldType::F64 => {
                    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                        return None;
                    }
                    Value::Decimal(reference_micros(text)?)
                }
                FieldType::Timestamp => {
                    let s: String = serde_json::from_str(text).ok()?;
                    let micros = NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S UTC")
                        .map(|t| t.and_utc().timestamp_micros())
                        .or_else(|_| DateTime::parse_from_rfc3339(&s).map(|t| t.timestamp_micros()))
                        .ok()?;
                    Value::Timestamp(micros)
                }
            }
        };
    }
    let time = fields.iter().position(|f| f.name == config.schema.event_time)?;
    let Value::Timestamp(event_time) = values[time] else { return None };
    Some((values, event_time))
}
