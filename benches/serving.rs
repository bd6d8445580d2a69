//! Serving-layer benchmark (`cargo bench --bench serving -- [--events N] [--runs R] [--seconds S]
//! [--connections C] [--json FILE]`). Needs `wrk` (Debian package) and `taskset` (util-linux).
//!
//! Under `cargo test` it runs as a smoke test on a small data set: the same answers are checked against
//! the truth, and the load comes from an in-process HTTP client (a fixed number of requests per query,
//! no timing asserted), so the test needs neither `wrk` nor `taskset` on the machine.
//!
//! Setup: `--events` generated events (fitted on the real sample) written straight into the archive of 3
//! partitions, seals recorded for every archive file, one real batch run (generation 1 in SQLite), then
//! `--speed-events` more events applied through the speed layer's segment code past the cutoffs, so every
//! answer merges batch and speed rows. Each answer is first checked against a truth computed from the
//! generated events (not from the store).
//!
//! Load: the API runs in this process pinned to CPU 0; `wrk` runs pinned to CPU 1 for `--seconds` per
//! query per run. Queries: a day of minute buckets of `by_type`; top-10 brands by revenue over a week —
//! each against the API with its default answer cache (`serve.cache_ttl` = 200 ms) and against a second
//! instance without it (every request reads SQLite and merges); and the baseline, an unknown route
//! answered by the same server (the HTTP stack's floor, same run), and the day answer's bytes served as a
//! static body by a minimal axum route in the same runtime (the floor for an answer of that size).
//! Figures: requests/s and wrk's p50/p99 latency, min/median/max over `--runs`.

#![allow(clippy::print_stdout)]

// The allocator of the `lambda` binary, so the figures are the shipped program's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use chrono::DateTime;
use common::config::Config;
use common::schema::Decoder;
use common::store::{Seal, ViewStore};
use common::view::ViewSet;
use lambda::generate::{GenerateOptions, Generated, Generator, Model};
use serde_json::json;
use speed_layer::segment::Segment;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Args {
    events: u64,
    speed_events: u64,
    runs: usize,
    seconds: u64,
    connections: u32,
    json: Option<PathBuf>,
    /// Smoke mode (`cargo test`): load from an in-process client, no wrk, no CPU pinning.
    smoke: bool,
}

/// Requests per query in smoke mode.
const SMOKE_REQUESTS: usize = 100;

fn args() -> Result<Args> {
    let mut a = Args {
        events: 2_000_000,
        speed_events: 50_000,
        runs: 3,
        seconds: 10,
        connections: 16,
        json: None,
        smoke: false,
    };
    if !std::env::args().any(|x| x == "--bench") {
        // `cargo test` runs this target as a smoke test
        a = Args { events: 20_000, speed_events: 2_000, runs: 1, seconds: 1, connections: 4, json: None, smoke: true };
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--events" => a.events = value()?.parse()?,
            "--speed-events" => a.speed_events = value()?.parse()?,
            "--runs" => a.runs = value()?.parse()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--connections" => a.connections = value()?.parse()?,
            "--json" => a.json = Some(value()?.into()),
            other => bail!("unknown argument `{other}`; see the header of benches/serving.rs"),
        }
    }
    Ok(a)
}

const DAY: &str = "2019-11-15T00:00:00Z";
const WEEK: (&str, &str) = ("2019-11-11T00:00:00Z", "2019-11-18T00:00:00Z");

fn ts(s: &str) -> i64 {
    DateTime::parse_from_rfc3339(s).expect("static time").timestamp()
}

/// Micro-units of a decimal number's text (exact).
fn micros(text: &str) -> i128 {
    common::decimal::parse_micros(text).unwrap_or(i128::MIN)
}

/// Truth from the generated events, deduplicated by content: (rows of the day-of-minutes answer, top-10 (brand, revenue micros)).
fn truth(events: &[Generated]) -> (usize, Vec<(Option<String>, i128)>) {
    let day = ts(DAY);
    let (from, to) = (ts(WEEK.0), ts(WEEK.1));
    let mut cells = std::collections::HashSet::new();
    let mut revenue: BTreeMap<Option<String>, i128> = BTreeMap::new();
    // the dedup key is the content: two generated events can coincide (same session, product and second)
    let mut seen = std::collections::HashSet::new();
    for e in events {
        if !seen.insert(serde_json::to_string(&e.to_json()).expect("serializable")) {
            continue;
        }
        if (day..day + 86_400).contains(&e.event_time) {
            cells.insert((e.event_time / 60, e.event_type));
        }
        if (from..to).contains(&e.event_time) {
            let brand = Some(e.brand.to_owned()).filter(|b| !b.is_empty());
            *revenue.entry(brand).or_default() += micros(&serde_json::to_string(&e.price).expect("finite"));
        }
    }
    let mut top: Vec<(Option<String>, i128)> = revenue.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    (cells.len(), top)
}

struct Loaded {
    _dir: tempfile::TempDir,
    config: Config,
    store: Arc<dyn ViewStore>,
    events: Vec<Generated>,
}

async fn load(a: &Args, model: &Model) -> Result<Loaded> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::defaults();
    config.store.url = format!("sqlite://{}", dir.path().join("views.db").display());
    config.archive.root = dir.path().join("archive");
    let store = common::store::open(&config.store.url).await?;
    let options = GenerateOptions { events: a.events, seed: 11, ..GenerateOptions::default() };
    let report =
        lambda::generate::write_archive(&config.archive.root, &config, 3, 100_000, model, options.clone(), |_| {})?;
    for (partition, files) in batch_layer::archive::list(&config.archive.root, "events")? {
        for f in files {
            store.record_seal("events", Seal { partition, start: f.first, end: f.next }).await?;
        }
    }
    let manifest = batch_layer::job::run_once(&config, &store, &Default::default()).await?.context("lease")?;
    ensure!(manifest.cutoffs == report.ends, "the batch run covers the whole archive");
    let mut events: Vec<Generated> = Generator::new(model, options)?.collect();

    // speed rows past the cutoffs: a segment per partition starting at its cutoff
    let decoder = Decoder::new(&config);
    let views = ViewSet::new(&config);
    let more = GenerateOptions { events: a.speed_events, seed: 12, ..GenerateOptions::default() };
    let extra: Vec<Generated> = Generator::new(model, more)?.collect();
    let mut segments: BTreeMap<i32, Segment> =
        report.ends.iter().map(|(&p, &end)| (p, Segment::open(p, end, None))).collect();
    for (i, e) in extra.iter().enumerate() {
        let p = (i % 3) as i32;
        let seg = segments.get_mut(&p).expect("3 partitions");
        let payload = serde_json::to_vec(&e.to_json())?;
        let offset = seg.position;
        seg.apply("events", offset, None, &payload, &decoder, &views);
    }
    for seg in segments.values_mut() {
        let rows = seg.take_dirty_rows(&views, seg.position);
        store.upsert_speed_rows("events", &rows).await?;
    }
    events.extend(extra);
    Ok(Loaded { _dir: dir, config, store, events })
}

#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
}

fn ms(text: &str) -> Option<f64> {
    let (num, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map(|i| text.split_at(i))?;
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1_000.0,
        "ms" => v,
        "s" => v * 1_000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

fn wrk(url: &str, a: &Args, expect_ok: bool, gzip: bool) -> Result<WrkResult> {
    let mut command = Command::new("taskset");
    command.args(["-c", "1", "wrk", "-t1", &format!("-c{}", a.connections), &format!("-d{}s", a.seconds), "--latency"]);
    if gzip {
        command.args(["-H", "Accept-Encoding: gzip"]);
    }
    let out = command.arg(url).output().context("running `taskset -c 1 wrk` (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    if expect_ok {
        ensure!(!text.contains("Non-2xx"), "wrk saw error responses for {url}:\n{text}");
    }
    let mut r = WrkResult::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse()?,
            ["50%", v] => r.p50_ms = ms(v).context("p50")?,
            ["99%", v] => r.p99_ms = ms(v).context("p99")?,
            [n, "requests", "in", ..] => r.requests = n.parse()?,
            _ => {}
        }
    }
    ensure!(r.rps > 0.0 && r.requests > 0, "could not read wrk's output:\n{text}");
    Ok(r)
}

/// Smoke-mode load: `SMOKE_REQUESTS` sequential requests from an in-process client, each checked for
/// success (when `expect_ok`); figures in the same shape as wrk's, not comparable to them.
fn in_process(rt: &tokio::runtime::Runtime, url: &str, expect_ok: bool, gzip: bool) -> Result<WrkResult> {
    rt.block_on(async {
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        let mut latencies = Vec::with_capacity(SMOKE_REQUESTS);
        for _ in 0..SMOKE_REQUESTS {
            let t = std::time::Instant::now();
            let mut request = client.get(url);
            if gzip {
                request = request.header("accept-encoding", "gzip");
            }
            let response = request.send().await?;
            let status = response.status();
            response.bytes().await?;
            ensure!(!expect_ok || status.is_success(), "{url} answered {status}");
            latencies.push(t.elapsed().as_secs_f64() * 1e3);
        }
        latencies.sort_by(f64::total_cmp);
        Ok(WrkResult {
            rps: SMOKE_REQUESTS as f64 / started.elapsed().as_secs_f64(),
            p50_ms: latencies[latencies.len() / 2],
            p99_ms: latencies[latencies.len() * 99 / 100],
            requests: SMOKE_REQUESTS as u64,
        })
    })
}

fn stats(xs: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut v: Vec<f64> = xs.collect();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() -> Result<()> {
    let a = args()?;
    common::telemetry::init_tracing("warn");
    if !a.smoke {
        // pin every thread of this process (the API and SQLite) to CPU 0; wrk gets CPU 1
        let pid = std::process::id().to_string();
        let pinned = Command::new("taskset").args(["-a", "-c", "-p", "0", &pid]).output();
        ensure!(pinned.is_ok_and(|o| o.status.success()), "taskset could not pin the server to CPU 0");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let sample =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../shared/data/ecommerce/2019-Nov-sample.csv");
    let model = if sample.exists() { Model::fit(&sample)? } else { Model::builtin() };

    if a.smoke {
        println!(
            "serving bench (smoke): {} batch + {} speed events; {SMOKE_REQUESTS} in-process requests per query",
            a.events, a.speed_events
        );
    } else {
        println!(
            "serving bench: {} batch + {} speed events; wrk -c{} for {} s x {} runs",
            a.events, a.speed_events, a.connections, a.seconds, a.runs
        );
    }
    let loaded = rt.block_on(load(&a, &model))?;
    let stop = CancellationToken::new();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr: SocketAddr = listener.local_addr()?;
    let server = rt.spawn(serving_layer::serve(listener, loaded.config.clone(), loaded.store.clone(), stop.clone()));
    // the same API without the answer cache (serve.cache_ttl = 0): every request reads the store
    let uncached_listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let uncached: SocketAddr = uncached_listener.local_addr()?;
    let mut no_cache = loaded.config.clone();
    no_cache.serve.cache_ttl = Duration::ZERO;
    let server2 = rt.spawn(serving_layer::serve(uncached_listener, no_cache, loaded.store.clone(), stop.clone()));

    let day_url = format!("http://{addr}/v1/views/by_type?granularity=minute&from={DAY}&to=2019-11-16T00:00:00Z");
    let top_url = format!(
        "http://{addr}/v1/views/by_brand?granularity=day&from={}&to={}&group_by=brand&order_by=sum_price&top=10",
        WEEK.0, WEEK.1
    );
    let floor_url = format!("http://{addr}/v1/no-such-route");

    // correctness first, against the generated events
    let (want_rows, want_top) = truth(&loaded.events);
    let get = |url: &str| -> Result<serde_json::Value> {
        let url = url.to_owned();
        Ok(rt.block_on(async move { reqwest::get(&url).await?.json::<serde_json::Value>().await })?)
    };
    let day = get(&day_url)?;
    let rows = day["rows"].as_array().context("rows")?;
    ensure!(rows.len() == want_rows, "day of minutes: {} rows, truth {want_rows}", rows.len());
    let top = get(&top_url)?;
    let got_top: Vec<(Option<String>, i128)> = top["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .map(|r| (r["dims"]["brand"].as_str().map(str::to_owned), micros(&r["metrics"]["sum_price"].to_string())))
        .collect();
    ensure!(got_top == want_top, "top-10 brands: {got_top:?}\ntruth: {want_top:?}");
    let day_bytes = serde_json::to_vec(&day)?.len();
    // the same answer gzip-compressed, as a client sending Accept-Encoding: gzip gets it
    let gzipped = rt.block_on(async {
        let r = reqwest::Client::new().get(&day_url).header("accept-encoding", "gzip").send().await?;
        ensure!(r.headers().get("content-encoding").is_some_and(|v| v == "gzip"), "the day answer is not gzip");
        Ok::<_, anyhow::Error>(r.bytes().await?)
    })?;
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gzipped[..]), &mut unpacked)?;
    ensure!(serde_json::from_slice::<serde_json::Value>(&unpacked)? == day, "the gzip answer differs");
    println!(
        "answers checked: day of minutes = {want_rows} rows ({day_bytes} bytes, {} gzip), top-10 brands match",
        gzipped.len()
    );

    // the machine's floor for an answer of this size: the same bytes served as a static body, same runtime,
    // plain and gzip
    let static_body = axum::body::Bytes::from(serde_json::to_vec(&day)?);
    let static_listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let static_url = format!("http://{}/", static_listener.local_addr()?);
    let static_gzip_url = format!("{static_url}gzip");
    use axum::http::header::{CONTENT_ENCODING, CONTENT_TYPE};
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let body = static_body.clone();
                async move { ([(CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .route(
            "/gzip",
            axum::routing::get(move || {
                let body = gzipped.clone();
                async move { ([(CONTENT_TYPE, "application/json"), (CONTENT_ENCODING, "gzip")], body) }
            }),
        );
    let static_stop = stop.clone();
    rt.spawn(
        async move { axum::serve(static_listener, app).with_graceful_shutdown(static_stop.cancelled_owned()).await },
    );
    let uncached_day = day_url.replace(&addr.to_string(), &uncached.to_string());
    let uncached_top = top_url.replace(&addr.to_string(), &uncached.to_string());
    // (name, url, expect 2xx, send Accept-Encoding: gzip)
    let queries = [
        ("day of minute buckets, by_type", &day_url, true, false),
        ("day of minute buckets, gzip", &day_url, true, true),
        ("top-10 brands by revenue, a week", &top_url, true, false),
        ("day of minutes, no cache", &uncached_day, true, false),
        ("top-10 brands, no cache", &uncached_top, true, false),
        ("baseline: 404 from the same server", &floor_url, false, false),
        ("baseline: static body of the day answer's size", &static_url, true, false),
        ("baseline: static gzip body of the day answer", &static_gzip_url, true, true),
    ];
    let mut results: BTreeMap<&str, Vec<WrkResult>> = BTreeMap::new();
    for run in 0..a.runs {
        for (name, url, ok, gzip) in &queries {
            let r = if a.smoke { in_process(&rt, url, *ok, *gzip)? } else { wrk(url, &a, *ok, *gzip)? };
            println!(
                "run {}: {name:38} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
                run + 1,
                r.rps,
                r.p50_ms,
                r.p99_ms
            );
            results.entry(name).or_default().push(r);
        }
    }
    stop.cancel();
    rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), server2).await;
    });

    let base = results["baseline: 404 from the same server"].clone();
    println!();
    println!("| query | req/s (min / median / max) | p50 ms (median) | p99 ms (min / median / max) | req/s vs baseline (median) |");
    println!("|---|---|---|---|---|");
    let mut out = serde_json::Map::new();
    for (name, ..) in &queries {
        let rs = &results[name];
        let q = stats(rs.iter().map(|r| r.rps));
        let p50 = stats(rs.iter().map(|r| r.p50_ms));
        let p99 = stats(rs.iter().map(|r| r.p99_ms));
        let ratio = stats(rs.iter().zip(&base).map(|(r, b)| r.rps / b.rps));
        println!(
            "| {name} | {:.0} / {:.0} / {:.0} | {:.2} | {:.2} / {:.2} / {:.2} | {:.3} |",
            q.0, q.1, q.2, p50.1, p99.0, p99.1, p99.2, ratio.1
        );
        out.insert(
            name.to_string(),
            json!({"rps": rs.iter().map(|r| r.rps).collect::<Vec<_>>(), "p50_ms": rs.iter().map(|r| r.p50_ms).collect::<Vec<_>>(),
                   "p99_ms": rs.iter().map(|r| r.p99_ms).collect::<Vec<_>>(), "requests": rs.iter().map(|r| r.requests).collect::<Vec<_>>()}),
        );
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&serde_json::Value::Object(out))?)?;
    }
    Ok(())
}
