//! The merge rule (DESIGN.md §5):
//!
//! ```text
//! merged = batch rows of the manifest's generation
//!        + speed rows whose segment_start >= C[partition]   (C = 0 for partitions the batch has not seen)
//! ```
//! summed per (bucket, dimensions). The handoff is exact in offsets: no time-based boundary.

use std::collections::{BTreeMap, HashMap};

use common::store::{BatchRow, Manifest, SpeedRow};

/// Where a merged row's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Batch,
    Speed,
    Both,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Batch => "batch",
            Source::Speed => "speed",
            Source::Both => "both",
        }
    }
}

/// One answer row: bucket start (Unix seconds), the grouped dimension values, summed metrics (counts, or
/// sums in micro-units).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedRow {
    pub bucket_start: i64,
    pub dims: Vec<Option<String>>,
    pub metrics: Vec<i128>,
    pub source: Source,
}

/// Which rows count and how they are grouped.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// (dimension index, value): a row is kept when every filtered dimension equals the value.
    pub filters: Vec<(usize, String)>,
    /// Dimension indexes kept in the answer, in order; the others are summed over.
    pub group_by: Vec<usize>,
}

impl Shape {
    fn keep(&self, dims: &[Option<String>]) -> bool {
        self.filters.iter().all(|(i, v)| dims.get(*i).and_then(|d| d.as_deref()) == Some(v.as_str()))
    }

    fn project(&self, dims: &[Option<String>]) -> Vec<Option<String>> {
        self.group_by.iter().map(|&i| dims.get(i).cloned().flatten()).collect()
    }
}

/// Merges batch rows (of `manifest`'s generation) and speed rows under the cutoff rule, sorted by bucket then
/// dimensions (`null` first).
pub fn merge(manifest: Option<&Manifest>, batch: &[BatchRow], speed: &[SpeedRow], shape: &Shape) -> Vec<MergedRow> {
    let empty = BTreeMap::new();
    let cutoffs = manifest.map_or(&empty, |m| &m.cutoffs);
    // (bucket, grouped dims) -> (metric sums, has batch, has speed)
    type Cell = (Vec<i128>, bool, bool);
    let mut cells: BTreeMap<(i64, Vec<Option<String>>), Cell> = BTreeMap::new();
    let mut add = |bucket: i64, dims: &[Option<String>], metrics: &[i128], from_batch: bool| {
        if !shape.keep(dims) {
            return;
        }
        let cell = cells.entry((bucket, shape.project(dims))).or_insert_with(|| (vec![0; metrics.len()], false, false));
        for (acc, v) in cell.0.iter_mut().zip(metrics) {
            *acc = acc.saturating_add(*v);
        }
        if from_batch {
            cell.1 = true;
        } else {
            cell.2 = true;
        }
    };
    if manifest.is_some() {
        for r in batch {
            add(r.key.bucket_start, &r.key.dims, &r.metrics, true);
        }
    }
    let cutoff_cache: HashMap<i32, i64> = cutoffs.iter().map(|(p, c)| (*p, *c)).collect();
    for r in speed {
        if r.segment_start >= cutoff_cache.get(&r.partition).copied().unwrap_or(0) {
            add(r.key.bucket_start, &r.key.dims, &r.metrics, false);
        }
    }
    cells
        .into_iter()
        .map(|((bucket_start, dims), (metrics, b, s))| MergedRow {
            bucket_start,
            dims,
            metrics,
            source: match (b, s) {
                (true, true) => Source::Both,
                (true, false) => Source::Batch,
                _ => Source::Speed,
            },
        })
        .collect()
}

/// How `order_by` sorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    /// Metric index in the view.
    pub metric: usize,
    pub descending: bool,
}

/// Totals per group over every bucket of `rows` (each output row's `bucket_start` is the earliest bucket
/// it covers), the `top` groups by `order`, ties broken by dimensions ascending. What `top=N` answers.
pub fn top(rows: Vec<MergedRow>, order: Order, top: usize) -> Vec<MergedRow> {
    let mut totals: HashMap<Vec<Option<String>>, MergedRow> = HashMap::new();
    for r in rows {
        match totals.get_mut(&r.dims) {
            None => {
                totals.insert(r.dims.clone(), r);
            }
            Some(t) => {
                t.bucket_start = t.bucket_start.min(r.bucket_start);
                for (acc, v) in t.metrics.iter_mut().zip(&r.metrics) {
                    *acc = acc.saturating_add(*v);
                }
                if t.source != r.source {
                    t.source = Source::Both;
                }
            }
        }
    }
    let mut out: Vec<MergedRow> = totals.into_values().collect();
    sort(&mut out, order);
    out.truncate(top);
    out
}

/// Sorts rows by one metric (then bucket and dimensions ascending, so the order is total).
pub fn sort(rows: &mut [MergedRow], order: Order) {
    rows.sort_by(|a, b| {
        let (x, y) = (a.metrics[order.metric], b.metrics[order.metric]);
        let by_metric = if order.descending { y.cmp(&x) } else { x.cmp(&y) };
        by_metric.then_with(|| (a.bucket_start, &a.dims).cmp(&(b.bucket_start, &b.dims)))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::store::ViewKey;
    use common::view::Granularity;

    fn key(bucket: i64, dim: &str) -> ViewKey {
        ViewKey {
            view: "v".into(),
            granularity: Granularity::Day,
            bucket_start: bucket,
            dims: vec![Some(dim.into()), None],
        }
    }

    fn speed(bucket: i64, dim: &str, partition: i32, segment_start: i64, count: i128) -> SpeedRow {
        SpeedRow {
            key: key(bucket, dim),
            partition,
            segment_start,
            upto_offset: segment_start + 10,
            metrics: vec![count],
        }
    }

    fn manifest(cutoffs: &[(i32, i64)]) -> Manifest {
        common::testing::manifest(1, cutoffs)
    }

    #[test]
    fn speed_rows_below_the_cutoff_are_absorbed_by_batch() {
        let m = manifest(&[(0, 100)]);
        let batch = vec![BatchRow { key: key(0, "a"), metrics: vec![5] }];
        let speed = vec![
            speed(0, "a", 0, 50, 3),  // below cutoff of p0: already in batch
            speed(0, "a", 0, 100, 2), // at cutoff: counts
            speed(0, "a", 1, 0, 7),   // p1 has no cutoff: counts
            speed(86_400, "b", 0, 100, 1),
        ];
        let shape = Shape { filters: vec![], group_by: vec![0, 1] };
        let rows = merge(Some(&m), &batch, &speed, &shape);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].metrics[0], rows[0].source), (14, Source::Both));
        assert_eq!((rows[1].metrics[0], rows[1].source), (1, Source::Speed));
    }

    #[test]
    fn without_a_manifest_everything_is_speed_and_batch_is_ignored() {
        let batch = vec![BatchRow { key: key(0, "a"), metrics: vec![5] }];
        let rows = merge(None, &batch, &[speed(0, "a", 0, 0, 2)], &Shape { filters: vec![], group_by: vec![0] });
        assert_eq!(
            rows,
            vec![MergedRow { bucket_start: 0, dims: vec![Some("a".into())], metrics: vec![2], source: Source::Speed }]
        );
    }

    #[test]
    fn filters_and_group_by() {
        let speed = vec![speed(0, "a", 0, 0, 2), speed(0, "b", 0, 0, 3)];
        let all = merge(None, &[], &speed, &Shape { filters: vec![], group_by: vec![] });
        assert_eq!(all[0].metrics, vec![5]);
        assert!(all[0].dims.is_empty());
        let only_b = merge(None, &[], &speed, &Shape { filters: vec![(0, "b".into())], group_by: vec![0] });
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].metrics, vec![3]);
    }

    #[test]
    fn top_totals_groups_over_buckets_and_ranks_them() {
        let row = |bucket: i64, dim: &str, revenue: i128, source: Source| MergedRow {
            bucket_start: bucket,
            dims: vec![Some(dim.into())],
            metrics: vec![1, revenue],
            source,
        };
        let rows = vec![
            row(0, "a", 10, Source::Batch),
            row(60, "a", 25, Source::Speed),
            row(0, "b", 30, Source::Batch),
            row(60, "c", 5, Source::Batch),
            row(120, "d", 30, Source::Batch),
        ];
        // totals: a 35 (batch + speed), b 30, d 30, c 5
        let got = top(rows.clone(), Order { metric: 1, descending: true }, 3);
        let ranked: Vec<(&str, i128, i128, Source)> =
            got.iter().map(|r| (r.dims[0].as_deref().unwrap(), r.metrics[0], r.metrics[1], r.source)).collect();
        assert_eq!(
            ranked,
            vec![("a", 2, 35, Source::Both), ("b", 1, 30, Source::Batch), ("d", 1, 30, Source::Batch)],
            "ties (b, d at 30) break by dimension"
        );
        assert_eq!(got[0].bucket_start, 0, "a total starts at its earliest bucket");
        let lowest = top(rows, Order { metric: 1, descending: false }, 1);
        assert_eq!(lowest[0].dims, vec![Some("c".to_owned())]);
    }
}
