//! Speed-layer benchmark (`cargo bench --bench speed -- [--events N] [--runs R] [--quick] [--core-only] [--json FILE]
//! [--postgres ADMIN_URL]`; with `--postgres` the end-to-end and freshness phases write to a scratch
//! PostgreSQL database instead of SQLite).
//! Under `cargo test` it runs in `--quick` mode as a smoke test: it checks results, it asserts no timings.
//!
//! 1. **Core, in-process** (one thread), twice: *live* (event times advance at 400k events/s, as in a live
//!    stream at the target rate) and *replay* (the same events over a month of event time, as when
//!    re-consuming history): the speed layer's per-record work on generated JSON payloads —
//!    decode, dedup within the segment, aggregate every view x granularity — with a flush of the dirty rows
//!    to the SQLite store every `speed.flush_interval` and a seal every `speed.segment_max_records`, as the
//!    consumer does. Reported as events/s of wall time and events per CPU-second (process user + system
//!    time, the SQLite writer thread included). Baseline, same run: `serde_json` parsing the same payloads
//!    into `IgnoredAny` (no allocation: the floor of any JSON decoder).
//! 2. **End to end**: the payloads produced to librdkafka's mock cluster (3 partitions), then the real speed
//!    layer consumes them; rate from the first speed row to the last record visible in the store. The mock
//!    broker keeps only about 5 MB per partition (older records are trimmed: with 300,000 events the
//!    consumer found the log starting near offset 60,000, and with 50,000 the busiest partition lost its first
//!    3,650), so the backlog is 30,000 events (about 7.6 MB, under 5 MB in every partition).
//! 3. **Freshness**: with a steady background load, probe events (a unique brand each) stamped when handed
//!    to the producer, polled from the real HTTP API every 10 ms; visible - produced, p50/p99/max.
//!
//! Every run checks its result against a count computed independently from the payloads, so a fast wrong
//! answer fails the benchmark instead of reporting a figure.

#![allow(clippy::print_stdout)]

// The allocator of the `lambda` binary, so the figures are the shipped program's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use common::config::Config;
use common::schema::Decoder;
use common::store::{RowQuery, Seal, ViewStore};
use common::view::{Granularity, ViewSet};
use lambda::generate::{GenerateOptions, Generator, Model};
use lambda::produce::{self, Outgoing};
use rdkafka::mocking::MockCluster;
use serde_json::json;
use speed_layer::segment::{Limits, Segment};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Args {
    events: u64,
    runs: usize,
    e2e_events: u64,
    probes: usize,
    load_rate: f64,
    json: Option<PathBuf>,
    /// Only the live core runs (for profiling: `perf record ... -- --core-only`).
    core_only: bool,
    /// End to end and freshness on a PostgreSQL store: a scratch database on this server (admin URL).
    postgres: Option<String>,
}

impl Args {
    /// Seconds-long smoke run: what `cargo test` and `--quick` use.
    fn quick() -> Args {
        Args {
            events: 20_000,
            runs: 1,
            e2e_events: 5_000,
            probes: 10,
            load_rate: 200.0,
            json: None,
            core_only: false,
            postgres: None,
        }
    }
}

fn args() -> Result<Args> {
    let mut a = Args {
        events: 1_000_000,
        runs: 5,
        e2e_events: 30_000,
        probes: 200,
        load_rate: 2_000.0,
        json: None,
        core_only: false,
        postgres: None,
    };
    // `cargo bench` passes --bench; `cargo test` (which runs this target as a smoke test) does not.
    if !std::env::args().any(|a| a == "--bench") {
        a = Args::quick();
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--quick" => a = Args::quick(),
            "--events" => a.events = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--e2e-events" => a.e2e_events = value()?.parse()?,
            "--probes" => a.probes = value()?.parse()?,
            "--load-rate" => a.load_rate = value()?.parse()?,
            "--json" => a.json = Some(value()?.into()),
            "--core-only" => a.core_only = true,
            "--postgres" => a.postgres = Some(value()?),
            other => bail!("unknown argument `{other}`; see the header of benches/speed.rs"),
        }
    }
    Ok(a)
}

fn model() -> Result<Model> {
    let sample =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../shared/data/ecommerce/2019-Nov-sample.csv");
    if sample.exists() {
        Model::fit(&sample)
    } else {
        println!("(sample not found at {}; using the built-in model)", sample.display());
        Ok(Model::builtin())
    }
}

/// Generated payloads. `live = Some(rate)`: event times advance at `rate` events per second from the
/// model's first second, as in a live stream at that rate (a flush touches the few current buckets);
/// `None`: the model's month of event time (a replay of history: a flush touches hundreds of buckets).
fn payloads(model: &Model, n: u64, duplicates: f64, live: Option<f64>, config: &Config) -> Result<Vec<Outgoing>> {
    let options = GenerateOptions { events: n, duplicates, seed: 7, ..GenerateOptions::default() };
    Ok(Generator::new(model, options)?
        .enumerate()
        .map(|(i, mut g)| {
            if let Some(rate) = live {
                g.event_time = model.span.0 + (i as f64 / rate) as i64;
            }
            produce::outgoing_from_object(g.to_json(), config)
        })
        .collect())
}

/// Figures of one series of core runs.
#[derive(Debug, Default)]
struct Series {
    wall: Vec<f64>,
    per_cpu: Vec<f64>,
    base: Vec<f64>,
    ratio: Vec<f64>,
}

fn core_series(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    name: &str,
    messages: &[Outgoing],
    runs: usize,
) -> Result<Series> {
    let n = messages.len() as f64;
    let mut s = Series::default();
    for r in 0..runs {
        let b = n / baseline_scan(messages)?;
        let (w, cpu, rows) = rt.block_on(core_run(config, messages))?;
        let (eps, epc) = (n / w, n / cpu);
        println!(
            "{name} run {}: core {eps:>9.0} events/s wall, {epc:>9.0} events/CPU-s, {rows} rows flushed; baseline {b:>9.0} events/s",
            r + 1
        );
        s.base.push(b);
        s.wall.push(eps);
        s.per_cpu.push(epc);
        s.ratio.push(eps / b);
    }
    Ok(s)
}

/// CPU seconds (user + system) of this process so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // fields 14 and 15 of stat (utime, stime), counted from field 3 after the command name
    (ticks(11) + ticks(12)) / 100.0
}

fn stats(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Independent truth: per segment of `segment` records, the number of distinct payloads (the content
/// hash is a function of the payload, so distinct payloads = distinct dedup keys for generated events).
fn expected_count(messages: &[Outgoing], segment: usize) -> i64 {
    messages.chunks(segment).map(|c| c.iter().map(|m| &m.payload).collect::<HashSet<_>>().len() as i64).sum()
}

async fn total_count(store: &Arc<dyn ViewStore>) -> Result<i64> {
    let q = RowQuery::all("by_type", Granularity::Day);
    Ok(store.speed_rows(&q).await?.iter().map(|r| r.metrics[0]).sum::<i128>() as i64)
}

/// One in-process core run. Returns (wall seconds, cpu seconds, rows written).
async fn core_run(config: &Config, messages: &[Outgoing]) -> Result<(f64, f64, u64)> {
    let dir = tempfile::tempdir()?;
    let store = common::store::open(&format!("sqlite://{}", dir.path().join("views.db").display())).await?;
    let decoder = Decoder::new(config);
    let views = ViewSet::new(config);
    let limits = Limits { max_records: config.speed.segment_max_records, max_age: config.speed.segment_max_age };
    let flush = config.speed.flush_interval;
    let (cpu0, clock) = (cpu_seconds(), Instant::now());
    let mut segment = Segment::open(0, 0, None);
    let mut last_flush = Instant::now();
    let mut written = 0u64;
    for (offset, m) in messages.iter().enumerate() {
        let offset = offset as i64;
        segment.apply("events", offset, None, &m.payload, &decoder, &views);
        if segment.is_full(limits) {
            let end = segment.position;
            let rows = segment.take_dirty_rows(&views, end);
            written += rows.len() as u64;
            store.upsert_speed_rows("events", &rows).await?;
            store
                .record_seal("events", Seal { partition: 0, start: segment.start, end })
                .await?
                .context("seal refused")?;
            segment = Segment::open(0, end, None);
        } else if offset % 256 == 0 && last_flush.elapsed() >= flush {
            let rows = segment.take_dirty_rows(&views, segment.position);
            written += rows.len() as u64;
            store.upsert_speed_rows("events", &rows).await?;
            last_flush = Instant::now();
        }
    }
    let rows = segment.take_dirty_rows(&views, segment.position);
    written += rows.len() as u64;
    store.upsert_speed_rows("events", &rows).await?;
    let (wall, cpu) = (clock.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    let want = expected_count(messages, config.speed.segment_max_records as usize);
    let got = total_count(&store).await?;
    ensure!(got == want, "core run is wrong: stored count {got}, expected {want}");
    Ok((wall, cpu, written))
}

fn baseline_scan(messages: &[Outgoing]) -> Result<f64> {
    let clock = Instant::now();
    for m in messages {
        let _: serde::de::IgnoredAny = serde_json::from_slice(&m.payload)?;
    }
    Ok(clock.elapsed().as_secs_f64())
}

struct Cluster {
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    config: Config,
    _dir: tempfile::TempDir,
    store: Arc<dyn ViewStore>,
}

async fn cluster(partitions: i32, postgres: Option<&str>) -> Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let cluster = MockCluster::new(1)?;
    cluster.create_topic("events", partitions, 1)?;
    let mut config = Config::defaults();
    config.kafka.brokers = cluster.bootstrap_servers();
    config.store.url = match postgres {
        Some(admin) => common::store::create_scratch_postgres_database(admin, "bench_speed").await?,
        None => format!("sqlite://{}", dir.path().join("views.db").display()),
    };
    config.archive.root = dir.path().join("archive");
    let store = common::store::open(&config.store.url).await?;
    Ok(Cluster { _cluster: cluster, config, _dir: dir, store })
}

/// Produces everything, then times the speed layer from its first visible row to the last record.
async fn end_to_end(messages: &[Outgoing], postgres: Option<&str>) -> Result<(f64, f64)> {
    let c = cluster(3, postgres).await?;
    let stop = CancellationToken::new();
    produce::send(&c.config.kafka, messages, None, &stop).await?;
    let want = expected_count(messages, usize::MAX);
    let started = Instant::now();
    let speed = tokio::spawn(speed_layer::run(c.config.clone(), c.store.clone(), stop.clone()));
    let mut first = None;
    loop {
        let got = total_count(&c.store).await?;
        if got > 0 && first.is_none() {
            first = Some((Instant::now(), got));
        }
        if got >= want {
            ensure!(got == want, "end to end: stored count {got} exceeds {want}");
            break;
        }
        if speed.is_finished() {
            let outcome = speed.await;
            bail!("end to end: the speed layer stopped at {got} of {want}: {outcome:?}");
        }
        ensure!(started.elapsed() < Duration::from_secs(600), "end to end: only {got} of {want} after 600 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (t_first, n_first) = first.expect("seen");
    let rate = (want - n_first) as f64 / t_first.elapsed().as_secs_f64().max(1e-9);
    let join_seconds = t_first.duration_since(started).as_secs_f64();
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), speed).await;
    Ok((rate, join_seconds))
}

/// Probe freshness under a steady load: (visible - produced) in milliseconds, sorted.
async fn freshness(model: &Model, probes: usize, load_rate: f64, postgres: Option<&str>) -> Result<Vec<f64>> {
    let c = cluster(3, postgres).await?;
    let stop = CancellationToken::new();
    let speed = tokio::spawn(speed_layer::run(c.config.clone(), c.store.clone(), stop.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let api = tokio::spawn(serving_layer::serve(listener, c.config.clone(), c.store.clone(), stop.clone()));
    let load = payloads(model, (load_rate * (probes as f64 * 0.1 + 30.0)) as u64, 0.0, Some(load_rate), &c.config)?;
    let (kafka, load_stop) = (c.config.kafka.clone(), stop.clone());
    let background = tokio::spawn(async move { produce::send(&kafka, &load, Some(load_rate), &load_stop).await });

    let producer: rdkafka::producer::FutureProducer = common::kafka::producer_config(&c.config.kafka).create()?;
    let http = reqwest::Client::new();
    let url = format!(
        "http://{addr}/v1/views/by_brand?granularity=day&event_type=probe&group_by=brand&from=2000-01-01T00:00:00Z"
    );
    // wait until the consumer group is up: a first probe becomes visible
    let mut produced: BTreeMap<String, Instant> = BTreeMap::new();
    let mut visible: BTreeMap<String, Instant> = BTreeMap::new();
    let send = |i: usize| {
        let brand = format!("probe-{i:06}");
        let payload = json!({
            "event_time": Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            "event_type": "probe", "brand": brand, "price": 1.0, "user_id": i,
            "user_session": format!("probe-{i}"), "product_id": 1, "category_id": 1, "category_code": "",
        })
        .to_string();
        (brand, payload)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (warm_brand, warm) = send(999_999);
    producer
        .send(rdkafka::producer::FutureRecord::to("events").key("probe").payload(&warm), Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)?;
    loop {
        let body: serde_json::Value = http.get(&url).send().await?.json().await?;
        if body["rows"].as_array().is_some_and(|r| r.iter().any(|r| r["dims"]["brand"] == warm_brand.as_str())) {
            break;
        }
        ensure!(Instant::now() < deadline, "freshness: the speed layer did not come up within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut next_probe = Instant::now();
    let mut i = 0;
    while visible.len() < probes {
        if i < probes && Instant::now() >= next_probe {
            let (brand, payload) = send(i);
            produced.insert(brand, Instant::now());
            let record = rdkafka::producer::FutureRecord::to("events").key("probe").payload(&payload);
            // enqueue only; delivery is awaited by nobody, as a real producer would not block on it
            let _ = producer.send_result(record);
            i += 1;
            next_probe += Duration::from_millis(100);
        }
        let body: serde_json::Value = http.get(&url).send().await?.json().await?;
        let now = Instant::now();
        for row in body["rows"].as_array().into_iter().flatten() {
            if let Some(b) = row["dims"]["brand"].as_str() {
                if produced.contains_key(b) {
                    visible.entry(b.to_owned()).or_insert(now);
                }
            }
        }
        ensure!(
            Instant::now() < deadline + Duration::from_secs(probes as u64),
            "freshness: probes never became visible"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        let _ = background.await;
        let _ = speed.await;
        let _ = api.await;
    })
    .await;
    let mut lat: Vec<f64> =
        visible.iter().map(|(b, v)| v.duration_since(produced[b]).as_secs_f64() * 1_000.0).collect();
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn main() -> Result<()> {
    let a = args()?;
    common::telemetry::init_tracing("warn,librdkafka=error");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let config = Config::defaults();
    let model = model()?;
    println!("speed bench: {} events x {} runs (2% duplicates), defaults config", a.events, a.runs);
    let live = payloads(&model, a.events, 0.02, Some(400_000.0), &config)?;
    let bytes: usize = live.iter().map(|m| m.payload.len()).sum();
    println!("payloads: {:.1} MB, {:.0} bytes/event", bytes as f64 / 1e6, bytes as f64 / live.len() as f64);
    let live_series = core_series(&rt, &config, "live", &live, a.runs)?;
    drop(live);
    if a.core_only {
        return Ok(());
    }
    let replay = payloads(&model, a.events, 0.02, None, &config)?;
    let replay_series = core_series(&rt, &config, "replay", &replay, a.runs)?;
    drop(replay);
    let (e2e_rate, join) = rt
        .block_on(end_to_end(&payloads(&model, a.e2e_events, 0.0, Some(400_000.0), &config)?, a.postgres.as_deref()))?;
    println!("end to end: {e2e_rate:.0} events/s (consumer group join took {join:.1} s, excluded)");
    let lat = rt.block_on(freshness(&model, a.probes, a.load_rate, a.postgres.as_deref()))?;
    let (p50, p99, max) = (percentile(&lat, 0.5), percentile(&lat, 0.99), lat[lat.len() - 1]);
    println!(
        "freshness ({} probes, {} events/s load): p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
        lat.len(),
        a.load_rate
    );

    println!();
    println!("| figure | min | median | max |");
    println!("|---|---|---|---|");
    for (name, series) in [("live", &live_series), ("replay", &replay_series)] {
        let (w, c, b, r) = (stats(&series.wall), stats(&series.per_cpu), stats(&series.base), stats(&series.ratio));
        println!("| {name}: core events/s (wall, 1 thread + SQLite writer) | {:.0} | {:.0} | {:.0} |", w.0, w.1, w.2);
        println!("| {name}: core events per CPU-second | {:.0} | {:.0} | {:.0} |", c.0, c.1, c.2);
        println!("| {name}: baseline serde_json scan, events/s | {:.0} | {:.0} | {:.0} |", b.0, b.1, b.2);
        println!("| {name}: core / baseline (same run) | {:.3} | {:.3} | {:.3} |", r.0, r.1, r.2);
    }
    println!("| end to end via mock broker, events/s | | {e2e_rate:.0} | |");
    println!("| freshness ms (p50 / p99 / max) | | {p50:.0} / {p99:.0} / {max:.0} | |");
    if let Some(path) = a.json {
        let out = json!({
            "events": a.events, "runs": a.runs,
            "live": {"core_events_per_s": live_series.wall, "core_events_per_cpu_s": live_series.per_cpu,
                     "baseline_events_per_s": live_series.base, "ratio": live_series.ratio},
            "replay": {"core_events_per_s": replay_series.wall, "core_events_per_cpu_s": replay_series.per_cpu,
                       "baseline_events_per_s": replay_series.base, "ratio": replay_series.ratio},
            "e2e_events_per_s": e2e_rate,
            "freshness_ms": {"p50": p50, "p99": p99, "max": max, "probes": lat.len(), "load_rate": a.load_rate},
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&out)?)?;
    }
    Ok(())
}
