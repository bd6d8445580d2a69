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

/// Issue 10, item 5: the four services as separate processes on one PostgreSQL store — `lambda speed`,
/// `lambda archive`, `lambda batch schedule` and `lambda serve` — each SIGKILLed and restarted in turn
/// while events are produced (the batch job possibly mid-run, the server mid-request). Each process serves
/// its own Prometheus metrics (`--metrics-listen`). At the end the answers of the `serve` process equal the
/// ground truth, first whatever mix of batch and speed rows they come from, then from a manifest that
/// covers every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_on_postgres_survive_sigkill() {
    // a killed batch run holds the lease until it expires: a short ttl (renewed every third of it)
    let overrides = format!("{}[batch]\nlease_ttl = \"3s\"\n", support::CRASH_CONFIG);
    let Some(h) = Harness::start_on_postgres("four_services", 3, &overrides).await else { return };
    let rows = truth::read_sample();
    let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = h.config.clone();
    config.serve.listen = free_port();
    let config_path = h.dir.path().join("lambda.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let metrics: Vec<std::net::SocketAddr> = (0..3).map(|_| free_port()).collect();
    let with_metrics = |role: &[&str], addr: std::net::SocketAddr| -> Vec<String> {
        role.iter().map(|s| s.to_string()).chain(["--metrics-listen".to_owned(), addr.to_string()]).collect()
    };
    let (speed_args, archive_args, batch_args) = (
        with_metrics(&["speed"], metrics[0]),
        with_metrics(&["archive"], metrics[1]),
        with_metrics(&["batch", "schedule", "--cron", "*/3 * * * * *"], metrics[2]),
    );
    let dir = h.dir.path();
    let mut procs = [
        Process::new("speed", &as_strs(&speed_args), &config_path, dir),
        Process::new("archive", &as_strs(&archive_args), &config_path, dir),
        Process::new("batch", &as_strs(&batch_args), &config_path, dir),
        Process::new("serve", &["serve"], &config_path, dir),
    ];
    for p in &mut procs {
        p.start();
    }
    let http = reqwest::Client::new();
    let api = format!("http://{}", config.serve.listen);

    let messages = sample_messages(&h.config);
    let producer = h.spawn_producer(&messages, 250.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(29);
    for round in 0..8 {
        let speed_since = h.speed_progress().await;
        h.wait_progress(true, speed_since, PATIENCE).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1_500))).await;
        let victim = &mut procs[round % 4];
        victim.kill9();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
        victim.start();
    }
    assert!(!producer.is_finished(), "production spans every kill; slow the producer down");
    producer.await.unwrap();
    assert_eq!(procs.iter().map(|p| p.starts).collect::<Vec<_>>(), vec![3, 3, 3, 3], "each killed twice");

    // the server process answers the ground truth, then from a manifest that covers every record
    let expected = truth::expected(&rows);
    let deadline = std::time::Instant::now() + 2 * PATIENCE;
    let ends = h.log_end().await;
    loop {
        let answered = async {
            let manifest: serde_json::Value =
                http.get(format!("{api}/v1/manifest")).send().await.ok()?.json().await.ok()?;
            let covers = ends.iter().all(|(p, end)| manifest["cutoffs"][p.to_string()].as_i64() == Some(*end));
            let (actual, _, _) = support::answers(&http, &api).await;
            Some((covers, actual))
        };
        if let Some((covers, actual)) = answered.await {
            if covers {
                assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no manifest reached the log end {ends:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // each process exports its own metrics
    for (addr, metric) in metrics.iter().zip(["speed_records_total", "archive_records_total", "batch_runs_total"]) {
        let text = http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(text.contains(metric), "{metric} missing at {addr}:\n{text}");
    }
    for p in &mut procs {
        p.kill9();
    }
    h.shutdown().await;
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
