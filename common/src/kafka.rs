//! Kafka client settings and partition-assignment tracking shared by the speed layer and the archiver.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;

use crate::config::KafkaConfig;

/// Consumer settings of both consumers: the defaults below, then the user's `[kafka.client]` and
/// `[kafka.consumer]` overrides, then the settings exactly-once depends on, which always win (config
/// validation already rejects overrides of them, [`crate::config::reserved_consumer_key`]): `group_id`,
/// manual commits only (offsets are committed after the downstream write is durable), `earliest` reset
/// for a new group, committed records only.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("session.timeout.ms", "10000").set("heartbeat.interval.ms", "1000");
    for (k, v) in kafka.client.iter().chain(&kafka.consumer) {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &kafka.brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false");
    c
}

/// A consumer of `group_id` ([`consumer_config`]) tracking its assignment, subscribed to `kafka.topic`.
pub fn subscribe(kafka: &KafkaConfig, group_id: &str) -> KafkaResult<Arc<StreamConsumer<AssignmentContext>>> {
    let consumer: StreamConsumer<AssignmentContext> =
        consumer_config(kafka, group_id).create_with_context(AssignmentContext::default())?;
    consumer.subscribe(&[&kafka.topic])?;
    Ok(Arc::new(consumer))
}

/// The consumer [`subscribe`] returns.
pub type GroupConsumer = StreamConsumer<AssignmentContext>;

/// Seeks `partition` of `topic` to `offset`, on a blocking thread (librdkafka's seek waits up to 10 s).
pub async fn seek(consumer: &Arc<GroupConsumer>, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
    let (consumer, topic) = (consumer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        consumer.seek(&topic, partition, rdkafka::Offset::Offset(offset), std::time::Duration::from_secs(10))
    })
    .await
    .expect("seek task does not panic")
}

/// The log start (low watermark) of `partition` of `topic`, asked of the broker on a blocking thread:
/// a network round trip (rust-rdkafka has no cached watermark read), so callers pay it only at gaps.
pub async fn low_watermark(
    consumer: &Arc<GroupConsumer>,
    topic: &str,
    partition: i32,
    timeout: std::time::Duration,
) -> KafkaResult<i64> {
    let (consumer, topic) = (consumer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, partition, timeout))
        .await
        .expect("fetch_watermarks task does not panic")
        .map(|(low, _)| low)
}

/// Settings of a plain client (metadata and watermark reads, no group): the brokers, then the user's
/// `[kafka.client]` overrides.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.client {
        c.set(k, v);
    }
    c
}

/// The low and high watermark of every partition of `kafka.topic`, read with a plain client (blocking,
/// up to `timeout` per request). Errors: the topic's metadata or a partition's watermarks cannot be read.
pub fn watermarks(kafka: &KafkaConfig, timeout: std::time::Duration) -> KafkaResult<Vec<(i32, i64, i64)>> {
    let consumer: BaseConsumer = client_config(kafka).create()?;
    let metadata = consumer.fetch_metadata(Some(&kafka.topic), timeout)?;
    let mut out = Vec::new();
    for topic in metadata.topics().iter().filter(|t| t.name() == kafka.topic) {
        for partition in topic.partitions() {
            let (low, high) = consumer.fetch_watermarks(&kafka.topic, partition.id(), timeout)?;
            out.push((partition.id(), low, high));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Producer settings for `lambda produce`, then the user's `[kafka.client]` and `[kafka.producer]` overrides.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers).set("linger.ms", "5").set("message.timeout.ms", "30000");
    for (k, v) in kafka.client.iter().chain(&kafka.producer) {
        c.set(k, v);
    }
    c
}

/// A consumer context that tracks which partitions this consumer owns.
///
/// Every assignment of a partition gets a new epoch; a consumer loop keeps the epoch its partition state was
/// built under and drops that state (writing and sealing nothing more, DESIGN.md §4) when the partition is
/// revoked or re-assigned.
#[derive(Debug, Default)]
pub struct AssignmentContext {
    assigned: Mutex<HashMap<i32, u64>>,
    next_epoch: AtomicU64,
}

impl AssignmentContext {
    /// The epoch of the current assignment of `partition`, or `None` when it is not assigned here.
    pub fn epoch(&self, partition: i32) -> Option<u64> {
        self.assigned.lock().expect("assignment lock").get(&partition).copied()
    }
}

impl ClientContext for AssignmentContext {}

impl ConsumerContext for AssignmentContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut assigned = self.assigned.lock().expect("assignment lock");
            for e in tpl.elements() {
                assigned.remove(&e.partition());
                tracing::info!(partition = e.partition(), "partition revoked");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut assigned = self.assigned.lock().expect("assignment lock");
            for e in tpl.elements() {
                let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
                assigned.insert(e.partition(), epoch);
                tracing::info!(partition = e.partition(), epoch, "partition assigned");
            }
        }
    }
}
