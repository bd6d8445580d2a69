//! Issue 12: faults against a real Kafka-protocol broker process. tansu (SQLite storage) runs as its own
//! process; two `lambda speed` members of one consumer group, `lambda archive`, `lambda batch schedule` and
//! `lambda serve` run as processes on one store (PostgreSQL when `LAMBDA_TEST_POSTGRES` names a server,
//! else a shared SQLite file). While the sample is produced (idempotent producer), faults chosen by a
//! logged seed hit them: SIGKILL of every process kind and restart, a broker SIGKILL and restart, a speed
//! member frozen with SIGSTOP past its session timeout (a zombie whose partitions move) and woken, a third
//! speed member joining and leaving (rebalances), a stop of the store's PostgreSQL server for a few
//! seconds and one past the pools' 30 s acquire timeout (a cluster of the test's own), and a SIGKILL of the
//! batch scheduler timed inside a run. No process may exit by itself. The first half is produced
//! without batch runs, and the speed view alone must then equal the truth of that half. A poller
//! reads every view from the `serve` process throughout and checks that no cell ever exceeds the ground
//! truth of the records queued so far (the sample has no duplicate events, so any excess is a double
//! count). At the end the answers equal the ground truth exactly, from a manifest whose cutoffs are the
//! log ends. Bad records (not JSON, not an object, not UTF-8, no event time) are mixed into the stream at
//! seeded places; at the end the speed layer's and the archiver's dead-letter outputs each hold exactly
//! those records (by partition and offset), each with a reason, and no answer counts them.
//!
//! Seeds: `LAMBDA_FAULT_SEEDS` (comma-separated; default `1,2,4`). Without a tansu binary the test prints
//! SKIPPED and passes, unless `LAMBDA_REQUIRE_TANSU=1` (see `support::broker`).

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lambda::produce::Outgoing;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use support::broker::Broker;
use support::process::{Process, Signal};
use support::{sample_messages, truth, Harness};

/// A progress line straight to stderr (the harness captures print macros of passing tests).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

const PATIENCE: Duration = Duration::from_secs(120);

/// Bad records mixed into the stream: each must reach both dead-letter outputs and no answer.
const BAD_INPUT: [&[u8]; 4] =
    [b"not json {", b"[1,2,3]", b"\xff\xfe{\"event_type\":\"view\"}", b"{\"event_type\":\"view\",\"price\":1}"];

/// `good` with a bad record (from [`BAD_INPUT`]) before about one record in 150, at places drawn from `rng`;
/// `true` marks the good ones.
fn with_bad_input(good: &[Outgoing], rng: &mut impl Rng) -> Vec<(Outgoing, bool)> {
    let mut out = Vec::with_capacity(good.len() + good.len() / 100);
    for m in good {
        if rng.random_range(0..150) == 0 {
            let payload = BAD_INPUT[rng.random_range(0..BAD_INPUT.len())].to_vec();
            out.push((Outgoing { key: None, payload }, false));
        }
        out.push((m.clone(), true));
    }
    out
}
const PARTITIONS: i32 = 3;

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL of the process at this index of the roster, restarted after a random pause.
    Kill(usize),
    /// SIGKILL of the broker, restarted after a random pause.
    BrokerRestart,
    /// SIGSTOP of a speed member past the session timeout, then SIGCONT.
    Zombie(usize),
    /// A third speed member joins the group, stays a few seconds, and leaves (SIGTERM: graceful).
    Rebalance,
    /// The store's PostgreSQL server stops (fast shutdown) for a few seconds, then starts again.
    StoreOutage,
    /// The store's PostgreSQL server stops for longer than the pools' 30 s acquire timeout, so store calls
    /// fail instead of waiting, and are retried; a speed member is SIGKILLed and restarted 3 s into it.
    LongStoreOutage,
    /// SIGKILL of the batch scheduler at a seeded instant inside a run (from its start line, a fraction of
    /// how long the last published run took: scan, row writes, the manifest switch or the cleanup), then restart.
    KillInBatchRun,
}

/// Seconds the last published batch run took, from the scheduler's log (`seconds=` of its last
/// "batch generation published" line).
fn last_run_seconds(log: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains("batch generation published"))?;
    let rest = &line[line.find("seconds=")? + "seconds=".len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
}

/// A PostgreSQL cluster of this test's own, so that an outage hits no other test
/// (`deploy/postgres/scratch-cluster`, loopback only, under `/tmp` where the `postgres` user can reach it).
struct OwnPostgres {
    script: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// `None` without Debian's PostgreSQL server binaries.
    fn start(seed: u64) -> Option<OwnPostgres> {
        let installed =
            std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().any(|v| v.path().join("bin/initdb").is_file());
        if !installed {
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/postgres/scratch-cluster");
        let dir = PathBuf::from(format!("/tmp/lambda-faults-pg-{}-{seed}", std::process::id()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = OwnPostgres { script, dir, port };
        pg.run("start");
        Some(pg)
    }

    fn admin_url(&self) -> String {
        format!("postgres://lambda@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, command: &str) {
        let out = std::process::Command::new(&self.script)
            .args([command, self.dir.to_str().unwrap(), &self.port.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "scratch-cluster {command}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.run("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Injects `fault` and undoes it (restart, SIGCONT, leave) before returning, after a seeded wait; then
/// checks that no process exited by itself.
async fn inject(
    fault: Fault,
    procs: &mut [Process],
    broker: &mut Broker,
    pg: Option<&OwnPostgres>,
    config_path: &std::path::Path,
    dir: &std::path::Path,
    rng: &mut rand::rngs::StdRng,
) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
    let pause = Duration::from_millis(rng.random_range(0..1_500));
    match fault {
        Fault::Kill(i) => {
            procs[i].kill9();
            tokio::time::sleep(pause).await;
            procs[i].start();
        }
        Fault::BrokerRestart => {
            broker.kill9();
            tokio::time::sleep(pause).await;
            broker.start();
        }
        Fault::Zombie(i) => {
            procs[i].signal(Signal::SIGSTOP);
            // past the 3 s session timeout: the group moves its partitions to the other member
            tokio::time::sleep(Duration::from_millis(4_500) + pause).await;
            procs[i].signal(Signal::SIGCONT);
        }
        Fault::StoreOutage => {
            let pg = pg.expect("an outage only on the test's own PostgreSQL");
            pg.run("stop");
            tokio::time::sleep(Duration::from_millis(2_000) + 2 * pause).await;
            pg.run("start");
            // the layers' store writes retry with backoff (up to 5 s apart): let them reach the server again
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        Fault::LongStoreOutage => {
            let pg = pg.expect("an outage only on the test's own PostgreSQL");
            pg.run("stop");
            // a speed member restarted meanwhile must wait for the store (its start, and the other
            // member's take-over of its partitions, read the store)
            tokio::time::sleep(Duration::from_secs(3)).await;
            let member = rng.random_range(SPEED_A..=SPEED_B);
            procs[member].kill9();
            procs[member].start();
            tokio::time::sleep(Duration::from_secs(33) + pause).await;
            pg.run("start");
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        Fault::KillInBatchRun => {
            let runs = |p: &Process| p.log_text().matches("batch run started").count();
            let (before, typical) = (runs(&procs[BATCH]), last_run_seconds(&procs[BATCH].log_text()).unwrap_or(0.5));
            let deadline = Instant::now() + Duration::from_secs(60);
            while runs(&procs[BATCH]) == before {
                assert!(Instant::now() < deadline, "no batch run started in 60 s: {}", procs[BATCH].log_text());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let into = Duration::from_secs_f64(typical * rng.random_range(0.0..1.0));
            tokio::time::sleep(into).await;
            procs[BATCH].kill9();
            say!(
                "  the batch run was killed {} ms after its start (the last run took {typical:.3} s)",
                into.as_millis()
            );
            tokio::time::sleep(pause).await;
            procs[BATCH].start();
        }
        Fault::Rebalance => {
            let mut third = Process::new("speed-c", &["speed"], config_path, dir);
            third.start();
            tokio::time::sleep(Duration::from_millis(4_000) + pause).await;
            let status = third.terminate(Duration::from_secs(30));
            assert!(status.success(), "the third speed member exited with {status}: {}", third.log_text());
        }
    }
    procs.iter_mut().for_each(Process::assert_running);
}

/// The roster: index -> (name, subcommand).
const SPEED_A: usize = 0;
const SPEED_B: usize = 1;
const BATCH: usize = 3;
const ROSTER: [&str; 5] = ["speed-a", "speed-b", "archive", "batch", "serve"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_a_real_broker_lose_nothing_and_count_nothing_twice() {
    let seeds: Vec<u64> = std::env::var("LAMBDA_FAULT_SEEDS")
        .unwrap_or_else(|_| "1,2,4".into())
        .split(',')
        .map(|s| s.trim().parse().expect("LAMBDA_FAULT_SEEDS: comma-separated integers"))
        .collect();
    for seed in seeds {
        if !run_seed(seed).await {
            return; // skipped: no broker binary
        }
    }
}

/// Runs one seed's schedule; `false` when skipped.
async fn run_seed(seed: u64) -> bool {
    let started = Instant::now();
    let broker_dir = tempfile::tempdir().unwrap();
    let Some(mut broker) = Broker::start_in(broker_dir.path(), "faults_on_a_real_broker") else { return false };
    broker.create_topic("events", PARTITIONS).await;
    say!("fault seed {seed}: tansu at {}", broker.brokers());

    // a killed batch run holds the lease until it expires: a short ttl (renewed every third of it)
    let overrides = format!(
        "{}[batch]\nlease_ttl = \"3s\"\n[kafka.producer]\n\"enable.idempotence\" = \"true\"\n",
        support::CRASH_CONFIG
    );
    // the store: PostgreSQL of this test's own (an outage is one of the faults), else a SQLite file
    let pg = OwnPostgres::start(seed);
    let store_url = match &pg {
        Some(pg) => Some(common::store::create_scratch_postgres_database(&pg.admin_url(), "faults").await.unwrap()),
        None => {
            say!("fault seed {seed}: no PostgreSQL server binaries: SQLite store, no store outage");
            None
        }
    };
    let h = Harness::start_on_brokers(&broker.brokers(), PARTITIONS, &overrides, store_url).await;
    let mut config = h.config.clone();
    config.serve.listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config_path = h.dir.path().join("lambda.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let dir = h.dir.path();
    let mut procs = [
        Process::new(ROSTER[0], &["speed"], &config_path, dir),
        Process::new(ROSTER[1], &["speed"], &config_path, dir),
        Process::new(ROSTER[2], &["archive"], &config_path, dir),
        Process::new(ROSTER[3], &["batch", "schedule", "--cron", "*/4 * * * * *"], &config_path, dir),
        Process::new(ROSTER[4], &["serve"], &config_path, dir),
    ];
    let api = format!("http://{}", config.serve.listen);

    // the producer, in chunks; `queued` is the end of the chunk being sent (an upper bound of what any
    // layer can have read). Its last chunk waits until the phase's faults are done, so production spans
    // them whatever they last.
    let rows = Arc::new(truth::read_sample());
    let messages = sample_messages(&h.config);
    assert_eq!(messages.len(), rows.len());
    let half = messages.len() / 2;
    // its own generator, so the fault schedule of a seed stays what it was before bad input was added
    let mut bad_rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xbad);
    let streams = [with_bad_input(&messages[..half], &mut bad_rng), with_bad_input(&messages[half..], &mut bad_rng)];
    let bad_injected: usize = streams.iter().flatten().filter(|(_, good)| !good).count();
    say!("fault seed {seed}: {bad_injected} bad records mixed into the stream");
    // counts good records only: `rows[..queued]` is the truth bound
    let queued = Arc::new(AtomicUsize::new(0));
    let produce = |phase: usize| {
        let (kafka, queued, part) = (h.config.kafka.clone(), queued.clone(), streams[phase].clone());
        let (faults_done, mut gate) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let chunks: Vec<_> = part.chunks(250).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                if i + 1 == chunks.len() {
                    let _ = (&mut gate).await;
                }
                queued.fetch_add(chunk.iter().filter(|(_, good)| *good).count(), Ordering::SeqCst);
                let none = tokio_util::sync::CancellationToken::new();
                let chunk: Vec<Outgoing> = chunk.iter().map(|(m, _)| m.clone()).collect();
                let sent = lambda::produce::send(&kafka, &chunk, None, &none).await.expect("the producer delivers");
                assert_eq!(sent as usize, chunk.len());
                tokio::time::sleep(Duration::from_millis(1_400)).await;
            }
        });
        (task, faults_done)
    };

    // the poller: no cell above the ground truth of the records queued so far, at any moment
    let stop = tokio_util::sync::CancellationToken::new();
    let poller = {
        let (rows, queued, stop, api) = (rows.clone(), queued.clone(), stop.clone(), api.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let (mut polls, mut unreachable) = (0u64, 0u64);
            while !stop.is_cancelled() {
                match support::try_answers(&http, &api).await {
                    Ok((answer, _, _)) => {
                        let bound = truth::expected(&rows[..queued.load(Ordering::SeqCst)]);
                        for (cell, &(count, sum)) in &answer {
                            let (max_count, _) = bound.get(cell).copied().unwrap_or((0, 0));
                            assert!(
                                count <= max_count,
                                "seed {seed}: {cell:?} counts {count} (sum {sum}) but at most {max_count} records of it were produced"
                            );
                        }
                        polls += 1;
                    }
                    Err(_) => unreachable += 1,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (polls, unreachable)
        })
    };

    // the schedule: every fault kind once in a seeded order, the batch scheduler's kill in the second
    // phase (it runs only then), and one more at random in each phase
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kinds: Vec<Fault> = (0..ROSTER.len()).filter(|&i| i != BATCH).map(Fault::Kill).collect();
    kinds.extend([Fault::BrokerRestart, Fault::Zombie(rng.random_range(SPEED_A..=SPEED_B)), Fault::Rebalance]);
    if pg.is_some() {
        kinds.push(Fault::StoreOutage);
    }
    kinds.shuffle(&mut rng);
    let mut phase2 = kinds.split_off(kinds.len() / 2);
    let mut phase1 = kinds;
    phase2.insert(rng.random_range(0..=phase2.len()), Fault::KillInBatchRun);
    if pg.is_some() {
        phase2.insert(rng.random_range(0..=phase2.len()), Fault::LongStoreOutage);
    }
    let own_store = pg.is_some();
    let mut random_fault = |batch: bool| match rng.random_range(0..5) {
        0 => Fault::Kill(if batch { rng.random_range(0..ROSTER.len()) } else { [0, 1, 2, 4][rng.random_range(0..4)] }),
        1 => Fault::BrokerRestart,
        2 => Fault::Rebalance,
        3 if own_store => Fault::StoreOutage,
        _ => Fault::Zombie(rng.random_range(SPEED_A..=SPEED_B)),
    };
    phase1.push(random_fault(false));
    phase2.push(random_fault(true));
    say!("fault seed {seed}: phase 1 {phase1:?}; phase 2 {phase2:?}");
    let injected = phase1.len() + phase2.len();

    // phase 1: the first half, no batch run: the speed view alone must be exact at its end
    for p in procs.iter_mut().filter(|p| p.role[0] != "batch") {
        p.start();
    }
    let (producer, faults_done) = produce(0);
    for fault in &phase1 {
        inject(*fault, &mut procs, &mut broker, pg.as_ref(), &config_path, dir, &mut rng).await;
        say!("fault seed {seed}: {fault:?} done at {:.1}s", started.elapsed().as_secs_f64());
    }
    let _ = faults_done.send(()); // a producer that panicked shows below
    producer.await.unwrap();
    let first = truth::expected(&rows[..half]);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok((actual, sources, generation)) = support::try_answers(&http, &api).await {
            if actual == first {
                assert_eq!(generation, None, "seed {seed}: no batch run in phase 1");
                assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["speed"], "seed {seed}");
                break;
            }
            assert!(Instant::now() < deadline, "seed {seed}: the speed view alone: {}", truth::diff(&first, &actual));
        }
        assert!(Instant::now() < deadline, "seed {seed}: the server never answered after phase 1");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    say!("fault seed {seed}: the speed view alone is exact after phase 1 ({:.1}s)", started.elapsed().as_secs_f64());

    // phase 2: the batch scheduler joins; the second half
    procs[BATCH].start();
    let (producer, faults_done) = produce(1);
    for fault in &phase2 {
        inject(*fault, &mut procs, &mut broker, pg.as_ref(), &config_path, dir, &mut rng).await;
        say!("fault seed {seed}: {fault:?} done at {:.1}s", started.elapsed().as_secs_f64());
    }
    let _ = faults_done.send(()); // a producer that panicked shows below
    producer.await.unwrap();

    // the end: the serve process answers the ground truth from a manifest whose cutoffs are the log ends
    let expected = truth::expected(&rows);
    let ends = h.log_end().await;
    assert_eq!(
        ends.values().sum::<i64>(),
        (rows.len() + bad_injected) as i64,
        "seed {seed}: the idempotent producer wrote each record once"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let manifest: Option<serde_json::Value> =
            async { http.get(format!("{api}/v1/manifest")).send().await.ok()?.json().await.ok() }.await;
        let covers = manifest
            .as_ref()
            .is_some_and(|m| ends.iter().all(|(p, end)| m["cutoffs"][p.to_string()].as_i64() == Some(*end)));
        if covers {
            let (actual, sources, _) = support::answers(&http, &api).await;
            assert_eq!(actual, expected, "seed {seed}: {}", truth::diff(&expected, &actual));
            assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["batch"], "seed {seed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: no manifest reached the log ends {ends:?}; last {manifest:?}; batch log:\n{}",
            procs[3].log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // the dead letters: exactly the bad records, in both outputs, each with its reason
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut counts = Vec::new();
        for consumer in ["speed", "archive"] {
            let letters = common::dead_letter::read_all(&h.config.archive.root, consumer).unwrap();
            for l in &letters {
                let payload = l.payload.as_ref().map(|p| p.as_bytes().to_vec()).unwrap_or_else(|| {
                    let hex = l.payload_hex.as_deref().unwrap_or_default();
                    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
                });
                assert!(BAD_INPUT.contains(&payload.as_slice()), "seed {seed}: {consumer} dead-lettered {l:?}");
                assert!(!l.reason.trim().is_empty(), "seed {seed}: a dead letter without a reason: {l:?}");
            }
            let distinct: std::collections::BTreeSet<(i32, i64)> =
                letters.iter().map(|l| (l.partition, l.offset)).collect();
            assert!(distinct.len() <= bad_injected, "seed {seed}: {consumer}: {} dead letters", distinct.len());
            counts.push((consumer, distinct.len(), letters.len()));
        }
        if counts.iter().all(|&(_, distinct, _)| distinct == bad_injected) {
            say!("fault seed {seed}: dead letters (consumer, records, lines): {counts:?}; {bad_injected} injected");
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: dead letters {counts:?}, {bad_injected} injected");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    stop.cancel();
    let (polls, unreachable) = poller.await.unwrap();
    assert!(polls >= 20, "seed {seed}: the poller read the API only {polls} times");
    say!(
        "fault seed {seed}: exact after {injected} faults in {:.0}s; {polls} polls never above the truth ({unreachable} while the server was down); starts {:?}, broker {}",
        started.elapsed().as_secs_f64(),
        procs.iter().map(|p| p.starts).collect::<Vec<_>>(),
        broker.starts
    );
    let warnings: Vec<(String, usize)> = procs
        .iter()
        .map(|p| {
            (p.role[0].clone(), p.log_text().lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count())
        })
        .collect();
    say!("fault seed {seed}: warning/error log lines per process (the faults, ridden out): {warnings:?}");
    for p in &mut procs {
        p.kill9();
    }
    h.shutdown().await;
    true
}
