//! `lambda demo`: the whole system in one process on the embedded defaults (DESIGN.md §9) — librdkafka's
//! in-process mock cluster reached over TCP on localhost by the real clients, the SQLite store, a local
//! archive, the batch job on a short cron schedule and the HTTP API.
//!
//! Pacing: the mock cluster keeps at most 5 MB of record batches per partition and deletes the oldest past
//! that whether or not anyone read them (`rdkafka_mock.c`, `max_size`; it has no setting to raise it). So
//! the demo's producer never runs more than [`Pacing::budget`] records per partition ahead of the slowest
//! consumer group's committed offset (about half the mock's room), and the demo makes segments and
//! archive files small enough to commit well inside that budget. Records the consumers must re-read after
//! a crash (from their committed offsets) are therefore never trimmed either.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::config::KafkaConfig;
use common::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::produce::{self, Outgoing, ProduceOptions};

/// File that marks a directory as the demo's own, so a rerun may clear it.
const MARKER: &str = ".lambda-demo";

/// Bytes of record batches librdkafka's mock cluster keeps per partition (`rdkafka_mock.c`,
/// `mpart->max_size`); older batches are deleted, read or not.
const MOCK_PARTITION_BYTES: usize = 5 * 1024 * 1024;

/// How far the demo's producer may run ahead of its consumers on the mock cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Records per partition the slowest consumer group may have produced but not committed.
    pub budget: i64,
    /// Segment and archive file size (records) that commits several times within the budget.
    pub commit_every: u64,
}

impl Pacing {
    /// The budget for messages of these sizes: half the mock's room, counting each message's key, payload
    /// and ~64 bytes of batch overhead.
    pub fn for_messages(messages: &[Outgoing]) -> Pacing {
        let bytes: usize = messages.iter().map(|m| m.payload.len() + m.key.as_ref().map_or(0, String::len) + 64).sum();
        let average = (bytes / messages.len().max(1)).max(1);
        let budget = (MOCK_PARTITION_BYTES / 2 / average).max(100) as i64;
        Pacing { budget, commit_every: (budget / 4).max(1) as u64 }
    }
}

/// Reads, per partition, how many records the slowest of the two consumer groups has not committed.
struct Lag {
    topic: String,
    plain: BaseConsumer,
    groups: Vec<BaseConsumer>,
}

impl Lag {
    fn new(kafka: &KafkaConfig) -> rdkafka::error::KafkaResult<Lag> {
        let group = |id: &str| {
            let mut c = common::kafka::client_config(kafka);
            c.set("group.id", id).set("enable.auto.commit", "false");
            c.create::<BaseConsumer>()
        };
        Ok(Lag {
            topic: kafka.topic.clone(),
            plain: common::kafka::client_config(kafka).create()?,
            groups: vec![group(&kafka.speed_group)?, group(&kafka.archive_group)?],
        })
    }

    /// The largest count, over partitions and groups, of records past the group's committed offset (a group
    /// that has committed nothing counts from the log start).
    fn worst(&self) -> rdkafka::error::KafkaResult<i64> {
        let timeout = Duration::from_secs(2);
        let metadata = self.plain.fetch_metadata(Some(&self.topic), timeout)?;
        let partitions: Vec<i32> =
            metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
        let mut tpl = TopicPartitionList::new();
        let mut marks = std::collections::HashMap::new();
        for &p in &partitions {
            tpl.add_partition(&self.topic, p);
            marks.insert(p, self.plain.fetch_watermarks(&self.topic, p, timeout)?);
        }
        let mut worst = 0;
        for group in &self.groups {
            let committed = group.committed_offsets(tpl.clone(), timeout)?;
            for (&p, &(low, high)) in &marks {
                let at = match committed.find_partition(&self.topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(n)) => n.max(low),
                    _ => low,
                };
                worst = worst.max(high - at);
            }
        }
        Ok(worst)
    }
}

/// Holds the producer (`pause` = true) while the slowest group is `budget` records behind, and lets it go
/// once that is down to half; checks every 100 ms until `stop`. Runs on a blocking thread.
fn pace(
    kafka: KafkaConfig,
    budget: i64,
    pause: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
) -> Result<()> {
    let lag = Lag::new(&kafka).context("creating the pacing clients")?;
    while !stop.is_cancelled() {
        std::thread::sleep(Duration::from_millis(100));
        match lag.worst() {
            Ok(worst) => {
                let paused = *pause.borrow();
                let next = if paused { worst > budget / 2 } else { worst >= budget };
                if next != paused {
                    info!(behind = worst, budget, paused = next, "pacing the producer on the slowest consumer group");
                }
                pause.send_replace(next);
            }
            Err(e) => warn!(error = %e, "pacing: cannot read the consumer groups' progress"),
        }
    }
    Ok(())
}

/// Options of `lambda demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Events from this `.csv`/`.jsonl` file instead of generated ones.
    pub input: Option<PathBuf>,
    /// Number of generated events.
    pub events: usize,
    /// Production rate, events/s.
    pub rate: f64,
    /// Share of events produced twice, percent.
    pub duplicates_pct: f64,
    /// Working directory (SQLite store, archive); cleared at start if a previous demo made it.
    pub data_dir: PathBuf,
    /// Listen address of the HTTP API (default: `serve.listen`).
    pub listen: Option<SocketAddr>,
    /// Batch schedule.
    pub batch_cron: String,
    /// Number of partitions of the demo topic.
    pub partitions: i32,
    /// View store URL (it must hold no views yet); `None`: a SQLite file under `data_dir`.
    pub store: Option<String>,
    /// Event times are the production time ([`produce::LiveTime`]) instead of the input's own.
    pub live: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            input: None,
            events: 20_000,
            rate: 200.0,
            duplicates_pct: 2.0,
            data_dir: PathBuf::from("lambda-data/demo"),
            listen: None,
            batch_cron: "*/30 * * * * *".into(),
            partitions: 3,
            store: None,
            live: false,
        }
    }
}

fn prepare_data_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)?.next().is_none();
        if !empty && !dir.join(MARKER).exists() {
            bail!(
                "{} is not empty and was not made by `lambda demo`; pass --data-dir with an empty or new directory",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), b"made by lambda demo; cleared by the next demo run\n")?;
    Ok(())
}

/// Runs the demo until `shutdown` (Ctrl-C) or until a layer fails.
#[allow(clippy::print_stdout)] // the demo talks to the person who started it
pub async fn run(mut config: Config, options: DemoOptions, shutdown: CancellationToken) -> Result<()> {
    prepare_data_dir(&options.data_dir)?;
    config.store.url = match &options.store {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", options.data_dir.join("views.db").display()),
    };
    config.archive.root = options.data_dir.join("archive");
    if let Some(listen) = options.listen {
        config.serve.listen = listen;
    }

    let cluster = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    cluster.create_topic(&config.kafka.topic, options.partitions, 1).context("creating the demo topic")?;
    config.kafka.brokers = cluster.bootstrap_servers();
    info!(brokers = %config.kafka.brokers, topic = %config.kafka.topic, partitions = options.partitions, "mock Kafka cluster up");

    let store = common::store::open_config(&config.store).await?;
    if store.current_manifest().await?.is_some() || !store.seals(&config.kafka.topic).await?.is_empty() {
        bail!(
            "the demo needs an empty view store, and {} holds views of an earlier run: drop and recreate that \
             database, or leave out --store",
            common::store::redact(&config.store.url)
        );
    }
    let messages: Vec<Outgoing> = match &options.input {
        Some(path) => produce::read_file(path, &config)?,
        None => crate::generate::default_events(options.events, 42)
            .into_iter()
            .map(|e| produce::outgoing_from_object(e, &config))
            .collect(),
    };
    let (messages, copies) = produce::with_duplicates(
        messages,
        &ProduceOptions { duplicates_pct: options.duplicates_pct, ..Default::default() },
    );
    let total_messages = messages.len();
    let pacing = Pacing::for_messages(&messages);
    config.speed.segment_max_records = config.speed.segment_max_records.min(pacing.commit_every);
    config.archive.max_file_records = config.archive.max_file_records.min(pacing.commit_every as usize);
    info!(
        budget = pacing.budget,
        segment_max_records = config.speed.segment_max_records,
        max_file_records = config.archive.max_file_records,
        "pacing the producer to the mock cluster's 5 MB per partition"
    );

    let stop = shutdown.child_token();
    let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();
    {
        let (c, s, t) = (config.clone(), store.clone(), stop.clone());
        tasks.spawn(async move { ("speed layer", speed_layer::run(c, s, t).await.map_err(Into::into)) });
        let (c, t) = (config.clone(), stop.clone());
        tasks.spawn(async move { ("archiver", batch_layer::archive::archiver::run(c, t).await.map_err(Into::into)) });
        let (c, s, t, cron) = (config.clone(), store.clone(), stop.clone(), options.batch_cron.clone());
        tasks.spawn(
            async move { ("batch schedule", batch_layer::schedule::run(c, s, &cron, t).await.map_err(Into::into)) },
        );
        let (c, s, t) = (config.clone(), store.clone(), stop.clone());
        tasks.spawn(async move { ("http api", serving_layer::run(c, s, t).await.map_err(Into::into)) });
        let (pause_tx, pause_rx) = tokio::sync::watch::channel(false);
        let (k, t, budget) = (config.kafka.clone(), stop.clone(), pacing.budget);
        tasks.spawn(async move {
            let paced = tokio::task::spawn_blocking(move || pace(k, budget, pause_tx, t)).await;
            ("pacer", paced.map_err(anyhow::Error::from).and_then(|r| r))
        });
        let (k, t, rate) = (config.kafka.clone(), stop.clone(), options.rate);
        let live = options.live.then(|| produce::LiveTime::new(&config));
        let total = messages.len();
        tasks.spawn(async move {
            let sent = produce::send_paced(&k, &messages, Some(rate), &t, Some(pause_rx), live).await;
            if let Ok(n) = &sent {
                info!(sent = n, of = total, "producer finished");
            }
            ("producer", sent.map(|_| ()))
        });
    }

    let base = format!("http://{}", config.serve.listen);
    println!(
        "lambda demo is running: {total_messages} messages ({copies} of them repeats) at up to {} events/s into topic `{}` ({} partitions)",
        options.rate,
        config.kafka.topic,
        options.partitions
    );
    println!("data: {}   batch: `{}`   Ctrl-C stops", options.data_dir.display(), options.batch_cron);
    println!();
    println!("  curl -s {base}/v1/views");
    println!("  curl -s '{base}/v1/views/by_type?granularity=day&from=2019-11-01T00:00:00Z&to=2019-12-01T00:00:00Z'");
    println!("  curl -s '{base}/v1/views/by_brand?granularity=day&event_type=purchase&group_by=brand'");
    println!(
        "  curl -s '{base}/v1/views/by_category?granularity=hour&from=2019-11-01T00:00:00Z&to=2019-11-02T00:00:00Z'"
    );
    println!("  curl -s {base}/v1/manifest");
    println!("  curl -s {base}/healthz");
    println!("  curl -s {base}/metrics");
    println!();

    let mut failure = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok((name, Ok(())))) => info!(task = name, "finished"),
                Some(Ok((name, Err(e)))) => {
                    failure = Some(anyhow::anyhow!("{name} failed: {e:#}"));
                    break;
                }
                Some(Err(e)) => {
                    failure = Some(anyhow::anyhow!("a demo task panicked: {e}"));
                    break;
                }
            }
        }
    }
    stop.cancel();
    let drained = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(joined) = tasks.join_next().await {
            if let Ok((name, Err(e))) = joined {
                warn!(task = name, error = %e, "stopped with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("some tasks did not stop within 15 s; aborting them");
        tasks.abort_all();
    }
    drop(cluster);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
