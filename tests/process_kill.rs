//! The truest crash: `lambda speed` and `lambda archive` run as separate processes (reaching the mock
//! cluster in this test process over TCP, sharing the SQLite file or a PostgreSQL database) and are killed with SIGKILL at random
//! points while events are produced — a blocking file write or a store transaction dies mid-way, nothing
//! leaves the consumer group. After restarts the speed view and the batch view equal the ground truth.

mod support;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::process::Process;
use support::{sample_messages, truth, Harness};

const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_processes_lose_nothing_and_count_nothing_twice() {
    sigkilled_processes(Harness::start_with(3, support::CRASH_CONFIG).await).await;
}

/// The same with the processes sharing a PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_processes_on_postgres() {
    if let Some(h) = Harness::start_on_postgres("process_kill", 3, support::CRASH_CONFIG).await {
        sigkilled_processes(h).await;
    }
}

async fn sigkilled_processes(h: Harness) {
    let rows = truth::read_sample();
    let config_path = h.dir.path().join("lambda.toml");
    std::fs::write(&config_path, toml::to_string(&h.config).unwrap()).unwrap();
    let mut speed = Process::new("speed", &["speed"], &config_path, h.dir.path());
    let mut archive = Process::new("archive", &["archive"], &config_path, h.dir.path());
    speed.start();
    archive.start();

    let messages = sample_messages(&h.config);
    let producer = h.spawn_producer(&messages, 250.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for round in 0..5 {
        let (speed_since, archive_since) = (h.speed_progress().await, h.archive_progress());
        h.wait_progress(true, speed_since, PATIENCE).await;
        h.wait_progress(false, archive_since, PATIENCE).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..900))).await;
        match round % 3 {
            0 => speed.kill9(),
            1 => archive.kill9(),
            _ => {
                speed.kill9();
                archive.kill9();
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        if speed.child.is_none() {
            speed.start();
        }
        if archive.child.is_none() {
            archive.start();
        }
    }
    assert!(!producer.is_finished(), "production spans every kill; slow the producer down");
    producer.await.unwrap();
    assert_eq!((speed.starts, archive.starts), (4, 4), "each process killed three times");

    let expected = truth::expected(&rows);
    h.wait_sealed_and_archived(PATIENCE).await;
    let sources = h.wait_for_answers(&expected, PATIENCE).await;
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["speed"], "no batch run yet: the speed view alone");
    let manifest = h.batch().await;
    assert_eq!(manifest.cutoffs, h.log_end().await);
    let (actual, sources, _) = h.answers().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["batch"]);
    speed.kill9();
    archive.kill9();
    h.shutdown().await;
}
