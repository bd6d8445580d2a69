//! The JSON text of a view answer, written straight from the merged rows.
//!
//! Shape (README "Querying"):
//! `{"view":..,"granularity":..,"manifest":{"generation":..,"cutoffs":{..},"finished_at":..}|null,
//!   "rows":[{"bucket_start":"2019-11-15T00:00:00Z","dims":{"<dimension>":"<value>"|null,..},
//!            "metrics":{"count":12,"sum_price":1234.56,..},"source":"batch"|"speed"|"both"},..]}`.
//! Dimensions follow `group_by` order and metrics the view's order; sums are exact decimals (at most 6
//! places). A day of minute buckets is thousands of rows, refreshed several times a second under load, so
//! rows are written into one buffer without building a value tree; strings are escaped by `serde_json`.

use chrono::{DateTime, SecondsFormat};
use common::decimal::write_micros;
use common::store::Manifest;
use common::view::{Granularity, View};
use serde::Serialize;

use crate::merge::MergedRow;

/// How duplicates are counted, stated in every answer (DESIGN.md §4-5; README "Duplicates").
pub const DEDUP_RULE: &str = "batch rows count each event once (by its dedup key) below the manifest's cutoffs; \
speed rows past the cutoffs drop repeats within their segment only, so copies of one event that fall in different \
segments count once per segment until a batch run's cutoff passes them";

/// The manifest as reported with every answer.
#[derive(Debug, Serialize)]
pub struct ManifestRef<'a> {
    pub generation: i64,
    pub cutoffs: &'a std::collections::BTreeMap<i32, i64>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

impl<'a> From<&'a Manifest> for ManifestRef<'a> {
    fn from(m: &'a Manifest) -> Self {
        ManifestRef { generation: m.generation, cutoffs: &m.cutoffs, finished_at: m.finished_at }
    }
}

/// The answer's JSON. `group_by` holds the view's dimension indexes of `rows[i].dims`, in order.
pub fn write_answer(
    view: &View,
    granularity: Granularity,
    manifest: Option<&Manifest>,
    group_by: &[usize],
    rows: &[MergedRow],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + rows.len() * 128);
    out.extend_from_slice(b"{\"view\":");
    write_str(&mut out, &view.name);
    out.extend_from_slice(b",\"granularity\":\"");
    out.extend_from_slice(granularity.as_str().as_bytes());
    out.extend_from_slice(b"\",\"manifest\":");
    serde_json::to_writer(&mut out, &manifest.map(ManifestRef::from)).expect("writing to memory does not fail");
    out.extend_from_slice(b",\"dedup\":");
    write_str(&mut out, DEDUP_RULE);
    out.extend_from_slice(b",\"rows\":[");
    let key = |name: &str| {
        let mut k = Vec::new();
        write_str(&mut k, name);
        k.push(b':');
        k
    };
    let dim_keys: Vec<Vec<u8>> = group_by.iter().map(|&i| key(&view.dimensions[i])).collect();
    let metric_keys: Vec<Vec<u8>> = view.metric_names.iter().map(|n| key(n)).collect();
    let mut bucket = (i64::MIN, String::new()); // rows come sorted by bucket: format each bucket once
    for (n, r) in rows.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        if bucket.0 != r.bucket_start {
            bucket = (r.bucket_start, bucket_text(r.bucket_start));
        }
        out.extend_from_slice(b"{\"bucket_start\":\"");
        out.extend_from_slice(bucket.1.as_bytes());
        out.extend_from_slice(b"\",\"dims\":{");
        for (k, (name, value)) in dim_keys.iter().zip(&r.dims).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name);
            match value {
                Some(v) => write_str(&mut out, v),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b"},\"metrics\":{");
        for (k, ((name, metric), &v)) in metric_keys.iter().zip(&view.metrics).zip(&r.metrics).enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name);
            if metric.is_decimal() {
                write_micros(&mut out, v);
            } else {
                out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            }
        }
        out.extend_from_slice(b"},\"source\":\"");
        out.extend_from_slice(r.source.as_str().as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    out
}

/// RFC 3339 UTC with seconds: `2019-11-15T00:00:00Z`.
fn bucket_text(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0).map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)).unwrap_or_default()
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to memory does not fail");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Source;
    use common::Config;
    use serde_json::{json, Value};

    /// The written text against the same answer built as a `serde_json` value tree, for rows with nulls,
    /// escapes, negative and fractional sums, and several buckets.
    #[test]
    fn writes_the_answer_shape() {
        let config = Config::defaults();
        let views = common::view::ViewSet::new(&config);
        let view = views.get("by_brand").unwrap();
        let manifest = Manifest {
            generation: 3,
            cutoffs: [(0, 10), (2, 7)].into(),
            archive_starts: Default::default(),
            rows: Default::default(),
            records_scanned: 1,
            repeated_records_removed: 0,
            duplicates_removed: 0,
            records_without_dedup_key: 0,
            cutoff_notes: vec![],
            log_ends: Default::default(),
            cutoff_progress: Default::default(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
        };
        let row = |bucket: i64, dims: Vec<Option<&str>>, count: i128, micros: i128, source| MergedRow {
            bucket_start: bucket,
            dims: dims.into_iter().map(|d| d.map(str::to_owned)).collect(),
            metrics: vec![count, micros],
            source,
        };
        let rows = vec![
            row(1_573_776_000, vec![Some("view"), None], 3, 12_345_670_000, Source::Batch),
            row(1_573_776_000, vec![Some("cart"), Some("a \"b\" \\ é\n")], 1, -5, Source::Both),
            row(1_573_776_060, vec![Some("view"), Some("apple")], 0, 0, Source::Speed),
        ];
        let text = write_answer(view, Granularity::Minute, Some(&manifest), &[0, 1], &rows);
        // the OpenAPI schema of an answer is the type `ViewAnswer` (unknown fields refused)
        let typed: crate::openapi::ViewAnswer = serde_json::from_slice(&text).unwrap();
        assert_eq!((typed.rows.len(), typed.manifest.map(|m| m.generation)), (3, Some(3)));
        let got: Value = serde_json::from_slice(&text).unwrap();
        let want = json!({
            "view": "by_brand", "granularity": "minute",
            "manifest": {"generation": 3, "cutoffs": {"0": 10, "2": 7}, "finished_at": manifest.finished_at},
            "dedup": DEDUP_RULE,
            "rows": [
                {"bucket_start": "2019-11-15T00:00:00Z", "dims": {"event_type": "view", "brand": null},
                 "metrics": {"count": 3, "sum_price": 12345.67}, "source": "batch"},
                {"bucket_start": "2019-11-15T00:00:00Z", "dims": {"event_type": "cart", "brand": "a \"b\" \\ é\n"},
                 "metrics": {"count": 1, "sum_price": -0.000005}, "source": "both"},
                {"bucket_start": "2019-11-15T00:01:00Z", "dims": {"event_type": "view", "brand": "apple"},
                 "metrics": {"count": 0, "sum_price": 0}, "source": "speed"},
            ]
        });
        assert_eq!(got, want);
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.contains(r#""sum_price":12345.67}"#), "decimals are exact JSON numbers: {text}");
        // past 64 bits, exact digits (compared as text: a JSON value tree holds no such number exactly)
        let big = row(1_573_776_060, vec![Some("view"), Some("big")], 1 << 70, -(1 << 100), Source::Speed);
        let big = write_answer(view, Granularity::Minute, None, &[0, 1], &[big]);
        let big = std::str::from_utf8(&big).unwrap();
        assert!(
            big.contains(r#""count":1180591620717411303424,"sum_price":-1267650600228229401496703.205376}"#),
            "{big}"
        );
        let none = write_answer(view, Granularity::Day, None, &[], &[row(0, vec![], 1, 1, Source::Speed)]);
        let _: crate::openapi::ViewAnswer = serde_json::from_slice(&none).unwrap();
        let none: Value = serde_json::from_slice(&none).unwrap();
        assert_eq!(none["manifest"], Value::Null);
        assert_eq!(none["rows"][0]["dims"], json!({}));
        assert_eq!(none["rows"][0]["bucket_start"], "1970-01-01T00:00:00Z");
    }
}
