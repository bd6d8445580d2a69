//! `lambda demo`: the whole system in one process on the embedded defaults (DESIGN.md §9) — librdkafka's
//! in-process mock cluster reached over TCP on localhost by the real clients, the SQLite store, a local
//! archive, the batch job on a short cron schedule and the HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::Config;
use rdkafka::mocking::MockCluster;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::produce::{self, Outgoing, ProduceOptions};

/// File that marks a directory as the demo's own, so a rerun may clear it.
const MARKER: &str = ".lambda-demo";

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
    config.store.url = format!("sqlite://{}", options.data_dir.join("views.db").display());
    config.archive.root = options.data_dir.join("archive");
    if let Some(listen) = options.listen {
        config.serve.listen = listen;
    }

    let cluster = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    cluster.create_topic(&config.kafka.topic, options.partitions, 1).context("creating the demo topic")?;
    config.kafka.brokers = cluster.bootstrap_servers();
    info!(brokers = %config.kafka.brokers, topic = %config.kafka.topic, partitions = options.partitions, "mock Kafka cluster up");

    let store = common::store::open(&config.store.url).await?;
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
        let (k, t, rate) = (config.kafka.clone(), stop.clone(), options.rate);
        let total = messages.len();
        tasks.spawn(async move {
            let sent = produce::send(&k, &messages, Some(rate), &t).await;
            if let Ok(n) = &sent {
                info!(sent = n, of = total, "producer finished");
            }
            ("producer", sent.map(|_| ()))
        });
    }

    let base = format!("http://{}", config.serve.listen);
    println!(
        "lambda demo is running: {} events ({copies} duplicates) at {} events/s into topic `{}` ({} partitions)",
        options.events.max(1),
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
