//! Issue 12, item 3: the event decoder against a reference decoding, over a corpus and its mutations.
//!
//! Inputs: the sample's records as the producer sends them (read from `../shared`, not copied), the
//! committed corpus `tests/corpus/decode/` (hand-made edge cases and inputs a fuzzer found), and 40
//! seeded mutations of each (bit flips, byte edits, splices, numbers and times swapped for edge values,
//! repeated keys). The invariant for every input: the decoder never panics; it decodes the record or
//! refuses it with a non-empty reason (the dead-letter reason); it decodes exactly when the reference
//! does, to the same values, event time and dedup key.
//!
//! The reference is written apart from the decoder: serde_json splits the object into its (key, raw
//! value) pairs, repeats kept in order; each schema field's raw text is then typed by plain string
//! rules (integers by `str::parse`, decimals by digit shifting with round half away from zero, times by
//! chrono's own parsers). JSON syntax itself is serde_json's on both sides.

use std::fmt;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime};
use common::schema::{content_hash, Decoder, Value};
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
fn reference_micros(text: &str) -> Option<i128> {
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
fn reference(config: &Config, payload: &[u8]) -> Option<(Vec<Value>, i64)> {
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
                common::config::FieldType::String => Value::Str(serde_json::from_str::<String>(text).ok()?),
                common::config::FieldType::I64 => {
                    let digits = text.strip_prefix('-').unwrap_or(text);
                    // `-0` is read as a float by JSON parsers (the decoder's documented rule)
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || text == "-0" {
                        return None;
                    }
                    Value::I64(text.parse().ok()?)
                }
                common::config::FieldType::F64 => {
                    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
                        return None;
                    }
                    Value::Decimal(reference_micros(text)?)
                }
                common::config::FieldType::Timestamp => {
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

/// Seeded mutations of `input` (xorshift64*: the same inputs on every run).
fn mutations(input: &[u8], seed: u64, count: usize) -> Vec<Vec<u8>> {
    const EDGES: &[&str] = &[
        "0",
        "-0",
        "1e15",
        "1000000000000000.0000005",
        "-1e15",
        "1e16",
        "0.0000005",
        "-0.0000005",
        "0.00000049999",
        "1e-400",
        "1E+3",
        "9007199254740993",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "1.",
        ".5",
        "01",
        "1e",
        "\"x\"",
        "null",
        "true",
        "[]",
        "{}",
        "\"2019-11-08 08:14:53 UTC\"",
        "\"2019-11-08T08:14:53.123456789+14:00\"",
        "\"2019-02-29 00:00:00 UTC\"",
        "\"2016-12-31 23:59:60 UTC\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"é\"",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    (0..count)
        .map(|_| {
            let mut m = input.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = if m.is_empty() { 0 } else { (next() % m.len() as u64) as usize };
                match next() % 6 {
                    0 if !m.is_empty() => m[at] ^= 1 << (next() % 8),
                    1 => m.insert(at, (next() % 256) as u8),
                    2 if !m.is_empty() => {
                        m.remove(at);
                    }
                    3 => {
                        // a value (after a ':') replaced by an edge value
                        if let Some(colon) = m[at..].iter().position(|&b| b == b':') {
                            let start = at + colon + 1;
                            let end =
                                m[start..].iter().position(|&b| b == b',' || b == b'}').map_or(m.len(), |e| start + e);
                            let edge = EDGES[(next() % EDGES.len() as u64) as usize];
                            m.splice(start..end, edge.bytes());
                        }
                    }
                    4 => {
                        // a key repeated with another value at the end of the object
                        if let Some(close) = m.iter().rposition(|&b| b == b'}') {
                            let keys = ["event_time", "price", "user_id", "brand", "product_id"];
                            let key = keys[(next() % keys.len() as u64) as usize];
                            let edge = EDGES[(next() % EDGES.len() as u64) as usize];
                            m.splice(close..close, format!(",\"{key}\":{edge}").into_bytes());
                        }
                    }
                    _ => {
                        // a splice of the input with itself
                        let from = (next() % (input.len() as u64 + 1)) as usize;
                        let to = from + (next() % (input.len() - from + 1) as u64) as usize;
                        m.splice(at..at, input[from..to].iter().copied());
                    }
                }
            }
            m
        })
        .collect()
}

/// Checks one input; a description of the disagreement, if any.
fn check(decoder: &Decoder, config: &Config, input: &[u8]) -> Option<String> {
    let decoded = match std::panic::catch_unwind(|| decoder.decode(input)) {
        Ok(d) => d,
        Err(_) => return Some("the decoder panicked".into()),
    };
    let expected = reference(config, input);
    match (decoded, expected) {
        (Ok(event), Some((values, event_time))) => {
            if event.values != values || event.event_time != event_time {
                return Some(format!(
                    "decoded {:?} at {}, the reference {values:?} at {event_time}",
                    event.values, event.event_time
                ));
            }
            (event.dedup_key != Some(content_hash(&values))).then(|| "the dedup key is not the content hash".into())
        }
        (Err(reason), None) => reason.0.trim().is_empty().then(|| "a dead letter without a reason".into()),
        (Ok(event), None) => Some(format!("decoded {:?}, the reference refuses it", event.values)),
        (Err(reason), Some((values, _))) => Some(format!("refused ({reason}), the reference decodes {values:?}")),
    }
}

#[test]
fn the_decoder_agrees_with_the_reference_on_the_corpus_and_its_mutations() {
    let config = Config::defaults();
    let decoder = Decoder::new(&config);
    let sample = lambda::produce::read_file(&support_sample_path(), &config).expect("the sample");
    let mut seeds: Vec<Vec<u8>> = sample.iter().step_by(50).map(|m| m.payload.clone()).collect();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/decode");
    let mut files: Vec<_> =
        std::fs::read_dir(&corpus).expect("tests/corpus/decode").flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 20, "the committed corpus has {} inputs", files.len());
    seeds.extend(files.iter().map(|f| std::fs::read(f).unwrap()));

    let (mut decoded, mut refused, mut failures) = (0usize, 0usize, Vec::new());
    for (i, seed) in seeds.iter().enumerate() {
        for input in std::iter::once(seed.clone()).chain(mutations(seed, i as u64 + 1, 40)) {
            match check(&decoder, &config, &input) {
                Some(problem) => failures.push(format!("{problem}\n    input: {}", String::from_utf8_lossy(&input))),
                None if decoder.decode(&input).is_ok() => decoded += 1,
                None => refused += 1,
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} disagreements, first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(5)].join("\n")
    );
    // the mutations must exercise both outcomes, or this test checks little
    assert!(decoded > 1_000 && refused > 1_000, "decoded {decoded}, refused {refused}");
}

/// The reference's own rules on known values (so a wrong reference cannot hide a wrong decoder).
#[test]
fn the_reference_is_right_on_known_values() {
    assert_eq!(reference_micros("776.74"), Some(776_740_000));
    assert_eq!(reference_micros("-0.0000005"), Some(-1));
    assert_eq!(reference_micros("0.00000049999"), Some(0));
    assert_eq!(reference_micros("1E+3"), Some(1_000_000_000));
    assert_eq!(reference_micros("1e15"), Some(1_000_000_000_000_000_000_000));
    assert_eq!(reference_micros("1e16"), None);
    assert_eq!(reference_micros("1e-400"), Some(0));
    assert_eq!(reference_micros("01"), None);
    assert_eq!(reference_micros("1."), None);
    let config = Config::defaults();
    let (values, t) = reference(&config, br#"{"event_time":"2019-11-08 08:14:53 UTC","price":1,"price":2.5}"#).unwrap();
    assert_eq!(t, 1_573_200_893_000_000);
    assert_eq!(values[6], Value::Decimal(2_500_000), "the last of a repeated key counts");
    assert!(reference(&config, br#"{"event_time":"2019-11-08 08:14:53 UTC","price":"x","price":2}"#).is_none());
    assert!(reference(&config, br#"{"price":2}"#).is_none(), "no event time");
}

fn support_sample_path() -> std::path::PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&root).join("../shared/data/ecommerce/2019-Nov-sample.csv")
}
