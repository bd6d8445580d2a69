//! The view-store conformance suite: each scenario is written once over `&dyn ViewStore` and run against
//! every backend (the `backends!` macro at the end). SQLite always runs; PostgreSQL runs on a scratch
//! database of the server named by `LAMBDA_TEST_POSTGRES`, ScyllaDB/Cassandra on a scratch keyspace of the
//! cluster named by `SCYLLA_NODES`; each prints one `SKIPPED` line per scenario without its server
//! (`common::testing`).

use std::collections::BTreeMap;
use std::time::Duration;

use common::store::{BatchRow, Lease, Manifest, RowQuery, Seal, SpeedRow, ViewKey, ViewStore};
use common::view::Granularity;
use common::Error;

const T: &str = "t";

fn key(bucket: i64, dim: Option<&str>) -> ViewKey {
    ViewKey {
        view: "v".into(),
        granularity: Granularity::Hour,
        bucket_start: bucket,
        dims: vec![dim.map(str::to_owned)],
    }
}

fn all() -> RowQuery {
    RowQuery::all("v", Granularity::Hour)
}

fn speed(bucket: i64, partition: i32, segment_start: i64, upto_offset: i64, count: i128) -> SpeedRow {
    SpeedRow {
        key: key(bucket, Some("a")),
        partition,
        segment_start,
        upto_offset,
        metrics: vec![count, count * 1_000_000],
    }
}

/// A lease for fenced writes, taken fresh.
async fn lease(store: &dyn ViewStore) -> Lease {
    store.acquire_lease("batch", "test", Duration::from_secs(60)).await.unwrap().expect("the lease is free")
}

async fn speed_rows_have_set_semantics(store: &dyn ViewStore) {
    store.upsert_speed_rows(T, &[speed(0, 0, 0, 10, 4)]).await.unwrap();
    store.upsert_speed_rows(T, &[speed(0, 0, 0, 5, 2)]).await.unwrap(); // stale replay / zombie: ignored
    store.upsert_speed_rows(T, &[speed(0, 0, 0, 10, 4)]).await.unwrap(); // same upto (same value): no change
    assert_eq!(store.speed_rows(&all()).await.unwrap(), vec![speed(0, 0, 0, 10, 4)]);
    store.upsert_speed_rows(T, &[speed(0, 0, 0, 20, 6)]).await.unwrap();
    assert_eq!(store.speed_rows(&all()).await.unwrap(), vec![speed(0, 0, 0, 20, 6)]);
    // other segments and partitions are other rows; a null dimension is its own key
    let null_dim = SpeedRow { key: key(0, None), ..speed(0, 0, 0, 20, 1) };
    store.upsert_speed_rows(T, &[speed(0, 0, 30, 35, 1), speed(0, 1, 0, 3, 1), null_dim.clone()]).await.unwrap();
    let rows = store.speed_rows(&all()).await.unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.contains(&null_dim));
    // [from, to) on bucket_start, and a limit on the rows read
    store.upsert_speed_rows(T, &[speed(3_600, 0, 30, 36, 1), speed(7_200, 0, 30, 37, 1)]).await.unwrap();
    let q = RowQuery { from: Some(3_600), to: Some(7_200), ..all() };
    let ranged = store.speed_rows(&q).await.unwrap();
    assert_eq!(ranged.iter().map(|r| r.key.bucket_start).collect::<Vec<_>>(), vec![3_600]);
    assert_eq!(store.speed_rows(&RowQuery { limit: Some(3), ..all() }).await.unwrap().len(), 3);
    assert_eq!(store.speed_rows(&RowQuery { limit: Some(100), ..all() }).await.unwrap().len(), 6);
    // segments below the caller's cutoffs are skipped, and do not count toward the limit
    let every = store.speed_rows(&all()).await.unwrap();
    for cutoffs in [BTreeMap::from([(0, 30)]), BTreeMap::from([(0, 31), (1, 0)]), BTreeMap::from([(1, 1), (7, 9)])] {
        let mut expected: Vec<_> = every
            .iter()
            .filter(|r| r.segment_start >= cutoffs.get(&r.partition).copied().unwrap_or(0))
            .cloned()
            .collect();
        let q = RowQuery { speed_from: cutoffs.clone(), ..all() };
        let mut got = store.speed_rows(&q).await.unwrap();
        let order = |r: &SpeedRow| (r.partition, r.segment_start, r.key.clone());
        expected.sort_by_key(order);
        got.sort_by_key(order);
        assert_eq!(got, expected, "speed_from {cutoffs:?}");
        let limited = store.speed_rows(&RowQuery { limit: Some(2), ..q }).await.unwrap();
        assert_eq!(limited.len(), expected.len().min(2), "speed_from {cutoffs:?} with a limit");
        assert!(limited.iter().all(|r| expected.contains(r)));
    }
    // cleanup below the cutoffs: partition 0 segments starting before 30, partition 1 none (with seals)
    store.record_seal(T, Seal { partition: 0, start: 0, end: 30 }).await.unwrap();
    store.record_seal(T, Seal { partition: 0, start: 30, end: 40 }).await.unwrap();
    store.record_seal(T, Seal { partition: 1, start: 0, end: 3 }).await.unwrap();
    let fence = lease(store).await;
    let deleted = store.delete_absorbed(&fence, T, &BTreeMap::from([(0, 30), (1, 0)])).await.unwrap();
    assert_eq!(deleted, (2, 1), "two rows and one seal of partition 0");
    let mut left: Vec<(i32, i64)> =
        store.speed_rows(&all()).await.unwrap().iter().map(|r| (r.partition, r.segment_start)).collect();
    left.sort();
    assert_eq!(left, vec![(0, 30), (0, 30), (0, 30), (1, 0)]);
    let seals: Vec<(i32, i64)> = store.seals(T).await.unwrap().iter().map(|s| (s.partition, s.start)).collect();
    assert_eq!(seals, vec![(0, 30), (1, 0)]);
}

/// A seal that cannot be finalized (its replay found records deleted by retention) is trimmed: the rows
/// of its segment past its end go, every other row stays as it was.
async fn a_trim_keeps_the_rows_up_to_the_seal_end(store: &dyn ViewStore) {
    let cell = |bucket: i64, dim: &str, upto: i64, count: i128| SpeedRow {
        key: key(bucket, Some(dim)),
        ..speed(0, 0, 100, upto, count)
    };
    // the recorder's partial flush, a cell it finalized, and cells of a longer run past the seal end
    let written = vec![
        cell(0, "a", 150, 40),
        cell(3_600, "b", 200, 7),
        cell(7_200, "c", 201, 1),
        cell(10_800, "d", 450, 300),
        speed(0, 0, 0, 100, 100),
        speed(0, 1, 100, 300, 9),
    ];
    store.upsert_speed_rows(T, &written).await.unwrap();
    let seal = store.record_seal(T, Seal { partition: 0, start: 100, end: 200 }).await.unwrap().unwrap();
    assert_eq!(store.trim_segment(T, seal).await.unwrap(), 2, "the two rows past the seal end");
    let order = |r: &SpeedRow| (r.partition, r.segment_start, r.key.clone());
    let mut expected: Vec<SpeedRow> = written
        .iter()
        .filter(|r| !(r.partition == 0 && r.segment_start == 100 && r.upto_offset > 200))
        .cloned()
        .collect();
    expected.sort_by_key(order);
    let mut rows = store.speed_rows(&all()).await.unwrap();
    rows.sort_by_key(order);
    assert_eq!(rows, expected);
    // trimming again, or finalizing after it, keeps the rule
    assert_eq!(store.trim_segment(T, seal).await.unwrap(), 0);
    let mut again = store.speed_rows(&all()).await.unwrap();
    again.sort_by_key(order);
    assert_eq!(again, expected);
}

/// DESIGN.md §4: a speed row never counts records past its segment's recorded seal end.
async fn no_speed_row_outlives_its_seal(store: &dyn ViewStore) {
    // an earlier run with larger limits wrote segment [100, ...) up to offset 400, and another segment
    let long = [speed(0, 0, 100, 400, 300), SpeedRow { key: key(3_600, Some("b")), ..speed(0, 0, 100, 380, 5) }];
    store.upsert_speed_rows(T, &long).await.unwrap();
    store.upsert_speed_rows(T, &[speed(0, 0, 0, 100, 100)]).await.unwrap();
    // this run seals [100, 200): its rows replace the longer ones, which are deleted, cells included
    let seal = store.record_seal(T, Seal { partition: 0, start: 100, end: 200 }).await.unwrap().unwrap();
    store.finalize_segment(T, seal, &[speed(0, 0, 100, 200, 100)]).await.unwrap();
    let mut rows = store.speed_rows(&all()).await.unwrap();
    rows.sort_by_key(|r| r.segment_start);
    assert_eq!(rows, vec![speed(0, 0, 0, 100, 100), speed(0, 0, 100, 200, 100)]);
    let sorted = |mut rows: Vec<SpeedRow>| {
        rows.sort_by_key(|r| r.segment_start);
        rows
    };
    // a zombie still filling [100, ...) can write neither past the seal nor below the final value
    store.upsert_speed_rows(T, &[speed(0, 0, 100, 450, 350), speed(7_200, 0, 100, 201, 1)]).await.unwrap();
    store.upsert_speed_rows(T, &[speed(0, 0, 100, 150, 50)]).await.unwrap();
    assert_eq!(sorted(store.speed_rows(&all()).await.unwrap()), rows);
    // finalizing again (a replay after a crash before the commit) changes nothing
    store.finalize_segment(T, seal, &[speed(0, 0, 100, 200, 100)]).await.unwrap();
    assert_eq!(sorted(store.speed_rows(&all()).await.unwrap()), rows);
    // the seal of another topic does not bind this topic's rows
    store.record_seal("other", Seal { partition: 0, start: 500, end: 510 }).await.unwrap();
    store.upsert_speed_rows(T, &[speed(0, 0, 500, 520, 20)]).await.unwrap();
    assert_eq!(store.speed_rows(&all()).await.unwrap().len(), 3);
}

async fn seals_are_first_writer_wins(store: &dyn ViewStore) {
    assert_eq!(store.seal_at(T, 0, 0).await.unwrap(), None);
    let first = Seal { partition: 0, start: 0, end: 100 };
    assert_eq!(store.record_seal(T, first).await.unwrap(), Some(first));
    assert_eq!(store.record_seal(T, Seal { end: 90, ..first }).await.unwrap(), Some(first), "the first seal stays");
    store.record_seal(T, Seal { partition: 0, start: 100, end: 180 }).await.unwrap();
    store.record_seal(T, Seal { partition: 1, start: 0, end: 5 }).await.unwrap();
    store.record_seal(T, Seal { partition: 2, start: 7, end: 9 }).await.unwrap();
    store.record_seal("other", Seal { partition: 0, start: 0, end: 1 }).await.unwrap();
    let seals = store.seals(T).await.unwrap();
    assert_eq!(
        seals.iter().map(|s| (s.partition, s.start, s.end)).collect::<Vec<_>>(),
        vec![(0, 0, 100), (0, 100, 180), (1, 0, 5), (2, 7, 9)]
    );
    assert_eq!(store.seal_at(T, 0, 100).await.unwrap().map(|s| s.end), Some(180));
    // a batch run reads only the seals past the published cutoffs (all of partitions it has not seen)
    let from = store.seals_from(T, &BTreeMap::from([(0, 100), (1, 5)])).await.unwrap();
    assert_eq!(from.iter().map(|s| (s.partition, s.start)).collect::<Vec<_>>(), vec![(0, 100), (2, 7)]);
}

/// Below the published cutoff no new seal is recorded (the seals there may be pruned; a member that lags or
/// a zombie must not start a segment off the chain): the caller learns it and resumes at the cutoff.
async fn no_new_seal_below_the_published_cutoff(store: &dyn ViewStore) {
    let fence = lease(store).await;
    store.record_seal(T, Seal { partition: 0, start: 0, end: 100 }).await.unwrap();
    let generation = store.allocate_generation(&fence).await.unwrap();
    let published = Manifest { cutoffs: BTreeMap::from([(0, 200)]), ..manifest(generation) };
    store.publish_manifest(&fence, &published).await.unwrap();
    assert_eq!(store.record_seal(T, Seal { partition: 0, start: 150, end: 260 }).await.unwrap(), None);
    assert_eq!(store.seal_at(T, 0, 150).await.unwrap(), None, "nothing recorded");
    assert_eq!(
        store.record_seal(T, Seal { partition: 0, start: 0, end: 50 }).await.unwrap(),
        Some(Seal { partition: 0, start: 0, end: 100 }),
        "a seal recorded before the cutoff passed it still answers"
    );
    let at = Seal { partition: 0, start: 200, end: 260 };
    assert_eq!(store.record_seal(T, at).await.unwrap(), Some(at), "at the cutoff: recorded");
    assert_eq!(store.record_seal(T, Seal { partition: 1, start: 5, end: 9 }).await.unwrap().map(|s| s.end), Some(9));
}

fn manifest(generation: i64) -> Manifest {
    Manifest {
        generation,
        cutoffs: BTreeMap::from([(0, generation * 10)]),
        archive_starts: BTreeMap::from([(0, 0)]),
        rows: BTreeMap::from([("v/hour".to_owned(), 1)]),
        records_scanned: 5,
        repeated_records_removed: 0,
        duplicates_removed: 1,
        records_without_dedup_key: 2,
        cutoff_notes: vec!["note".into()],
        log_ends: BTreeMap::from([(0, generation * 10 + 1)]),
        cutoff_progress: BTreeMap::new(),
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
    }
}

async fn generations_and_manifests(store: &dyn ViewStore) {
    assert_eq!(store.current_manifest().await.unwrap(), None);
    let fence = lease(store).await;
    let (one, two) =
        (store.allocate_generation(&fence).await.unwrap(), store.allocate_generation(&fence).await.unwrap());
    assert!(two > one && one >= 1, "generation numbers grow: {one}, {two}");
    let row = |count| BatchRow { key: key(0, Some("a")), metrics: vec![count, 0] };
    store.write_batch_rows(&fence, one, &[row(1)]).await.unwrap();
    store
        .write_batch_rows(&fence, two, &[row(2), BatchRow { key: key(3_600, None), metrics: vec![1, 1] }])
        .await
        .unwrap();
    assert_eq!(store.batch_rows(one, &all()).await.unwrap(), vec![row(1)]);
    assert_eq!(store.batch_rows(two, &all()).await.unwrap().len(), 2);
    assert_eq!(store.generations().await.unwrap(), vec![one, two]);
    store.publish_manifest(&fence, &manifest(one)).await.unwrap();
    let second = manifest(two);
    store.publish_manifest(&fence, &second).await.unwrap();
    assert!(store.publish_manifest(&fence, &manifest(two)).await.is_err(), "a generation is published once");
    assert!(store.publish_manifest(&fence, &manifest(one)).await.is_err(), "never below the current one");
    assert!(
        matches!(store.write_batch_rows(&fence, two, &[row(9)]).await, Err(Error::StoreRefused { .. })),
        "a published generation's rows are never rewritten"
    );
    assert!(
        matches!(store.delete_generation(&fence, two).await, Err(Error::StoreRefused { .. })),
        "the current generation is never deleted"
    );
    assert_eq!(store.current_manifest().await.unwrap().as_ref(), Some(&second), "the highest generation, whole");
    let three = store.allocate_generation(&fence).await.unwrap();
    assert!(three > two, "numbers are not reused after publishing");
    assert_eq!(store.published_generations().await.unwrap(), vec![one, two]);
    store.delete_generation(&fence, one).await.unwrap();
    store.delete_manifests_before(&fence, two).await.unwrap();
    assert_eq!(store.published_generations().await.unwrap(), vec![two]);
    assert_eq!(store.generations().await.unwrap(), vec![two]);
    assert!(store.batch_rows(one, &all()).await.unwrap().is_empty());
    let current = store.current_manifest().await.unwrap().unwrap();
    assert_eq!((current.generation, current.cutoffs.clone(), current.duplicates_removed), (two, second.cutoffs, 1));
}

/// DESIGN.md §5: runs never overlap; a run that lost its lease can write nothing.
async fn the_lease_fences_every_batch_write(store: &dyn ViewStore) {
    let ttl = Duration::from_secs(60);
    let a = store.acquire_lease("batch", "a", ttl).await.unwrap().expect("free");
    assert!(store.acquire_lease("batch", "b", ttl).await.unwrap().is_none(), "held by a");
    assert!(store.renew_lease(&a, ttl).await.unwrap(), "the holder renews");
    let generation = store.allocate_generation(&a).await.unwrap();
    store.write_batch_rows(&a, generation, &[BatchRow { key: key(0, None), metrics: vec![1] }]).await.unwrap();
    store.release_lease(&a).await.unwrap();
    // released: b takes it with a newer token; a can no longer write, renew or publish
    let b = store.acquire_lease("batch", "b", Duration::from_secs(1)).await.unwrap().expect("released");
    assert!(b.token > a.token, "tokens grow: {} then {}", a.token, b.token);
    assert!(!store.renew_lease(&a, ttl).await.unwrap());
    let fenced = |r: common::Result<()>| matches!(r, Err(Error::Fenced { .. }));
    assert!(fenced(store.write_batch_rows(&a, generation, &[]).await));
    assert!(fenced(store.publish_manifest(&a, &manifest(generation)).await));
    assert!(fenced(store.delete_generation(&a, generation).await));
    assert!(fenced(store.delete_manifests_before(&a, generation).await));
    assert!(fenced(store.delete_absorbed(&a, T, &BTreeMap::from([(0, 10)])).await.map(|_| ())));
    assert!(matches!(store.allocate_generation(&a).await, Err(Error::Fenced { .. })));
    let err = store.publish_manifest(&a, &manifest(generation)).await.unwrap_err().to_string();
    assert!(err.contains("lost the batch lease"), "{err}");
    store.release_lease(&a).await.unwrap(); // not a's any more: no effect
    assert!(store.acquire_lease("batch", "c", ttl).await.unwrap().is_none(), "b still holds it");
    // b stalls past its ttl: c takes over, and b is fenced although nobody released anything
    // (ScyllaDB keeps TTLs in whole seconds: a 1 s lease lasts up to 2 s there, never less than 1 s)
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert!(fenced(store.write_batch_rows(&b, generation, &[]).await), "an expired lease fences its holder");
    let c = store.acquire_lease("batch", "c", ttl).await.unwrap().expect("expired: taken over");
    assert!(c.token > b.token);
    assert!(!store.renew_lease(&b, ttl).await.unwrap());
    store.publish_manifest(&c, &manifest(generation)).await.unwrap();
    // two runs racing for a free lease: exactly one proceeds
    store.release_lease(&c).await.unwrap();
    let (x, y) = tokio::join!(store.acquire_lease("batch", "x", ttl), store.acquire_lease("batch", "y", ttl));
    assert_eq!([x.unwrap().is_some(), y.unwrap().is_some()].iter().filter(|&&v| v).count(), 1);
}

/// Values that are awkward in any text encoding come back exactly: quotes, backslashes, control
/// characters, non-ASCII, several dimensions with nulls among them, and metrics at the edges of the
/// 128-bit range and past 64 bits (sums of values up to 1e15 with 6 decimals).
async fn awkward_values_round_trip(store: &dyn ViewStore) {
    let dims = vec![
        Some("say \"hi\"\\ \u{1}\n\t".to_owned()),
        None,
        Some("Zürich 東京 😀".to_owned()),
        Some(String::new()),
        Some("[1,2]".to_owned()),
    ];
    let key = ViewKey { dims, ..key(-3_600, None) };
    let metrics = vec![i128::MAX, i128::MIN, 0, -1, i128::from(i64::MAX) + 1, 100_000_000_000_000_000_000_000_000];
    let speed = SpeedRow { key: key.clone(), partition: i32::MAX, segment_start: 0, upto_offset: i64::MAX, metrics };
    store.upsert_speed_rows(T, std::slice::from_ref(&speed)).await.unwrap();
    assert_eq!(store.speed_rows(&all()).await.unwrap(), vec![speed.clone()]);
    let batch = BatchRow { key, metrics: speed.metrics.clone() };
    let fence = lease(store).await;
    let generation = store.allocate_generation(&fence).await.unwrap();
    store.write_batch_rows(&fence, generation, std::slice::from_ref(&batch)).await.unwrap();
    assert_eq!(store.batch_rows(generation, &all()).await.unwrap(), vec![batch]);
    let other_view = RowQuery { view: "w".into(), ..all() };
    assert!(store.speed_rows(&other_view).await.unwrap().is_empty());
    assert!(store.batch_rows(generation, &other_view).await.unwrap().is_empty());
}

/// DESIGN.md §4: the stored value of a key is the write with the largest `upto_offset`, whatever order the
/// writes arrive in, several in one call included; writes with equal `upto_offset` carry equal values.
async fn the_largest_upto_offset_wins_in_every_arrival_order(store: &dyn ViewStore) {
    let writes = [speed(0, 0, 0, 5, 2), speed(0, 0, 0, 10, 4), speed(0, 0, 0, 10, 4), speed(0, 0, 0, 20, 6)];
    let mut orders: Vec<Vec<usize>> = vec![vec![]];
    for _ in 0..writes.len() {
        orders = orders
            .into_iter()
            .flat_map(|o| {
                (0..writes.len()).filter(|i| !o.contains(i)).map(|i| [o.clone(), vec![i]].concat()).collect::<Vec<_>>()
            })
            .collect();
    }
    assert_eq!(orders.len(), 24);
    for (n, order) in orders.iter().enumerate() {
        // each order on its own segment; one call per write, then all four in one call
        let segment = 1_000 * (n as i64 + 1);
        let at = |i: usize| SpeedRow { segment_start: segment, ..writes[i].clone() };
        for &i in order {
            store.upsert_speed_rows(T, &[at(i)]).await.unwrap();
        }
        let together: Vec<SpeedRow> = order.iter().map(|&i| SpeedRow { partition: 1, ..at(i) }).collect();
        store.upsert_speed_rows(T, &together).await.unwrap();
    }
    let rows = store.speed_rows(&all()).await.unwrap();
    assert_eq!(rows.len(), 48);
    for r in rows {
        assert_eq!((r.upto_offset, r.metrics.clone()), (20, vec![6, 6_000_000]), "{r:?}");
    }
}

/// DESIGN.md §4 under concurrency: a zombie keeps writing a segment past its end while the owner records
/// the seal and finalizes it; whichever interleaving the store picks, no row is left past the seal.
async fn a_racing_zombie_never_outlives_the_seal(store: &dyn ViewStore) {
    for round in 0..60i64 {
        let start = round * 1_000;
        let zombie = async {
            for upto in (start + 101..start + 140).step_by(3) {
                store.upsert_speed_rows(T, &[speed(0, 0, start, upto, i128::from(upto - start))]).await.unwrap();
                tokio::task::yield_now().await;
            }
        };
        let owner = async {
            store.upsert_speed_rows(T, &[speed(0, 0, start, start + 50, 50)]).await.unwrap();
            let seal = store.record_seal(T, Seal { partition: 0, start, end: start + 100 }).await.unwrap().unwrap();
            store.finalize_segment(T, seal, &[speed(0, 0, start, start + 100, 100)]).await.unwrap();
        };
        tokio::join!(zombie, owner);
    }
    let rows = store.speed_rows(&all()).await.unwrap();
    assert_eq!(rows.len(), 60);
    for r in rows {
        assert_eq!((r.upto_offset - r.segment_start, r.metrics[0]), (100, 100), "{r:?}");
    }
}

/// DESIGN.md §5: a reader that takes the current manifest and then reads its generation's rows sees one
/// generation whole, while runs publish new generations and clean up the one before the previous.
async fn a_reader_sees_one_generation_whole(store: &dyn ViewStore) {
    let fence = lease(store).await;
    let rows_of = |g: i64| -> Vec<BatchRow> {
        (0..50).map(|b| BatchRow { key: key(b * 3_600, Some("a")), metrics: vec![g as i128, 0] }).collect()
    };
    let first = store.allocate_generation(&fence).await.unwrap();
    store.write_batch_rows(&fence, first, &rows_of(first)).await.unwrap();
    store.publish_manifest(&fence, &manifest(first)).await.unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU64::new(0);
    let publisher = async {
        let mut previous = first;
        for _ in 0..15 {
            let g = store.allocate_generation(&fence).await.unwrap();
            store.write_batch_rows(&fence, g, &rows_of(g)).await.unwrap();
            store.publish_manifest(&fence, &manifest(g)).await.unwrap();
            // keep the previous generation (a reader may hold its manifest), drop older ones
            for old in store.generations().await.unwrap().into_iter().filter(|&o| o < previous) {
                store.delete_generation(&fence, old).await.unwrap();
            }
            store.delete_manifests_before(&fence, previous).await.unwrap();
            previous = g;
            // runs are minutes apart, reads milliseconds: let the reader finish two reads (the second one
            // began after this publish), so a read in flight holds at most the previous generation
            let seen = reads.load(std::sync::atomic::Ordering::SeqCst);
            while reads.load(std::sync::atomic::Ordering::SeqCst) < seen + 2 {
                tokio::task::yield_now().await;
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let reader = async {
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let m = store.current_manifest().await.unwrap().unwrap();
            let rows = store.batch_rows(m.generation, &all()).await.unwrap();
            assert_eq!(rows.len(), 50, "generation {} whole", m.generation);
            assert!(rows.iter().all(|r| r.metrics[0] == m.generation as i128), "only generation {}", m.generation);
            reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
        }
    };
    tokio::join!(publisher, reader);
    assert!(reads.into_inner() >= 30);
    assert_eq!(store.published_generations().await.unwrap().len(), 2, "the current and the previous one");
}

/// One flush of 100,000 distinct cells (a busy segment at minute granularity) is written and read back
/// exactly; the backends write it in bounded chunks.
async fn a_flush_of_100k_rows(store: &dyn ViewStore) {
    let rows: Vec<SpeedRow> = (0..100_000i64)
        .map(|i| SpeedRow {
            key: ViewKey {
                bucket_start: (i % 1_440) * 60,
                dims: vec![Some(format!("brand-{}", i / 1_440))],
                ..key(0, None)
            },
            partition: 0,
            segment_start: 0,
            upto_offset: 100_000,
            metrics: vec![i128::from(i), i128::from(i) * 1_000_000 + 1],
        })
        .collect();
    store.upsert_speed_rows(T, &rows).await.unwrap();
    let mut back = store.speed_rows(&all()).await.unwrap();
    assert_eq!(back.len(), rows.len());
    back.sort_by_key(|r| r.metrics[0]);
    assert!(back.iter().zip(&rows).all(|(a, b)| a == b));
}

/// A dimension value can be long (a URL, a user agent): 10 kB of incompressible text is a key like any
/// other, and two values that differ only in their last character are two keys (PostgreSQL keys rows by
/// a hash of the dimensions: a btree entry holds about 2.7 kB).
async fn long_dimension_values_are_keys(store: &dyn ViewStore) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let long: String = (0..10_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect();
    let (a, b) = (format!("{long}a"), format!("{long}b"));
    let row = |dim: &str, upto: i64, count: i128| SpeedRow { key: key(0, Some(dim)), ..speed(0, 0, 0, upto, count) };
    store.upsert_speed_rows(T, &[row(&a, 10, 1), row(&b, 10, 2)]).await.unwrap();
    store.upsert_speed_rows(T, &[row(&a, 20, 3)]).await.unwrap();
    let mut rows = store.speed_rows(&all()).await.unwrap();
    rows.sort_by_key(|r| r.metrics[0]);
    assert_eq!(rows, vec![row(&b, 10, 2), row(&a, 20, 3)]);
    let fence = lease(store).await;
    let generation = store.allocate_generation(&fence).await.unwrap();
    let batch = |dim: &str, count: i128| BatchRow { key: key(0, Some(dim)), metrics: vec![count, 0] };
    store.write_batch_rows(&fence, generation, &[batch(&a, 1), batch(&b, 2)]).await.unwrap();
    let mut rows = store.batch_rows(generation, &all()).await.unwrap();
    rows.sort_by_key(|r| r.metrics[0]);
    assert_eq!(rows, vec![batch(&a, 1), batch(&b, 2)]);
}

async fn sqlite() -> (tempfile::TempDir, std::sync::Arc<dyn ViewStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        common::store::open(&format!("sqlite://{}", dir.path().join("nested/dir/v.db").display())).await.unwrap();
    (dir, store)
}

macro_rules! backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite_backend {
            use super::*;
            $(
                #[tokio::test]
                async fn $scenario() {
                    let (_dir, store) = sqlite().await;
                    super::$scenario(&*store).await;
                }
            )*
        }
        mod postgres_backend {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(url) = common::testing::scratch_postgres(stringify!($scenario)).await else { return };
                    let store = common::store::open(&url).await.unwrap();
                    super::$scenario(&*store).await;
                }
            )*
        }
        mod scylla_backend {
            $(
                #[tokio::test]
                async fn $scenario() {
                    let Some(url) = common::testing::scratch_scylla(stringify!($scenario)) else { return };
                    let store = common::store::open(&url).await.unwrap();
                    super::$scenario(&*store).await;
                }
            )*
        }
    };
}

backends!(
    speed_rows_have_set_semantics,
    no_speed_row_outlives_its_seal,
    a_trim_keeps_the_rows_up_to_the_seal_end,
    seals_are_first_writer_wins,
    no_new_seal_below_the_published_cutoff,
    generations_and_manifests,
    the_lease_fences_every_batch_write,
    awkward_values_round_trip,
    the_largest_upto_offset_wins_in_every_arrival_order,
    a_racing_zombie_never_outlives_the_seal,
    a_reader_sees_one_generation_whole,
    a_flush_of_100k_rows,
    long_dimension_values_are_keys,
);

/// The PostgreSQL backend sets what its concurrency argument needs on every connection, whatever the
/// database's defaults (a database set to REPEATABLE READ or asynchronous commits is common).
#[tokio::test]
async fn postgres_sessions_ignore_unsafe_database_defaults() {
    let Some(url) = common::testing::scratch_postgres("session_settings").await else { return };
    let database = url.rsplit('/').next().unwrap().to_owned();
    let admin = common::store::PostgresStore::connect(&url, 1).await.unwrap();
    for setting in ["default_transaction_isolation = 'repeatable read'", "synchronous_commit = off"] {
        sqlx::query(&format!("ALTER DATABASE \"{database}\" SET {setting}")).execute(admin.pool()).await.unwrap();
    }
    let store = common::store::PostgresStore::open(&url, 2).await.unwrap();
    let mut conn = store.pool().acquire().await.unwrap();
    let show = |name: &'static str| format!("SHOW {name}");
    let isolation: String = sqlx::query_scalar(&show("transaction_isolation")).fetch_one(&mut *conn).await.unwrap();
    let synchronous: String = sqlx::query_scalar(&show("synchronous_commit")).fetch_one(&mut *conn).await.unwrap();
    let idle: String =
        sqlx::query_scalar(&show("idle_in_transaction_session_timeout")).fetch_one(&mut *conn).await.unwrap();
    assert_eq!((isolation.as_str(), synchronous.as_str(), idle.as_str()), ("read committed", "on", "1min"));
    // a second open finds the schema current and runs no migration
    assert!(store.migrate().await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    let s = common::store::open(&url).await.unwrap();
    s.upsert_speed_rows(T, &[speed(0, 0, 0, 10, 4)]).await.unwrap();
    let fence = lease(&*s).await;
    let generation = s.allocate_generation(&fence).await.unwrap();
    drop(s);
    let s = common::store::open(&url).await.unwrap();
    assert_eq!(s.speed_rows(&all()).await.unwrap(), vec![speed(0, 0, 0, 10, 4)]);
    assert!(s.acquire_lease("batch", "other", Duration::from_secs(1)).await.unwrap().is_none(), "still held");
    let later = s.acquire_lease("batch", "test", Duration::from_secs(1)).await.unwrap();
    assert!(later.is_none(), "held by the same name until it expires or is released");
    s.release_lease(&fence).await.unwrap();
    let fence = lease(&*s).await;
    assert!(s.allocate_generation(&fence).await.unwrap() > generation, "the counter survives a reopen");
}

/// A store made by the previous version (no lease tokens, no generation counter) is brought up to date:
/// generation numbers continue above its published ones.
#[tokio::test]
async fn sqlite_upgrades_an_earlier_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql(
        r#"CREATE TABLE manifests (generation INTEGER PRIMARY KEY, body TEXT NOT NULL);
         INSERT INTO manifests VALUES (41, '{"generation":41,"cutoffs":{"0":300},"rows":{},"records_scanned":0,
             "repeated_records_removed":0,"duplicates_removed":0,"cutoff_notes":[],
             "started_at":"2026-11-21T00:00:00Z","finished_at":"2026-11-21T00:00:01Z"}');
         CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at_ms INTEGER NOT NULL);
         INSERT INTO leases VALUES ('batch', 'old', 0);"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let s = common::store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let fence = lease(&*s).await;
    assert_eq!(s.allocate_generation(&fence).await.unwrap(), 42);
    let manifest = s.current_manifest().await.unwrap().unwrap();
    assert_eq!((manifest.generation, manifest.records_without_dedup_key), (41, 0), "new fields default");
    assert_eq!(s.record_seal(T, Seal { partition: 0, start: 200, end: 400 }).await.unwrap(), None, "cutoff 300 known");
}

/// Issue 9, item 6 (b): a seal (or any write) is durable when its statement returns, so the Kafka commit
/// that follows it never points past a seal an OS crash could take back: every pooled SQLite connection
/// runs with `synchronous = FULL` (in WAL mode, NORMAL fsyncs only at checkpoints).
#[tokio::test]
async fn sqlite_commits_are_durable_before_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        common::store::SqliteStore::open(&format!("sqlite://{}", dir.path().join("v.db").display())).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = store.pool().acquire().await.unwrap();
        let (mode,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(mode, 2, "synchronous = FULL (2) on every connection");
        let (journal,): (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(&mut *conn).await.unwrap();
        assert_eq!(journal, "wal");
        held.push(conn);
    }
}
