//! The HTTP API against a real SQLite store on 127.0.0.1: parameter errors, the answer shape, exact decimals,
//! null dimensions, filters, group_by, the merge rule's sources, auth, health, manifest and metrics.

use std::sync::Arc;

use common::store::{BatchRow, Lease, SpeedRow, ViewKey, ViewStore};
use common::view::Granularity;
use common::Config;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct Api {
    base: String,
    store: Arc<dyn ViewStore>,
    /// The batch lease, for the fenced writes the tests make as a batch run would.
    lease: Lease,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

async fn start(overrides: &str) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::from_toml_str(overrides).unwrap();
    if !overrides.contains("cache_ttl") {
        config.serve.cache_ttl = std::time::Duration::ZERO; // answers must follow each store change at once
    }
    let store = common::store::open(&format!("sqlite://{}", dir.path().join("v.db").display())).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(serving_layer::serve(listener, config, store.clone(), stop.clone()));
    let lease = store.acquire_lease("batch", "api-test", std::time::Duration::from_secs(600)).await.unwrap().unwrap();
    Api { base, store, lease, _dir: dir, stop }
}

async fn get(api: &Api, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{}{path}", api.base)).await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn key(view: &str, g: Granularity, bucket: i64, dims: &[Option<&str>]) -> ViewKey {
    ViewKey {
        view: view.into(),
        granularity: g,
        bucket_start: bucket,
        dims: dims.iter().map(|d| d.map(str::to_owned)).collect(),
    }
}

use common::testing::manifest;

const NOV1: i64 = 1_572_566_400; // 2019-11-01T00:00:00Z
const DAY: i64 = 86_400;

#[tokio::test]
async fn every_bad_parameter_gets_a_400_naming_it() {
    let api = start("").await;
    let cases = [
        ("/v1/views/by_type", "granularity"),
        ("/v1/views/by_type?granularity=week", "granularity"),
        ("/v1/views/by_type?granularity=day&from=yesterday", "from"),
        ("/v1/views/by_type?granularity=day&to=2019-13-01T00:00:00Z", "to"),
        ("/v1/views/by_type?granularity=day&from=2019-11-02T00:00:00Z&to=2019-11-01T00:00:00Z", "from"),
        ("/v1/views/by_type?granularity=day&from=2019-11-01T00:00:00Z&to=2019-11-01T00:00:00Z", "from"),
        ("/v1/views/by_type?granularity=day&colour=red", "colour"),
        ("/v1/views/by_type?granularity=day&brand=apple", "brand"),
        ("/v1/views/by_type?granularity=day&group_by=brand", "group_by"),
        ("/v1/views/by_type?granularity=day&order_by=revenue", "order_by"),
        ("/v1/views/by_type?granularity=day&order_by=count:up", "order_by"),
        ("/v1/views/by_type?granularity=day&top=10", "top"),
        ("/v1/views/by_type?granularity=day&order_by=count&top=0", "top"),
        ("/v1/views/by_type?granularity=day&order_by=count&top=ten", "top"),
        ("/v1/views/by_type?granularity=day&order_by=count&top=10001", "top"),
        ("/v1/views/by_type?granularity=day&order_by=count&top=+5", "top"),
        ("/v1/views/by_type?granularity=day&from=2019-11-01%2000:00:00Z", "from"),
        ("/v1/views/by_type?granularity=day&granularity=hour", "granularity"),
        ("/v1/views/by_type?granularity=day&event_type=view&event_type=cart", "event_type"),
    ];
    for (path, parameter) in cases {
        let (status, body) = get(&api, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["parameter"], parameter, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty(), "{path}");
    }
    api.stop.cancel();
}

/// Every answer is JSON, an unknown route's too; the OpenAPI document lists the configured views.
#[tokio::test]
async fn unknown_routes_answer_json_and_the_document_lists_the_views() {
    let api = start("").await;
    for path in ["/nope", "/v1/views/", "/v1/views/by_type/extra"] {
        let (status, body) = get(&api, path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{path}: {body}");
    }
    let (status, doc) = get(&api, "/openapi.json").await;
    assert_eq!(status, 200);
    for view in ["by_type", "by_brand"] {
        let params = doc["paths"][format!("/v1/views/{view}")]["get"]["parameters"].as_array().unwrap();
        assert!(params.iter().any(|p| p["name"] == "event_type"), "{view}: {params:?}");
    }
    assert!(doc["paths"]["/v1/views/{view}"]["get"]["security"].is_null(), "no auth configured");
    api.stop.cancel();
}

#[tokio::test]
async fn granularity_not_configured_for_the_view_is_rejected() {
    let api = start(
        "[[views]]\nname = \"daily\"\ndimensions = [\"event_type\"]\nmetrics = [\"count\"]\ngranularities = [\"day\"]\n",
    )
    .await;
    let (status, body) = get(&api, "/v1/views/daily?granularity=minute").await;
    assert_eq!((status, body["error"]["parameter"].as_str()), (400, Some("granularity")), "{body}");
    api.stop.cancel();
}

#[tokio::test]
async fn answers_merge_batch_and_speed_with_exact_decimals() {
    let api = start("").await;
    let g = Granularity::Day;
    let manifest = manifest(7, &[(0, 100)]);
    api.store
        .write_batch_rows(
            &api.lease,
            7,
            &[
                BatchRow {
                    key: key("by_brand", g, NOV1, &[Some("view"), Some("apple")]),
                    metrics: vec![2, 1_553_480_000],
                },
                BatchRow { key: key("by_brand", g, NOV1, &[Some("view"), None]), metrics: vec![1, 100_000] },
            ],
        )
        .await
        .unwrap();
    // an older generation that must be ignored
    api.store
        .write_batch_rows(
            &api.lease,
            6,
            &[BatchRow { key: key("by_brand", g, NOV1, &[Some("cart"), None]), metrics: vec![99, 1] }],
        )
        .await
        .unwrap();
    let speed = |bucket, dims: &[Option<&str>], partition, segment_start, metrics: Vec<i128>| SpeedRow {
        key: key("by_brand", g, bucket, dims),
        partition,
        segment_start,
        upto_offset: segment_start + 1,
        metrics,
    };
    api.store
        .upsert_speed_rows(
            "events",
            &[
                speed(NOV1, &[Some("view"), Some("apple")], 0, 50, vec![5, 5_000_000]), // absorbed by the batch (50 < 100)
                speed(NOV1, &[Some("view"), Some("apple")], 0, 100, vec![1, 10_000]),   // at the cutoff: counts
                speed(NOV1 + DAY, &[Some("purchase"), Some("xiaomi")], 1, 0, vec![1, 199_990_000]), // partition 1 unseen
            ],
        )
        .await
        .unwrap();

    let (status, _) = get(&api, "/v1/manifest").await;
    assert_eq!(status, 404, "no manifest yet");
    let (_, before) = get(&api, "/v1/views/by_brand?granularity=day").await;
    assert!(before["manifest"].is_null());
    assert_eq!(before["rows"].as_array().unwrap().len(), 2, "without a manifest only speed rows count: {before}");

    api.store.publish_manifest(&api.lease, &manifest).await.unwrap();
    let (status, body) =
        get(&api, "/v1/views/by_brand?granularity=day&from=2019-11-01T00:00:00Z&to=2019-12-01T00:00:00Z").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["view"], "by_brand");
    assert_eq!(body["granularity"], "day");
    assert_eq!(body["manifest"]["generation"], 7);
    assert_eq!(body["manifest"]["cutoffs"]["0"], 100);
    let rows = body["rows"].as_array().unwrap();
    let summary: Vec<(String, Value, Value, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["bucket_start"].as_str().unwrap().to_owned(),
                r["dims"]["brand"].clone(),
                r["metrics"]["count"].clone(),
                r["metrics"]["sum_price"].to_string(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // 2019-11-01: null brand first (batch only), then apple = batch 2 + speed 1 (segment 50 absorbed)
    assert_eq!(
        summary,
        vec![
            ("2019-11-01T00:00:00Z".into(), Value::Null, Value::from(1), "0.1".into(), "batch".into()),
            ("2019-11-01T00:00:00Z".into(), Value::from("apple"), Value::from(3), "1553.49".into(), "both".into()),
            ("2019-11-02T00:00:00Z".into(), Value::from("xiaomi"), Value::from(1), "199.99".into(), "speed".into()),
        ]
    );

    // filters and group_by
    let (_, body) = get(&api, "/v1/views/by_brand?granularity=day&event_type=view&group_by=").await;
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["dims"], serde_json::json!({}));
    assert_eq!(rows[0]["metrics"]["count"], 4);
    let (_, body) = get(&api, "/v1/views/by_brand?granularity=day&group_by=event_type").await;
    let types: Vec<&str> =
        body["rows"].as_array().unwrap().iter().map(|r| r["dims"]["event_type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["view", "purchase"]);
    // the time range is [from, to) on bucket starts
    let (_, body) = get(&api, "/v1/views/by_brand?granularity=day&from=2019-11-02T00:00:00Z").await;
    assert_eq!(body["rows"].as_array().unwrap().len(), 1);

    let (status, body) = get(&api, "/v1/manifest").await;
    assert_eq!((status, body["generation"].as_i64()), (200, Some(7)));
    let (status, body) = get(&api, "/v1/views").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["views"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["by_type", "by_brand", "by_category"]);
    let (status, body) = get(&api, "/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = get(&api, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.as_str().unwrap().contains("http_requests_total"), "{body}");
    api.stop.cancel();
}

#[tokio::test]
async fn bearer_tokens_guard_the_v1_routes() {
    let api = start("[serve]\nauth_tokens = [\"s3cret\"]\n").await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/views", api.base);
    assert_eq!(client.get(&url).send().await.unwrap().status().as_u16(), 401);
    assert_eq!(client.get(&url).bearer_auth("wrong").send().await.unwrap().status().as_u16(), 401);
    assert_eq!(client.get(&url).bearer_auth("s3cret").send().await.unwrap().status().as_u16(), 200);
    assert_eq!(client.get(format!("{}/healthz", api.base)).send().await.unwrap().status().as_u16(), 200);
    api.stop.cancel();
}

/// With `serve.cache_ttl`, a repeated query string is answered from memory until the TTL passes, then
/// refreshed once in the background (the stale answer served meanwhile); a bad parameter is never cached.
#[tokio::test]
async fn answers_are_cached_for_the_ttl() {
    let api = start("[serve]\ncache_ttl = \"700ms\"\n").await;
    let row = |count: i128, upto: i64| SpeedRow {
        key: key("by_type", Granularity::Day, NOV1, &[Some("view")]),
        partition: 0,
        segment_start: 0,
        upto_offset: upto,
        metrics: vec![count, 0],
    };
    let path = "/v1/views/by_type?granularity=day";
    let count = |body: &Value| body["rows"][0]["metrics"]["count"].as_i64().map(i128::from);
    api.store.upsert_speed_rows("events", &[row(1, 1)]).await.unwrap();
    let (_, first) = get(&api, path).await;
    assert_eq!(count(&first), Some(1));
    api.store.upsert_speed_rows("events", &[row(5, 5)]).await.unwrap();
    let (_, cached) = get(&api, path).await;
    assert_eq!(count(&cached), Some(1), "within the TTL the cached answer is served");
    let (_, other) = get(&api, "/v1/views/by_type?granularity=day&group_by=event_type").await;
    assert_eq!(count(&other), Some(5), "another query string is computed afresh");
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    // past the TTL: the stale answer is served while one refresh runs, then the fresh one
    let (_, stale) = get(&api, path).await;
    assert_eq!(count(&stale), Some(1), "served stale while the refresh runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, fresh) = get(&api, path).await;
        if count(&fresh) == Some(5) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the refresh never landed: {fresh}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = get(&api, "/v1/views/by_type?granularity=week").await;
    assert_eq!(status, 400);
    let (status, _) = get(&api, "/v1/views/by_type?granularity=week").await;
    assert_eq!(status, 400, "errors are not cached as answers");
    api.stop.cancel();
}

/// A cached answer of 4 KiB or more goes gzip-compressed to clients that accept gzip, and is the same JSON
/// once decompressed; other clients, `gzip;q=0` and small answers get plain JSON. Every answer says
/// `Vary: accept-encoding` so caches in between keep the two apart.
#[tokio::test]
async fn large_cached_answers_are_served_gzip_to_clients_that_accept_it() {
    use std::io::Read;
    let api = start("[serve]\ncache_ttl = \"10s\"\n").await;
    let rows: Vec<SpeedRow> = (0..200)
        .map(|i| SpeedRow {
            key: key("by_type", Granularity::Minute, NOV1 + i * 60, &[Some("view")]),
            partition: 0,
            segment_start: 0,
            upto_offset: 1,
            metrics: vec![i128::from(i), i128::from(i) * 10_000],
        })
        .collect();
    api.store.upsert_speed_rows("events", &rows).await.unwrap();
    let client = reqwest::Client::new();
    let fetch = |path: &'static str, accept: Option<&'static str>| {
        let mut request = client.get(format!("{}{path}", api.base));
        if let Some(accept) = accept {
            request = request.header("accept-encoding", accept);
        }
        async move {
            let r = request.send().await.unwrap();
            let encoding = r.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                r.headers().get("vary").map(|v| v.to_str().unwrap().to_owned()).as_deref(),
                Some("accept-encoding")
            );
            (encoding, r.bytes().await.unwrap().to_vec())
        }
    };
    let big = "/v1/views/by_type?granularity=minute";
    let (encoding, plain) = fetch(big, None).await;
    assert_eq!(encoding, None);
    let answer: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(answer["rows"].as_array().unwrap().len(), 200);
    assert!(plain.len() >= 4096, "the answer is big enough to be compressed: {} bytes", plain.len());
    for accept in ["gzip", "br;q=1.0, gzip;q=0.8", "*"] {
        let (encoding, compressed) = fetch(big, Some(accept)).await;
        assert_eq!(encoding.as_deref(), Some("gzip"), "{accept}");
        assert!(compressed.len() < plain.len() / 4, "{accept}: {} bytes", compressed.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice()).read_to_end(&mut unpacked).unwrap();
        assert_eq!(unpacked, plain, "{accept}: the same answer");
    }
    for accept in ["gzip;q=0", "br, deflate", "identity"] {
        assert_eq!(fetch(big, Some(accept)).await.0, None, "{accept}");
    }
    let small = "/v1/views/by_type?granularity=minute&to=2019-11-01T00:02:00Z";
    assert_eq!(fetch(small, Some("gzip")).await.0, None, "a small answer goes plain");
    api.stop.cancel();
}

/// Batch rows are kept in memory per generation: publishing the next generation switches answers to its
/// rows at once (no stale batch part), and a range read once is answered the same from memory.
#[tokio::test]
async fn each_published_generation_is_answered_from_its_own_rows() {
    let api = start("").await;
    let g = Granularity::Day;
    let path = "/v1/views/by_type?granularity=day";
    let count = |body: &Value| body["rows"][0]["metrics"]["count"].as_i64().map(i128::from);
    for (generation, n) in [(1, 3), (2, 8), (3, 21)] {
        let row = BatchRow { key: key("by_type", g, NOV1, &[Some("view")]), metrics: vec![n, 0] };
        api.store.write_batch_rows(&api.lease, generation, &[row]).await.unwrap();
        api.store.publish_manifest(&api.lease, &manifest(generation, &[(0, 10 * generation)])).await.unwrap();
        for _ in 0..2 {
            let (status, body) = get(&api, path).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["manifest"]["generation"], generation);
            assert_eq!(count(&body), Some(n), "generation {generation}: {body}");
        }
    }
    api.stop.cancel();
}

/// Issue 9, item 8: a dimension named twice in `group_by` would give answers with a repeated JSON key.
#[tokio::test]
async fn a_repeated_group_by_dimension_is_a_400() {
    let api = start("").await;
    let (status, body) = get(&api, "/v1/views/by_brand?granularity=day&group_by=event_type,brand,event_type").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["parameter"], "group_by", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("event_type"), "{body}");
    api.stop.cancel();
}

/// Issue 9, item 8: a view that does not exist is a missing resource (404), not a bad parameter.
#[tokio::test]
async fn an_unknown_view_is_a_404() {
    let api = start("").await;
    let (status, body) = get(&api, "/v1/views/no_such_view?granularity=day").await;
    assert_eq!(status, 404, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("no_such_view") && message.contains("by_type"), "{body}");
    api.stop.cancel();
}

/// Issue 9, item 8: a query reading more than `serve.max_rows` rows is refused with a 400 naming the range and
/// the limit (before the store builds the answer), while a narrower range is answered.
#[tokio::test]
async fn answers_past_max_rows_are_refused() {
    let api = start("[serve]\nmax_rows = 50\n").await;
    let rows: Vec<SpeedRow> = (0..60)
        .map(|i| SpeedRow {
            key: key("by_type", Granularity::Minute, NOV1 + 60 * i, &[Some("view")]),
            partition: 0,
            segment_start: 0,
            upto_offset: 100,
            metrics: vec![1, 0],
        })
        .collect();
    api.store.upsert_speed_rows("events", &rows).await.unwrap();
    let (status, body) = get(&api, "/v1/views/by_type?granularity=minute").await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("50") && message.contains("serve.max_rows"), "{body}");
    let (status, body) =
        get(&api, "/v1/views/by_type?granularity=minute&from=2019-11-01T00:00:00Z&to=2019-11-01T00:30:00Z").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 30);
    api.stop.cancel();
}

/// Issue 9, item 8: the answer cache is bounded in bytes (`serve.cache_bytes`): an answer larger than the
/// whole cache is never kept, so a store change shows at once even within the TTL.
#[tokio::test]
async fn the_answer_cache_is_bounded_in_bytes() {
    let api = start("[serve]\ncache_ttl = \"10s\"\ncache_bytes = 1024\n").await;
    let rows = |count: i128, upto: i64| -> Vec<SpeedRow> {
        (0..100)
            .map(|i| SpeedRow {
                key: key("by_type", Granularity::Minute, NOV1 + 60 * i, &[Some("view")]),
                partition: 0,
                segment_start: 0,
                upto_offset: upto,
                metrics: vec![count, 0],
            })
            .collect()
    };
    let path = "/v1/views/by_type?granularity=minute";
    api.store.upsert_speed_rows("events", &rows(1, 1)).await.unwrap();
    let (_, first) = get(&api, path).await;
    assert_eq!(first["rows"][0]["metrics"]["count"], 1);
    assert!(first.to_string().len() > 4096, "the answer is larger than the cache");
    api.store.upsert_speed_rows("events", &rows(2, 2)).await.unwrap();
    let (_, second) = get(&api, path).await;
    assert_eq!(second["rows"][0]["metrics"]["count"], 2, "too large to be cached: computed afresh");
    api.stop.cancel();
}
