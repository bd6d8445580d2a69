//! The broker process, the RSS reader and the consumer groups' positions.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::config::KafkaConfig;

pub const PARTITIONS: i32 = 3;
pub const TOPIC: &str = "events";

/// The tansu broker, started as `tests/support/broker.rs` starts it (SQLite storage in the working
/// directory), kept here with its pid for the RSS samples.
#[derive(Debug)]
pub struct Broker {
    pub child: Child,
    port: u16,
}

impl Broker {
    /// `LAMBDA_TEST_TANSU`, `~/.cache/tansu/bin/tansu` (where `.ci/run` installs it) or `tansu` on `PATH`.
    fn binary() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("LAMBDA_TEST_TANSU") {
            return Some(p.into());
        }
        let mut candidates: Vec<PathBuf> =
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/tansu/bin/tansu")).into_iter().collect();
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
        }
        candidates.into_iter().find(|p| p.is_file())
    }

    /// Starts the broker on a free loopback port and waits (up to 20 s) until it accepts connections.
    pub fn start(dir: &Path) -> Result<Broker> {
        let bin = Self::binary()
            .context("no tansu broker: cargo install tansu --features libsql, or set LAMBDA_TEST_TANSU")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.join("tansu.log"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .current_dir(dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            // the group coordinator's joins and evictions, to read a rebalance after the fact
            .env("RUST_LOG", "warn,tansu_broker::coordinator::group=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let broker = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(Instant::now() < deadline, "tansu did not listen on {port} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates the topic with [`PARTITIONS`] partitions (replication factor 1).
    pub async fn create_topic(&self) -> Result<()> {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", self.brokers()).create()?;
        let new = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
        for r in admin.create_topics([&new], &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
