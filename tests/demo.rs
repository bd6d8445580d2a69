//! `lambda demo` at a high rate (issue 9, item 12): librdkafka's mock cluster keeps only about 5 MB per
//! partition and trims older records whether or not anyone read them. The sample sent ten times over is
//! about twice that per partition at 20,000 events/s; the demo must pace its producer so that nothing is
//! trimmed unread, and end exact: every cutoff at the log end, every copy removed by the batch.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use common::Config;
use lambda::demo::DemoOptions;
use support::truth;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_at_20k_events_per_second_ends_exact() {
    const COPIES: usize = 10;
    let rows = truth::read_sample();
    let (manifest, actual) = run_demo_to_the_end(COPIES, None).await;
    let total = (COPIES * rows.len()) as u64;
    assert_eq!(manifest["duplicates_removed"].as_u64(), Some(total - rows.len() as u64), "{manifest}");
    assert_eq!(manifest["cutoff_notes"].as_array().map(Vec::len), Some(0), "{manifest}");
    let expected = truth::expected(&rows);
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
}

/// Issue 10: `lambda demo --store postgres://...` answers what the SQLite demo answers for the same input
/// (and both equal the ground truth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_on_postgres_answers_as_on_sqlite() {
    let Some(url) = common::testing::scratch_postgres("demo").await else { return };
    let (on_postgres_manifest, on_postgres) = run_demo_to_the_end(2, Some(url.clone())).await;
    let (on_sqlite_manifest, on_sqlite) = run_demo_to_the_end(2, None).await;
    assert_eq!(on_postgres, on_sqlite, "{}", truth::diff(&on_sqlite, &on_postgres));
    for field in ["records_scanned", "duplicates_removed", "cutoffs", "rows"] {
        assert_eq!(on_postgres_manifest[field], on_sqlite_manifest[field], "manifest field {field}");
    }
    let expected = truth::expected(&truth::read_sample());
    assert_eq!(on_sqlite, expected, "{}", truth::diff(&expected, &on_sqlite));
    // the store now holds this demo's views: a second demo on it refuses to start rather than mix them
    let config = Config::from_toml_str("").unwrap();
    let options = DemoOptions { store: Some(url), events: 10, ..DemoOptions::default() };
    let refused = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(lambda::demo::run(config, options, CancellationToken::new())).map_err(|e| format!("{e:#}"))
    })
    .join()
    .unwrap();
    assert!(refused.as_ref().is_err_and(|e| e.contains("empty view store")), "{refused:?}");
}

/// Runs the demo on the sample sent `copies` times at 20,000 events/s, on `store` (default: SQLite), until a
/// manifest covers every record; returns the manifest and the answers, then stops the demo.
async fn run_demo_to_the_end(copies: usize, store: Option<String>) -> (serde_json::Value, support::truth::Expected) {
    common::telemetry::init_tracing("warn,librdkafka=error");
    let rows = truth::read_sample();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str("[serve]\ncache_ttl = \"0s\"\n").unwrap();
    let messages = lambda::produce::read_file(&truth::sample_path(), &config).unwrap();
    let input = dir.path().join("copies.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for _ in 0..copies {
        for m in &messages {
            file.write_all(&m.payload).unwrap();
            file.write_all(b"\n").unwrap();
        }
    }
    file.flush().unwrap();
    drop(file);
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let options = DemoOptions {
        input: Some(input),
        rate: 20_000.0,
        duplicates_pct: 0.0,
        data_dir: dir.path().join("demo"),
        listen: Some(listen),
        batch_cron: "*/2 * * * * *".into(),
        store,
        ..DemoOptions::default()
    };
    let shutdown = CancellationToken::new();
    // the demo owns the mock cluster, which is not Send: it runs on its own thread and runtime, as in `main`
    let stop = shutdown.clone();
    let demo = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(lambda::demo::run(config, options, stop)).map_err(|e| format!("{e:#}"))
    });

    let (http, base) = (reqwest::Client::new(), format!("http://{listen}"));
    let total = (copies * rows.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(240);
    let manifest = loop {
        assert!(!demo.is_finished(), "the demo stopped: {:?}", demo.join());
        if let Ok(r) = http.get(format!("{base}/v1/manifest")).send().await {
            if r.status().is_success() {
                let m: serde_json::Value = r.json().await.unwrap();
                if m["records_scanned"].as_u64() == Some(total) {
                    break m;
                }
                assert!(Instant::now() < deadline, "the batch never covered all {total} records; last manifest: {m}");
            }
        }
        assert!(Instant::now() < deadline, "no manifest within the deadline");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (actual, _, _) = support::answers(&http, &base).await;
    shutdown.cancel();
    tokio::task::spawn_blocking(move || demo.join().unwrap()).await.unwrap().unwrap();
    (manifest, actual)
}
