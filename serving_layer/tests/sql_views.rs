//! The SQL views (`lambda views install`) against the HTTP API on the same store: for every view and
//! granularity of the default config, `SELECT * FROM v_<view>_<granularity>` returns exactly the rows of
//! `GET /v1/views/<view>?granularity=<granularity>` (bucket, dimensions, metrics, source), in the speed-only,
//! batch and mixed phases, on SQLite and on PostgreSQL (`LAMBDA_TEST_POSTGRES`). The funnel and revenue
//! views are checked against totals computed here from the API's day rows.
//!
//! The store is filled with random rows (seeded, logged) written through the store trait as the layers
//! would: speed rows in several partitions and segments, some below a later cutoff; generations published
//! with cutoffs, partitions without one, null dimensions, sums with micro-unit fractions.

use std::collections::BTreeMap;
use std::sync::Arc;

use common::store::{BatchRow, Lease, SpeedRow, ViewKey, ViewStore};
use common::view::{Granularity, ViewSet};
use common::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serving_layer::sql_views::{self, Dialect};
use sqlx::{Connection, Row};
use tokio_util::sync::CancellationToken;

/// One answer row, normalized: (bucket start in Unix seconds, dimension values, metric values with sums in
/// micro-units, source).
type Cell = (i64, Vec<Option<String>>, Vec<i128>, String);

struct Env {
    url: String,
    base: String,
    store: Arc<dyn ViewStore>,
    views: ViewSet,
    lease: Lease,
    stop: CancellationToken,
    _dir: Option<tempfile::TempDir>,
}

async fn start(url: String, dir: Option<tempfile::TempDir>) -> Env {
    let mut config = Config::defaults();
    config.serve.cache_ttl = std::time::Duration::ZERO;
    let store = common::store::open(&url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let views = ViewSet::new(&config);
    tokio::spawn(serving_layer::serve(listener, config, store.clone(), stop.clone()));
    let lease =
        store.acquire_lease("batch", "sql-views-test", std::time::Duration::from_secs(600)).await.unwrap().unwrap();
    let installed = sql_views::install(&url, &views).await.unwrap();
    assert_eq!(installed.len(), 3 * 3 + 2 + 1, "{installed:?}");
    // idempotent: a second install replaces them
    assert_eq!(sql_views::install(&url, &views).await.unwrap(), installed);
    Env { url, base, store, views, lease, stop, _dir: dir }
}

/// "12.5" -> 12_500_000 micro-units (exact; at most 6 decimals).
fn micros(text: &str) -> i128 {
    let (neg, t) = text.strip_prefix('-').map_or((false, text), |t| (true, t));
    let (units, frac) = t.split_once('.').unwrap_or((t, ""));
    assert!(frac.len() <= 6, "{text}");
    let v = units.parse::<i128>().unwrap() * 1_000_000 + format!("{frac:0<6}").parse::<i128>().unwrap();
    if neg {
        -v
    } else {
        v
    }
}

/// An API answer, with metric values kept as their exact JSON text.
#[derive(serde::Deserialize)]
struct Answer {
    rows: Vec<AnswerRow>,
}

#[derive(serde::Deserialize)]
struct AnswerRow {
    bucket_start: String,
    dims: BTreeMap<String, Option<String>>,
    metrics: BTreeMap<String, Box<serde_json::value::RawValue>>,
    source: String,
}

async fn api_cells(env: &Env, view: &str, g: Granularity) -> Vec<Cell> {
    let url = format!("{}/v1/views/{view}?granularity={g}", env.base);
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let answer: Answer = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    let v = env.views.get(view).unwrap();
    let mut out: Vec<Cell> = answer
        .rows
        .iter()
        .map(|r| {
            let bucket = chrono::DateTime::parse_from_rfc3339(&r.bucket_start).unwrap().timestamp();
            let dims = v.dimensions.iter().map(|d| r.dims[d].clone()).collect();
            let metrics = v
                .metric_names
                .iter()
                .zip(&v.metrics)
                .map(|(name, m)| {
                    let text = r.metrics[name].get().trim_matches('"');
                    if m.is_decimal() {
                        micros(text)
                    } else {
                        text.parse().unwrap()
                    }
                })
                .collect();
            (bucket, dims, metrics, r.source.clone())
        })
        .collect();
    out.sort();
    out
}

/// The rows of `sql` with every column read as text.
async fn sql_rows(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    match Dialect::of_url(url).unwrap() {
        Dialect::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter().map(|r| (0..r.len()).map(|i| r.get::<Option<String>, _>(i)).collect()).collect()
        }
        Dialect::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
            let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter().map(|r| (0..r.len()).map(|i| r.get::<Option<String>, _>(i)).collect()).collect()
        }
    }
}

async fn view_cells(env: &Env, view: &str, g: Granularity) -> Vec<Cell> {
    let dialect = Dialect::of_url(&env.url).unwrap();
    let v = env.views.get(view).unwrap();
    let q = |c: &str| format!("\"{c}\"");
    let mut columns = vec![match dialect {
        // the text Superset's time filters compare on SQLite: `YYYY-MM-DD HH:MM:SS`
        Dialect::Sqlite => "bucket_start".to_owned(),
        Dialect::Postgres => "to_char(bucket_start, 'YYYY-MM-DD HH24:MI:SS')".to_owned(),
    }];
    columns.extend(v.dimensions.iter().map(|d| format!("CAST({} AS TEXT)", q(d))));
    for (name, m) in v.metric_names.iter().zip(&v.metrics) {
        columns.push(match (dialect, m.is_decimal()) {
            // REAL on SQLite: exact to the micro-unit below 2^53 micro-units (the values here stay far below)
            (Dialect::Sqlite, true) => format!("printf('%.6f', {})", q(name)),
            _ => format!("CAST({} AS TEXT)", q(name)),
        });
    }
    columns.push("source".to_owned());
    let sql = format!("SELECT {} FROM \"{}\"", columns.join(", "), sql_views::view_name(view, g));
    let n = v.dimensions.len();
    let mut out: Vec<Cell> = sql_rows(&env.url, &sql)
        .await
        .into_iter()
        .map(|row| {
            let bucket = chrono::NaiveDateTime::parse_from_str(row[0].as_deref().unwrap(), "%Y-%m-%d %H:%M:%S")
                .unwrap_or_else(|e| panic!("bucket_start {:?}: {e}", row[0]))
                .and_utc()
                .timestamp();
            let dims = row[1..=n].to_vec();
            let metrics = v
                .metrics
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let text = row[1 + n + i].as_deref().unwrap();
                    if m.is_decimal() {
                        micros(text)
                    } else {
                        text.parse().unwrap()
                    }
                })
                .collect();
            (bucket, dims, metrics, row[row.len() - 1].clone().unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Every view and granularity: the SQL view equals the API; then the e-commerce views, and `v_freshness`
/// against `generation` (the one published last) and the latest bucket of the API's rows. Returns the
/// number of rows compared.
async fn assert_views_equal_api(env: &Env, phase: &str, generation: Option<i64>) -> usize {
    let mut compared = 0;
    let mut latest = None;
    for v in &env.views.views {
        for &g in &v.granularities {
            let (api, sql) = (api_cells(env, &v.name, g).await, view_cells(env, &v.name, g).await);
            assert_eq!(sql, api, "{phase}: {} at {g} on {}", v.name, env.url);
            compared += api.len();
            latest = latest.max(api.iter().map(|c| c.0).max());
        }
    }
    assert_ecommerce_views(env, phase).await;
    let sql = match Dialect::of_url(&env.url).unwrap() {
        Dialect::Sqlite => "SELECT CAST(generation AS TEXT), batch_finished_at, latest_bucket FROM v_freshness",
        Dialect::Postgres => {
            "SELECT CAST(generation AS TEXT), to_char(batch_finished_at, 'YYYY-MM-DD HH24:MI:SS'), \
                              to_char(latest_bucket, 'YYYY-MM-DD HH24:MI:SS') FROM v_freshness"
        }
    };
    let rows = sql_rows(&env.url, sql).await;
    assert_eq!(rows.len(), 1, "{phase}: v_freshness has one row");
    assert_eq!(rows[0][0].as_deref().map(|g| g.parse::<i64>().unwrap()), generation, "{phase}: generation");
    assert_eq!(rows[0][1].is_some(), generation.is_some(), "{phase}: batch_finished_at {:?}", rows[0][1]);
    let bucket = rows[0][2]
        .as_deref()
        .map(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp());
    assert_eq!(bucket, latest, "{phase}: latest_bucket");
    compared
}

/// The funnel and revenue views against totals computed here from the API's day rows.
async fn assert_ecommerce_views(env: &Env, phase: &str) {
    // (day, category) -> [views, carts, purchases]
    let mut funnel: BTreeMap<(i64, Option<String>), [i128; 3]> = BTreeMap::new();
    for (day, dims, metrics, _) in api_cells(env, "by_category", Granularity::Day).await {
        let slot = match dims[0].as_deref() {
            Some("view") => 0,
            Some("cart") => 1,
            Some("purchase") => 2,
            _ => continue,
        };
        funnel.entry((day, dims[1].clone())).or_default()[slot] += metrics[0];
    }
    let mut revenue: BTreeMap<(i64, Option<String>), (i128, i128)> = BTreeMap::new();
    for (day, dims, metrics, _) in api_cells(env, "by_brand", Granularity::Day).await {
        if dims[0].as_deref() == Some("purchase") {
            let e = revenue.entry((day, dims[1].clone())).or_default();
            e.0 += metrics[1];
            e.1 += metrics[0];
        }
    }
    let day = |t: &str| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S").unwrap().and_utc().timestamp();
    let (bucket, ratio) = match Dialect::of_url(&env.url).unwrap() {
        Dialect::Sqlite => ("bucket_start", "CAST(view_to_purchase AS TEXT)"),
        Dialect::Postgres => ("to_char(bucket_start, 'YYYY-MM-DD HH24:MI:SS')", "CAST(view_to_purchase AS TEXT)"),
    };
    let rows = sql_rows(
        &env.url,
        &format!(
            "SELECT {bucket}, category_code, CAST(views AS TEXT), CAST(carts AS TEXT), CAST(purchases AS TEXT), {ratio} \
             FROM v_funnel_by_category_day"
        ),
    )
    .await;
    let got: BTreeMap<(i64, Option<String>), [i128; 3]> = rows
        .iter()
        .map(|r| {
            let n = |i: usize| r[i].as_deref().unwrap().parse::<i128>().unwrap();
            ((day(r[0].as_deref().unwrap()), r[1].clone()), [n(2), n(3), n(4)])
        })
        .collect();
    assert_eq!(got, funnel, "{phase}: funnel on {}", env.url);
    for r in &rows {
        let (views, purchases) =
            (r[2].as_deref().unwrap().parse::<f64>().unwrap(), r[4].as_deref().unwrap().parse::<f64>().unwrap());
        match r[5].as_deref() {
            None => assert_eq!(views, 0.0, "{phase}: a rate is null only without views"),
            Some(rate) => assert!((rate.parse::<f64>().unwrap() - purchases / views).abs() < 1e-6, "{phase}: {r:?}"),
        }
    }
    let revenue_sql = match Dialect::of_url(&env.url).unwrap() {
        Dialect::Sqlite => "SELECT bucket_start, brand, printf('%.6f', revenue), CAST(purchases AS TEXT) FROM v_revenue_by_brand_day",
        Dialect::Postgres => "SELECT to_char(bucket_start, 'YYYY-MM-DD HH24:MI:SS'), brand, CAST(revenue AS TEXT), CAST(purchases AS TEXT) FROM v_revenue_by_brand_day",
    };
    let got: BTreeMap<(i64, Option<String>), (i128, i128)> = sql_rows(&env.url, revenue_sql)
        .await
        .iter()
        .map(|r| {
            let key = (day(r[0].as_deref().unwrap()), r[1].clone());
            (key, (micros(r[2].as_deref().unwrap()), r[3].as_deref().unwrap().parse().unwrap()))
        })
        .collect();
    assert_eq!(got, revenue, "{phase}: revenue on {}", env.url);
}

const NOV1: i64 = 1_572_566_400; // 2019-11-01T00:00:00Z
const TYPES: [Option<&str>; 4] = [Some("view"), Some("cart"), Some("purchase"), None];
const BRANDS: [Option<&str>; 4] = [Some("apple"), Some("o'neil \"x\""), None, Some("samsung")];
const CATEGORIES: [Option<&str>; 3] = [Some("electronics.smartphone"), None, Some("apparel.shoes")];

/// A random key of one of the default views at `g`, in the first three days of November 2019.
fn random_key(rng: &mut StdRng, g: Granularity) -> ViewKey {
    let t = NOV1 + rng.random_range(0..3 * 86_400);
    let pick = |rng: &mut StdRng, values: &[Option<&str>]| values[rng.random_range(0..values.len())].map(str::to_owned);
    let event_type = pick(rng, &TYPES);
    let (view, dims) = match rng.random_range(0..3) {
        0 => ("by_type", vec![event_type]),
        1 => ("by_brand", vec![event_type, pick(rng, &BRANDS)]),
        _ => ("by_category", vec![event_type, pick(rng, &CATEGORIES)]),
    };
    ViewKey { view: view.into(), granularity: g, bucket_start: g.bucket_start(t * 1_000_000), dims }
}

fn random_metrics(rng: &mut StdRng) -> Vec<i128> {
    // counts, and sums with micro-unit fractions (a 1e9-unit sum now and then)
    let sum = if rng.random_ratio(1, 50) { 1_000_000_000_000_000 + 1 } else { rng.random_range(0..5_000_000_000) };
    vec![rng.random_range(1..50), sum]
}

fn speed_rows(rng: &mut StdRng, partition: i32, segment_start: i64, n: usize) -> Vec<SpeedRow> {
    let mut rows: BTreeMap<ViewKey, SpeedRow> = BTreeMap::new();
    for _ in 0..n {
        let g = Granularity::ALL[rng.random_range(0..3)];
        let key = random_key(rng, g);
        rows.insert(
            key.clone(),
            SpeedRow { key, partition, segment_start, upto_offset: segment_start + 50, metrics: random_metrics(rng) },
        );
    }
    rows.into_values().collect()
}

fn batch_rows(rng: &mut StdRng, n: usize) -> Vec<BatchRow> {
    let mut rows: BTreeMap<ViewKey, BatchRow> = BTreeMap::new();
    for _ in 0..n {
        let g = Granularity::ALL[rng.random_range(0..3)];
        let key = random_key(rng, g);
        rows.insert(key.clone(), BatchRow { key, metrics: random_metrics(rng) });
    }
    rows.into_values().collect()
}

async fn publish(env: &Env, rows: &[BatchRow], cutoffs: &[(i32, i64)]) -> i64 {
    let generation = env.store.allocate_generation(&env.lease).await.unwrap();
    env.store.write_batch_rows(&env.lease, generation, rows).await.unwrap();
    env.store.publish_manifest(&env.lease, &common::testing::manifest(generation, cutoffs)).await.unwrap();
    generation
}

/// The three phases on one store.
async fn phases(env: Env, seed: u64) {
    eprintln!("sql views on {}: seed {seed}", common::store::redact(&env.url));
    let mut rng = StdRng::seed_from_u64(seed);
    // speed only: partitions 0 and 1, two segments each; no manifest yet
    for (p, start) in [(0, 0), (0, 100), (1, 0), (1, 100)] {
        env.store.upsert_speed_rows("events", &speed_rows(&mut rng, p, start, 120)).await.unwrap();
    }
    let n = assert_views_equal_api(&env, "speed only", None).await;
    assert!(n > 100, "speed only compared {n} rows");

    // batch: a generation holding partitions 0 and 1 below offset 100 (their first segments absorbed, the
    // second ones still speed); partition 2 has no cutoff and counts whole
    let generation = publish(&env, &batch_rows(&mut rng, 300), &[(0, 100), (1, 100)]).await;
    env.store.upsert_speed_rows("events", &speed_rows(&mut rng, 2, 0, 60)).await.unwrap();
    let n = assert_views_equal_api(&env, "batch", Some(generation)).await;
    assert!(n > 100, "batch compared {n} rows");

    // mixed: a newer generation with later cutoffs, newer speed segments on the same buckets, and the
    // older generation's rows still stored (only the current one counts)
    let generation = publish(&env, &batch_rows(&mut rng, 300), &[(0, 200), (1, 100), (2, 0)]).await;
    for (p, start) in [(0, 200), (1, 200), (2, 100)] {
        env.store.upsert_speed_rows("events", &speed_rows(&mut rng, p, start, 150)).await.unwrap();
    }
    let n = assert_views_equal_api(&env, "mixed", Some(generation)).await;
    assert!(n > 100, "mixed compared {n} rows");
    let sources = sql_rows(
        &env.url,
        "SELECT source FROM v_by_type_minute UNION SELECT source FROM v_by_type_day ORDER BY source",
    )
    .await;
    assert_eq!(sources.len(), 3, "batch, speed and both all occur: {sources:?}");
    env.stop.cancel();
}

fn seed() -> u64 {
    std::env::var("LAMBDA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| rand::rng().random())
}

#[tokio::test]
async fn sql_views_equal_the_api_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("views.db").display());
    phases(start(url, Some(dir)).await, seed()).await;
}

#[tokio::test]
async fn sql_views_equal_the_api_on_postgres() {
    let Some(url) = common::testing::scratch_postgres("sql_views_equal_the_api").await else { return };
    phases(start(url, None).await, seed()).await;
}

/// An install after a config change drops the views of views no longer configured.
#[tokio::test]
async fn a_view_removed_from_the_config_loses_its_sql_view() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("views.db").display());
    let all = ViewSet::new(&Config::defaults());
    sql_views::install(&url, &all).await.unwrap();
    let fewer = ViewSet { views: all.views.iter().filter(|v| v.name == "by_type").cloned().collect() };
    let names = sql_views::install(&url, &fewer).await.unwrap();
    assert_eq!(names, ["v_by_type_minute", "v_by_type_hour", "v_by_type_day", "v_freshness"]);
    let left: Vec<String> = sql_rows(&url, "SELECT name FROM sqlite_master WHERE type = 'view' ORDER BY name")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert_eq!(left, ["v_by_type_day", "v_by_type_hour", "v_by_type_minute", "v_freshness"]);
}
