//! View-store benchmark (`cargo bench --bench store -- [--runs R] [--postgres ADMIN_URL] [--quick] [--json FILE]`):
//! the same workload on SQLite and on PostgreSQL (when `--postgres` or `LAMBDA_TEST_POSTGRES` names a
//! server; each run gets a scratch database), measured in one run.
//!
//! 1. **Speed-row upserts**: flushes as the speed layer makes them — a flush writes every cell a segment
//!    touched since the last one (rows per flush = distinct keys touched), each flush rewriting the same
//!    cells with a larger `upto_offset`, 1,000 minute buckets x 3 event types x 1 to 10 brands. Reported as
//!    rows written per second, for 500 and 5,000 rows per flush.
//! 2. **Range reads**: a day of minute buckets of a 3-dimension view (4,320 speed rows and 4,320 batch rows
//!    of one generation), read as the serving layer does on a cache miss (`speed_rows` + `batch_rows` of the
//!    day): latency p50 / p99 over the reads.
//!
//! Every phase checks what it reads back against what it wrote, so a fast wrong store fails the bench.
//! Under `cargo test` it runs in `--quick` mode (small sizes, SQLite only unless a server is configured).

#![allow(clippy::print_stdout)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::store::{BatchRow, RowQuery, SpeedRow, ViewKey, ViewStore};
use common::view::Granularity;
use serde_json::json;

#[derive(Debug)]
struct Args {
    runs: usize,
    flushes: usize,
    reads: usize,
    postgres: Option<String>,
    json: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let quick = Args { runs: 1, flushes: 3, reads: 20, postgres: None, json: None };
    let mut a = Args { runs: 3, flushes: 40, reads: 300, postgres: None, json: None };
    if !std::env::args().any(|a| a == "--bench") {
        a = quick;
    }
    a.postgres = std::env::var(common::testing::POSTGRES_ENV).ok().filter(|u| !u.is_empty());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--quick" => (a.runs, a.flushes, a.reads) = (1, 3, 20),
            "--runs" => a.runs = value()?.parse()?,
            "--postgres" => a.postgres = Some(value()?),
            "--json" => a.json = Some(value()?.into()),
            other => bail!("unknown argument `{other}`; see the header of benches/store.rs"),
        }
    }
    Ok(a)
}

const TYPES: [&str; 3] = ["view", "cart", "purchase"];

/// The cells of one flush: `rows` distinct keys, each with `upto_offset = upto`.
fn flush(rows: usize, upto: i64) -> Vec<SpeedRow> {
    (0..rows)
        .map(|i| {
            let (bucket, rest) = (i % 1_000, i / 1_000);
            SpeedRow {
                key: ViewKey {
                    view: "by_brand".into(),
                    granularity: Granularity::Minute,
                    bucket_start: 1_572_566_400 + 60 * bucket as i64,
                    dims: vec![Some(TYPES[rest % 3].into()), Some(format!("brand-{}", rest / 3))],
                },
                partition: 0,
                segment_start: 0,
                upto_offset: upto,
                metrics: vec![i128::from(upto), i128::from(upto) * 1_234_567],
            }
        })
        .collect()
}

/// A day of minute rows of a 3-dimension view.
fn day() -> (Vec<SpeedRow>, Vec<BatchRow>) {
    let mut speed = Vec::new();
    let mut batch = Vec::new();
    for minute in 0..1_440i64 {
        for (t, kind) in TYPES.iter().enumerate() {
            let key = ViewKey {
                view: "by_type".into(),
                granularity: Granularity::Minute,
                bucket_start: 1_572_566_400 + 60 * minute,
                dims: vec![Some((*kind).into()), Some("electronics.smartphone".into()), None],
            };
            let metrics = vec![i128::from(minute) + t as i128, 99_990_000];
            speed.push(SpeedRow {
                key: key.clone(),
                partition: (minute % 3) as i32,
                segment_start: 1_000,
                upto_offset: 2_000,
                metrics: metrics.clone(),
            });
            batch.push(BatchRow { key, metrics });
        }
    }
    (speed, batch)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Figures {
    upserts_500: f64,
    upserts_5000: f64,
    read_p50_ms: f64,
    read_p99_ms: f64,
}

async fn measure(store: Arc<dyn ViewStore>, a: &Args) -> Result<Figures> {
    let mut rates = Vec::new();
    for (n, rows_per_flush) in [500usize, 5_000].into_iter().enumerate() {
        let segment = (n as i64 + 1) * 1_000_000;
        let started = Instant::now();
        let mut written = 0;
        for f in 1..=a.flushes {
            let rows: Vec<SpeedRow> =
                flush(rows_per_flush, f as i64).into_iter().map(|r| SpeedRow { segment_start: segment, ..r }).collect();
            store.upsert_speed_rows("events", &rows).await?;
            written += rows.len();
        }
        rates.push(written as f64 / started.elapsed().as_secs_f64());
        let back = store.speed_rows(&RowQuery::all("by_brand", Granularity::Minute)).await?;
        let ours: Vec<&SpeedRow> = back.iter().filter(|r| r.segment_start == segment).collect();
        ensure!(ours.len() == rows_per_flush, "{} rows read back, {rows_per_flush} written", ours.len());
        ensure!(ours.iter().all(|r| r.upto_offset == a.flushes as i64), "the last flush must win");
    }
    let (speed, batch) = day();
    store.upsert_speed_rows("events", &speed).await?;
    let lease = store.acquire_lease("bench", "bench", Duration::from_secs(600)).await?.context("lease")?;
    let generation = store.allocate_generation(&lease).await?;
    store.write_batch_rows(&lease, generation, &batch).await?;
    let query = RowQuery {
        from: Some(1_572_566_400),
        to: Some(1_572_566_400 + 86_400),
        ..RowQuery::all("by_type", Granularity::Minute)
    };
    let mut latencies = Vec::with_capacity(a.reads);
    for _ in 0..a.reads {
        let started = Instant::now();
        let (s, b) = tokio::try_join!(store.speed_rows(&query), store.batch_rows(generation, &query))?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        ensure!(s.len() == speed.len() && b.len() == batch.len(), "a day read {} + {} rows", s.len(), b.len());
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Figures {
        upserts_500: rates[0],
        upserts_5000: rates[1],
        read_p50_ms: percentile(&latencies, 0.5),
        read_p99_ms: percentile(&latencies, 0.99),
    })
}

async fn run(a: Args) -> Result<()> {
    let mut results = Vec::new();
    println!(
        "store bench: {} flushes of 500 and of 5,000 rows; {} reads of a day of minutes (4,320 speed + 4,320 batch rows)",
        a.flushes, a.reads
    );
    println!(
        "{:<11} {:>3}  {:>16}  {:>17}  {:>12}  {:>12}",
        "store", "run", "rows/s (500/fl)", "rows/s (5000/fl)", "read p50 ms", "read p99 ms"
    );
    for run in 1..=a.runs {
        let dir = tempfile::tempdir()?;
        let mut backends = vec![("sqlite", format!("sqlite://{}", dir.path().join("views.db").display()))];
        if let Some(admin) = &a.postgres {
            backends.push(("postgresql", common::store::create_scratch_postgres_database(admin, "bench_store").await?));
        }
        for (name, url) in backends {
            let store = common::store::open(&url).await?;
            let f = measure(store, &a).await?;
            println!(
                "{name:<11} {run:>3}  {:>16.0}  {:>17.0}  {:>12.2}  {:>12.2}",
                f.upserts_500, f.upserts_5000, f.read_p50_ms, f.read_p99_ms
            );
            results.push(json!({"store": name, "run": run, "upserts_per_s_500": f.upserts_500,
                "upserts_per_s_5000": f.upserts_5000, "read_p50_ms": f.read_p50_ms, "read_p99_ms": f.read_p99_ms}));
        }
    }
    if a.postgres.is_none() {
        println!("PostgreSQL SKIPPED (set {}=postgres://... or pass --postgres)", common::testing::POSTGRES_ENV);
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run(a))
}
