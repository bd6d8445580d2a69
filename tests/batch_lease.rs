//! The batch lease under a stalled run (issue 9, item 3): run A, a real `lambda batch run` process, is frozen
//! with SIGSTOP right after it takes the lease; its lease (ttl 1 s) expires; run B takes over and publishes.
//! When A wakes it must fail with a clear error and neither publish nor delete anything: the published
//! manifest's rows keep equal the ground truth of its cutoffs, and generation numbers are never reused.

mod support;

use std::time::{Duration, Instant};

use support::process::{Process, Signal};
use support::{sample_messages, truth, Harness};

const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_lost_its_lease_can_neither_publish_nor_delete() {
    let rows = truth::read_sample();
    let mut h = Harness::start_with(1, "[batch]\nlease_ttl = \"1s\"\n").await;
    let messages = sample_messages(&h.config);
    h.start_speed();
    h.start_archiver();
    h.produce(&messages[..5_000], None).await;
    h.wait_sealed_and_archived(PATIENCE).await;

    let config = h.config_file("lambda.toml", "");
    let mut a = Process::new("batch-a", &["batch", "run"], &config, h.dir.path());
    a.start();
    let deadline = Instant::now() + PATIENCE;
    while !a.log_text().contains("batch run started") {
        assert!(Instant::now() < deadline, "run A never started; log:\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    a.signal(Signal::SIGSTOP);
    let frozen_at = Instant::now();
    assert!(
        h.store.current_manifest().await.unwrap().is_none(),
        "run A published before it was frozen: the test missed its window; log:\n{}",
        a.log_text()
    );
    let a_generation: i64 = a
        .log_text()
        .lines()
        .find(|l| l.contains("batch run started"))
        .and_then(|l| l.split("generation=").nth(1))
        .and_then(|g| g.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|g| g.parse().ok())
        .expect("the start line names the generation");

    // more events, sealed and archived, so B's cutoffs differ from A's
    h.produce(&messages[5_000..], None).await;
    h.wait_sealed_and_archived(PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(1_500).saturating_sub(frozen_at.elapsed())).await;
    let b = h.batch().await; // A's lease has expired: B takes it over
    assert_eq!(b.cutoffs, h.log_end().await);
    let expected = truth::expected(&rows);
    let (actual, _, _) = h.answers().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));

    a.signal(Signal::SIGCONT);
    let status = a.wait();
    let log = a.log_text();
    let current = h.store.current_manifest().await.unwrap().unwrap();
    assert_eq!(current.generation, b.generation, "A published nothing");
    // the store itself (the API keeps a published generation's rows in memory): B's rows, whole
    let q = common::store::RowQuery::all("by_type", common::view::Granularity::Day);
    let counted: i64 = h.store.batch_rows(b.generation, &q).await.unwrap().iter().map(|r| r.metrics[0] as i64).sum();
    assert_eq!(counted, rows.len() as i64, "the published generation's rows in the store count every event");
    let (actual, _, _) = h.answers().await;
    assert_eq!(actual, expected, "A deleted or overwrote nothing: {}", truth::diff(&expected, &actual));
    assert!(!status.success(), "run A must fail; log:\n{log}");
    assert!(log.contains("lost the batch lease"), "run A names the lost lease; log:\n{log}");
    assert_ne!(b.generation, a_generation, "generation numbers are never reused");
    h.shutdown().await;
}
