//! End-to-end scenarios on the real e-commerce sample (`../shared/data/ecommerce/2019-Nov-sample.csv`):
//! mock Kafka cluster, speed layer, archiver, batch job and HTTP API, compared with a ground truth computed
//! independently from the CSV (`support/truth.rs`).

mod support;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::{sample_messages, truth, Harness};

const PATIENCE: Duration = Duration::from_secs(90);

/// (a) speed view only, (b) after a batch run, (c) batch + speed after more events, exact every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_speed_then_batch_then_mixed() {
    ground_truth(Harness::start(3).await).await;
}

/// The same on a PostgreSQL store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_on_postgres() {
    if let Some(h) = Harness::start_on_postgres("ground_truth", 3, "").await {
        ground_truth(h).await;
    }
}

/// The same on ScyllaDB/Cassandra (`SCYLLA_NODES`; one SKIPPED line without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_on_scylla() {
    if let Some(h) = Harness::start_on_scylla("ground_truth", 3, "").await {
        ground_truth(h).await;
    }
}

async fn ground_truth(mut h: Harness) {
    let rows = truth::read_sample();
    assert_eq!(rows.len(), 10_034);
    let messages = sample_messages(&h.config);
    let split = 7_000;
    h.start_speed();
    h.start_archiver();
    h.produce(&messages[..split], None).await;

    // (a) before any batch run: every row comes from the speed layer
    let expected_first = truth::expected(&rows[..split]);
    let sources = h.wait_for_answers(&expected_first, PATIENCE).await;
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["speed"], "{sources:?}");
    let (status, _) = h.get("/v1/manifest").await;
    assert_eq!(status, 404, "no manifest before the first batch run");

    // (b) after a batch run covering everything: every row comes from the batch view
    h.wait_sealed_and_archived(PATIENCE).await;
    let manifest = h.batch().await;
    let ends = h.log_end().await;
    assert_eq!(manifest.cutoffs, ends, "cutoffs reach the log end once everything is sealed and archived");
    assert_eq!(manifest.records_scanned, split as u64);
    assert_eq!(manifest.duplicates_removed, 0, "the sample has no duplicate rows");
    let (actual, sources, generation) = h.answers().await;
    assert_eq!(actual, expected_first, "{}", truth::diff(&expected_first, &actual));
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["batch"], "{sources:?}");
    assert_eq!(generation, Some(manifest.generation));

    // (c) more events after the batch run: batch and speed rows merge exactly
    h.produce(&messages[split..], None).await;
    let expected_all = truth::expected(&rows);
    let sources = h.wait_for_answers(&expected_all, PATIENCE).await;
    assert!(sources.contains_key("both") && sources.contains_key("batch"), "mixed sources expected: {sources:?}");
    // top-10 brands by revenue over a week, across batch and speed rows
    let (from, to) = (truth::unix_seconds("2019-11-11 00:00:00 UTC"), truth::unix_seconds("2019-11-18 00:00:00 UTC"));
    let want = truth::top_brands(&rows, from, to, 10);
    let (status, body) = h
        .get("/v1/views/by_brand?granularity=day&from=2019-11-11T00:00:00Z&to=2019-11-18T00:00:00Z&group_by=brand&order_by=sum_price&top=10")
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let got: Vec<(Option<String>, i64, i64)> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let brand = r["dims"]["brand"].as_str().map(str::to_owned);
            let count = r["metrics"]["count"].as_i64().unwrap();
            (brand, count, truth::decimal_micros(&r["metrics"]["sum_price"].to_string()))
        })
        .collect();
    assert_eq!(got, want, "top-10 brands by revenue over 2019-11-11..18");

    // and a second batch run absorbs the rest, still exact; a third run is idempotent
    h.wait_sealed_and_archived(PATIENCE).await;
    let second = h.batch().await;
    assert_eq!(second.generation, manifest.generation + 1);
    let after_second = h.all_speed_rows().await;
    let (actual, sources, _) = h.answers().await;
    assert_eq!(actual, expected_all, "{}", truth::diff(&expected_all, &actual));
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["batch"], "{sources:?}");
    let third = h.batch().await;
    assert_eq!((&third.cutoffs, &third.rows), (&second.cutoffs, &second.rows));
    // cleanup: keep_generations (2) generations stay, and the speed rows of segments below the *previous*
    // manifest's cutoffs are deleted (after the third run that is everything: the second reached the log end)
    assert_eq!(h.store.generations().await.unwrap(), vec![second.generation, third.generation]);
    assert!(after_second.iter().all(|r| r.segment_start >= manifest.cutoffs[&r.partition]), "absorbed by the first");
    assert!(
        after_second.iter().any(|r| r.segment_start < second.cutoffs[&r.partition]),
        "kept for readers of the first"
    );
    assert!(h.all_speed_rows().await.is_empty(), "absorbed by the second manifest");
    let (again, _, _) = h.answers().await;
    assert_eq!(again, expected_all);
    h.shutdown().await;
}

/// 5% of the events produced twice, copies up to 2000 messages later (segments hold 500 records, so many
/// copies land in a later segment): after a batch run the answers equal the deduplicated truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_removed_exactly() {
    let rows = truth::read_sample();
    let mut h = Harness::start(3).await;
    let options =
        lambda::produce::ProduceOptions { duplicates_pct: 5.0, duplicate_spread: 2_000, ..Default::default() };
    let (messages, copies) = lambda::produce::with_duplicates(sample_messages(&h.config), &options);
    assert!(copies > 400, "about 5% of 10034 rows, got {copies}");
    h.start_speed();
    h.start_archiver();
    h.produce(&messages, None).await;
    h.wait_sealed_and_archived(PATIENCE).await;

    // the speed view alone dedups within segments only, so it may count cross-segment copies
    let expected = truth::expected(&rows);
    let (speed_only, _, _) = h.answers().await;
    let total =
        |e: &truth::Expected| e.iter().filter(|(k, _)| k.0 == "by_type" && k.1 == "day").map(|(_, v)| v.0).sum::<i64>();
    assert!(total(&speed_only) > total(&expected), "some copies fall in a later segment");
    assert!(total(&speed_only) <= total(&expected) + copies as i64);

    let manifest = h.batch().await;
    assert_eq!(manifest.duplicates_removed, copies, "the manifest reports every removed copy");
    assert_eq!(manifest.records_scanned, messages.len() as u64);
    let (actual, _, _) = h.answers().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
    let (_, body) = h.get("/v1/manifest").await;
    assert!(body.contains(&format!("\"duplicates_removed\":{copies}")), "{body}");
    h.shutdown().await;
}

/// The speed layer and the archiver are aborted at random points, several times, while events are produced
/// (no flush, no commit on the way down) and restarted; a batch run happens in between. Each kill waits until
/// the victim has made progress since its restart, so it always dies owning partitions with work in memory.
/// The merged view, and the view after a final batch run, equal the truth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_under_crashes() {
    let rows = truth::read_sample();
    let mut h = Harness::start_with(3, support::CRASH_CONFIG).await;
    let messages = sample_messages(&h.config);
    h.start_speed();
    h.start_archiver();
    let producer = h.spawn_producer(&messages, 250.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut speed_kills, mut archive_kills) = (0, 0);
    for round in 0..6 {
        let speed_since = h.speed_progress().await;
        let archive_since = h.archive_progress();
        let which = round % 3; // 0: speed, 1: archiver, 2: both
        if which != 1 {
            h.wait_progress(true, speed_since, PATIENCE).await;
        }
        if which != 0 {
            h.wait_progress(false, archive_since, PATIENCE).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..900))).await;
        if which != 1 {
            h.kill_speed().await;
            speed_kills += 1;
        }
        if which != 0 {
            h.kill_archiver().await;
            archive_kills += 1;
        }
        if round == 3 {
            h.batch().await; // a batch run while layers are down and the log is half consumed
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        if which != 1 {
            h.start_speed();
        }
        if which != 0 {
            h.start_archiver();
        }
    }
    assert_eq!((speed_kills, archive_kills), (4, 4));
    assert!(!producer.is_finished(), "production spans every crash round; slow the producer down");
    assert_eq!(producer.await.unwrap(), messages.len() as u64);

    let expected = truth::expected(&rows);
    h.wait_sealed_and_archived(PATIENCE).await;
    h.wait_for_answers(&expected, PATIENCE).await;
    let manifest = h.batch().await;
    assert_eq!(manifest.cutoffs, h.log_end().await);
    assert_eq!(manifest.duplicates_removed, 0);
    assert_eq!(manifest.repeated_records_removed, 0, "the archiver resumes after its files: nothing archived twice");
    let (actual, sources, _) = h.answers().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["batch"]);
    h.shutdown().await;
}

/// The speed view alone (no batch run ever) is exactly-once across crashes of the speed layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speed_view_alone_is_exact_across_crashes() {
    let rows = truth::read_sample();
    let mut h = Harness::start_with(2, support::CRASH_CONFIG).await;
    let messages = sample_messages(&h.config);
    h.start_speed();
    let producer = h.spawn_producer(&messages, 300.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..5 {
        let since = h.speed_progress().await;
        h.wait_progress(true, since, PATIENCE).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..900))).await;
        h.kill_speed().await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        h.start_speed();
    }
    assert!(!producer.is_finished(), "production spans every crash round; slow the producer down");
    producer.await.unwrap();
    let expected = truth::expected(&rows);
    let sources = h.wait_for_answers(&expected, PATIENCE).await;
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["speed"]);
    h.shutdown().await;
}

/// Lines that are not JSON, have wrong types, lack or garble the event time land in the dead-letter files
/// of both consumers with a reason; everything else is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_to_dead_letter_and_the_rest_stays_exact() {
    let rows = truth::read_sample();
    let mut h = Harness::start(2).await;
    let good = sample_messages(&h.config);
    let n = 3_000;
    let bad: Vec<(&str, &str)> = vec![
        ("this is not json", "not JSON"),
        ("[1,2,3]", "not a JSON object"),
        (
            r#"{"event_time":"2019-11-05 10:00:00 UTC","event_type":"view","price":"cheap"}"#,
            "field `price`: expected a number",
        ),
        (r#"{"event_time":"2019-11-05 10:00:00 UTC","event_type":42}"#, "field `event_type`: expected a string"),
        (r#"{"event_type":"view","price":1.0}"#, "missing event time"),
        (r#"{"event_time":"last tuesday","event_type":"view"}"#, "unparsable timestamp"),
    ];
    let mut messages = Vec::new();
    for (i, m) in good[..n].iter().enumerate() {
        messages.push(m.clone());
        if i % 500 == 250 {
            let (payload, _) = bad[(i / 500) % bad.len()];
            messages
                .push(lambda::produce::Outgoing { key: Some(format!("bad{i}")), payload: payload.as_bytes().to_vec() });
        }
    }
    let bad_sent: Vec<&str> = messages
        .iter()
        .filter(|m| m.key.as_deref().is_some_and(|k| k.starts_with("bad")))
        .map(|m| std::str::from_utf8(&m.payload).unwrap())
        .collect();
    assert_eq!(bad_sent.len(), 6);
    h.start_speed();
    h.start_archiver();
    h.produce(&messages, None).await;

    let expected = truth::expected(&rows[..n]);
    h.wait_for_answers(&expected, PATIENCE).await;
    h.wait_sealed_and_archived(PATIENCE).await;
    h.batch().await;
    let (actual, _, _) = h.answers().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));

    for consumer in ["speed", "archive"] {
        let letters = common::dead_letter::read_all(&h.config.archive.root, consumer).unwrap();
        let mut payloads: Vec<&str> = letters.iter().map(|l| l.payload.as_deref().unwrap()).collect();
        let mut sent = bad_sent.clone();
        payloads.sort();
        sent.sort();
        assert_eq!(payloads, sent, "{consumer}: every bad record is dead-lettered exactly once");
        for l in &letters {
            let (_, reason) = bad.iter().find(|(p, _)| Some(*p) == l.payload.as_deref()).unwrap();
            assert!(l.reason.contains(reason), "{consumer}: reason `{}` should mention `{reason}`", l.reason);
            assert!(l.offset >= 0 && l.partition >= 0);
        }
    }
    let (_, metrics) = h.get("/metrics").await;
    let dead: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dead_letters_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        dead >= 12.0,
        "both consumers count dead letters in /metrics (other tests share the recorder): {dead}\n{metrics}"
    );
    h.shutdown().await;
}

/// An archive file lost after its offset was committed: the restarted archiver seeks back to the end of
/// the remaining files and rewrites the range, so the archive stays contiguous and the batch exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archiver_rewrites_a_file_lost_after_commit() {
    let rows = truth::read_sample();
    let mut h = Harness::start(2).await;
    let messages = sample_messages(&h.config);
    h.start_speed();
    h.start_archiver();
    h.produce(&messages[..4_000], None).await;
    h.wait_sealed_and_archived(PATIENCE).await;
    h.kill_archiver().await;
    let files = batch_layer::archive::list(&h.config.archive.root, "events").unwrap();
    let lost = files[&0].last().unwrap().clone();
    assert!(lost.first > 0, "partition 0 has several files");
    std::fs::remove_file(&lost.path).unwrap();

    h.start_archiver();
    h.produce(&messages[4_000..], None).await;
    h.wait_sealed_and_archived(PATIENCE).await;
    let files = batch_layer::archive::list(&h.config.archive.root, "events").unwrap();
    for (p, f) in &files {
        for pair in f.windows(2) {
            assert_eq!(pair[0].next, pair[1].first, "partition {p}: files tile the log");
        }
    }
    assert!(files[&0].iter().any(|f| f.first == lost.first), "the lost range is archived again");
    let manifest = h.batch().await;
    assert!(manifest.cutoff_notes.is_empty(), "{:?}", manifest.cutoff_notes);
    let expected = truth::expected(&rows);
    let (actual, _, _) = h.answers().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
    h.shutdown().await;
}

/// A second speed layer and a second archiver join the groups mid-stream: the rebalance revokes the
/// partitions from the live first members (librdkafka's mock coordinator hands them all to the newcomers
/// rather than splitting them), which keep running without them and are then crashed. A member that lost
/// its partitions writes and seals nothing more for them; the answers stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_between_members_stay_exact() {
    let rows = truth::read_sample();
    let mut h = Harness::start_with(4, support::CRASH_CONFIG).await;
    let messages = sample_messages(&h.config);
    h.start_speed();
    h.start_archiver();
    let producer = h.spawn_producer(&messages, 500.0);
    h.wait_progress(true, 0, PATIENCE).await;
    let second_speed = h.spawn_speed();
    let second_archiver = h.spawn_archiver();
    // let the group split the partitions and the newcomers do some work, then crash the first members
    let since = h.speed_progress().await;
    h.wait_progress(true, since + 200, PATIENCE).await;
    h.kill_speed().await;
    h.kill_archiver().await;
    assert!(!producer.is_finished(), "the crash happens while events are produced");
    producer.await.unwrap();

    let expected = truth::expected(&rows);
    h.wait_sealed_and_archived(PATIENCE).await;
    h.wait_for_answers(&expected, PATIENCE).await;
    let manifest = h.batch().await;
    assert_eq!(manifest.cutoffs, h.log_end().await);
    let (actual, _, _) = h.answers().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
    second_speed.abort();
    second_archiver.abort();
    h.shutdown().await;
}
