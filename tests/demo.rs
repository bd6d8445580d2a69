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
    common::telemetry::init_tracing("warn,librdkafka=error");
    let rows = truth::read_sample();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str("[serve]\ncache_ttl = \"0s\"\n").unwrap();
    let messages = lambda::produce::read_file(&truth::sample_path(), &config).unwrap();
    let input = dir.path().join("ten-times.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    const COPIES: usize = 10;
    for _ in 0..COPIES {
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
    let total = (COPIES * rows.len()) as u64;
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
    assert_eq!(manifest["duplicates_removed"].as_u64(), Some(total - rows.len() as u64), "{manifest}");
    assert_eq!(manifest["cutoff_notes"].as_array().map(Vec::len), Some(0), "{manifest}");
    let expected = truth::expected(&rows);
    let (actual, _, _) = support::answers(&http, &base).await;
    assert_eq!(actual, expected, "{}", truth::diff(&expected, &actual));
    shutdown.cancel();
    tokio::task::spawn_blocking(move || demo.join().unwrap()).await.unwrap().unwrap();
}
