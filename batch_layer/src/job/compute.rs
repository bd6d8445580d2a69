//! The Polars part of a batch run (DESIGN.md §5 steps 2-3): scan the archive below the cutoffs, drop
//! repeated records and repeated events, and aggregate every view x granularity.
//!
//! Shape of the work, chosen by measurement (BENCHMARKS.md, batch):
//! - only the columns the views need are read (the dedup columns, the event time, dimensions and summed
//!   fields), and the archive is read once;
//! - repeated (partition, offset) records can only come from overlapping files, so that pass runs only when
//!   the listed files overlap;
//! - the dedup by key is one hash pass over the 128-bit keys (they are already xxh3 hashes), keeping per key
//!   the row with the smallest (timestamp, partition, offset), instead of a sort of the whole archive;
//! - each view is grouped once at its finest granularity; coarser ones are rolled up from it (counts and
//!   sums are additive, and minute | hour | day).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use common::config::FieldType;
use common::store::{BatchRow, ViewKey};
use common::view::{Granularity, ResolvedMetric, View, ViewSet};
use polars::prelude::*;

use crate::archive::ArchiveFile;

/// One computed table: a view at one granularity, as a frame with columns `__bucket` (Int64, Unix seconds),
/// `__d_<dimension>` (String, null for missing or empty) and `__m<i>` (Int64, metric `i` of the view).
#[derive(Debug, Clone)]
pub struct Table {
    pub view: String,
    pub granularity: Granularity,
    pub frame: DataFrame,
}

impl Table {
    /// Rows of the table for the store.
    pub fn rows(&self, views: &ViewSet) -> PolarsResult<Vec<BatchRow>> {
        match views.get(&self.view) {
            Some(view) => to_rows(&self.frame, view, self.granularity),
            None => Ok(Vec::new()),
        }
    }

    /// The table with its public column names: `bucket_start`, the dimensions, the metric names.
    pub fn named(&self, views: &ViewSet) -> PolarsResult<DataFrame> {
        let Some(view) = views.get(&self.view) else { return Ok(self.frame.clone()) };
        let mut exprs = vec![col("__bucket").alias("bucket_start")];
        exprs.extend(view.dimensions.iter().map(|d| col(format!("__d_{d}")).alias(d.as_str())));
        exprs.extend(view.metric_names.iter().enumerate().map(|(i, m)| col(format!("__m{i}")).alias(m.as_str())));
        self.frame.clone().lazy().select(exprs).collect()
    }

    pub fn height(&self) -> usize {
        self.frame.height()
    }
}

/// Result of the Polars computation.
#[derive(Debug, Default)]
pub struct Computed {
    /// One table per view x granularity, in configuration order.
    pub tables: Vec<Table>,
    pub records_scanned: u64,
    pub repeated_records_removed: u64,
    pub duplicates_removed: u64,
}

/// Computes the batch view from the archive files below `cutoffs`.
///
/// Dedup rule: keep one record per (partition, offset), then one per `_dedup_key`, the one with the earliest
/// `_timestamp` (nulls last), then lowest partition, then lowest offset. Sums are in micro-units, rounded
/// half away from zero per value as the speed layer does ([`common::decimal::f64_to_micros`]).
pub fn compute(
    views: &ViewSet,
    event_time: &str,
    field_types: &[(String, FieldType)],
    files: &BTreeMap<i32, Vec<ArchiveFile>>,
    cutoffs: &BTreeMap<i32, i64>,
    mut on_table: impl FnMut(&str, Granularity),
) -> PolarsResult<Computed> {
    let needed = needed_columns(views, event_time, field_types);
    let mut frames = Vec::new();
    let mut overlapping = false;
    for (&partition, &cutoff) in cutoffs {
        let selected: Vec<&ArchiveFile> =
            files.get(&partition).into_iter().flatten().filter(|f| f.first < cutoff).collect();
        overlapping |= selected.windows(2).any(|w| w[1].first < w[0].next);
        let paths: Vec<PlRefPath> =
            selected.iter().map(|f| PlRefPath::new(f.path.to_string_lossy().as_ref())).collect();
        if paths.is_empty() {
            continue;
        }
        let args = ScanArgsParquet { hive_options: HiveOptions::new_disabled(), ..Default::default() };
        frames.push(
            LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)?
                .filter(col("_offset").lt(lit(cutoff)))
                .select(needed.iter().map(|c| col(c.as_str())).collect::<Vec<_>>()),
        );
    }
    let mut out = Computed::default();
    if frames.is_empty() {
        for view in &views.views {
            for &g in &view.granularities {
                on_table(&view.name, g);
                let frame = empty_table(view);
                out.tables.push(Table { view: view.name.clone(), granularity: g, frame });
            }
        }
        return Ok(out);
    }
    let scanned = concat(frames, UnionArgs::default())?.collect()?;
    let n_scanned = scanned.height() as u64;
    let records = if overlapping {
        scanned.lazy().unique_stable(Some(cols(["_partition", "_offset"])), UniqueKeepStrategy::First).collect()?
    } else {
        scanned
    };
    let n_records = records.height() as u64;
    let keep = dedup_by_key(&records)?;
    let events = prepare(records, keep, views, event_time, field_types)?;
    out.records_scanned = n_scanned;
    out.repeated_records_removed = n_scanned - n_records;
    out.duplicates_removed = n_records - events.height() as u64;

    for view in &views.views {
        let mut grains = view.granularities.clone();
        grains.sort_by_key(|g| g.seconds());
        let mut previous: Option<(Granularity, DataFrame)> = None;
        let mut tables = Vec::new();
        for g in grains {
            on_table(&view.name, g);
            let table = match &previous {
                None => aggregate(&events, view, g)?,
                Some((_, finer)) => roll_up(finer, view, g)?,
            };
            tables.push((g, table.clone()));
            previous = Some((g, table));
        }
        // report in the view's configured order
        for &g in &view.granularities {
            let frame =
                tables.iter().find(|(t, _)| *t == g).map(|(_, f)| f.clone()).unwrap_or_else(|| empty_table(view));
            out.tables.push(Table { view: view.name.clone(), granularity: g, frame });
        }
    }
    Ok(out)
}

fn empty_table(view: &View) -> DataFrame {
    let mut columns = vec![Column::new_empty("__bucket".into(), &DataType::Int64)];
    columns.extend(view.dimensions.iter().map(|d| Column::new_empty(format!("__d_{d}").into(), &DataType::String)));
    columns.extend((0..view.metrics.len()).map(|i| Column::new_empty(format!("__m{i}").into(), &DataType::Int64)));
    DataFrame::new(0, columns).expect("distinct empty columns")
}

fn needed_columns(views: &ViewSet, event_time: &str, field_types: &[(String, FieldType)]) -> Vec<String> {
    let mut cols: Vec<String> =
        ["_partition", "_offset", "_timestamp", "_dedup_key", event_time].iter().map(|s| s.to_string()).collect();
    for view in &views.views {
        cols.extend(view.dimensions.iter().cloned());
        for m in &view.metrics {
            if let ResolvedMetric::Sum { field, .. } = m {
                cols.push(field_types[*field].0.clone());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    cols.retain(|c| seen.insert(c.clone()));
    cols
}

/// A hasher for keys that are already uniform hashes (xxh3-128): the low 64 bits are the hash.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

/// Which rows to keep so there is one per `_dedup_key`: the smallest (`_timestamp` with nulls last,
/// `_partition`, `_offset`). `None` when every key is distinct.
fn dedup_by_key(records: &DataFrame) -> PolarsResult<Option<BooleanChunked>> {
    let keys = records.column("_dedup_key")?.as_materialized_series().binary()?.clone();
    let ts = records.column("_timestamp")?.cast(&DataType::Int64)?;
    let ts = ts.as_materialized_series().i64()?.clone();
    let partitions = records.column("_partition")?.as_materialized_series().i32()?.clone();
    let offsets = records.column("_offset")?.as_materialized_series().i64()?.clone();
    let rank = |i: usize| {
        (
            ts.get(i).map_or((1, 0), |t| (0, t)),
            partitions.get(i).unwrap_or(i32::MAX),
            offsets.get(i).unwrap_or(i64::MAX),
        )
    };
    let mut best: HashMap<u128, usize, BuildHasherDefault<PreHashed>> =
        HashMap::with_capacity_and_hasher(records.height(), Default::default());
    let mut repeated = false;
    for (i, key) in keys.iter().enumerate() {
        let key = key.map_or(0, |k| {
            let mut b = [0u8; 16];
            let n = k.len().min(16);
            b[..n].copy_from_slice(&k[..n]);
            u128::from_be_bytes(b)
        });
        match best.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                repeated = true;
                if rank(i) < rank(*o.get()) {
                    o.insert(i);
                }
            }
        }
    }
    if !repeated {
        return Ok(None);
    }
    let mut keep = vec![false; records.height()];
    for &i in best.values() {
        keep[i] = true;
    }
    Ok(Some(BooleanChunked::from_slice("__keep".into(), &keep)))
}

/// The rows kept by `keep`, with only the columns every view aggregates over, computed once: `__bucket` of
/// the finest step in use (Unix seconds), the dimensions as text (`__d_<name>`; empty strings become null,
/// DESIGN.md §3) and each summed field in micro-units (`__s_<field>`).
fn prepare(
    mut records: DataFrame,
    keep: Option<BooleanChunked>,
    views: &ViewSet,
    event_time: &str,
    field_types: &[(String, FieldType)],
) -> PolarsResult<DataFrame> {
    let finest = views.views.iter().flat_map(|v| v.granularities.iter()).map(|g| g.seconds()).min().unwrap_or(60);
    let mut exprs =
        vec![((col(event_time).cast(DataType::Int64).floor_div(lit(finest * 1_000_000))) * lit(finest))
            .alias("__bucket")];
    let mut done = std::collections::HashSet::new();
    for view in &views.views {
        for d in &view.dimensions {
            if !done.insert(format!("d:{d}")) {
                continue;
            }
            let ty = field_types.iter().find(|(n, _)| n == d).map(|(_, t)| *t);
            let e = match ty {
                Some(FieldType::I64) => col(d.as_str()).cast(DataType::String),
                _ => {
                    when(col(d.as_str()).eq(lit(""))).then(lit(NULL).cast(DataType::String)).otherwise(col(d.as_str()))
                }
            };
            exprs.push(e.alias(format!("__d_{d}")));
        }
        for m in &view.metrics {
            if let ResolvedMetric::Sum { field, ty } = m {
                let name = &field_types[*field].0;
                if !done.insert(format!("m:{name}")) {
                    continue;
                }
                let e = match ty {
                    FieldType::I64 => col(name.as_str()) * lit(1_000_000i64),
                    _ => {
                        let scaled = col(name.as_str()).cast(DataType::Float64) * lit(1e6);
                        when(scaled.clone().gt_eq(lit(0.0)))
                            .then(scaled.clone() + lit(0.5))
                            .otherwise(scaled - lit(0.5))
                            .cast(DataType::Int64)
                    }
                };
                exprs.push(e.alias(format!("__s_{name}")));
            }
        }
    }
    match keep {
        None => records.lazy().select(exprs).collect(),
        Some(mask) => {
            records.with_column(mask.into_series().into_column())?;
            records.lazy().filter(col("__keep")).select(exprs).collect()
        }
    }
}

fn group_keys(view: &View, bucket: Expr) -> Vec<Expr> {
    let mut keys = vec![bucket.alias("__bucket")];
    keys.extend(view.dimensions.iter().map(|d| col(format!("__d_{d}"))));
    keys
}

/// The finest table of `view` from the prepared events: count and sums per (bucket, dims).
fn aggregate(events: &DataFrame, view: &View, g: Granularity) -> PolarsResult<DataFrame> {
    let step = g.seconds();
    let bucket = (col("__bucket").floor_div(lit(step))) * lit(step);
    let aggs: Vec<Expr> = (0..view.metrics.len())
        .map(|i| {
            let e = match &view.metrics[i] {
                ResolvedMetric::Count => len().cast(DataType::Int64),
                ResolvedMetric::Sum { .. } => col(metric_name_of(view, i)).sum(),
            };
            e.alias(format!("__m{i}"))
        })
        .collect();
    events.clone().lazy().group_by(group_keys(view, bucket)).agg(aggs).collect()
}

fn metric_name_of(view: &View, i: usize) -> String {
    // the prepared column of a sum metric: `__s_<field>` where field is the metric's spec after `sum:`
    let spec = &view.metric_specs[i];
    format!("__s_{}", spec.strip_prefix("sum:").unwrap_or(spec))
}

/// A coarser table from a finer one of the same view: re-bucket and add up.
fn roll_up(finer: &DataFrame, view: &View, g: Granularity) -> PolarsResult<DataFrame> {
    let step = g.seconds();
    let bucket = (col("__bucket").floor_div(lit(step))) * lit(step);
    let aggs: Vec<Expr> =
        (0..view.metrics.len()).map(|i| col(format!("__m{i}")).sum().alias(format!("__m{i}"))).collect();
    finer.clone().lazy().group_by(group_keys(view, bucket)).agg(aggs).collect()
}

fn to_rows(df: &DataFrame, view: &View, g: Granularity) -> PolarsResult<Vec<BatchRow>> {
    let bucket = df.column("__bucket")?.as_materialized_series().i64()?.clone();
    let dims: Vec<StringChunked> = view
        .dimensions
        .iter()
        .map(|d| df.column(&format!("__d_{d}")).and_then(|c| c.as_materialized_series().str().cloned()))
        .collect::<PolarsResult<_>>()?;
    let metrics: Vec<Int64Chunked> = (0..view.metrics.len())
        .map(|i| df.column(&format!("__m{i}")).and_then(|c| c.as_materialized_series().i64().cloned()))
        .collect::<PolarsResult<_>>()?;
    let mut rows = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        rows.push(BatchRow {
            key: ViewKey {
                view: view.name.clone(),
                granularity: g,
                bucket_start: bucket.get(i).expect("event time is never null"),
                dims: dims.iter().map(|d| d.get(i).map(str::to_owned)).collect(),
            },
            metrics: metrics.iter().map(|m| m.get(i).unwrap_or(0)).collect(),
        });
    }
    Ok(rows)
}
