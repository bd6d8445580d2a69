//! The event schema and the decoder shared by the speed layer and the archiver (DESIGN.md §3, §4, §8).
//!
//! Both consumers decode with the same [`Decoder`], so a record that one sends to the dead-letter
//! output the other does too, with the same reason.
//!
//! Decoding streams the payload once through `serde_json`'s deserializer straight into the schema's typed
//! slots ([`Decoder::decode_ref`]): strings without escapes are borrowed from the payload, fields outside the
//! schema are skipped without being built, and timestamps in the shapes `YYYY-MM-DD HH:MM:SS<literal>` and
//! RFC 3339 take a fast path that gives the same instant as `chrono` (anything else goes to `chrono`).
//! Numbers of `f64` fields are read from their JSON text into exact micro-units ([`crate::decimal`]).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use chrono::{DateTime, NaiveDateTime};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::{Config, DedupMissing, FieldType};
use crate::decimal::{parse_micros, NumberError};

/// A typed field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Str(String),
    I64(i64),
    /// The value of an `f64` field: micro-units (10^-6), exact ([`crate::decimal`]).
    Decimal(i128),
    /// Unix microseconds, UTC.
    Timestamp(i64),
}

impl Value {
    /// The borrowed form.
    pub fn as_field_ref(&self) -> FieldRef<'_> {
        match self {
            Value::Null => FieldRef::Null,
            Value::Str(s) => FieldRef::Str(Cow::Borrowed(s)),
            Value::I64(v) => FieldRef::I64(*v),
            Value::Decimal(v) => FieldRef::Decimal(*v),
            Value::Timestamp(v) => FieldRef::Timestamp(*v),
        }
    }
}

/// A typed field value whose string borrows from the record payload when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FieldRef<'a> {
    #[default]
    Null,
    Str(Cow<'a, str>),
    I64(i64),
    /// Micro-units, as [`Value::Decimal`].
    Decimal(i128),
    /// Unix microseconds, UTC.
    Timestamp(i64),
}

impl FieldRef<'_> {
    /// The owned form.
    pub fn into_owned(self) -> Value {
        match self {
            FieldRef::Null => Value::Null,
            FieldRef::Str(s) => Value::Str(s.into_owned()),
            FieldRef::I64(v) => Value::I64(v),
            FieldRef::Decimal(v) => Value::Decimal(v),
            FieldRef::Timestamp(v) => Value::Timestamp(v),
        }
    }
}

/// A decoded event: one value per schema field (schema order), its event time and dedup key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub values: Vec<Value>,
    /// Event time in Unix microseconds, UTC.
    pub event_time: i64,
    /// 128-bit event identity: xxh3-128 of the canonical field values (`content`) or of the named field.
    /// `None` when the named field is missing, null or empty: the record is then its own event, never
    /// merged with another (DESIGN.md §4).
    pub dedup_key: Option<u128>,
}

/// A decoded event borrowing its strings from the payload: what [`Decoder::decode_ref`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// One value per schema field, schema order.
    pub values: Vec<FieldRef<'a>>,
    /// Event time in Unix microseconds, UTC.
    pub event_time: i64,
    /// As [`Event::dedup_key`].
    pub dedup_key: Option<u128>,
}

impl EventRef<'_> {
    /// The owned form.
    pub fn into_owned(self) -> Event {
        Event {
            values: self.values.into_iter().map(FieldRef::into_owned).collect(),
            event_time: self.event_time,
            dedup_key: self.dedup_key,
        }
    }
}

/// Why a record could not be decoded; the text goes to the dead-letter output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

#[derive(Debug, Clone)]
enum TimeFormat {
    Rfc3339,
    Pattern {
        pattern: String,
        /// `Some(literal)` when the pattern is `%Y-%m-%d %H:%M:%S` followed by a literal without `%`:
        /// the fast path applies.
        fast_suffix: Option<String>,
    },
}

/// Decodes JSON records into [`Event`]s according to `[schema]`.
#[derive(Debug, Clone)]
pub struct Decoder {
    fields: Vec<(String, FieldType)>,
    event_time: usize,
    dedup_field: Option<usize>,
    dedup_missing: DedupMissing,
    formats: Vec<TimeFormat>,
    max_bytes: usize,
}

impl Decoder {
    pub fn new(config: &Config) -> Self {
        let s = &config.schema;
        let fields: Vec<(String, FieldType)> = s.fields.iter().map(|f| (f.name.clone(), f.ty)).collect();
        let pos = |n: &str| fields.iter().position(|(name, _)| name == n);
        Decoder {
            event_time: pos(&s.event_time).expect("validated event_time"),
            dedup_field: if s.dedup_key == "content" { None } else { pos(&s.dedup_key) },
            dedup_missing: s.dedup_missing,
            formats: s
                .time_formats
                .iter()
                .map(|f| {
                    if f.eq_ignore_ascii_case("rfc3339") {
                        TimeFormat::Rfc3339
                    } else {
                        let fast_suffix =
                            f.strip_prefix("%Y-%m-%d %H:%M:%S").filter(|rest| !rest.contains('%')).map(str::to_owned);
                        TimeFormat::Pattern { pattern: f.clone(), fast_suffix }
                    }
                })
                .collect(),
            max_bytes: s.max_record_bytes,
            fields,
        }
    }

    /// Field names and types, schema order.
    pub fn fields(&self) -> &[(String, FieldType)] {
        &self.fields
    }

    /// Decodes one record payload into an owned [`Event`]; see [`Decoder::decode_ref`] for the rules.
    pub fn decode(&self, payload: &[u8]) -> Result<Event, DecodeError> {
        self.decode_ref(payload).map(EventRef::into_owned)
    }

    /// Decodes one record payload, borrowing strings from it.
    ///
    /// Errors (the reason names the field): payload over `schema.max_record_bytes`, not JSON, not an
    /// object, a value of the wrong type, a number out of range ([`crate::decimal`]), a missing event time
    /// or one that matches no `time_formats`, and, with `schema.dedup_missing = "dead_letter"`, a missing,
    /// null or empty named dedup key, and text that is not UTF-8 anywhere. Missing fields other than the
    /// event time are null; fields not in the schema are ignored; when a key repeats, its last value counts.
    /// `-0` is not an integer for an `i64` field (JSON parsers read it as a float, like `-0.0`). The first
    /// problem met while reading the record is the one reported.
    pub fn decode_ref<'a>(&self, payload: &'a [u8]) -> Result<EventRef<'a>, DecodeError> {
        if payload.len() > self.max_bytes {
            return Err(DecodeError(format!(
                "record is {} bytes, over the limit of {}",
                payload.len(),
                self.max_bytes
            )));
        }
        // JSON text is UTF-8 (RFC 8259 §8.1), all of it, fields outside the schema included; validated once
        // here, so the parser need not check the strings it reads again
        let text = std::str::from_utf8(payload)
            .map_err(|e| DecodeError(format!("not JSON: not UTF-8 at byte {}", e.valid_up_to())))?;
        let mut values = vec![FieldRef::Null; self.fields.len()];
        let failure = Cell::new(None);
        let mut de = serde_json::Deserializer::from_str(text);
        let read = RecordSeed { decoder: self, values: &mut values, failure: &failure }
            .deserialize(&mut de)
            .and_then(|()| de.end());
        if let Err(e) = read {
            return Err(failure.take().unwrap_or_else(|| DecodeError(format!("not JSON: {e}"))));
        }
        let FieldRef::Timestamp(event_time) = values[self.event_time] else {
            return Err(DecodeError(format!("missing event time `{}`", self.fields[self.event_time].0)));
        };
        let dedup_key = self.dedup_key(&values);
        if dedup_key.is_none() && self.dedup_missing == DedupMissing::DeadLetter {
            let name = &self.fields[self.dedup_field.expect("only a named key can be missing")].0;
            return Err(DecodeError(format!(
                "field `{name}`: the dedup key is missing, null or empty (schema.dedup_missing = \"dead_letter\")"
            )));
        }
        Ok(EventRef { values, event_time, dedup_key })
    }

    /// The dedup key of an event with these field values (schema order): the content hash of all of them
    /// (`dedup_key = "content"`), or of the named field, `None` when that is missing, null or empty.
    pub fn dedup_key(&self, values: &[FieldRef<'_>]) -> Option<u128> {
        match self.dedup_field {
            None => Some(content_hash_ref(values)),
            Some(i) => match &values[i] {
                FieldRef::Null => None,
                FieldRef::Str(s) if s.is_empty() => None,
                value => Some(content_hash_ref(std::slice::from_ref(value))),
            },
        }
    }

    /// True when the dedup key is a named field (records can then lack one).
    pub fn has_named_dedup_key(&self) -> bool {
        self.dedup_field.is_some()
    }

    /// Parses a timestamp with the configured formats, in order; Unix microseconds.
    pub fn parse_time(&self, s: &str) -> Option<i64> {
        self.formats.iter().find_map(|f| match f {
            TimeFormat::Rfc3339 => {
                fast_rfc3339(s).or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros()))
            }
            TimeFormat::Pattern { pattern, fast_suffix } => {
                fast_suffix.as_deref().and_then(|suffix| fast_datetime(s, b' ', suffix)).or_else(|| {
                    DateTime::parse_from_str(s, pattern).map(|t| t.timestamp_micros()).ok().or_else(|| {
                        NaiveDateTime::parse_from_str(s, pattern).ok().map(|t| t.and_utc().timestamp_micros())
                    })
                })
            }
        })
    }

    fn wrong(&self, field: usize, found: &str) -> DecodeError {
        let (name, ty) = &self.fields[field];
        DecodeError(format!("field `{name}`: expected {}, found {found}", type_name(*ty)))
    }

    /// The value of `f64` field `field` from the raw JSON text of its value.
    fn decimal(&self, field: usize, raw: &str) -> Result<FieldRef<'static>, DecodeError> {
        match raw.as_bytes().first() {
            Some(b'n') => Ok(FieldRef::Null),
            Some(b'"') => Err(self.wrong(field, "a string")),
            Some(b't' | b'f') => Err(self.wrong(field, "a boolean")),
            Some(b'[') => Err(self.wrong(field, "an array")),
            Some(b'{') => Err(self.wrong(field, "an object")),
            _ => parse_micros(raw).map(FieldRef::Decimal).map_err(|e| match e {
                NumberError::OutOfRange(_) => DecodeError(format!("field `{}`: {e}", self.fields[field].0)),
                NumberError::Syntax(_) => self.wrong(field, "something else"),
            }),
        }
    }

    fn unparsable(&self, field: usize, s: &str) -> DecodeError {
        DecodeError(format!(
            "field `{}`: unparsable timestamp `{s}` (accepted formats: rfc3339 or the configured patterns)",
            self.fields[field].0
        ))
    }
}

/// Reads the top-level object into `values`; any problem other than JSON syntax goes to `failure`.
struct RecordSeed<'d, 'a> {
    decoder: &'d Decoder,
    values: &'d mut Vec<FieldRef<'a>>,
    failure: &'d Cell<Option<DecodeError>>,
}

impl RecordSeed<'_, '_> {
    fn fail<E: de::Error>(&self, error: DecodeError) -> E {
        self.failure.set(Some(error));
        E::custom("invalid record")
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

macro_rules! not_an_object {
    ($($method:ident($($ty:ty)?)),*) => {$(
        fn $method<E: de::Error>(self $(, _: $ty)?) -> Result<(), E> {
            Err(self.fail(DecodeError("not a JSON object".into())))
        }
    )*};
}

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = &self.decoder.fields;
        while let Some(slot) = map.next_key_seed(KeySeed(fields))? {
            match slot {
                Some(field) if fields[field].1 == FieldType::F64 => {
                    // numbers are read from their text, never through a binary float
                    let raw: &'de RawValue = map.next_value()?;
                    self.values[field] = self.decoder.decimal(field, raw.get()).map_err(|e| self.fail(e))?;
                }
                Some(field) => {
                    let value =
                        map.next_value_seed(FieldSeed { decoder: self.decoder, field, failure: self.failure })?;
                    self.values[field] = value;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.fail(DecodeError("not a JSON object".into())))
    }

    not_an_object!(visit_unit(), visit_bool(bool), visit_i64(i64), visit_u64(u64), visit_f64(f64), visit_str(&str));
}

/// A key of the top-level object: `Some(field index)` for a schema field, `None` otherwise.
struct KeySeed<'d>(&'d [(String, FieldType)]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|(name, _)| name == key))
    }
}

/// The value of schema field `field`, typed.
struct FieldSeed<'d> {
    decoder: &'d Decoder,
    field: usize,
    failure: &'d Cell<Option<DecodeError>>,
}

impl FieldSeed<'_> {
    fn ty(&self) -> FieldType {
        self.decoder.fields[self.field].1
    }

    fn wrong<T, E: de::Error>(&self, found: &str) -> Result<T, E> {
        self.failure.set(Some(self.decoder.wrong(self.field, found)));
        Err(E::custom("invalid field"))
    }

    fn string<'a, E: de::Error>(&self, s: Cow<'a, str>) -> Result<FieldRef<'a>, E> {
        match self.ty() {
            FieldType::String => Ok(FieldRef::Str(s)),
            FieldType::Timestamp => match self.decoder.parse_time(&s) {
                Some(t) => Ok(FieldRef::Timestamp(t)),
                None => {
                    self.failure.set(Some(self.decoder.unparsable(self.field, &s)));
                    Err(E::custom("invalid timestamp"))
                }
            },
            FieldType::I64 | FieldType::F64 => self.wrong("a string"),
        }
    }
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = FieldRef<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<FieldRef<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = FieldRef<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(type_name(self.ty()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<FieldRef<'de>, E> {
        Ok(FieldRef::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<FieldRef<'de>, E> {
        Ok(FieldRef::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<FieldRef<'de>, E> {
        self.wrong("a boolean")
    }

    // `f64` fields never get here: they are read from their raw text (RecordSeed::visit_map)
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldRef<'de>, E> {
        match self.ty() {
            FieldType::I64 => Ok(FieldRef::I64(v)),
            _ => self.wrong("an integer"),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldRef<'de>, E> {
        match self.ty() {
            FieldType::I64 => i64::try_from(v).map(FieldRef::I64).map_err(|_| {
                self.failure.set(Some(DecodeError(format!(
                    "field `{}`: {v} is out of range for an i64 field",
                    self.decoder.fields[self.field].0
                ))));
                E::custom("invalid field")
            }),
            _ => self.wrong("an integer"),
        }
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<FieldRef<'de>, E> {
        self.wrong("a number")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<FieldRef<'de>, E> {
        self.string(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<FieldRef<'de>, E> {
        self.string(Cow::Owned(s.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<FieldRef<'de>, A::Error> {
        self.wrong("an array")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<FieldRef<'de>, A::Error> {
        self.wrong("an object")
    }
}

fn type_name(ty: FieldType) -> &'static str {
    match ty {
        FieldType::String => "a string",
        FieldType::I64 => "an integer",
        FieldType::F64 => "a number",
        FieldType::Timestamp => "a timestamp string",
    }
}

/// `YYYY-MM-DD<sep>HH:MM:SS<suffix>` exactly (two-digit fields, no leap second), as Unix microseconds UTC;
/// `None` for anything else, which then goes to `chrono`.
fn fast_datetime(s: &str, sep: u8, suffix: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 19 + suffix.len() || &b[19..] != suffix.as_bytes() {
        return None;
    }
    Some(civil_seconds(b, sep)? * 1_000_000)
}

/// Seconds since the epoch of the `YYYY-MM-DD<sep>HH:MM:SS` at the start of `b` (validated: a real date,
/// hour < 24, minute < 60, second < 60).
fn civil_seconds(b: &[u8], sep: u8) -> Option<i64> {
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != sep || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// RFC 3339 with `T`, optional fraction (1-9 digits) and `Z` or `±HH:MM`; `None` for anything else.
fn fast_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let seconds = civil_seconds(b, b'T')?;
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        for k in 0..9 {
            let d = if k < digits { i64::from(b[i + 1 + k] - b'0') } else { 0 };
            nanos = nanos * 10 + d;
        }
        i += 1 + digits;
    }
    let offset = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let (h, m) = (i64::from((h1 - b'0') * 10 + (h2 - b'0')), i64::from((m1 - b'0') * 10 + (m2 - b'0')));
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 3_600 + m * 60
            } else {
                -(h * 3_600 + m * 60)
            }
        }
        _ => return None,
    };
    Some((seconds - offset) * 1_000_000 + nanos / 1_000)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the proleptic Gregorian date (H. Hinnant, "chrono-Compatible Low-Level Date
/// Algorithms", `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// xxh3-128 of the canonical encoding of `values`: per value a type tag, then the value
/// (strings length-prefixed, integers and micro-units little-endian, timestamps in microseconds).
pub fn content_hash(values: &[Value]) -> u128 {
    let refs: Vec<FieldRef<'_>> = values.iter().map(Value::as_field_ref).collect();
    content_hash_ref(&refs)
}

/// [`content_hash`] of borrowed values.
pub fn content_hash_ref(values: &[FieldRef<'_>]) -> u128 {
    let mut buf = Vec::with_capacity(256);
    for v in values {
        match v {
            FieldRef::Null => buf.push(0),
            FieldRef::Str(s) => {
                buf.push(1);
                buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
            FieldRef::I64(i) => {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            FieldRef::Decimal(m) => {
                buf.push(3);
                buf.extend_from_slice(&m.to_le_bytes());
            }
            FieldRef::Timestamp(t) => {
                buf.push(4);
                buf.extend_from_slice(&t.to_le_bytes());
            }
        }
    }
    xxhash_rust::xxh3::xxh3_128(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(&Config::defaults())
    }

    const GOOD: &str = r#"{"event_time":"2019-11-08 08:14:53 UTC","event_type":"view","product_id":1004259,
        "category_id":2053013555631882655,"category_code":"electronics.smartphone","brand":"apple",
        "price":776.74,"user_id":568847318,"user_session":"3fca063b"}"#;

    #[test]
    fn decodes_both_time_formats_to_the_same_instant() {
        let d = decoder();
        let a = d.decode(GOOD.as_bytes()).unwrap();
        let b = d.decode(GOOD.replace("2019-11-08 08:14:53 UTC", "2019-11-08T09:14:53+01:00").as_bytes()).unwrap();
        assert_eq!(a.event_time, 1_573_200_893_000_000);
        assert_eq!(a.event_time, b.event_time);
        assert!(a.dedup_key.is_some_and(|k| k != 0));
        assert_eq!(a.values[6], Value::Decimal(776_740_000));
    }

    #[test]
    fn same_content_same_key_any_field_order() {
        let d = decoder();
        let reordered = r#"{"price":776.74,"event_type":"view","event_time":"2019-11-08 08:14:53 UTC","product_id":1004259,
            "category_id":2053013555631882655,"category_code":"electronics.smartphone","brand":"apple",
            "user_id":568847318,"user_session":"3fca063b"}"#;
        assert_eq!(d.decode(GOOD.as_bytes()).unwrap().dedup_key, d.decode(reordered.as_bytes()).unwrap().dedup_key);
        let other = GOOD.replace("776.74", "776.75");
        assert_ne!(d.decode(GOOD.as_bytes()).unwrap().dedup_key, d.decode(other.as_bytes()).unwrap().dedup_key);
    }

    #[test]
    fn bad_records_have_reasons() {
        let d = decoder();
        let reason = |s: &str| d.decode(s.as_bytes()).unwrap_err().0;
        assert!(reason("not json").starts_with("not JSON"));
        assert_eq!(reason("[1]"), "not a JSON object");
        assert!(
            reason(&GOOD.replace("776.74", "\"cheap\"")).contains("field `price`: expected a number, found a string")
        );
        assert!(reason(r#"{"event_type":"view"}"#).contains("missing event time"));
        assert!(reason(&GOOD.replace("2019-11-08 08:14:53 UTC", "yesterday")).contains("unparsable timestamp"));
        assert!(reason(&" ".repeat(70_000)).contains("over the limit"));
    }

    #[test]
    fn streams_types_and_skips_unknown_fields() {
        let d = decoder();
        let record = r#"{"extra":{"nested":[1,{"a":null}]},"event_time":"2019-11-08 08:14:53 UTC","brand":"a\u0070ple",
            "event_type":"view","price":3,"user_id":null,"product_id":5,"product_id":6}"#;
        let e = d.decode_ref(record.as_bytes()).unwrap();
        assert_eq!(e.values[5], FieldRef::Str(Cow::Owned("apple".into())), "escapes are decoded");
        assert!(matches!(e.values[1], FieldRef::Str(Cow::Borrowed("view"))), "plain strings are borrowed");
        assert_eq!(e.values[6], FieldRef::Decimal(3_000_000), "an integer is a valid number");
        assert_eq!(e.values[7], FieldRef::Null);
        assert_eq!(e.values[2], FieldRef::I64(6), "the last of a repeated key counts");
        assert_eq!(e.values[8], FieldRef::Null, "missing is null");
        let owned = d.decode(record.as_bytes()).unwrap();
        assert_eq!(owned.dedup_key, e.dedup_key);
        assert_eq!(owned.dedup_key, Some(content_hash(&owned.values)));

        let reason = |s: &str| d.decode(s.as_bytes()).unwrap_err().0;
        let with =
            |field: &str, value: &str| format!(r#"{{"event_time":"2019-11-08 08:14:53 UTC","{field}":{value}}}"#);
        assert_eq!(reason(&with("brand", "true")), "field `brand`: expected a string, found a boolean");
        assert_eq!(reason(&with("brand", "[1]")), "field `brand`: expected a string, found an array");
        assert_eq!(reason(&with("price", "{}")), "field `price`: expected a number, found an object");
        assert_eq!(reason(&with("user_id", "1.5")), "field `user_id`: expected an integer, found a number");
        assert_eq!(
            reason(&with("user_id", "18446744073709551615")),
            "field `user_id`: 18446744073709551615 is out of range for an i64 field"
        );
        assert_eq!(reason(&with("price", "true")), "field `price`: expected a number, found a boolean");
        assert_eq!(reason(&with("price", "[1]")), "field `price`: expected a number, found an array");
        assert_eq!(
            reason(&with("price", "1e300")),
            "field `price`: 1e300 is out of range (numbers are accepted up to 1e15 in magnitude)"
        );
        let big = d.decode(with("price", "123456789012345.123456").as_bytes()).unwrap();
        assert_eq!(big.values[6], Value::Decimal(123_456_789_012_345_123_456), "exact past 2^53");
        assert_eq!(d.decode(with("price", "null").as_bytes()).unwrap().values[6], Value::Null);
        assert_eq!(reason("\"text\""), "not a JSON object");
        assert!(reason(r#"{"event_time":"2019-11-08 08:14:53 UTC"} x"#).starts_with("not JSON: trailing characters"));
        assert!(reason(r#"{"event_time":"2019-11-08 08:14:53 UTC","#).starts_with("not JSON"));
    }

    /// Issue 9, item 1: a named dedup key that is missing, null or empty is no key (the record is its own
    /// event), or a dead letter when `schema.dedup_missing = "dead_letter"`.
    #[test]
    fn a_missing_named_dedup_key_is_no_key() {
        let keep = Decoder::new(&Config::from_toml_str("[schema]\ndedup_key = \"user_session\"\n").unwrap());
        let strict = Decoder::new(
            &Config::from_toml_str("[schema]\ndedup_key = \"user_session\"\ndedup_missing = \"dead_letter\"\n")
                .unwrap(),
        );
        let base = r#"{"event_time":"2019-11-08 08:14:53 UTC","price":1"#;
        for session in ["", r#","user_session":null"#, r#","user_session":"""#] {
            let record = format!("{base}{session}}}");
            assert_eq!(keep.decode(record.as_bytes()).unwrap().dedup_key, None, "{record}");
            let reason = strict.decode(record.as_bytes()).unwrap_err().0;
            assert!(reason.contains("user_session") && reason.contains("dedup key"), "{reason}");
        }
        let named = format!(r#"{base},"user_session":"s1"}}"#);
        let other_content = format!(r#"{base}0,"user_session":"s1"}}"#);
        let a = keep.decode(named.as_bytes()).unwrap().dedup_key;
        assert!(a.is_some());
        assert_eq!(a, keep.decode(other_content.as_bytes()).unwrap().dedup_key, "the key is the field alone");
        assert_eq!(a, strict.decode(named.as_bytes()).unwrap().dedup_key);
    }

    /// The fast timestamp paths against chrono on a spread of instants, fractions and offsets, plus the
    /// shapes that must fall back to chrono (leap second, invalid dates, other separators).
    #[test]
    fn fast_time_paths_agree_with_chrono() {
        let d = decoder();
        let chrono_pattern = |s: &str| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S UTC").ok().map(|t| t.and_utc().timestamp_micros())
        };
        let chrono_rfc = |s: &str| DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // from year 1 to about 2500, seconds and a nanosecond fraction
            let secs = (x % 79_000_000_000) as i64 - 62_135_596_800;
            let t = DateTime::from_timestamp(secs, (x >> 40) as u32 % 1_000_000_000).unwrap();
            let plain = t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
            assert_eq!(fast_datetime(&plain, b' ', " UTC"), chrono_pattern(&plain), "{plain}");
            assert_eq!(d.parse_time(&plain), chrono_pattern(&plain), "{plain}");
            let offset = chrono::FixedOffset::east_opt(((x >> 20) % 86_399) as i32 - 43_199).unwrap();
            let digits = ["%.3f", "%.6f", "%.9f", "", "%.f"][i % 5];
            let rfc = t.with_timezone(&offset).format(&format!("%Y-%m-%dT%H:%M:%S{digits}%:z")).to_string();
            let rfc = if i % 7 == 0 { t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string() } else { rfc };
            assert_eq!(fast_rfc3339(&rfc), chrono_rfc(&rfc), "{rfc}");
            assert_eq!(d.parse_time(&rfc), chrono_rfc(&rfc), "{rfc}");
        }
        for s in
            ["2019-02-29 00:00:00 UTC", "2019-13-01 00:00:00 UTC", "2019-11-08 24:00:00 UTC", "2019-11-08 8:14:53 UTC"]
        {
            assert_eq!(fast_datetime(s, b' ', " UTC"), None, "{s}");
            assert_eq!(d.parse_time(s), chrono_pattern(s).or_else(|| chrono_rfc(s)), "{s}");
        }
        assert_eq!(fast_datetime("2020-02-29 23:59:59 UTC", b' ', " UTC"), chrono_pattern("2020-02-29 23:59:59 UTC"));
        for s in ["2016-12-31T23:59:60Z", "2019-11-08 08:14:53Z", "2019-11-08t08:14:53z", "2019-11-08T08:14:53.Z"] {
            assert_eq!(fast_rfc3339(s), None, "{s}");
            assert_eq!(d.parse_time(s), chrono_pattern(s).or_else(|| chrono_rfc(s)), "{s}");
        }
    }
}
