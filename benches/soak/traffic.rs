//! What the run sends and reads: the background load, the probes and the poller that sees them in the API.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use common::config::KafkaConfig;
use lambda::produce::Outgoing;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

pub const PROBE_EVERY: Duration = Duration::from_millis(100);
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Delivery reports of one producer: (delivered, failed) once `rx` closes.
fn delivery_checker(mut rx: mpsc::UnboundedReceiver<DeliveryFuture>) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while let Some(d) = rx.recv().await {
            match d.await {
                Ok(Ok(_)) => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    })
}

/// Queues `record`, waiting while the producer's queue is full.
async fn enqueue(producer: &FutureProducer, mut record: FutureRecord<'_, str, [u8]>) -> Result<DeliveryFuture> {
    loop {
        match producer.send_result(record) {
            Ok(d) => return Ok(d),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e).context("queueing a message"),
        }
    }
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// Distinct payloads (the dedup key of generated events is their content).
    pub distinct: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// The background load: `events` at `rate` events/s (the i-th due at `start + i / rate`, so a stall is
/// caught up) until `end`; waits for every delivery report.
pub async fn load(
    kafka: KafkaConfig,
    mut events: impl Iterator<Item = Outgoing>,
    rate: f64,
    start: Instant,
    end: Instant,
) -> Result<LoadReport> {
    let producer: FutureProducer = common::kafka::producer_config(&kafka).create()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let checker = delivery_checker(rx);
    let mut distinct = HashSet::new();
    let mut sent = 0u64;
    while Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let Some(m) = events.next() else { bail!("the generator ran out after {sent} events") };
            distinct.insert(xxhash_rust::xxh3::xxh3_128(&m.payload));
            let mut record = FutureRecord::to(&kafka.topic).payload(m.payload.as_slice());
            if let Some(k) = &m.key {
                record = record.key(k.as_str());
            }
            let _ = tx.send(enqueue(&producer, record).await?);
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(tx);
    let (delivered, failed) = checker.await?;
    Ok(LoadReport { sent, distinct: distinct.len() as u64, delivered, failed })
}

#[derive(Debug)]
pub struct Probe {
    /// Seconds since the start of the run, at production.
    pub at: f64,
    pub produced: Instant,
    /// Unix seconds of its minute bucket.
    minute: i64,
    pub visible: Option<Instant>,
    /// Largest count the API showed for it (anything above 1 is a double count).
    pub max_count: i64,
}

impl Probe {
    /// Visible - produced in milliseconds; infinite for a probe never seen.
    pub fn latency_ms(&self) -> f64 {
        self.visible.map_or(f64::INFINITY, |v| v.duration_since(self.produced).as_secs_f64() * 1_000.0)
    }
}

/// The probes produced so far and what the poller has seen of them.
#[derive(Debug, Default)]
pub struct Probes {
    pub list: Vec<Probe>,
    unseen: BTreeSet<usize>,
    pub polls: u64,
    pub failed_polls: u64,
    sending_done: bool,
}

/// A probe event: `event_type = "probe"`, a brand of its own, its event time the production time.
pub fn probe_payload(brand: &str, now: DateTime<Utc>, i: u64) -> Vec<u8> {
    json!({
        "event_time": now.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        "event_type": "probe", "brand": brand, "price": 1.0, "user_id": i,
        "user_session": format!("soak-{brand}"), "product_id": 1, "category_id": 1, "category_code": "",
    })
    .to_string()
    .into_bytes()
}

/// A probe every [`PROBE_EVERY`] until `end`, keyed by its number (so they spread over the partitions);
/// (delivered, failed) once every delivery is reported.
pub async fn probes(kafka: KafkaConfig, state: Arc<Mutex<Probes>>, start: Instant, end: Instant) -> Result<(u64, u64)> {
    let producer: FutureProducer = common::kafka::producer_config(&kafka).create()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let checker = delivery_checker(rx);
    let mut i = 0u64;
    loop {
        let next = start + PROBE_EVERY * u32::try_from(i)?;
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        let (brand, key, now) = (format!("probe-{i:06}"), format!("probe-{i}"), Utc::now());
        let payload = probe_payload(&brand, now, i);
        let produced = Instant::now();
        let record = FutureRecord::to(&kafka.topic).key(key.as_str()).payload(payload.as_slice());
        let delivery = enqueue(&producer, record).await?;
        {
            let mut s = state.lock().expect("probe state");
            let n = s.list.len();
            s.list.push(Probe {
                at: produced.duration_since(start).as_secs_f64(),
                produced,
                minute: now.timestamp().div_euclid(60) * 60,
                visible: None,
                max_count: 0,
            });
            s.unseen.insert(n);
        }
        let _ = tx.send(delivery);
        i += 1;
    }
    state.lock().expect("probe state").sending_done = true;
    drop(tx);
    Ok(checker.await?)
}

#[derive(Debug, Deserialize)]
struct Answer {
    rows: Vec<AnswerRow>,
}

#[derive(Debug, Deserialize)]
struct AnswerRow {
    dims: BTreeMap<String, Option<String>>,
    metrics: Counted,
}

#[derive(Debug, Deserialize)]
struct Counted {
    count: i64,
}

fn rfc3339(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// Reads the probes from the API at `api` every [`POLL_EVERY`] (`by_brand` minute buckets from the
/// oldest probe not yet seen, so an answer holds a minute or two of probes) until every probe is seen
/// after sending ended, or `give_up`. A failed request (the server killed or restarting) is counted and
/// retried.
pub async fn poller(api: String, state: Arc<Mutex<Probes>>, give_up: Instant) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
    while Instant::now() < give_up {
        let from = {
            let s = state.lock().expect("probe state");
            if s.sending_done && s.unseen.is_empty() {
                return;
            }
            s.unseen.iter().map(|&i| s.list[i].minute).min()
        };
        if let Some(from) = from {
            let url = format!(
                "{api}/v1/views/by_brand?granularity=minute&event_type=probe&group_by=brand&from={}",
                rfc3339(from)
            );
            let answer: Option<Answer> =
                async { http.get(&url).send().await.ok()?.error_for_status().ok()?.json().await.ok() }.await;
            let now = Instant::now();
            let mut s = state.lock().expect("probe state");
            s.polls += 1;
            let rows = answer.map(|a| a.rows);
            if rows.is_none() {
                s.failed_polls += 1;
            }
            for row in rows.into_iter().flatten() {
                let Some(Some(brand)) = row.dims.get("brand") else { continue };
                let Some(i) = brand.strip_prefix("probe-").and_then(|n| n.parse::<usize>().ok()) else { continue };
                if let Some(p) = s.list.get_mut(i) {
                    p.visible.get_or_insert(now);
                    p.max_count = p.max_count.max(row.metrics.count);
                    s.unseen.remove(&i);
                }
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The sum of `count` over the rows of `by_type` by day (everything since 2000), optionally of one event
/// type; `None` when the API does not answer.
pub async fn total_count(http: &reqwest::Client, api: &str, event_type: Option<&str>) -> Option<i64> {
    let filter = event_type.map(|t| format!("&event_type={t}")).unwrap_or_default();
    let url = format!("{api}/v1/views/by_type?granularity=day&from=2000-01-01T00:00:00Z{filter}");
    let answer: Answer = http.get(&url).send().await.ok()?.error_for_status().ok()?.json().await.ok()?;
    Some(answer.rows.iter().map(|r| r.metrics.count).sum())
}
