//! The RSS reader and the consumer groups' positions.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use common::config::KafkaConfig;

pub const PARTITIONS: i32 = 3;
pub const TOPIC: &str = "events";

/// VmRSS of `pid` in KiB, `None` when it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One partition at the end of the run: its log end and the committed offsets of the speed and archive
/// groups (`None`: nothing committed).
#[derive(Debug, Clone, Copy)]
pub struct Position {
    pub partition: i32,
    pub log_end: i64,
    pub speed: Option<i64>,
    pub archive: Option<i64>,
}

/// The log end and both groups' committed offsets of every partition, read by plain clients (they join
/// no group).
pub async fn positions(kafka: &KafkaConfig) -> Result<Vec<Position>> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Offset, TopicPartitionList};
        let timeout = Duration::from_secs(10);
        let committed = |group: &str| -> Result<BTreeMap<i32, Option<i64>>> {
            let c: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &kafka.brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS {
                tpl.add_partition(&kafka.topic, p);
            }
            let got = c.committed_offsets(tpl, timeout)?;
            Ok(got
                .elements()
                .iter()
                .map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { Some(o) } else { None }))
                .collect())
        };
        let (speed, archive) = (committed(&kafka.speed_group)?, committed(&kafka.archive_group)?);
        let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", &kafka.brokers).create()?;
        (0..PARTITIONS)
            .map(|p| {
                Ok(Position {
                    partition: p,
                    log_end: c.fetch_watermarks(&kafka.topic, p, timeout)?.1,
                    speed: speed.get(&p).copied().flatten(),
                    archive: archive.get(&p).copied().flatten(),
                })
            })
            .collect()
    })
    .await?
}
