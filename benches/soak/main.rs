//! Soak benchmark, issue 12 item 5 ("load held"): `cargo bench --bench soak -- [--rate 2000] [--minutes 6]
//! [--kill-every 60] [--restart-after 12] [--hold 60] [--kill speed-a,speed-b,archive,batch,serve] [--seed 1]
//! [--out FILE.json] [--keep]`. Not run by `cargo test` (`test = false`).
//!
//! A tansu broker process (SQLite storage, as `tests/support/broker.rs` starts it) with a 3-partition topic;
//! the release `lambda` binary as separate processes: two `lambda speed` members of one group, `lambda
//! archive`, `lambda batch schedule --cron "*/10 * * * * *"` and `lambda serve`, on a SQLite store in a
//! temporary directory (a scratch database on the PostgreSQL server of `LAMBDA_TEST_POSTGRES` when it is
//! set). The configuration is the embedded defaults except the addresses, the paths and `batch.lease_ttl =
//! "10s"` (a SIGKILLed batch run holds the lease until it expires: the default 10 minutes would stop the
//! batch layer for the rest of the run).
//!
//! For `--minutes`, generated events (the speed bench's generator fitted on the sample, event times
//! advancing at the rate) are produced at a sustained `--rate` events/s, and a probe event (a brand of its
//! own, its event time the production time) every 100 ms; a poller reads the probes from the `serve`
//! process's HTTP API every 10 ms and records visible - produced. From minute 1 on, every `--kill-every`
//! seconds one process drawn with `--seed` (any of them, or one of `--kill`) gets SIGKILL and is started
//! again `--restart-after` seconds later. Every 5 s the VmRSS of every process (and the broker) is read from
//! `/proc/<pid>/status`.
//!
//! Report (markdown on stdout, JSON at `--out`; progress on stderr): per process, RSS at the end of the
//! warm-up (the first third of the run), mean RSS over the second third (the baseline) and over the last
//! third, their ratio, and the maximum; freshness p50/p99/max of the probes produced in the first 55 s (no
//! kill can reach them: the baseline) and of the rest (a probe never seen counts as infinitely late), and
//! the ratio of the p99s; at the end, how far the speed and archive groups' committed offsets are behind
//! each partition's log end. Checks: every probe seen, none counted twice, the API's count of probes equal
//! to the number produced and its count of all events equal to the distinct events produced (after up to
//! 120 s of catching up), every delivery acknowledged, both groups within 10 s of production of the log
//! ends (the totals would not show a stalled archiver: the speed layer covers what the batch has not), no
//! process exited by itself, and no `lambda` process's last-third mean RSS above 1.25x its second-third
//! mean (the broker's is reported, not checked; nor is the batch's, which follows the archive: every run
//! recomputes it whole, DESIGN.md §5). Then a hold of `--hold` seconds (default 60) without production: the
//! batch recomputes the same archive every 10 s and the API is read, RSS is sampled every second, and no
//! `lambda` process's peak RSS in the second half may exceed 1.10x its peak in the first half (growth with
//! time rather than data). The report is written first; any failed check then fails the run.

#[allow(dead_code)]
#[path = "../../tests/support/broker.rs"]
mod broker;
#[allow(dead_code)]
#[path = "../../tests/support/process.rs"]
mod process;
#[path = "../../tests/support/tools.rs"]
mod tools;
use tools::{external_tool, tool_candidates};

mod cluster;
mod report;
mod traffic;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chrono::Utc;
use common::config::Config;
use lambda::generate::{GenerateOptions, Generator, Model};
use lambda::produce;
use process::Process;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

use broker::Broker;
use cluster::{PARTITIONS, TOPIC};
use report::{MemoryRow, Phase, Report, Series, Totals};
use traffic::Probes;

const BATCH_CRON: &str = "*/10 * * * * *";
/// The processes: name and `lambda` subcommand. The broker is sampled too but never killed.
const ROSTER: [(&str, &[&str]); 5] = [
    ("speed-a", &["speed"]),
    ("speed-b", &["speed"]),
    ("archive", &["archive"]),
    ("batch", &["batch", "schedule", "--cron", BATCH_CRON]),
    ("serve", &["serve"]),
];
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// RSS sampling in the hold: often enough to catch each batch run (every 10 s) at work.
const HOLD_SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The kills start after the first minute.
const FIRST_KILL: Duration = Duration::from_secs(60);
/// Freshness baseline: probes produced more than this before the first kill (one produced later can be
/// caught by it; the baseline's slowest probe is visible in under 2 s).
const GUARD: Duration = Duration::from_secs(5);
/// How long the probes may take to show after production stops, and then the totals.
const PATIENCE: Duration = Duration::from_secs(120);

/// A progress line on stderr (stdout holds the report).
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

#[derive(Debug)]
struct Args {
    rate: f64,
    minutes: f64,
    kill_every: f64,
    /// Seconds from a SIGKILL to the restart (default 12: past the embedded 10 s `session.timeout.ms`, see
    /// the default in [`args`]).
    restart_after: f64,
    /// Seconds to hold the processes without production after the totals check, sampling RSS every second.
    hold: f64,
    /// Indices into [`ROSTER`] of the processes a kill may hit.
    kill: Vec<usize>,
    seed: u64,
    out: Option<PathBuf>,
    /// Keep the working directory (logs, store, archive, broker storage) and print its path.
    keep: bool,
}

fn args() -> Result<Option<Args>> {
    let mut a = Args {
        rate: 2_000.0,
        minutes: 6.0,
        kill_every: 60.0,
        // past the 10 s session timeout: a speed member replaced sooner orphans partitions on tansu 0.6
        // (README, "What tansu 0.6.0 lacks"); `--restart-after 1` shows it
        restart_after: 12.0,
        hold: 60.0,
        kill: (0..ROSTER.len()).collect(),
        seed: 1,
        out: None,
        keep: false,
    };
    // `cargo bench` passes --bench; anything else (e.g. `cargo test --benches`) gets a note, not a soak
    if !std::env::args().any(|a| a == "--bench") {
        say!("soak: a run of minutes; start it with `cargo bench --bench soak` (see benches/soak/main.rs)");
        return Ok(None);
    }
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--rate" => a.rate = value()?.parse()?,
            "--minutes" => a.minutes = value()?.parse()?,
            "--kill-every" => a.kill_every = value()?.parse()?,
            "--restart-after" => a.restart_after = value()?.parse()?,
            "--hold" => a.hold = value()?.parse()?,
            "--kill" => {
                a.kill = value()?
                    .split(',')
                    .map(|name| {
                        ROSTER
                            .iter()
                            .position(|r| r.0 == name.trim())
                            .with_context(|| format!("--kill: no process `{name}` (one of {:?})", ROSTER.map(|r| r.0)))
                    })
                    .collect::<Result<_>>()?
            }
            "--seed" => a.seed = value()?.parse()?,
            "--out" => a.out = Some(value()?.into()),
            "--keep" => a.keep = true,
            other => bail!("unknown argument `{other}`; see the header of benches/soak/main.rs"),
        }
    }
    ensure!(a.rate > 0.0, "--rate must be positive");
    ensure!(a.minutes > 1.0, "--minutes must be more than 1 (the first minute is the no-kill baseline)");
    ensure!(a.kill_every >= 5.0, "--kill-every must be at least 5 seconds");
    ensure!((0.0..a.kill_every).contains(&a.restart_after), "--restart-after must be from 0 to less than --kill-every");
    ensure!(!a.kill.is_empty(), "--kill needs at least one process");
    ensure!(a.hold >= 20.0, "--hold must be at least 20 seconds (two batch runs in each half)");
    Ok(Some(a))
}

fn model() -> Result<Model> {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ecommerce/2019-Nov-sample.csv");
    if sample.exists() {
        Model::fit(&sample)
    } else {
        say!("(sample not found at {}; using the built-in model)", sample.display());
        Ok(Model::builtin())
    }
}

fn main() -> Result<()> {
    let Some(a) = args()? else { return Ok(()) };
    common::telemetry::init_tracing("warn,librdkafka=error");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(soak(&a))
}

type Roster = Arc<Mutex<Vec<Process>>>;

/// Panics, with its log, if a process exited by itself.
fn check_running(procs: &Roster) {
    procs.lock().expect("roster").iter_mut().for_each(Process::assert_running);
}

/// Every `every` from `start` to `end`, the VmRSS of each process of the roster and of `broker_pid`.
async fn sample_rss(procs: Roster, broker_pid: u32, start: Instant, end: Instant, every: Duration) -> Vec<Series> {
    let mut series: Vec<Series> = vec![Series::default(); ROSTER.len() + 1];
    for k in 0.. {
        let at = start + every * k;
        if at > end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let t = at.duration_since(start).as_secs_f64();
        let pids: Vec<Option<u32>> = procs
            .lock()
            .expect("roster")
            .iter()
            .map(|p| p.child.as_ref().map(Child::id))
            .chain([Some(broker_pid)])
            .collect();
        for (s, pid) in series.iter_mut().zip(pids) {
            if let Some(kib) = pid.and_then(cluster::rss_kib) {
                s.samples.push((t, kib));
            }
        }
    }
    series
}

async fn soak(a: &Args) -> Result<()> {
    let duration = Duration::from_secs_f64(a.minutes * 60.0);
    let mut work = Some(tempfile::Builder::new().prefix("lambda-soak-").tempdir()?);
    let dir = work.as_ref().expect("just made").path().to_owned();
    if a.keep {
        let _ = work.take().map(tempfile::TempDir::keep);
        say!("soak: working directory {} (kept)", dir.display());
    }

    // the broker, the store, the configuration, the processes
    let broker = Broker::start_in(&dir, "soak").context("the soak needs the tansu broker")?;
    broker.create_topic(TOPIC, PARTITIONS).await;
    let broker_pid = broker.pid().context("the broker is running")?;
    let store_url = match std::env::var(common::testing::POSTGRES_ENV) {
        Ok(admin) if !admin.is_empty() => common::store::create_scratch_postgres_database(&admin, "soak").await?,
        _ => format!("sqlite://{}", dir.join("views.db").display()),
    };
    let store_kind = store_url.split(':').next().unwrap_or_default().to_owned();
    // migrations once, before five processes open the store at the same moment
    drop(common::store::open(&store_url).await?);
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let overrides = format!(
        "[kafka]\nbrokers = \"{}\"\n[store]\nurl = \"{store_url}\"\n[archive]\nroot = \"{}\"\n\
         [serve]\nlisten = \"{listen}\"\n[batch]\nlease_ttl = \"10s\"\n",
        broker.brokers(),
        dir.join("archive").display()
    );
    let config = Config::from_toml_str(&overrides)?;
    let config_path = dir.join("lambda.toml");
    std::fs::write(&config_path, &overrides)?;
    let api = format!("http://{listen}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let procs: Roster =
        Arc::new(Mutex::new(ROSTER.iter().map(|(name, role)| Process::new(name, role, &config_path, &dir)).collect()));
    procs.lock().expect("roster").iter_mut().for_each(Process::start);

    // warm-up: both speed members and the archiver own partitions, and a probe on each partition is visible
    let model = model()?;
    let warm_producer: FutureProducer = common::kafka::producer_config(&config.kafka).create()?;
    for p in 0..PARTITIONS {
        let payload = traffic::probe_payload(&format!("warm-{p}"), Utc::now(), 0);
        let record = FutureRecord::<str, [u8]>::to(TOPIC).partition(p).payload(payload.as_slice());
        warm_producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    }
    let warm_start = Instant::now();
    loop {
        check_running(&procs);
        let assigned = procs.lock().expect("roster")[..3].iter().all(|p| p.log_text().contains("partition assigned"));
        if assigned && traffic::total_count(&http, &api, Some("probe")).await == Some(i64::from(PARTITIONS)) {
            break;
        }
        ensure!(warm_start.elapsed() < Duration::from_secs(120), "the layers did not come up within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    say!(
        "soak: up after {:.1} s; {} min at {} events/s, kills from minute 1 every {} s (seed {})",
        warm_start.elapsed().as_secs_f64(),
        a.minutes,
        a.rate,
        a.kill_every,
        a.seed
    );

    // the run: load, probes, poller and RSS sampler as tasks; the kills here
    let start = Instant::now();
    let end = start + duration;
    let (rate, span0, gen_config) = (a.rate, model.span.0, config.clone());
    let options = GenerateOptions {
        events: (a.rate * duration.as_secs_f64()) as u64 + 10_000,
        seed: a.seed,
        ..GenerateOptions::default()
    };
    let events = Generator::new(&model, options)?.enumerate().map(move |(i, mut g)| {
        // event times of a live stream at the rate, as in the speed bench
        g.event_time = span0 + (i as f64 / rate) as i64;
        produce::outgoing_from_object(g.to_json(), &gen_config)
    });
    let load = tokio::spawn(traffic::load(config.kafka.clone(), events, a.rate, start, end));
    let state = Arc::new(Mutex::new(Probes::default()));
    let probes = tokio::spawn(traffic::probes(config.kafka.clone(), state.clone(), start, end));
    let poller = tokio::spawn(traffic::poller(api.clone(), state.clone(), end + PATIENCE));
    let sampler = tokio::spawn(sample_rss(procs.clone(), broker_pid, start, end, SAMPLE_EVERY));
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut kills: Vec<(f64, usize)> = Vec::new();
    let mut next_kill = start + FIRST_KILL;
    let mut restart: Option<(Instant, usize)> = None;
    while Instant::now() < end || restart.is_some() {
        check_running(&procs);
        let now = Instant::now();
        if let Some((at, i)) = restart {
            if now >= at {
                procs.lock().expect("roster")[i].start();
                restart = None;
            }
        } else if now >= next_kill && now < end {
            let i = a.kill[rng.random_range(0..a.kill.len())];
            procs.lock().expect("roster")[i].kill9();
            let t = now.duration_since(start).as_secs_f64();
            say!("soak: {t:.0} s: SIGKILL {}", ROSTER[i].0);
            kills.push((t, i));
            restart = Some((now + Duration::from_secs_f64(a.restart_after), i));
            next_kill += Duration::from_secs_f64(a.kill_every);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = load.await??;
    let (probes_delivered, probes_failed) = probes.await??;
    let mut series = sampler.await?;
    for &(t, i) in &kills {
        series[i].restarts.push(t + a.restart_after);
    }
    say!("soak: production ended: {} events, {probes_delivered} probes; waiting for the last probes", load.sent);
    poller.await?;
    check_running(&procs);

    // nothing lost, nothing counted twice: the API's totals once the layers have caught up
    let probes_expected = probes_delivered as i64 + i64::from(PARTITIONS);
    let all_expected = load.distinct as i64 + probes_expected;
    let waiting = Instant::now();
    let (mut got_probes, mut got_all);
    loop {
        got_probes = traffic::total_count(&http, &api, Some("probe")).await;
        got_all = traffic::total_count(&http, &api, None).await;
        if (got_probes, got_all) == (Some(probes_expected), Some(all_expected)) || waiting.elapsed() > PATIENCE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let totals = Totals {
        probes: got_probes,
        probes_expected,
        all: got_all,
        all_expected,
        wait_s: waiting.elapsed().as_secs_f64(),
    };
    check_running(&procs);
    let positions = cluster::positions(&config.kafka).await?;

    // the hold: no production, the batch runs over the same archive and the API is read; a process whose
    // memory still grows here grows with time (a leak), not with the data
    say!("soak: holding for {} s without production", a.hold);
    let hold_start = Instant::now();
    let hold_end = hold_start + Duration::from_secs_f64(a.hold);
    let hold_sampler = tokio::spawn(sample_rss(procs.clone(), broker_pid, hold_start, hold_end, HOLD_SAMPLE_EVERY));
    while Instant::now() < hold_end {
        check_running(&procs);
        traffic::total_count(&http, &api, Some("probe")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hold_series = hold_sampler.await?;
    check_running(&procs);

    let d = duration.as_secs_f64();
    let names = ROSTER.iter().map(|r| r.0).chain(["tansu (broker)"]);
    let memory: Vec<MemoryRow> =
        names.zip(series.iter().zip(&hold_series)).map(|(n, (s, h))| MemoryRow::of(n, s, d, h, a.hold)).collect();
    let s = state.lock().expect("probe state");
    let cut = (FIRST_KILL - GUARD).as_secs_f64();
    let report = Report {
        args: a,
        store: store_kind,
        duration_s: d,
        load,
        probes_delivered,
        probes_failed,
        kills,
        memory,
        series,
        hold_series,
        baseline: Phase::of(s.list.iter().filter(|p| p.at < cut)),
        under_kills: Phase::of(s.list.iter().filter(|p| p.at >= cut)),
        doubled: s.list.iter().filter(|p| p.max_count > 1).count(),
        polls: s.polls,
        failed_polls: s.failed_polls,
        totals,
        positions,
        latencies: s.list.iter().map(|p| (p.at, p.latency_ms())).collect(),
    };
    drop(s);
    write!(std::io::stdout().lock(), "{}", report.markdown())?;
    if let Some(path) = &a.out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)?;
    }
    let failed: Vec<&str> = report.checks().into_iter().filter(|(_, ok)| !ok).map(|(n, _)| n).collect();
    if !failed.is_empty() {
        for m in report.memory[..ROSTER.len()].iter().filter(|m| !m.flat()) {
            say!(
                "soak: MEMORY GROWS: {}: {:.1} to {:.1} MiB under load ({:.2}x), {:.1} to {:.1} MiB in the hold ({:.2}x)",
                m.name,
                m.second,
                m.last,
                m.ratio,
                m.hold_first,
                m.hold_second,
                m.hold_ratio
            );
        }
        bail!("soak checks failed: {}", failed.join("; "));
    }
    Ok(())
}
