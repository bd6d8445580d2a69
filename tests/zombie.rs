//! A zombie speed-layer member: a real `lambda speed` process frozen with SIGSTOP past its session timeout
//! while it holds applied-but-unflushed records of its open segment. Another member takes the partition and
//! seals that range with its own (smaller) segment limits. When the zombie wakes (SIGCONT) its overdue flush
//! targets a segment that is sealed shorter: the speed view must stay exact all the same (issue 9, item 4).

mod support;

use std::time::Duration;

use support::process::{Process, Signal};
use support::{sample_messages, truth, Harness};

const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_member_cannot_write_past_another_members_seal() {
    let rows = truth::read_sample();
    let mut h = Harness::start(1).await;
    let messages = sample_messages(&h.config);
    // the zombie: one big segment, no idle seal, a slow flush so it freezes holding unflushed records
    let zombie_config = h.config_file(
        "zombie.toml",
        "[speed]\nsegment_max_records = 1000\nsegment_max_idle = \"60s\"\nflush_interval = \"2s\"\n",
    );
    let mut zombie = Process::new("zombie", &["speed"], &zombie_config, h.dir.path());
    zombie.start();
    h.produce(&messages[..400], None).await;
    h.wait_for_speed_progress(400, PATIENCE, || format!("the zombie never flushed; log:\n{}", zombie.log_text())).await;
    h.produce(&messages[400..500], None).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // applied, most likely not flushed yet
    zombie.signal(Signal::SIGSTOP);

    // the other member: after the zombie's session times out it replays from offset 0 and seals
    // [0,150) [150,300) [300,450), then [450,500) when idle
    h.start_speed_with(h.config_with("[speed]\nsegment_max_records = 150\nsegment_max_idle = \"1s\"\n"));
    h.wait_sealed(PATIENCE).await;
    let seals: Vec<(i64, i64)> = h.store.seals("events").await.unwrap().iter().map(|s| (s.start, s.end)).collect();
    assert_eq!(seals.first(), Some(&(0, 150)), "{seals:?}");

    zombie.signal(Signal::SIGCONT);
    h.produce(&messages[500..700], None).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the zombie's overdue flush, its rejoin
    h.wait_sealed(PATIENCE).await;
    let expected = truth::expected(&rows[..700]);
    h.wait_for_answers(&expected, PATIENCE).await;
    zombie.kill9();
    h.shutdown().await;
}
