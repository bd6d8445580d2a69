//! Where a speed-layer member without a committed offset resumes on the recorded seal chain (DESIGN.md §4):
//! at the start of the chain's last seal, so a seal whose recorder crashed before finalizing it is replayed
//! and finalized; at its end when retention has deleted the seal's start, since a replay of what is left
//! would overwrite the recorder's counts with partial ones. Its own test binary: the retention case asserts
//! a process-global counter exactly, which a test running beside it could move.

mod support;

use std::time::Duration;

use common::store::{Seal, SpeedRow, ViewKey};
use lambda::produce::Outgoing;
use support::{sample_messages, truth, Harness};

const PATIENCE: Duration = Duration::from_secs(90);

/// Segment limits that never seal on their own within a test: only the seals a test records exist.
const NO_SEALS: &str =
    "[speed]\nsegment_max_records = 100000000\nsegment_max_age = \"1h\"\nsegment_max_idle = \"1h\"\n";

/// Rows of the segment starting at `start` in partition 0, as (cell, upto_offset, metrics), sorted by cell.
fn segment(rows: Vec<SpeedRow>, start: i64) -> Vec<(ViewKey, i64, Vec<i128>)> {
    let mut out: Vec<_> = rows
        .into_iter()
        .filter(|r| r.partition == 0 && r.segment_start == start)
        .map(|r| (r.key, r.upto_offset, r.metrics))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `messages` as new events: every `user_session` gets the prefix `r<round>-`, so the content dedup key
/// differs from every other round's.
fn distinct(messages: &[Outgoing], round: i64) -> Vec<Outgoing> {
    messages
        .iter()
        .map(|m| {
            let mut event: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&m.payload).unwrap();
            let session = event["user_session"].as_str().unwrap_or_default();
            event["user_session"] = format!("r{round}-{session}").into();
            Outgoing { key: m.key.clone(), payload: serde_json::to_vec(&event).unwrap() }
        })
        .collect()
}

/// A member recorded the seal of [0, 300) and crashed before finalizing it (its last flush had reached
/// offset 100), before any offset was committed. The next member, finding no committed offset, must
/// replay and finalize that sealed segment, not resume past it: otherwise records 100..300 are missing
/// from the speed view for good (seen as a flaky `speed_view_alone_is_exact_across_crashes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_recorded_before_a_crash_is_finalized_by_the_next_member() {
    let rows = truth::read_sample();
    let mut h = Harness::start_with(1, NO_SEALS).await;
    let messages = sample_messages(&h.config);
    h.start_speed();
    h.produce(&messages[..100], None).await;
    h.wait_for_speed_progress(100, PATIENCE, || "no flush up to offset 100".into()).await;
    h.kill_speed().await;
    // the crashed member's seal: recorded, never finalized, nothing committed
    let seal = Seal { partition: 0, start: 0, end: 300 };
    assert_eq!(h.store.record_seal("events", seal).await.unwrap(), Some(seal));
    h.produce(&messages[100..500], None).await;
    h.start_speed();
    h.wait_for_answers(&truth::expected(&rows[..500]), PATIENCE).await;
    let finalized = segment(h.all_speed_rows().await, 0);
    assert!(!finalized.is_empty());
    let short: Vec<_> = finalized.iter().filter(|(_, upto, _)| *upto != 300).collect();
    assert!(short.is_empty(), "every row of the sealed segment [0, 300) carries upto_offset 300: {short:?}");
    h.shutdown().await;
}

/// Rows of segment 0 of partition 0, every view and granularity, whose `upto_offset` is past `end`.
async fn rows_past(h: &Harness, end: i64) -> usize {
    let mut n = 0;
    for (view, _) in truth::VIEWS {
        for (g, _) in truth::GRANULARITIES {
            let q = common::store::RowQuery::all(view, g.parse().unwrap());
            let rows = h.store.speed_rows(&q).await.unwrap();
            n += rows.iter().filter(|r| r.partition == 0 && r.segment_start == 0 && r.upto_offset > end).count();
        }
    }
    n
}

/// How the next member finds the recorded seal of the retention scenarios.
#[derive(Clone, Copy)]
enum Found {
    /// No committed offset: it resumes at the start of the chain's last seal.
    NoCommit,
    /// The group's committed offset is the seal's start (a commit after it was lost).
    CommittedAtStart,
}

/// A member read and flushed the whole log (`3n` records) into one open segment and crashed; a member
/// with smaller limits recorded the seal `[0, 3n - short)` and crashed before finalizing it; then retention
/// deleted the log's front (librdkafka's mock cluster keeps about 5 MB per partition). The next member
/// must skip that seal: a replay of its retained tail would finalize partial counts over the recorder's at
/// the same `upto_offset` and report records the recorder had read as lost. The rows of segment 0 that
/// count past the seal end are deleted (else records `[3n - short, 3n)` count twice), the others stay.
async fn retention_deleted_the_start_of_a_seal(found: Found, short: i64) {
    let mut h = Harness::start_with(1, NO_SEALS).await;
    let messages = sample_messages(&h.config);
    let n = messages.len() as i64;
    h.start_speed();
    for round in 1..=3 {
        // about 3 MB each, new events each round (a repeat would be deduplicated and flush nothing); the
        // member reads each round before the next can push it out of the log
        h.produce(&distinct(&messages, round), None).await;
        h.wait_for_speed_progress(round * n, PATIENCE, || format!("round {round} not flushed")).await;
    }
    assert_eq!(h.counter("records_lost_to_retention_total").await, 0.0, "the member kept up with the log");
    h.kill_speed().await;
    let low = h.low_watermark(0).await;
    let end = 3 * n - short;
    assert!(low > 0 && low < end, "the mock cluster deleted the log's front, not the seal's end (log starts at {low})");
    let seal = Seal { partition: 0, start: 0, end };
    assert_eq!(h.store.record_seal("events", seal).await.unwrap(), Some(seal));
    let recorded = segment(h.all_speed_rows().await, 0);
    assert_eq!(recorded.iter().map(|(_, upto, _)| *upto).max(), Some(3 * n), "flushed to the log end");
    let past_before = rows_past(&h, end).await;
    if let Found::CommittedAtStart = found {
        h.commit_speed_offset(0, 0).await;
    }

    h.start_speed();
    h.produce(&messages[..100], None).await;
    h.wait_for_speed_progress(3 * n + 100, PATIENCE, || "the next member did not read past the seal".into()).await;
    let kept: Vec<_> = recorded.iter().filter(|(_, upto, _)| *upto <= end).cloned().collect();
    let after = segment(h.all_speed_rows().await, 0);
    assert!(!kept.is_empty());
    if after != kept {
        let changed: Vec<_> = after.iter().filter(|row| !kept.contains(row)).take(3).collect();
        panic!(
            "segment 0 holds {} rows, expected the {} recorded up to its seal end; changed or past it: {changed:?}",
            after.len(),
            kept.len()
        );
    }
    assert_eq!(h.counter("records_lost_to_retention_total").await, 0.0, "nothing was lost to retention");
    assert!(h.counter("speed_seals_skipped_total").await >= 1.0);
    // rows past the seal end also held records of the seal: reported (the other scenarios trim none)
    assert_eq!(rows_past(&h, end).await, 0);
    assert_eq!(h.counter("speed_rows_trimmed_total").await, past_before as f64, "every deleted row is reported");
    let tail = segment(h.all_speed_rows().await, end);
    assert_eq!(
        tail.iter().map(|(_, upto, _)| *upto).max(),
        Some(3 * n + 100),
        "the next segment starts at the seal end"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_whose_start_was_deleted_by_retention_is_not_replayed() {
    retention_deleted_the_start_of_a_seal(Found::NoCommit, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_at_the_committed_offset_whose_start_was_deleted_is_not_replayed() {
    retention_deleted_the_start_of_a_seal(Found::CommittedAtStart, 0).await;
}

/// The skipped seal is shorter than what its segment's rows count (written before it was recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_seal_keeps_no_row_past_its_end() {
    retention_deleted_the_start_of_a_seal(Found::NoCommit, 500).await;
}
