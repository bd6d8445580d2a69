//! Test harness: the real rdkafka clients against librdkafka's in-process mock cluster, a real SQLite store,
//! real Parquet files in a temporary archive, the HTTP API on 127.0.0.1:0. Layers run as tasks that a test
//! can abort at any await point (no flush, no seal, no commit on the way down) and start again.
#![allow(dead_code)]

pub mod broker;
pub mod process;
mod tools;
pub mod truth;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::store::{Manifest, ViewStore};
use common::Config;
use lambda::produce::Outgoing;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use tools::{external_tool, tool_candidates};
use truth::{Expected, GRANULARITIES, VIEWS};

/// Settings that make several segments and archive files out of the 10k-row sample, on different boundaries.
pub const TEST_CONFIG: &str = r#"
[kafka]
topic = "events"
[kafka.consumer]
# an aborted consumer never leaves its group: evict it fast so restarts rejoin in seconds
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
[speed]
flush_interval = "100ms"
segment_max_records = 500
segment_max_age = "30s"
segment_max_idle = "1s"
[archive]
max_file_records = 700
max_file_age = "400ms"
[serve]
listen = "127.0.0.1:0"
# the tests assert answers right after a batch run; an answer cache would serve the previous ones
cache_ttl = "0s"
"#;

pub struct Harness {
    /// The in-process mock cluster, or `None` on a broker of the test's own ([`Harness::start_on_brokers`]).
    pub cluster: Option<MockCluster<'static, DefaultProducerContext>>,
    pub config: Config,
    pub store: Arc<dyn ViewStore>,
    pub dir: tempfile::TempDir,
    pub base_url: String,
    pub http: reqwest::Client,
    stop_all: CancellationToken,
    speed: Option<JoinHandle<()>>,
    archiver: Option<JoinHandle<()>>,
    pub partitions: i32,
}

impl Harness {
    /// A mock cluster with a `partitions`-partition topic, a store and archive in a temp dir, the HTTP API.
    pub async fn start(partitions: i32) -> Harness {
        Self::start_with(partitions, "").await
    }

    /// [`Harness::start`] with `overrides` (TOML) applied over [`TEST_CONFIG`].
    pub async fn start_with(partitions: i32, overrides: &str) -> Harness {
        Self::start_on(partitions, overrides, None).await
    }

    /// A harness on the PostgreSQL test server (a scratch database for `test`), or `None` when no server
    /// is configured (`common::testing`; the test prints SKIPPED and passes).
    pub async fn start_on_postgres(test: &str, partitions: i32, overrides: &str) -> Option<Harness> {
        let url = common::testing::scratch_postgres(test).await?;
        Some(Self::start_on(partitions, overrides, Some(url)).await)
    }

    /// [`Harness::start_with`] on a scratch keyspace of the ScyllaDB/Cassandra cluster named by
    /// `SCYLLA_NODES`; `None` (after one `SKIPPED` line) without it.
    pub async fn start_on_scylla(test: &str, partitions: i32, overrides: &str) -> Option<Harness> {
        let url = common::testing::scratch_scylla(test)?;
        Some(Self::start_on(partitions, overrides, Some(url)).await)
    }

    /// [`Harness::start_with`] on the store at `store_url` (default: SQLite in the temp dir).
    pub async fn start_on(partitions: i32, overrides: &str, store_url: Option<String>) -> Harness {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("events", partitions, 1).unwrap();
        let brokers = cluster.bootstrap_servers();
        let mut h = Self::start_on_brokers(&brokers, partitions, overrides, store_url).await;
        h.cluster = Some(cluster);
        h
    }

    /// [`Harness::start_on`] against the broker at `brokers`, whose `events` topic has `partitions`
    /// partitions already.
    pub async fn start_on_brokers(
        brokers: &str,
        partitions: i32,
        overrides: &str,
        store_url: Option<String>,
    ) -> Harness {
        let filter = std::env::var("TEST_LOG")
            .unwrap_or_else(|_| "warn,librdkafka=error,speed_layer=info,batch_layer=info".into());
        common::telemetry::init_tracing(&filter);
        let _ = common::telemetry::prometheus();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_toml_str(&merge_toml(TEST_CONFIG, overrides)).unwrap();
        config.kafka.brokers = brokers.to_owned();
        config.store.url = store_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("views.db").display()));
        config.archive.root = dir.path().join("archive");
        let store = common::store::open(&config.store.url).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let stop_all = CancellationToken::new();
        tokio::spawn(serving_layer::serve(listener, config.clone(), store.clone(), stop_all.clone()));
        Harness {
            cluster: None,
            config,
            store,
            dir,
            base_url,
            http: reqwest::Client::new(),
            stop_all,
            speed: None,
            archiver: None,
            partitions,
        }
    }

    pub fn start_speed(&mut self) {
        assert!(self.speed.is_none());
        self.speed = Some(self.spawn_speed());
    }

    /// [`Harness::start_speed`] with `config` instead of the harness's.
    pub fn start_speed_with(&mut self, config: Config) {
        assert!(self.speed.is_none());
        self.speed = Some(self.spawn_speed_with(config));
    }

    /// This harness's config (brokers, store, archive) with the TOML `overrides` applied on top.
    pub fn config_with(&self, overrides: &str) -> Config {
        let mut config =
            Config::from_toml_str(&merge_toml(&toml::to_string(&self.config).unwrap(), overrides)).unwrap();
        config.archive.root = self.config.archive.root.clone();
        config
    }

    /// Writes this harness's config with `overrides` to a file for `lambda --config`, and returns its path.
    pub fn config_file(&self, name: &str, overrides: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, toml::to_string(&self.config_with(overrides)).unwrap()).unwrap();
        path
    }

    /// Sends raw payloads without keys, in order.
    pub async fn produce_payloads(&self, payloads: &[String]) {
        let messages: Vec<Outgoing> =
            payloads.iter().map(|p| Outgoing { key: None, payload: p.as_bytes().to_vec() }).collect();
        self.produce(&messages, None).await;
    }

    pub fn start_archiver(&mut self) {
        assert!(self.archiver.is_none());
        self.archiver = Some(self.spawn_archiver());
    }

    /// Another speed-layer member of the same consumer group; abort the handle to crash it.
    pub fn spawn_speed(&self) -> JoinHandle<()> {
        self.spawn_speed_with(self.config.clone())
    }

    /// A speed-layer member running with `config` (e.g. [`Harness::config_with`] for other segment limits).
    pub fn spawn_speed_with(&self, config: Config) -> JoinHandle<()> {
        let (store, stop) = (self.store.clone(), self.stop_all.clone());
        tokio::spawn(async move {
            if let Err(e) = speed_layer::run(config, store, stop).await {
                panic!("speed layer failed: {e}");
            }
        })
    }

    /// Another archiver member of the same consumer group; abort the handle to crash it.
    pub fn spawn_archiver(&self) -> JoinHandle<()> {
        let (config, stop) = (self.config.clone(), self.stop_all.clone());
        tokio::spawn(async move {
            if let Err(e) = batch_layer::archive::archiver::run(config, stop).await {
                panic!("archiver failed: {e}");
            }
        })
    }

    /// Aborts the speed layer wherever it is: its in-memory segment state is lost, nothing is flushed.
    pub async fn kill_speed(&mut self) {
        if let Some(h) = self.speed.take() {
            h.abort();
            let _ = h.await;
        }
    }

    /// Aborts the archiver wherever it is: buffered records are lost, nothing is committed.
    pub async fn kill_archiver(&mut self) {
        if let Some(h) = self.archiver.take() {
            h.abort();
            let _ = h.await;
        }
    }

    /// Every speed row of `by_type` by day (one per segment and cell).
    pub async fn all_speed_rows(&self) -> Vec<common::store::SpeedRow> {
        let q = common::store::RowQuery::all("by_type", common::view::Granularity::Day);
        self.store.speed_rows(&q).await.unwrap()
    }

    /// Progress of the speed layer: the sum over partitions of the largest `upto_offset` among its rows.
    pub async fn speed_progress(&self) -> i64 {
        let mut best: HashMap<i32, i64> = HashMap::new();
        for r in self.all_speed_rows().await {
            let e = best.entry(r.partition).or_default();
            *e = (*e).max(r.upto_offset);
        }
        best.values().sum()
    }

    /// Polls every 50 ms until [`Self::speed_progress`] reaches `at_least`; panics after `patience` with
    /// `why()` (what the test was waiting for, and any log worth showing).
    pub async fn wait_for_speed_progress(&self, at_least: i64, patience: Duration, why: impl Fn() -> String) {
        let deadline = Instant::now() + patience;
        while self.speed_progress().await < at_least {
            assert!(Instant::now() < deadline, "{}", why());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Progress of the archiver: the sum over partitions of the largest archived `next` offset.
    pub fn archive_progress(&self) -> i64 {
        let files = batch_layer::archive::list(&self.config.archive.root, "events").unwrap();
        files.values().map(|f| f.iter().map(|f| f.next).max().unwrap_or(0)).sum()
    }

    /// Waits until the speed layer (`speed`) or the archiver has progressed past `since`, so a kill that
    /// follows hits a consumer that owns partitions and holds work in memory.
    pub async fn wait_progress(&self, speed: bool, since: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = if speed { self.speed_progress().await } else { self.archive_progress() };
            if now > since {
                return;
            }
            assert!(Instant::now() < deadline, "no progress past {since} within {timeout:?} (speed: {speed})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn speed_running(&self) -> bool {
        self.speed.as_ref().is_some_and(|h| !h.is_finished())
    }

    pub async fn produce(&self, messages: &[Outgoing], rate: Option<f64>) {
        let sent = lambda::produce::send(&self.config.kafka, messages, rate, &CancellationToken::new()).await.unwrap();
        assert_eq!(sent as usize, messages.len());
    }

    /// Sends `messages` in the background at `rate` events/s; the handle yields the number sent.
    pub fn spawn_producer(&self, messages: &[Outgoing], rate: f64) -> JoinHandle<u64> {
        let (kafka, messages) = (self.config.kafka.clone(), messages.to_vec());
        tokio::spawn(async move {
            lambda::produce::send(&kafka, &messages, Some(rate), &CancellationToken::new()).await.unwrap()
        })
    }

    /// High watermark of every partition.
    pub async fn log_end(&self) -> BTreeMap<i32, i64> {
        let brokers = self.config.kafka.brokers.clone();
        let partitions = self.partitions;
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
            (0..partitions).map(|p| (p, c.fetch_watermarks("events", p, Duration::from_secs(10)).unwrap().1)).collect()
        })
        .await
        .unwrap()
    }

    /// Waits until every partition is sealed up to its log end (the speed layer alone).
    pub async fn wait_sealed(&self, timeout: Duration) {
        let ends = self.log_end().await;
        let deadline = Instant::now() + timeout;
        loop {
            let mut sealed: HashMap<i32, i64> = HashMap::new();
            for s in self.store.seals("events").await.unwrap() {
                let e = sealed.entry(s.partition).or_default();
                *e = (*e).max(s.end);
            }
            if ends.iter().all(|(p, end)| *end == 0 || sealed.get(p) == Some(end)) {
                return;
            }
            assert!(Instant::now() < deadline, "not sealed within {timeout:?}: log end {ends:?}, sealed {sealed:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every partition is sealed up to its log end and archived up to it.
    pub async fn wait_sealed_and_archived(&self, timeout: Duration) {
        let ends = self.log_end().await;
        let deadline = Instant::now() + timeout;
        loop {
            let seals = self.store.seals("events").await.unwrap();
            let files = batch_layer::archive::list(&self.config.archive.root, "events").unwrap();
            let mut sealed: HashMap<i32, i64> = HashMap::new();
            for s in &seals {
                let e = sealed.entry(s.partition).or_default();
                *e = (*e).max(s.end);
            }
            let done = ends.iter().all(|(p, end)| {
                let archived = files.get(p).and_then(|f| f.iter().map(|f| f.next).max()).unwrap_or(0);
                *end == 0 || (sealed.get(p).copied().unwrap_or(0) == *end && archived == *end)
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not sealed and archived within {timeout:?}: log end {ends:?}, sealed {sealed:?}, archive {:?}",
                files.iter().map(|(p, f)| (p, f.iter().map(|f| f.next).max())).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn batch(&self) -> Manifest {
        batch_layer::job::run_once(&self.config, &self.store, &Default::default())
            .await
            .unwrap()
            .expect("lease is free")
    }

    /// Sum of the Prometheus counter `name` over all its label sets in `/metrics` (0 when absent). The
    /// recorder is global to the test binary: tests running beside this one add to it too.
    pub async fn counter(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }

    /// Commits `offset` for `partition` in the speed layer's consumer group as a member of it (the mock
    /// cluster refuses commits from outside a group), then leaves the group. The speed layer must not be
    /// running; up to 30 s for the group to evict the killed member and assign the partition.
    pub async fn commit_speed_offset(&self, partition: i32, offset: i64) {
        assert!(self.speed.is_none());
        let kafka = self.config.kafka.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::CommitMode;
            use rdkafka::{Offset, TopicPartitionList};
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &kafka.brokers)
                .set("group.id", &kafka.speed_group)
                .set("enable.auto.commit", "false")
                .set("session.timeout.ms", "3000")
                .set("heartbeat.interval.ms", "300")
                .create()
                .unwrap();
            c.subscribe(&[&kafka.topic]).unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.assignment().unwrap().count() == 0 {
                assert!(Instant::now() < deadline, "the speed group never assigned the partition");
                let _ = c.poll(Duration::from_millis(100)); // joins the group; the records are not used
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&kafka.topic, partition, Offset::Offset(offset)).unwrap();
            c.commit(&tpl, CommitMode::Sync).unwrap();
            c.unsubscribe();
        })
        .await
        .unwrap()
    }

    /// The log start offset (low watermark) of `partition` of the harness's topic, read by a plain client.
    pub async fn low_watermark(&self, partition: i32) -> i64 {
        let (brokers, topic) = (self.config.kafka.brokers.clone(), self.config.kafka.topic.clone());
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
            c.fetch_watermarks(&topic, partition, Duration::from_secs(10)).unwrap().0
        })
        .await
        .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.base_url)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Every view x granularity over November 2019, as the API answers it, plus the `source` of each row.
    pub async fn answers(&self) -> (Expected, BTreeMap<String, usize>, Option<i64>) {
        answers(&self.http, &self.base_url).await
    }

    /// Polls the API until it equals `expected` (the speed layer is eventually complete), then returns the
    /// sources; panics with the differences after `timeout`.
    pub async fn wait_for_answers(&self, expected: &Expected, timeout: Duration) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let (actual, sources, _) = self.answers().await;
            if &actual == expected {
                return sources;
            }
            if Instant::now() > deadline {
                panic!(
                    "API answers differ from the ground truth after {timeout:?}: {}",
                    truth::diff(expected, &actual)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn shutdown(mut self) {
        self.stop_all.cancel();
        for h in [self.speed.take(), self.archiver.take()].into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
}

/// Every view x granularity over November 2019 as the API at `base_url` answers it, plus the `source` of
/// each row and the manifest generation the answers used.
pub async fn answers(http: &reqwest::Client, base_url: &str) -> (Expected, BTreeMap<String, usize>, Option<i64>) {
    try_answers(http, base_url).await.unwrap_or_else(|e| panic!("{e}"))
}

/// [`answers`], or `Err` when the API cannot be reached (a server killed or restarting) or answers 503
/// (its store unreachable for a moment). Any other answer must be a 200 with well-formed, sorted rows
/// (panics otherwise).
pub async fn try_answers(
    http: &reqwest::Client,
    base_url: &str,
) -> Result<(Expected, BTreeMap<String, usize>, Option<i64>), String> {
    let mut out = Expected::new();
    let mut sources = BTreeMap::new();
    let mut generation = None;
    for (view, dims) in VIEWS {
        for (g, _) in GRANULARITIES {
            let url =
                format!("{base_url}/v1/views/{view}?granularity={g}&from=2019-11-01T00:00:00Z&to=2019-12-01T00:00:00Z");
            let r = http.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let status = r.status().as_u16();
            let body = r.text().await.map_err(|e| format!("GET {url}: {e}"))?;
            if status == 503 {
                // the store is unreachable for a moment (a retryable error): the server says so
                return Err(format!("GET {url}: 503 {body}"));
            }
            assert_eq!(status, 200, "{url}: {body}");
            let answer: Answer = serde_json::from_str(&body).unwrap();
            assert_eq!(answer.view, *view);
            assert_eq!(answer.granularity, *g);
            generation = answer.manifest.as_ref().map(|m| m.generation);
            let mut previous: Option<(i64, Vec<Option<String>>)> = None;
            for row in answer.rows {
                let bucket = chrono::DateTime::parse_from_rfc3339(&row.bucket_start).unwrap().timestamp();
                let values: Vec<Option<String>> = dims.iter().map(|d| row.dims.get(*d).cloned().flatten()).collect();
                assert_eq!(row.dims.len(), dims.len());
                let key = (bucket, values.clone());
                if let Some(p) = &previous {
                    assert!(p < &key, "rows sorted by bucket then dims: {p:?} before {key:?}");
                }
                previous = Some(key);
                let count: i64 = row.metrics["count"].get().parse().unwrap();
                let sum = truth::decimal_micros(row.metrics["sum_price"].get());
                assert!(out.insert((view.to_string(), g.to_string(), bucket, values), (count, sum)).is_none());
                *sources.entry(row.source).or_default() += 1;
            }
        }
    }
    Ok((out, sources, generation))
}

#[derive(Debug, Deserialize)]
pub struct Answer {
    pub view: String,
    pub granularity: String,
    pub manifest: Option<ManifestRef>,
    pub rows: Vec<AnswerRow>,
}

#[derive(Debug, Deserialize)]
pub struct ManifestRef {
    pub generation: i64,
    pub cutoffs: BTreeMap<String, i64>,
    pub finished_at: String,
}

#[derive(Debug, Deserialize)]
pub struct AnswerRow {
    pub bucket_start: String,
    pub dims: BTreeMap<String, Option<String>>,
    pub metrics: BTreeMap<String, Box<RawValue>>,
    pub source: String,
}

/// `base` with the keys of `overrides` replaced (both small TOML documents); tables merge one level deep,
/// anything else (e.g. the `views` array) is replaced whole.
pub fn merge_toml(base: &str, overrides: &str) -> String {
    let mut base: toml::Table = base.parse().unwrap();
    let overrides: toml::Table = overrides.parse().unwrap();
    for (section, values) in overrides {
        match (base.get_mut(&section), values) {
            (Some(toml::Value::Table(table)), toml::Value::Table(values)) => {
                for (k, v) in values {
                    table.insert(k, v);
                }
            }
            (_, values) => {
                base.insert(section, values);
            }
        }
    }
    toml::to_string(&base).unwrap()
}

/// A long flush interval leaves a wide window of applied-but-unflushed records for a crash to hit.
pub const CRASH_CONFIG: &str = "[speed]\nflush_interval = \"900ms\"\n";

/// The sample's rows as messages, the way `lambda produce` sends a CSV file.
pub fn sample_messages(config: &Config) -> Vec<Outgoing> {
    lambda::produce::read_file(&truth::sample_path(), config).unwrap()
}
