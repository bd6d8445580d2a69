//! `lambda produce`: send events from a CSV or JSON Lines file to a Kafka topic, one JSON object per
//! message, keyed by `schema.message_key`, at an optional steady rate, with an optional share of duplicates.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::config::{Config, FieldType, KafkaConfig};
use common::kafka::producer_config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub key: Option<String>,
    pub payload: Vec<u8>,
}

/// How to send.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Events per second; `None` sends as fast as the producer accepts them.
    pub rate: Option<f64>,
    /// Percentage (0-100) of events sent a second time, 1 to `duplicate_spread` messages later.
    pub duplicates_pct: f64,
    pub duplicate_spread: usize,
    pub seed: u64,
}

impl Default for ProduceOptions {
    fn default() -> Self {
        ProduceOptions { rate: None, duplicates_pct: 0.0, duplicate_spread: 2_000, seed: 42 }
    }
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProduceReport {
    pub sent: u64,
    pub duplicates: u64,
}

/// Reads events from `.csv` (header row; cells typed by the schema: i64/f64 cells that parse become
/// numbers, empty numeric cells null, anything else stays a string) or `.jsonl` (each line sent as is, so
/// malformed lines reach the dead-letter output).
pub fn read_file(path: &Path, config: &Config) -> Result<Vec<Outgoing>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
    match ext {
        "csv" => read_csv(path, config),
        "jsonl" | "json" | "ndjson" => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(text.lines().filter(|l| !l.trim().is_empty()).map(|l| outgoing_from_json_line(l, config)).collect())
        }
        other => bail!("{}: unsupported extension `{other}`; use .csv or .jsonl", path.display()),
    }
}

fn read_csv(path: &Path, config: &Config) -> Result<Vec<Outgoing>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let headers = reader.headers()?.clone();
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), i + 2))?;
        let mut object = Map::new();
        for (name, cell) in headers.iter().zip(record.iter()) {
            object.insert(name.to_owned(), typed_cell(config.field_type(name), cell));
        }
        out.push(outgoing_from_object(object, config));
    }
    Ok(out)
}

fn typed_cell(ty: Option<FieldType>, cell: &str) -> Value {
    match ty {
        Some(FieldType::I64) if cell.is_empty() => Value::Null,
        Some(FieldType::I64) => cell.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(cell)),
        Some(FieldType::F64) if cell.is_empty() => Value::Null,
        Some(FieldType::F64) => cell.parse::<f64>().map(Value::from).unwrap_or_else(|_| Value::from(cell)),
        _ => Value::from(cell),
    }
}

/// A message for a JSON object, keyed by `schema.message_key`.
pub fn outgoing_from_object(object: Map<String, Value>, config: &Config) -> Outgoing {
    let key = config.schema.message_key.as_ref().and_then(|k| object.get(k)).and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    });
    Outgoing { key, payload: serde_json::to_vec(&object).expect("JSON object serializes") }
}

fn outgoing_from_json_line(line: &str, config: &Config) -> Outgoing {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(object)) => {
            let keyed = outgoing_from_object(object, config);
            Outgoing { key: keyed.key, payload: line.as_bytes().to_vec() }
        }
        _ => Outgoing { key: None, payload: line.as_bytes().to_vec() },
    }
}

/// Orders `events` for sending, inserting a copy of `duplicates_pct`% of them 1..=`duplicate_spread`
/// positions later (deterministic for a seed). Returns the messages and the number of copies.
pub fn with_duplicates(events: Vec<Outgoing>, options: &ProduceOptions) -> (Vec<Outgoing>, u64) {
    if options.duplicates_pct <= 0.0 {
        return (events, 0);
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut keyed: Vec<(f64, Outgoing)> = Vec::with_capacity(events.len() * 2);
    let mut copies = 0;
    for (i, e) in events.into_iter().enumerate() {
        if rng.random::<f64>() * 100.0 < options.duplicates_pct {
            let later = rng.random_range(1..=options.duplicate_spread.max(1));
            keyed.push(((i + later) as f64 + 0.5, e.clone()));
            copies += 1;
        }
        keyed.push((i as f64, e));
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    (keyed.into_iter().map(|(_, e)| e).collect(), copies)
}

/// Sends `messages` to `kafka.topic`, at `options.rate` events/s if set, and waits for every delivery.
/// Stops early (after flushing what was queued) when `shutdown` is cancelled.
pub async fn send(
    kafka: &KafkaConfig,
    messages: &[Outgoing],
    rate: Option<f64>,
    shutdown: &CancellationToken,
) -> Result<u64> {
    send_paced(kafka, messages, rate, shutdown, None, None).await
}

/// Event times rewritten to the production time as each message is sent (`lambda demo --live`), so the
/// stream looks like a live shop's: the schema's event-time field of every JSON object message is set to
/// now, in the schema's first time format. A repeat of a message (the same payload sent again, as
/// [`with_duplicates`] makes them) gets the time its first copy got, so it stays the same event for the
/// dedup key. Messages that are not JSON objects go out unchanged (the layers dead-letter them).
#[derive(Debug)]
pub struct LiveTime {
    field: String,
    /// A chrono format string, or `None` for RFC 3339.
    format: Option<String>,
    /// Stamped payloads by original payload, for repeats (bounded: oldest dropped first).
    seen: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    order: std::collections::VecDeque<Vec<u8>>,
}

impl LiveTime {
    /// Repeats come at most `duplicate_spread` (2,000) messages after their original: twice that is kept.
    const KEEP: usize = 4_000;

    pub fn new(config: &Config) -> Self {
        let format = config.schema.time_formats.first().filter(|f| f.as_str() != "rfc3339").cloned();
        LiveTime {
            field: config.schema.event_time.clone(),
            format,
            seen: Default::default(),
            order: Default::default(),
        }
    }

    /// `payload` with its event time set to `now` (or the time its first copy got).
    pub fn stamp(&mut self, payload: &[u8], now: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
        if let Some(stamped) = self.seen.get(payload) {
            return stamped.clone();
        }
        let stamped = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(mut object)) => {
                let text = match &self.format {
                    Some(f) => now.format(f).to_string(),
                    None => now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                };
                object.insert(self.field.clone(), Value::String(text));
                serde_json::to_vec(&object).expect("JSON object serializes")
            }
            _ => payload.to_vec(),
        };
        self.seen.insert(payload.to_vec(), stamped.clone());
        self.order.push_back(payload.to_vec());
        if self.order.len() > Self::KEEP {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        stamped
    }
}

/// [`send`], holding back while `pause` reads `true` (the demo's pacing on its consumers, `demo.rs`).
pub async fn send_paced(
    kafka: &KafkaConfig,
    messages: &[Outgoing],
    rate: Option<f64>,
    shutdown: &CancellationToken,
    mut pause: Option<tokio::sync::watch::Receiver<bool>>,
    mut live: Option<LiveTime>,
) -> Result<u64> {
    let producer: FutureProducer = producer_config(kafka).create().context("creating the Kafka producer")?;
    let tick = Duration::from_millis(10);
    let per_tick = rate.map(|r| (r * tick.as_secs_f64()).max(0.0));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut budget = 0.0;
    let mut pending: Vec<DeliveryFuture> = Vec::new();
    let mut sent = 0u64;
    let mut i = 0;
    while i < messages.len() {
        if shutdown.is_cancelled() {
            break;
        }
        if let Some(rx) = pause.as_mut() {
            if *rx.borrow_and_update() {
                let pacer_gone = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = rx.changed() => changed.is_err(),
                };
                if pacer_gone {
                    pause = None; // send on at the configured rate
                }
                // resume at the rate, not with a burst of the ticks missed while paused
                interval.reset();
                budget = 0.0;
                continue;
            }
        }
        if let Some(per_tick) = per_tick {
            if budget < 1.0 {
                interval.tick().await;
                budget += per_tick;
                continue;
            }
            budget -= 1.0;
        }
        let m = &messages[i];
        let stamped = live.as_mut().map(|l| l.stamp(&m.payload, chrono::Utc::now()));
        let mut record = FutureRecord::to(&kafka.topic).payload(stamped.as_deref().unwrap_or(&m.payload));
        if let Some(k) = &m.key {
            record = record.key(k);
        }
        match producer.send_result(record) {
            Ok(delivery) => {
                pending.push(delivery);
                i += 1;
                sent += 1;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e).context("queueing a message"),
        }
        if pending.len() >= 10_000 {
            await_deliveries(&mut pending).await?;
        }
    }
    await_deliveries(&mut pending).await?;
    producer.flush(Duration::from_secs(30)).context("flushing the producer")?;
    Ok(sent)
}

async fn await_deliveries(pending: &mut Vec<DeliveryFuture>) -> Result<()> {
    for d in pending.drain(..) {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e).context("delivering a message"),
            Err(_) => bail!("a delivery was cancelled (producer dropped)"),
        }
    }
    Ok(())
}

/// `lambda produce`: read `input`, add duplicates, send.
pub async fn run(
    config: &Config,
    input: &Path,
    options: &ProduceOptions,
    shutdown: &CancellationToken,
) -> Result<ProduceReport> {
    let events = read_file(input, config)?;
    let (messages, duplicates) = with_duplicates(events, options);
    let sent = send(&config.kafka, &messages, options.rate, shutdown).await?;
    Ok(ProduceReport { sent, duplicates })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--live`: the event time becomes the production time in the schema's format, which the event
    /// decoder reads back as that instant; a repeat keeps its first copy's time; other fields and non-JSON
    /// messages are untouched.
    #[test]
    fn live_time_stamps_the_production_time_and_repeats_keep_theirs() {
        let config = Config::defaults();
        let mut live = LiveTime::new(&config);
        let a = br#"{"event_time":"2019-11-01 00:00:00 UTC","event_type":"view","price":1.5}"#;
        let b = br#"{"event_time":"2019-11-01 00:00:01 UTC","event_type":"cart","price":2}"#;
        let t1 = chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let t2 = t1 + chrono::Duration::seconds(7);
        let stamped_a = live.stamp(a, t1);
        let stamped_b = live.stamp(b, t2);
        let again_a = live.stamp(a, t2);
        assert_eq!(again_a, stamped_a, "a repeat is the same event");
        let decoded: Map<String, Value> = serde_json::from_slice(&stamped_a).unwrap();
        assert_eq!(decoded["event_time"], "2026-11-18 11:06:40 UTC");
        assert_eq!(decoded["event_type"], "view");
        assert_eq!(decoded["price"], 1.5);
        let decoded: Map<String, Value> = serde_json::from_slice(&stamped_b).unwrap();
        assert_eq!(decoded["event_time"], "2026-11-18 11:06:47 UTC");
        // the layers' decoder reads the stamped text back as the production instant
        let text = decoded["event_time"].as_str().unwrap();
        let parsed = chrono::NaiveDateTime::parse_from_str(text, &config.schema.time_formats[0]).unwrap();
        assert_eq!(parsed.and_utc(), t2);
        assert_eq!(live.stamp(b"not json", t1), b"not json");
    }

    #[test]
    fn duplicates_are_copies_placed_later() {
        let events: Vec<Outgoing> =
            (0..1000).map(|i| Outgoing { key: None, payload: vec![(i % 251) as u8, (i / 251) as u8] }).collect();
        let options = ProduceOptions { duplicates_pct: 5.0, duplicate_spread: 50, ..Default::default() };
        let (out, copies) = with_duplicates(events.clone(), &options);
        assert_eq!(out.len(), 1000 + copies as usize);
        assert!((20..=90).contains(&copies), "about 5% of 1000, got {copies}");
        // the copy of original #i comes after original #i and at most `spread` originals later
        let mut original_index = std::collections::HashMap::new();
        let mut originals_seen = 0usize;
        for m in &out {
            match original_index.get(&m.payload) {
                None => {
                    original_index.insert(&m.payload, originals_seen);
                    originals_seen += 1;
                }
                Some(&i) => {
                    assert!(originals_seen > i && originals_seen - i <= 51, "copy of #{i} after {originals_seen}")
                }
            }
        }
        let first_seen = original_index;
        assert_eq!(first_seen.len(), 1000);
    }

    #[test]
    fn csv_cells_are_typed_by_the_schema() {
        assert_eq!(typed_cell(Some(FieldType::F64), "776.74"), Value::from(776.74));
        assert_eq!(typed_cell(Some(FieldType::I64), ""), Value::Null);
        assert_eq!(typed_cell(Some(FieldType::I64), "12x"), Value::from("12x"));
        assert_eq!(typed_cell(Some(FieldType::String), ""), Value::from(""));
    }
}
