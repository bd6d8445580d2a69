#![allow(dead_code)]
//! Ground truth computed independently of the pipeline: the CSV is read with the `csv` crate, times are cut
//! from the text, prices are parsed as decimal strings into micro-units, and buckets are plain integer
//! arithmetic. Nothing here calls the pipeline's decoder, bucketing or aggregation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (view, granularity, bucket start in Unix seconds, dimension values) -> (count, sum of price in micro-units)
pub type Expected = BTreeMap<(String, String, i64, Vec<Option<String>>), (i64, i64)>;

/// The three default views and their dimensions.
pub const VIEWS: &[(&str, &[&str])] = &[
    ("by_type", &["event_type"]),
    ("by_brand", &["event_type", "brand"]),
    ("by_category", &["event_type", "category_code"]),
];
pub const GRANULARITIES: &[(&str, i64)] = &[("minute", 60), ("hour", 3_600), ("day", 86_400)];

/// One CSV row, as strings.
#[derive(Debug, Clone)]
pub struct Row {
    pub fields: BTreeMap<String, String>,
}

pub fn sample_path() -> PathBuf {
    // The checkout the tests run in (cargo sets this when it runs them), not the one they were built in:
    // a shared CARGO_TARGET_DIR can hand a fresh clone binaries built elsewhere.
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    Path::new(&root).join("../shared/data/ecommerce/2019-Nov-sample.csv")
}

pub fn read_sample() -> Vec<Row> {
    let path = sample_path();
    let mut reader = csv::Reader::from_path(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            Row { fields: headers.iter().zip(r.iter()).map(|(h, v)| (h.to_owned(), v.to_owned())).collect() }
        })
        .collect()
}

/// Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm), independent of chrono.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC` -> Unix seconds.
pub fn unix_seconds(text: &str) -> i64 {
    let n = |a: usize, b: usize| text[a..b].parse::<i64>().unwrap_or_else(|_| panic!("bad time {text}"));
    assert!(text.ends_with(" UTC"), "bad time {text}");
    days_from_civil(n(0, 4), n(5, 7), n(8, 10)) * 86_400 + n(11, 13) * 3_600 + n(14, 16) * 60 + n(17, 19)
}

/// A decimal string (`776.74`, `-0.5`, `12`) -> micro-units, exactly.
pub fn decimal_micros(text: &str) -> i64 {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(frac.len() <= 6, "more than 6 decimals: {text}");
    let frac = format!("{frac:0<6}");
    let v = int.parse::<i64>().unwrap() * 1_000_000 + frac.parse::<i64>().unwrap();
    if neg {
        -v
    } else {
        v
    }
}

/// Aggregates `rows` for every view x granularity.
pub fn expected(rows: &[Row]) -> Expected {
    let mut out = Expected::new();
    for row in rows {
        let t = unix_seconds(&row.fields["event_time"]);
        let price = match row.fields["price"].as_str() {
            "" => 0,
            p => decimal_micros(p),
        };
        for (view, dims) in VIEWS {
            let values: Vec<Option<String>> =
                dims.iter().map(|d| Some(row.fields[*d].clone()).filter(|v| !v.is_empty())).collect();
            for (g, step) in GRANULARITIES {
                let bucket = t - t.rem_euclid(*step);
                let cell = out.entry((view.to_string(), g.to_string(), bucket, values.clone())).or_insert((0, 0));
                cell.0 += 1;
                cell.1 += price;
            }
        }
    }
    out
}

/// Brands ranked by revenue (sum of price, every event type) over event times in `[from, to)` (Unix
/// seconds): (brand, count, revenue micro-units), revenue descending, ties by brand (missing first).
pub fn top_brands(rows: &[Row], from: i64, to: i64, n: usize) -> Vec<(Option<String>, i64, i64)> {
    let mut totals: BTreeMap<Option<String>, (i64, i64)> = BTreeMap::new();
    for row in rows {
        let t = unix_seconds(&row.fields["event_time"]);
        if t < from || t >= to {
            continue;
        }
        let brand = Some(row.fields["brand"].clone()).filter(|b| !b.is_empty());
        let cell = totals.entry(brand).or_default();
        cell.0 += 1;
        cell.1 += match row.fields["price"].as_str() {
            "" => 0,
            p => decimal_micros(p),
        };
    }
    let mut ranked: Vec<(Option<String>, i64, i64)> = totals.into_iter().map(|(b, (c, r))| (b, c, r)).collect();
    ranked.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(n);
    ranked
}

/// The first differences between two aggregates, for a readable failure.
pub fn diff(expected: &Expected, actual: &Expected) -> String {
    let mut out = Vec::new();
    for (k, v) in expected {
        match actual.get(k) {
            None => out.push(format!("missing {k:?} expected {v:?}")),
            Some(a) if a != v => out.push(format!("wrong {k:?}: expected {v:?}, got {a:?}")),
            _ => {}
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            out.push(format!("unexpected {k:?} = {v:?}"));
        }
    }
    let n = out.len();
    out.truncate(8);
    format!("{n} differences, first: {out:#?}")
}

#[test]
fn truth_helpers_are_right() {
    assert_eq!(unix_seconds("2019-11-08 08:14:53 UTC"), 1_573_200_893);
    assert_eq!(unix_seconds("1970-01-01 00:00:00 UTC"), 0);
    assert_eq!(decimal_micros("776.74"), 776_740_000);
    assert_eq!(decimal_micros("-0.000001"), -1);
    assert_eq!(decimal_micros("12"), 12_000_000);
}
