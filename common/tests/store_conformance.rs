//! The view-store conformance suite: each scenario is written once over `&dyn ViewStore` and run against
//! every backend. SQLite always runs; other backends join here as they are built.

use std::collections::BTreeMap;
use std::time::Duration;

use common::store::{BatchRow, Manifest, RowQuery, Seal, SpeedRow, ViewKey, ViewStore};
use common::view::Granularity;

fn key(bucket: i64, dim: Option<&str>) -> ViewKey {
    ViewKey {
        view: "v".into(),
        granularity: Granularity::Hour,
        bucket_start: bucket,
        dims: vec![dim.map(str::to_owned)],
    }
}

fn all() -> RowQuery {
    RowQuery { view: "v".into(), granularity: Granularity::Hour, from: None, to: None }
}

fn speed(bucket: i64, partition: i32, segment_start: i64, upto_offset: i64, count: i64) -> SpeedRow {
    SpeedRow {
        key: key(bucket, Some("a")),
        partition,
        segment_start,
        upto_offset,
        metrics: vec![count, count * 1_000_000],
    }
}

async fn speed_rows_have_set_semantics(store: &dyn ViewStore) {
    store.upsert_speed_rows(&[speed(0, 0, 0, 10, 4)]).await.unwrap();
    store.upsert_speed_rows(&[speed(0, 0, 0, 5, 2)]).await.unwrap(); // stale replay / zombie: ignored
    store.upsert_speed_rows(&[speed(0, 0, 0, 10, 3)]).await.unwrap(); // same upto: ignored
    assert_eq!(store.speed_rows(&all()).await.unwrap(), vec![speed(0, 0, 0, 10, 4)]);
    store.upsert_speed_rows(&[speed(0, 0, 0, 20, 6)]).await.unwrap();
    assert_eq!(store.speed_rows(&all()).await.unwrap(), vec![speed(0, 0, 0, 20, 6)]);
    // other segments and partitions are other rows; a null dimension is its own key
    let null_dim = SpeedRow { key: key(0, None), ..speed(0, 0, 0, 20, 1) };
    store.upsert_speed_rows(&[speed(0, 0, 30, 35, 1), speed(0, 1, 0, 3, 1), null_dim.clone()]).await.unwrap();
    let rows = store.speed_rows(&all()).await.unwrap();
    assert_eq!(rows.len(), 4);
    assert!(rows.contains(&null_dim));
    // [from, to) on bucket_start
    store.upsert_speed_rows(&[speed(3_600, 0, 30, 36, 1), speed(7_200, 0, 30, 37, 1)]).await.unwrap();
    let q = RowQuery { from: Some(3_600), to: Some(7_200), ..all() };
    let ranged = store.speed_rows(&q).await.unwrap();
    assert_eq!(ranged.iter().map(|r| r.key.bucket_start).collect::<Vec<_>>(), vec![3_600]);
    // a losing consumer drops what it wrote past the recorded seal end
    assert_eq!(store.delete_speed_rows_after(0, 30, 35).await.unwrap(), 2);
    // cleanup below the cutoffs: partition 0 segments starting before 30, partition 1 none
    let deleted = store.delete_absorbed_speed_rows(&BTreeMap::from([(0, 30), (1, 0)])).await.unwrap();
    assert_eq!(deleted, 2);
    let left: Vec<(i32, i64)> =
        store.speed_rows(&all()).await.unwrap().iter().map(|r| (r.partition, r.segment_start)).collect();
    assert_eq!(left, vec![(0, 30), (1, 0)]);
}

async fn seals_are_first_writer_wins(store: &dyn ViewStore) {
    assert_eq!(store.seal_at("t", 0, 0).await.unwrap(), None);
    let first = Seal { partition: 0, start: 0, end: 100 };
    assert_eq!(store.record_seal("t", first).await.unwrap(), first);
    assert_eq!(store.record_seal("t", Seal { end: 90, ..first }).await.unwrap(), first, "the first seal stays");
    store.record_seal("t", Seal { partition: 0, start: 100, end: 180 }).await.unwrap();
    store.record_seal("t", Seal { partition: 1, start: 0, end: 5 }).await.unwrap();
    store.record_seal("other", Seal { partition: 0, start: 0, end: 1 }).await.unwrap();
    let seals = store.seals("t").await.unwrap();
    assert_eq!(
        seals.iter().map(|s| (s.partition, s.start, s.end)).collect::<Vec<_>>(),
        vec![(0, 0, 100), (0, 100, 180), (1, 0, 5)]
    );
    assert_eq!(store.seal_at("t", 0, 100).await.unwrap().map(|s| s.end), Some(180));
}

fn manifest(generation: i64) -> Manifest {
    Manifest {
        generation,
        cutoffs: BTreeMap::from([(0, generation * 10)]),
        rows: BTreeMap::from([("v/hour".to_owned(), 1)]),
        records_scanned: 5,
        repeated_records_removed: 0,
        duplicates_removed: 1,
        cutoff_notes: vec!["note".into()],
        started_at: chrono::Utc::now(),
        finished_at: chrono::Utc::now(),
    }
}

async fn generations_and_manifests(store: &dyn ViewStore) {
    assert_eq!(store.current_manifest().await.unwrap(), None);
    let row = |count| BatchRow { key: key(0, Some("a")), metrics: vec![count, 0] };
    store.write_batch_rows(1, &[row(1)]).await.unwrap();
    store.write_batch_rows(2, &[row(2), BatchRow { key: key(3_600, None), metrics: vec![1, 1] }]).await.unwrap();
    assert_eq!(store.batch_rows(1, &all()).await.unwrap(), vec![row(1)]);
    assert_eq!(store.batch_rows(2, &all()).await.unwrap().len(), 2);
    assert_eq!(store.generations().await.unwrap(), vec![1, 2]);
    store.publish_manifest(&manifest(1)).await.unwrap();
    let second = manifest(2);
    store.publish_manifest(&second).await.unwrap();
    assert!(store.publish_manifest(&manifest(2)).await.is_err(), "a generation is published once");
    assert_eq!(store.current_manifest().await.unwrap(), Some(second), "the highest generation, round-tripped whole");
    store.delete_generation(1).await.unwrap();
    store.delete_manifests_before(2).await.unwrap();
    assert_eq!(store.generations().await.unwrap(), vec![2]);
    assert!(store.batch_rows(1, &all()).await.unwrap().is_empty());
    let current = store.current_manifest().await.unwrap().unwrap();
    assert_eq!(
        (current.generation, current.cutoffs.clone(), current.duplicates_removed),
        (2, BTreeMap::from([(0, 20)]), 1)
    );
}

async fn the_lease_excludes_other_holders(store: &dyn ViewStore) {
    let ttl = Duration::from_secs(60);
    assert!(store.acquire_lease("batch", "a", ttl).await.unwrap());
    assert!(!store.acquire_lease("batch", "b", ttl).await.unwrap());
    assert!(store.acquire_lease("batch", "a", ttl).await.unwrap(), "the holder renews");
    store.release_lease("batch", "b").await.unwrap(); // not b's: no effect
    assert!(!store.acquire_lease("batch", "b", ttl).await.unwrap());
    store.release_lease("batch", "a").await.unwrap();
    assert!(store.acquire_lease("batch", "b", Duration::from_millis(1)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.acquire_lease("batch", "c", ttl).await.unwrap(), "an expired lease is taken over");
}

/// Values that are awkward in any text encoding come back exactly: quotes, backslashes, control
/// characters, non-ASCII, several dimensions with nulls among them, and the extremes of i64.
async fn awkward_values_round_trip(store: &dyn ViewStore) {
    let dims = vec![
        Some("say \"hi\"\\ \u{1}\n\t".to_owned()),
        None,
        Some("Zürich 東京 😀".to_owned()),
        Some(String::new()),
        Some("[1,2]".to_owned()),
    ];
    let key = ViewKey { dims, ..key(-3_600, None) };
    let metrics = vec![i64::MAX, i64::MIN, 0, -1];
    let speed = SpeedRow { key: key.clone(), partition: i32::MAX, segment_start: 0, upto_offset: i64::MAX, metrics };
    store.upsert_speed_rows(std::slice::from_ref(&speed)).await.unwrap();
    assert_eq!(store.speed_rows(&all()).await.unwrap(), vec![speed.clone()]);
    let batch = BatchRow { key, metrics: speed.metrics.clone() };
    store.write_batch_rows(7, std::slice::from_ref(&batch)).await.unwrap();
    assert_eq!(store.batch_rows(7, &all()).await.unwrap(), vec![batch]);
    let other_view = RowQuery { view: "w".into(), ..all() };
    assert!(store.speed_rows(&other_view).await.unwrap().is_empty());
    assert!(store.batch_rows(7, &other_view).await.unwrap().is_empty());
}

async fn sqlite() -> (tempfile::TempDir, std::sync::Arc<dyn ViewStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        common::store::open(&format!("sqlite://{}", dir.path().join("nested/dir/v.db").display())).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn sqlite_speed_rows_have_set_semantics() {
    let (_d, s) = sqlite().await;
    speed_rows_have_set_semantics(&*s).await;
}

#[tokio::test]
async fn sqlite_seals_are_first_writer_wins() {
    let (_d, s) = sqlite().await;
    seals_are_first_writer_wins(&*s).await;
}

#[tokio::test]
async fn sqlite_generations_and_manifests() {
    let (_d, s) = sqlite().await;
    generations_and_manifests(&*s).await;
}

#[tokio::test]
async fn sqlite_the_lease_excludes_other_holders() {
    let (_d, s) = sqlite().await;
    the_lease_excludes_other_holders(&*s).await;
}

#[tokio::test]
async fn sqlite_awkward_values_round_trip() {
    let (_d, s) = sqlite().await;
    awkward_values_round_trip(&*s).await;
}

#[tokio::test]
async fn sqlite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("v.db").display());
    let s = common::store::open(&url).await.unwrap();
    s.upsert_speed_rows(&[speed(0, 0, 0, 10, 4)]).await.unwrap();
    drop(s);
    let s = common::store::open(&url).await.unwrap();
    assert_eq!(s.speed_rows(&all()).await.unwrap(), vec![speed(0, 0, 0, 10, 4)]);
}
