//! The SQL mirror (issue 10, item 4): SQLite stands in for the store BI tools cannot read (ScyllaDB's
//! role), PostgreSQL is the mirror. After each mirror pass, the HTTP API run on the mirror answers exactly
//! what the API on the store answers — the ground truth — in the speed-only, batch and mixed phases; a
//! pass with nothing new writes nothing; old generations and absorbed speed rows leave the mirror too.

mod support;

use std::time::Duration;

use serving_layer::mirror::Mirror;
use support::{sample_messages, truth, Harness};

const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_answers_as_the_store_in_every_phase() {
    let Some(mirror_url) = common::testing::scratch_postgres("mirror").await else { return };
    let rows = truth::read_sample();
    let mut h = Harness::start(3).await;
    let mut config = h.config.clone();
    config.bi.url = mirror_url.clone();
    let mut mirror = Mirror::open(config.clone(), h.store.clone()).await.unwrap();
    // the API on the mirror database, as Superset's SQL views will read it
    let mirror_store = common::store::open(&mirror_url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mirror_api = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(serving_layer::serve(listener, config.clone(), mirror_store.clone(), stop.clone()));
    let http = reqwest::Client::new();
    let via_mirror = || async { support::answers(&http, &mirror_api).await };

    let messages = sample_messages(&h.config);
    let split = 6_000;
    h.start_speed();
    h.start_archiver();
    h.produce(&messages[..split], None).await;

    // speed rows only
    let expected = truth::expected(&rows[..split]);
    h.wait_for_answers(&expected, PATIENCE).await;
    h.wait_sealed(PATIENCE).await;
    let first = mirror.pass().await.unwrap();
    assert!(first.speed_rows_written > 0 && first.published.is_none(), "{first:?}");
    let (store_answers, _, _) = h.answers().await;
    let (actual, sources, _) = via_mirror().await;
    assert_eq!(actual, store_answers, "{}", truth::diff(&store_answers, &actual));
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["speed"]);
    let idle = mirror.pass().await.unwrap();
    assert_eq!((idle.speed_rows_written, idle.speed_rows_deleted, idle.published), (0, 0, None), "incremental");

    // a batch run: the mirror publishes its generation in the same transaction as the speed rows
    h.wait_sealed_and_archived(PATIENCE).await;
    let manifest = h.batch().await;
    let second = mirror.pass().await.unwrap();
    assert_eq!(second.published, Some(manifest.generation), "{second:?}");
    assert!(second.batch_rows_copied > 0);
    let (actual, sources, generation) = via_mirror().await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
    assert_eq!(sources.keys().collect::<Vec<_>>(), vec!["batch"]);
    assert_eq!(generation, Some(manifest.generation));

    // more events: batch and speed rows merge in the mirror as in the store
    h.produce(&messages[split..], None).await;
    let expected_all = truth::expected(&rows);
    h.wait_for_answers(&expected_all, PATIENCE).await;
    mirror.pass().await.unwrap();
    let (actual, sources, _) = via_mirror().await;
    assert_eq!(actual, expected_all, "{}", truth::diff(&expected_all, &actual));
    assert!(sources.contains_key("batch") && sources.len() > 1, "{sources:?}");

    // two more runs: the mirror keeps batch.keep_generations generations and drops absorbed speed rows
    h.wait_sealed_and_archived(PATIENCE).await;
    h.batch().await;
    mirror.pass().await.unwrap();
    let third = h.batch().await;
    let last = mirror.pass().await.unwrap();
    assert_eq!(last.published, Some(third.generation));
    let (actual, _, generation) = via_mirror().await;
    assert_eq!((actual == expected_all, generation), (true, Some(third.generation)));
    assert_eq!(mirror_store.published_generations().await.unwrap(), h.store.published_generations().await.unwrap());
    assert_eq!(mirror_store.generations().await.unwrap(), h.store.generations().await.unwrap());
    assert!(h.all_speed_rows().await.is_empty());
    let mut left = Vec::new();
    for view in &config.views {
        for &g in &view.granularities {
            left.extend(mirror_store.speed_rows(&common::store::RowQuery::all(&view.name, g)).await.unwrap());
        }
    }
    assert!(left.is_empty(), "absorbed speed rows leave the mirror: {} left", left.len());

    // one mirror at a time: a second one skips while the first holds the lease
    let mut other = Mirror::open(config, h.store.clone()).await.unwrap();
    assert!(other.pass().await.unwrap().skipped.is_some());
    mirror.release().await;
    assert!(other.pass().await.unwrap().skipped.is_none(), "released: the other takes over");
    stop.cancel();
    h.shutdown().await;
}
