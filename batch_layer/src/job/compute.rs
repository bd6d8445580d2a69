//! The Polars part of a batch run (DESIGN.md §5 steps 2-3): scan the archive below the cutoffs, drop
//! repeated records and repeated events, and aggregate every view x granularity.
//!
//! Shape of the work, chosen by measurement (BENCHMARKS.md, batch):
//! - the archive is read in two passes, a chunk of files at a time, so memory follows the chunk size and
//!   the number of distinct events, not the archive: pass 1 reads only the dedup columns, pass 2 only the
//!   columns the views need (the event time, dimensions and summed fields);
//! - repeated (partition, offset) records can only come from overlapping files: each file reads only the
//!   offsets past the files before it;
//! - the dedup by key sorts only the 128-bit keys with row numbers (not the archive) and keeps, per key, the
//!   row with the smallest (timestamp, partition, offset);
//! - each view is grouped per chunk at its finest granularity, the partial tables are added up, and coarser
//!   granularities are rolled up from the finest (counts and sums are additive, and minute | hour | day).

use std::collections::BTreeMap;

use common::config::FieldType;
use common::store::{BatchRow, ViewKey};
use common::view::{Granularity, ResolvedMetric, View, ViewSet};
use polars::prelude::*;
use tracing::debug;

use crate::archive::ArchiveFile;

/// One computed table: a view at one granularity, as a frame with columns `__bucket` (Int64, Unix seconds),
/// `__d_<dimension>` (String, null for missing or empty) and `__m<i>` (metric `i` of the view: Int64 for a
/// count, Decimal(38, 6) for a sum, whose unscaled integer is the micro-unit count).
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
    /// Records without a dedup key (a named key missing, null or empty): each kept as its own event.
    pub records_without_dedup_key: u64,
}

/// Type of every sum column: 38 digits (the most a 128-bit decimal holds), 6 places ([`common::decimal`]).
fn sum_type() -> DataType {
    DataType::Decimal(38, 6)
}

/// Records (approximately, from offset ranges) read per chunk of the aggregation pass: the memory of the
/// job is about one chunk of prepared columns plus the partial aggregates, not the whole archive.
pub const CHUNK_RECORDS: u64 = 20_000_000;

/// Computes the batch view from the archive records with `starts[p] <= offset < cutoffs[p]` (a partition
/// missing from `starts` from its first archived offset).
///
/// Dedup rule: keep one record per (partition, offset), then one per `_dedup_key`, the one with the earliest
/// `_timestamp` (nulls last), then lowest partition, then lowest offset; a record without a key (null
/// `_dedup_key`) is always kept. Sums add the archived exact decimals (`f64` fields) or integers times 10^6
/// (`i64` fields) as 128-bit decimals: the same micro-units the speed layer adds ([`common::decimal`]).
///
/// Two passes over the archive, each a chunk of files at a time ([`CHUNK_RECORDS`]):
/// 1. *keys*: `_dedup_key`, `_timestamp`, `_partition`, `_offset` of every record; the (key, row) pairs are
///    sorted so each key's rows sit together, and the smallest rank of each key marks its row in a keep
///    bitmap;
/// 2. *aggregate*: the view columns of the kept rows, prepared and grouped per chunk at each view's finest
///    granularity; the partial tables are then added up and rolled up to the coarser granularities.
///
/// A record present in two overlapping files is read from the first of them only (each file owns the
/// offsets past the files before it), which is the (partition, offset) dedup.
pub fn compute(
    views: &ViewSet,
    event_time: &str,
    field_types: &[(String, FieldType)],
    files: &BTreeMap<i32, Vec<ArchiveFile>>,
    starts: &BTreeMap<i32, i64>,
    cutoffs: &BTreeMap<i32, i64>,
    on_table: impl FnMut(&str, Granularity),
) -> PolarsResult<Computed> {
    compute_in_chunks(views, event_time, field_types, files, starts, cutoffs, CHUNK_RECORDS, on_table)
}

/// One archive file's share of the work.
#[derive(Debug, Clone)]
struct Part {
    path: PlRefPath,
    /// The start of its partition's batch view: records below it are not read.
    start: i64,
    /// The cutoff of its partition: records at or past it are not read.
    cutoff: i64,
    /// Offsets below this are owned by an earlier, overlapping file of the partition.
    owned_from: i64,
    /// Upper bound of the records it holds below the cutoff (its offset span).
    span: u64,
    /// False when earlier files of the partition cover all its offsets below the cutoff.
    owns_any: bool,
}

/// The files below the cutoffs, partitions interleaved by position (the k-th tenth of every partition
/// together), so chunks cover similar event times and their partial aggregates overlap little.
///
/// Errors: the files of a partition do not cover `[start, cutoff)` without a gap (a file vanished after the
/// cutoffs were planned; the run must not publish a view that silently lacks those records).
fn plan(
    files: &BTreeMap<i32, Vec<ArchiveFile>>,
    starts: &BTreeMap<i32, i64>,
    cutoffs: &BTreeMap<i32, i64>,
) -> PolarsResult<Vec<Part>> {
    let mut ranked: Vec<(f64, i32, usize, Part)> = Vec::new();
    for (&partition, &cutoff) in cutoffs {
        let start = starts.get(&partition).copied().unwrap_or(i64::MIN);
        let selected: Vec<&ArchiveFile> =
            files.get(&partition).into_iter().flatten().filter(|f| f.first < cutoff && f.next > start).collect();
        let mut reach = selected.first().map_or(cutoff, |f| f.first.max(start));
        if starts.contains_key(&partition) && reach > start {
            polars_bail!(ComputeError: "partition {partition}: no archive file holds offsets {start}..{reach} below the cutoff {cutoff}");
        }
        for f in &selected {
            if f.first > reach {
                polars_bail!(ComputeError: "partition {partition}: no archive file holds offsets {reach}..{} below the cutoff {cutoff}", f.first);
            }
            reach = reach.max(f.next);
        }
        if reach < cutoff && cutoff > 0 {
            polars_bail!(ComputeError: "partition {partition}: no archive file holds offsets {reach}..{cutoff} below the cutoff");
        }
        let mut covered = start;
        for (i, f) in selected.iter().enumerate() {
            let owned_from = f.first.max(covered);
            let part = Part {
                path: PlRefPath::new(f.path.to_string_lossy().as_ref()),
                start,
                cutoff,
                owned_from,
                span: (f.next.min(cutoff) - f.first.max(start)).max(0) as u64,
                owns_any: owned_from < f.next.min(cutoff),
            };
            covered = covered.max(f.next);
            ranked.push((i as f64 / selected.len() as f64, partition, i, part));
        }
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    Ok(ranked.into_iter().map(|(_, _, _, part)| part).collect())
}

/// Consecutive runs of `parts` of about `chunk_records` records each.
fn chunks<'p>(parts: &'p [&'p Part], chunk_records: u64) -> Vec<&'p [&'p Part]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, p) in parts.iter().enumerate() {
        size += p.span;
        if size >= chunk_records {
            out.push(&parts[start..=i]);
            (start, size) = (i + 1, 0);
        }
    }
    if start < parts.len() {
        out.push(&parts[start..]);
    }
    out
}

/// The parts' records, in order: per part, `query` gives the row filter and the columns.
fn scan(parts: &[&Part], query: impl Fn(&Part) -> (Expr, Vec<Expr>)) -> PolarsResult<DataFrame> {
    let args = ScanArgsParquet { hive_options: HiveOptions::new_disabled(), ..Default::default() };
    let frames = parts
        .iter()
        .map(|p| {
            let (predicate, columns) = query(p);
            Ok(LazyFrame::scan_parquet_files([p.path.clone()].into_iter().collect(), args.clone())?
                .filter(predicate)
                .select(columns))
        })
        .collect::<PolarsResult<Vec<_>>>()?;
    concat(frames, UnionArgs { parallel: true, rechunk: false, ..Default::default() })?.collect()
}

/// [`compute`] with a chosen chunk size (tests use small ones to exercise the chunk boundaries).
#[allow(clippy::too_many_arguments)]
pub fn compute_in_chunks(
    views: &ViewSet,
    event_time: &str,
    field_types: &[(String, FieldType)],
    files: &BTreeMap<i32, Vec<ArchiveFile>>,
    starts: &BTreeMap<i32, i64>,
    cutoffs: &BTreeMap<i32, i64>,
    chunk_records: u64,
    mut on_table: impl FnMut(&str, Granularity),
) -> PolarsResult<Computed> {
    let parts = plan(files, starts, cutoffs)?;
    let all: Vec<&Part> = parts.iter().collect();
    let owning: Vec<&Part> = parts.iter().filter(|p| p.owns_any).collect();
    let mut out = Computed::default();
    let clock = std::time::Instant::now();

    // pass 1: keys. Per owned row, in row order: its dedup key and its rank (timestamp with null as +inf,
    // partition, offset). Sorting the keys then puts each key's rows side by side (a hash map over
    // random keys measured 3-4x slower here: every insert is a cache miss into fresh memory).
    let estimate = all.iter().map(|p| p.span).sum::<u64>().min(u32::MAX as u64) as usize;
    let mut keys_of: Vec<(u64, u64, u32)> = Vec::with_capacity(estimate);
    let (mut ranks_ts, mut ranks_partition, mut ranks_offset) =
        (Vec::with_capacity(estimate), Vec::with_capacity(estimate), Vec::with_capacity(estimate));
    // rows without a dedup key: each its own event, kept whatever else shares nothing with it
    let mut keyless: Vec<u32> = Vec::new();
    for chunk in chunks(&all, chunk_records) {
        let keys = scan(chunk, |p| {
            let columns = vec![
                col("_offset").gt_eq(lit(p.owned_from)).alias("__owned"),
                col("_dedup_key"),
                col("_timestamp").cast(DataType::Int64),
                col("_partition"),
                col("_offset"),
            ];
            (col("_offset").gt_eq(lit(p.start)).and(col("_offset").lt(lit(p.cutoff))), columns)
        })?;
        out.records_scanned += keys.height() as u64;
        let owned = keys.column("__owned")?.as_materialized_series().bool()?.clone();
        let dedup = keys.column("_dedup_key")?.as_materialized_series().binary()?.clone();
        let ts = keys.column("_timestamp")?.as_materialized_series().i64()?.clone();
        let partitions = keys.column("_partition")?.as_materialized_series().i32()?.clone();
        let offsets = keys.column("_offset")?.as_materialized_series().i64()?.clone();
        let rows = owned.iter().zip(dedup.iter()).zip(ts.iter()).zip(partitions.iter()).zip(offsets.iter());
        for ((((owned, key), ts), partition), offset) in rows {
            if owned != Some(true) {
                continue;
            }
            let row = u32::try_from(ranks_ts.len())
                .map_err(|_| polars_err!(ComputeError: "a batch run reads at most {} records", u32::MAX))?;
            ranks_ts.push(ts.unwrap_or(i64::MAX));
            ranks_partition.push(partition.unwrap_or(i32::MAX));
            ranks_offset.push(offset.unwrap_or(i64::MAX));
            let Some(key) = key else {
                keyless.push(row);
                continue;
            };
            let mut b = [0u8; 16];
            let n = key.len().min(16);
            b[..n].copy_from_slice(&key[..n]);
            let k = u128::from_be_bytes(b);
            keys_of.push(((k >> 64) as u64, k as u64, row));
        }
    }
    let owned_rows = ranks_ts.len() as u64;
    debug!(seconds = clock.elapsed().as_secs_f64(), "batch pass 1: keys read");
    keys_of.sort_unstable_by_key(|&(hi, lo, _)| (hi, lo));
    debug!(seconds = clock.elapsed().as_secs_f64(), "batch pass 1: keys sorted");
    let rank = |r: u32| {
        let r = r as usize;
        (ranks_ts[r], ranks_partition[r], ranks_offset[r])
    };
    let mut winners = 0u64;
    let mut keep = vec![false; owned_rows as usize];
    for &row in &keyless {
        keep[row as usize] = true;
    }
    out.records_without_dedup_key = keyless.len() as u64;
    let keyed_rows = owned_rows - out.records_without_dedup_key;
    for run in keys_of.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let best = match run {
            [(_, _, only)] => *only, // most keys: no rank to compare
            _ => run.iter().map(|&(_, _, row)| row).min_by_key(|&row| rank(row)).expect("runs are not empty"),
        };
        keep[best as usize] = true;
        winners += 1;
    }
    drop((keys_of, ranks_ts, ranks_partition, ranks_offset, keyless));
    out.repeated_records_removed = out.records_scanned - owned_rows;
    out.duplicates_removed = keyed_rows - winners;
    let keep = (out.duplicates_removed > 0).then_some(keep);
    debug!(
        records = out.records_scanned,
        owned_rows,
        seconds = clock.elapsed().as_secs_f64(),
        "batch pass 1 (keys) done"
    );

    // pass 2: aggregate each chunk at every view's finest granularity
    let needed = view_columns(views, event_time, field_types);
    let finest: Vec<Option<Granularity>> =
        views.views.iter().map(|v| v.granularities.iter().copied().min_by_key(|g| g.seconds())).collect();
    let mut partials: Vec<Vec<DataFrame>> = vec![Vec::new(); views.views.len()];
    let mut row = 0usize;
    for chunk in chunks(&owning, chunk_records) {
        let columns: Vec<Expr> = needed.iter().map(|c| col(c.as_str())).collect();
        let records = scan(chunk, |p| {
            (col("_offset").gt_eq(lit(p.owned_from)).and(col("_offset").lt(lit(p.cutoff))), columns.clone())
        })?;
        let height = records.height();
        if row + height > owned_rows as usize {
            return Err(polars_err!(ComputeError: "the archive changed between the two passes of the batch job"));
        }
        let mask = keep.as_ref().map(|k| BooleanChunked::from_slice("__keep".into(), &k[row..row + height]));
        row += height;
        debug!(seconds = clock.elapsed().as_secs_f64(), rows = height, "batch pass 2: chunk read");
        let events = prepare(records, mask, views, event_time, field_types)?;
        debug!(seconds = clock.elapsed().as_secs_f64(), "batch pass 2: chunk prepared");
        for (vi, view) in views.views.iter().enumerate() {
            if let Some(g) = finest[vi] {
                partials[vi].push(aggregate(&events, view, g)?);
            }
        }
    }
    if row != owned_rows as usize {
        return Err(polars_err!(ComputeError: "the archive changed between the two passes of the batch job"));
    }
    debug!(seconds = clock.elapsed().as_secs_f64(), "batch pass 2 (aggregate) done");

    for (vi, view) in views.views.iter().enumerate() {
        let mut grains = view.granularities.clone();
        grains.sort_by_key(|g| g.seconds());
        let mut previous: Option<DataFrame> = None;
        let mut tables = Vec::new();
        for g in grains {
            on_table(&view.name, g);
            let table = match previous {
                None => {
                    let parts = std::mem::take(&mut partials[vi]);
                    match parts.len() {
                        0 => empty_table(view),
                        1 => parts.into_iter().next().expect("one"),
                        _ => {
                            let lazy: Vec<LazyFrame> = parts.into_iter().map(DataFrame::lazy).collect();
                            let all = concat(lazy, UnionArgs { rechunk: false, ..Default::default() })?.collect()?;
                            roll_up(&all, view, g)?
                        }
                    }
                }
                Some(ref finer) => roll_up(finer, view, g)?,
            };
            tables.push((g, table.clone()));
            previous = Some(table);
        }
        // report in the view's configured order
        for &g in &view.granularities {
            let frame =
                tables.iter().find(|(t, _)| *t == g).map(|(_, f)| f.clone()).unwrap_or_else(|| empty_table(view));
            out.tables.push(Table { view: view.name.clone(), granularity: g, frame });
        }
    }
    debug!(seconds = clock.elapsed().as_secs_f64(), "batch tables done");
    Ok(out)
}

fn empty_table(view: &View) -> DataFrame {
    let mut columns = vec![Column::new_empty("__bucket".into(), &DataType::Int64)];
    columns.extend(view.dimensions.iter().map(|d| Column::new_empty(format!("__d_{d}").into(), &DataType::String)));
    columns.extend(view.metrics.iter().enumerate().map(|(i, m)| {
        let ty = match m {
            ResolvedMetric::Count => DataType::Int64,
            ResolvedMetric::Sum { .. } => sum_type(),
        };
        Column::new_empty(format!("__m{i}").into(), &ty)
    }));
    DataFrame::new(0, columns).expect("distinct empty columns")
}

/// The archive columns the views read: the event time, dimensions and summed fields.
fn view_columns(views: &ViewSet, event_time: &str, field_types: &[(String, FieldType)]) -> Vec<String> {
    let mut cols: Vec<String> = vec![event_time.to_owned()];
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

/// The rows kept by `keep`, with only the columns every view aggregates over, computed once: `__bucket` of
/// the finest step in use (Unix seconds), the dimensions as text (`__d_<name>`; empty strings become null,
/// DESIGN.md §3) and each summed field as a Decimal(38, 6) (`__s_<field>`; an `i64` is scaled exactly).
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
                debug_assert!(matches!(ty, FieldType::I64 | FieldType::F64), "validated: sums of numeric fields");
                exprs.push(col(name.as_str()).cast(sum_type()).alias(format!("__s_{name}")));
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

/// A metric column of a table: counts, or the micro-units of a Decimal(38, 6) sum.
enum MetricColumn {
    Count(Int64Chunked),
    Sum(Int128Chunked),
}

impl MetricColumn {
    fn get(&self, i: usize) -> i128 {
        match self {
            MetricColumn::Count(c) => c.get(i).map_or(0, i128::from),
            MetricColumn::Sum(s) => s.get(i).unwrap_or(0),
        }
    }
}

fn to_rows(df: &DataFrame, view: &View, g: Granularity) -> PolarsResult<Vec<BatchRow>> {
    let bucket = df.column("__bucket")?.as_materialized_series().i64()?.clone();
    let dims: Vec<StringChunked> = view
        .dimensions
        .iter()
        .map(|d| df.column(&format!("__d_{d}")).and_then(|c| c.as_materialized_series().str().cloned()))
        .collect::<PolarsResult<_>>()?;
    let metrics: Vec<MetricColumn> = view
        .metrics
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let column = df.column(&format!("__m{i}"))?.as_materialized_series();
            Ok(match m {
                ResolvedMetric::Count => MetricColumn::Count(column.i64()?.clone()),
                ResolvedMetric::Sum { .. } => {
                    let decimal = column.decimal()?;
                    polars_ensure!(decimal.scale() == 6, ComputeError: "sum column {i} has scale {}", decimal.scale());
                    MetricColumn::Sum(decimal.physical().clone())
                }
            })
        })
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
            metrics: metrics.iter().map(|m| m.get(i)).collect(),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::files::{file_name, partition_dir};
    use crate::archive::parquet_file::{self, ArchivedRecord};
    use common::schema::{Decoder, Value};
    use common::Config;

    /// One logical Kafka record of the test log.
    #[derive(Debug, Clone)]
    struct Logged {
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        payload: String,
    }

    /// A log of 3 partitions where `user_session` is the dedup key: repeated sessions with other content
    /// (so which copy wins changes the sums), some null timestamps, empty brands, several days.
    fn log() -> Vec<Logged> {
        let mut state: u64 = 7;
        let mut next = move |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut out = Vec::new();
        for partition in 0..3 {
            for offset in 0..400 {
                let second = 1_572_566_400 + next(3 * 86_400) as i64;
                let time = chrono::DateTime::from_timestamp(second, 0).unwrap().format("%Y-%m-%d %H:%M:%S UTC");
                let session = next(700); // ~1,200 records over 700 sessions: many repeats, across partitions
                let session = if next(15) == 0 { String::new() } else { format!(r#","user_session":"s{session}""#) };
                let payload = format!(
                    r#"{{"event_time":"{time}","event_type":"{}","brand":"{}","category_code":"c{}","price":{}.{:02}{session}}}"#,
                    ["view", "cart", "purchase"][next(3) as usize],
                    ["", "apple", "sony"][next(3) as usize],
                    next(4),
                    next(500),
                    next(100),
                );
                let timestamp_ms = (next(20) != 0).then(|| 1_700_000_000_000 + next(1_000_000) as i64);
                out.push(Logged { partition, offset, timestamp_ms, payload });
            }
        }
        out
    }

    /// Aggregates by (view, granularity, bucket, dimensions).
    type Cells = BTreeMap<(String, Granularity, i64, Vec<Option<String>>), Vec<i128>>;

    /// Archive files per partition as `[first, next)` ranges: overlapping and fully covered files in
    /// partition 0, one file in partition 1, a gapless pair in partition 2.
    const FILES: [(i32, i64, i64); 7] =
        [(0, 0, 100), (0, 50, 150), (0, 60, 90), (0, 150, 400), (1, 0, 400), (2, 0, 170), (2, 170, 400)];

    #[test]
    fn chunked_passes_match_a_direct_computation() {
        let config = Config::from_toml_str("[schema]\ndedup_key = \"user_session\"\n").unwrap();
        let decoder = Decoder::new(&config);
        let views = ViewSet::new(&config);
        let fields = decoder.fields().to_vec();
        let log = log();
        let dir = tempfile::tempdir().unwrap();
        for &(partition, first, next) in &FILES {
            let records: Vec<ArchivedRecord> = log
                .iter()
                .filter(|r| r.partition == partition && (first..next).contains(&r.offset))
                .map(|r| ArchivedRecord {
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                    event: decoder.decode(r.payload.as_bytes()).unwrap(),
                })
                .collect();
            let path = partition_dir(dir.path(), "events", partition).join(file_name(first, next));
            parquet_file::write(&path, partition, &fields, &records).unwrap();
        }
        let files = crate::archive::list(dir.path(), "events").unwrap();
        let cutoffs = BTreeMap::from([(0, 250), (1, 400), (2, 171), (3, 0)]);
        // partition 0 below 250: files [0,100) + [50,100) again + [60,90) again + [150,250) ... and [100,150)
        let repeated = 50 + 30;
        for (starts, scanned) in [
            (BTreeMap::new(), 100 + 100 + 30 + 100 + 400 + 170 + 1),
            (BTreeMap::from([(1, 100), (2, 0)]), 100 + 100 + 30 + 100 + 300 + 170 + 1),
        ] {
            let start = |p: i32| starts.get(&p).copied().unwrap_or(0);
            // truth: the records in [start, cutoff), one per session (earliest timestamp, nulls last, then
            // partition, then offset) and every record without a session, aggregated by hand
            let below: Vec<&Logged> =
                log.iter().filter(|r| r.offset >= start(r.partition) && r.offset < cutoffs[&r.partition]).collect();
            let mut winners: BTreeMap<String, &Logged> = BTreeMap::new();
            let mut keyless: Vec<&Logged> = Vec::new();
            for r in &below {
                let event = decoder.decode(r.payload.as_bytes()).unwrap();
                let Value::Str(session) = &event.values[8] else {
                    keyless.push(r);
                    continue;
                };
                let rank = |r: &Logged| (r.timestamp_ms.unwrap_or(i64::MAX), r.partition, r.offset);
                let w = winners.entry(session.clone()).or_insert(r);
                if rank(r) < rank(w) {
                    *w = r;
                }
            }
            let mut truth: Cells = BTreeMap::new();
            for r in winners.values().chain(&keyless) {
                let event = decoder.decode(r.payload.as_bytes()).unwrap();
                let text = |i: usize| match &event.values[i] {
                    Value::Str(s) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                };
                let Value::Decimal(price) = event.values[6] else { panic!("price") };
                for view in &views.views {
                    let dims: Vec<Option<String>> = view.dimension_fields.iter().map(|&f| text(f)).collect();
                    for &g in &view.granularities {
                        let key = (view.name.clone(), g, g.bucket_start(event.event_time), dims.clone());
                        let cell = truth.entry(key).or_insert_with(|| vec![0, 0]);
                        cell[0] += 1;
                        cell[1] += price;
                    }
                }
            }
            let duplicates = (below.len() - winners.len() - keyless.len()) as u64;
            assert!(duplicates > 100, "the log has many repeated sessions");
            assert!(keyless.len() > 20, "and records without one: {}", keyless.len());

            for chunk_records in [1, 150, 1_000, u64::MAX] {
                let computed = compute_in_chunks(
                    &views,
                    "event_time",
                    &fields,
                    &files,
                    &starts,
                    &cutoffs,
                    chunk_records,
                    |_, _| {},
                )
                .unwrap();
                assert_eq!(computed.records_scanned, scanned, "chunks of {chunk_records}");
                assert_eq!(computed.repeated_records_removed, repeated, "chunks of {chunk_records}");
                assert_eq!(computed.duplicates_removed, duplicates, "chunks of {chunk_records}");
                assert_eq!(computed.records_without_dedup_key, keyless.len() as u64);
                let mut got = BTreeMap::new();
                for table in &computed.tables {
                    for row in table.rows(&views).unwrap() {
                        let k = row.key;
                        assert!(got.insert((k.view, k.granularity, k.bucket_start, k.dims), row.metrics).is_none());
                    }
                }
                assert_eq!(got, truth, "chunks of {chunk_records}, starts {starts:?}");
            }
        }
    }
}
