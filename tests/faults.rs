//! Issue 12: faults against a real Kafka-protocol broker process. tansu (SQLite storage) runs as its own
//! process; two `lambda speed` members of one consumer group, `lambda archive`, `lambda batch schedule` and
//! `lambda serve` run as processes on one store (PostgreSQL when `LAMBDA_TEST_POSTGRES` names a server,
//! else a shared SQLite file). While the sample is produced (idempotent producer), faults chosen by a
//! logged seed hit them: SIGKILL of every process kind and restart, a broker SIGKILL and restart, a speed
//! member frozen with SIGSTOP past its session timeout (a zombie whose partitions move) and woken. A poller
//! reads every view from the `serve` process throughout and checks that no cell ever exceeds the ground
//! truth of the records queued so far (the sample has no duplicate events, so any excess is a double
//! count). At the end the answers equal the ground truth exactly, from a manifest whose cutoffs are the
//! log ends.
//!
//! Seeds: `LAMBDA_FAULT_SEEDS` (comma-separated; default `1,2,3`). Without a tansu binary the test prints
//! SKIPPED and passes, unless `LAMBDA_REQUIRE_TANSU=1` (see `support::broker`).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// The roster: index -> (name, subcommand).
const SPEED_A: usize = 0;
const SPEED_B: usize = 1;
const ROSTER: [&str; 5] = ["speed-a", "speed-b", "archive", "batch", "serve"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_a_real_broker_lose_nothing_and_count_nothing_twice() {
    let seeds: Vec<u64> = std::env::var("LAMBDA_FAULT_SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
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
    let store_url = common::testing::scratch_postgres(&format!("faults_{seed}")).await;
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
    for p in &mut procs {
        p.start();
    }
    let api = format!("http://{}", config.serve.listen);

    // the producer, in chunks; `queued` is the end of the chunk being sent (an upper bound of what any
    // layer can have read)
    let rows = Arc::new(truth::read_sample());
    let messages = sample_messages(&h.config);
    assert_eq!(messages.len(), rows.len());
    let queued = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (kafka, queued) = (h.config.kafka.clone(), queued.clone());
        tokio::spawn(async move {
            for chunk in messages.chunks(250) {
                queued.fetch_add(chunk.len(), Ordering::SeqCst);
                let none = tokio_util::sync::CancellationToken::new();
                let sent = lambda::produce::send(&kafka, chunk, None, &none).await.expect("the producer delivers");
                assert_eq!(sent as usize, chunk.len());
                tokio::time::sleep(Duration::from_millis(1_200)).await;
            }
        })
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

    // the schedule: every fault kind at least once, in a seeded order, then two more at random
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut schedule: Vec<Fault> = (0..ROSTER.len()).map(Fault::Kill).collect();
    schedule.push(Fault::BrokerRestart);
    schedule.push(Fault::Zombie(if rng.random_bool(0.5) { SPEED_A } else { SPEED_B }));
    schedule.shuffle(&mut rng);
    for _ in 0..2 {
        schedule.push(match rng.random_range(0..3) {
            0 => Fault::Kill(rng.random_range(0..ROSTER.len())),
            1 => Fault::BrokerRestart,
            _ => Fault::Zombie(rng.random_range(SPEED_A..=SPEED_B)),
        });
    }
    say!("fault seed {seed}: schedule {schedule:?}");
    for fault in &schedule {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let pause = Duration::from_millis(rng.random_range(0..1_500));
        match *fault {
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
        }
        say!("fault seed {seed}: {fault:?} done at {:.1}s", started.elapsed().as_secs_f64());
    }
    assert!(!producer.is_finished(), "seed {seed}: production spans every fault; slow the producer down");
    producer.await.unwrap();

    // the end: the serve process answers the ground truth from a manifest whose cutoffs are the log ends
    let expected = truth::expected(&rows);
    let ends = h.log_end().await;
    assert_eq!(
        ends.values().sum::<i64>(),
        rows.len() as i64,
        "seed {seed}: the idempotent producer wrote each record once"
    );
    let http = reqwest::Client::new();
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
    stop.cancel();
    let (polls, unreachable) = poller.await.unwrap();
    assert!(polls >= 20, "seed {seed}: the poller read the API only {polls} times");
    say!(
        "fault seed {seed}: exact after {} faults in {:.0}s; {polls} polls never above the truth ({unreachable} while the server was down); starts {:?}, broker {}",
        schedule.len(),
        started.elapsed().as_secs_f64(),
        procs.iter().map(|p| p.starts).collect::<Vec<_>>(),
        broker.starts
    );
    for p in &mut procs {
        p.kill9();
    }
    h.shutdown().await;
    true
}
