//! The event schema and the decoder shared by the speed layer and the archiver (DESIGN.md §3, §4, §8).
//!
//! Both consumers decode with the same [`Decoder`], so a record that one sends to the dead-letter
//! output the other does too, with the same reason.

use chrono::{DateTime, NaiveDateTime};
use serde_json::Value as Json;

use crate::config::{Config, FieldType};

/// A typed field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Str(String),
    I64(i64),
    F64(f64),
    /// Unix microseconds, UTC.
    Timestamp(i64),
}

/// A decoded event: one value per schema field (schema order), its event time and dedup key.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub values: Vec<Value>,
    /// Event time in Unix microseconds, UTC.
    pub event_time: i64,
    /// 128-bit event identity: xxh3-128 of the canonical field values (`content`) or of one field.
    pub dedup_key: u128,
}

/// Why a record could not be decoded; the text goes to the dead-letter output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

#[derive(Debug, Clone)]
enum TimeFormat {
    Rfc3339,
    Pattern(String),
}

/// Decodes JSON records into [`Event`]s according to `[schema]`.
#[derive(Debug, Clone)]
pub struct Decoder {
    fields: Vec<(String, FieldType)>,
    event_time: usize,
    dedup_field: Option<usize>,
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
            formats: s
                .time_formats
                .iter()
                .map(|f| {
                    if f.eq_ignore_ascii_case("rfc3339") {
                        TimeFormat::Rfc3339
                    } else {
                        TimeFormat::Pattern(f.clone())
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

    /// Decodes one record payload.
    ///
    /// Errors (the reason names the field): payload over `schema.max_record_bytes`, not JSON, not an
    /// object, a value of the wrong type, a missing event time or one that matches no `time_formats`.
    /// Missing fields other than the event time are null; fields not in the schema are ignored.
    pub fn decode(&self, payload: &[u8]) -> Result<Event, DecodeError> {
        if payload.len() > self.max_bytes {
            return Err(DecodeError(format!(
                "record is {} bytes, over the limit of {}",
                payload.len(),
                self.max_bytes
            )));
        }
        let json: Json = serde_json::from_slice(payload).map_err(|e| DecodeError(format!("not JSON: {e}")))?;
        let Json::Object(map) = json else {
            return Err(DecodeError("not a JSON object".into()));
        };
        let mut values = Vec::with_capacity(self.fields.len());
        for (name, ty) in &self.fields {
            let value = match map.get(name) {
                None | Some(Json::Null) => Value::Null,
                Some(v) => self.typed(name, *ty, v)?,
            };
            values.push(value);
        }
        let Value::Timestamp(event_time) = values[self.event_time] else {
            return Err(DecodeError(format!("missing event time `{}`", self.fields[self.event_time].0)));
        };
        let dedup_key = match self.dedup_field {
            None => content_hash(&values),
            Some(i) => content_hash(std::slice::from_ref(&values[i])),
        };
        Ok(Event { values, event_time, dedup_key })
    }

    fn typed(&self, name: &str, ty: FieldType, v: &Json) -> Result<Value, DecodeError> {
        let wrong = || DecodeError(format!("field `{name}`: expected {}, found {}", type_name(ty), json_kind(v)));
        Ok(match ty {
            FieldType::String => Value::Str(v.as_str().ok_or_else(wrong)?.to_owned()),
            FieldType::I64 => Value::I64(v.as_i64().ok_or_else(wrong)?),
            FieldType::F64 => {
                let f = v.as_f64().ok_or_else(wrong)?;
                if !f.is_finite() {
                    return Err(wrong());
                }
                Value::F64(f)
            }
            FieldType::Timestamp => {
                let s = v.as_str().ok_or_else(wrong)?;
                Value::Timestamp(self.parse_time(s).ok_or_else(|| {
                    DecodeError(format!("field `{name}`: unparsable timestamp `{s}` (accepted formats: rfc3339 or the configured patterns)"))
                })?)
            }
        })
    }

    /// Parses a timestamp with the configured formats, in order; Unix microseconds.
    pub fn parse_time(&self, s: &str) -> Option<i64> {
        self.formats.iter().find_map(|f| match f {
            TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_micros()),
            TimeFormat::Pattern(p) => DateTime::parse_from_str(s, p)
                .map(|t| t.timestamp_micros())
                .ok()
                .or_else(|| NaiveDateTime::parse_from_str(s, p).ok().map(|t| t.and_utc().timestamp_micros())),
        })
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

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// xxh3-128 of the canonical encoding of `values`: per value a type tag, then the value
/// (strings length-prefixed, numbers little-endian, floats by their bits, timestamps in microseconds).
pub fn content_hash(values: &[Value]) -> u128 {
    let mut buf = Vec::with_capacity(128);
    for v in values {
        match v {
            Value::Null => buf.push(0),
            Value::Str(s) => {
                buf.push(1);
                buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
                buf.extend_from_slice(s.as_bytes());
            }
            Value::I64(i) => {
                buf.push(2);
                buf.extend_from_slice(&i.to_le_bytes());
            }
            Value::F64(f) => {
                buf.push(3);
                buf.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Timestamp(t) => {
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
        assert_ne!(a.dedup_key, 0);
        assert_eq!(a.values[6], Value::F64(776.74));
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
}
