//! The Polars part of a batch run (DESIGN.md §5 steps 2-3): scan the archive below the cutoffs, drop
//! repeated records and repeated events, and aggregate every view x granularity.

use std::collections::BTreeMap;

use common::config::FieldType;
use common::store::{BatchRow, ViewKey};
use common::view::{Granularity, ResolvedMetric, View, ViewSet};
use polars::prelude::*;

use crate::archive::ArchiveFile;

/// Result of the Polars computation.
#[derive(Debug, Default)]
pub struct Computed {
    /// Rows per (view name, granularity).
    pub tables: Vec<(String, Granularity, Vec<BatchRow>)>,
    pub records_scanned: u64,
    pub repeated_records_removed: u64,
    pub duplicates_removed: u64,
}

/// Computes the batch view from the archive files below `cutoffs`.
///
/// Dedup rule: keep one record per (partition, offset), then one per `_dedup_key`, the one with the earliest
/// `_timestamp`, then lowest partition, then lowest offset. Sums are in micro-units, rounded half away from
/// zero per value as the speed layer does ([`common::decimal::f64_to_micros`]).
pub fn compute(
    views: &ViewSet,
    event_time: &str,
    field_types: &[(String, FieldType)],
    files: &BTreeMap<i32, Vec<ArchiveFile>>,
    cutoffs: &BTreeMap<i32, i64>,
    mut on_table: impl FnMut(&str, Granularity),
) -> PolarsResult<Computed> {
    let mut frames = Vec::new();
    for (&partition, &cutoff) in cutoffs {
        let paths: Vec<PlRefPath> = files
            .get(&partition)
            .into_iter()
            .flatten()
            .filter(|f| f.first < cutoff)
            .map(|f| PlRefPath::new(f.path.to_string_lossy().as_ref()))
            .collect();
        if paths.is_empty() {
            continue;
        }
        let args = ScanArgsParquet { hive_options: HiveOptions::new_disabled(), ..Default::default() };
        frames.push(
            LazyFrame::scan_parquet_files(paths.into_iter().collect(), args)?.filter(col("_offset").lt(lit(cutoff))),
        );
    }
    let mut out = Computed::default();
    if frames.is_empty() {
        for view in &views.views {
            for &g in &view.granularities {
                on_table(&view.name, g);
                out.tables.push((view.name.clone(), g, Vec::new()));
            }
        }
        return Ok(out);
    }
    let scanned = concat(frames, UnionArgs::default())?;
    // Counts come from collected heights: polars' `len()` over a union sums per-file counts as UInt128,
    // a dtype this build leaves out.
    let n_scanned = scanned.clone().select([col("_offset")]).collect()?.height() as u64;
    let records = scanned.unique_stable(Some(cols(["_partition", "_offset"])), UniqueKeepStrategy::First).collect()?;
    let n_records = records.height() as u64;
    let events = records
        .lazy()
        .sort_by_exprs(
            [col("_timestamp"), col("_partition"), col("_offset")],
            SortMultipleOptions::default().with_nulls_last(true).with_maintain_order(true),
        )
        .unique_stable(Some(cols(["_dedup_key"])), UniqueKeepStrategy::First)
        .collect()?;
    out.records_scanned = n_scanned;
    out.repeated_records_removed = n_scanned - n_records;
    out.duplicates_removed = n_records - events.height() as u64;

    for view in &views.views {
        for &g in &view.granularities {
            on_table(&view.name, g);
            let table = aggregate(&events, view, g, event_time, field_types)?;
            out.tables.push((view.name.clone(), g, table));
        }
    }
    Ok(out)
}

fn aggregate(
    events: &DataFrame,
    view: &View,
    g: Granularity,
    event_time: &str,
    field_types: &[(String, FieldType)],
) -> PolarsResult<Vec<BatchRow>> {
    let step_s = g.seconds();
    let bucket = (col(event_time).cast(DataType::Int64).floor_div(lit(step_s * 1_000_000))) * lit(step_s);
    let mut keys = vec![bucket.alias("__bucket")];
    for (i, d) in view.dimensions.iter().enumerate() {
        let ty = field_types.iter().find(|(n, _)| n == d).map(|(_, t)| *t);
        let e = match ty {
            Some(FieldType::I64) => col(d.as_str()).cast(DataType::String),
            _ => when(col(d.as_str()).eq(lit(""))).then(lit(NULL).cast(DataType::String)).otherwise(col(d.as_str())),
        };
        keys.push(e.alias(format!("__d{i}")));
    }
    let mut aggs = Vec::new();
    for (i, metric) in view.metrics.iter().enumerate() {
        let name = format!("__m{i}");
        let e = match metric {
            ResolvedMetric::Count => len().cast(DataType::Int64),
            ResolvedMetric::Sum { field, ty } => {
                let field = field_types[*field].0.as_str();
                match ty {
                    FieldType::I64 => (col(field) * lit(1_000_000i64)).sum(),
                    _ => {
                        let scaled = col(field).cast(DataType::Float64) * lit(1e6);
                        when(scaled.clone().gt_eq(lit(0.0)))
                            .then(scaled.clone() + lit(0.5))
                            .otherwise(scaled - lit(0.5))
                            .cast(DataType::Int64)
                            .sum()
                    }
                }
            }
        };
        aggs.push(e.alias(name));
    }
    let key_names: Vec<Expr> = (0..=view.dimensions.len())
        .map(|i| if i == 0 { col("__bucket") } else { col(format!("__d{}", i - 1)) })
        .collect();
    let df = events.clone().lazy().with_columns(keys).group_by(key_names).agg(aggs).collect()?;

    let bucket = df.column("__bucket")?.as_materialized_series().i64()?.clone();
    let dims: Vec<StringChunked> = (0..view.dimensions.len())
        .map(|i| df.column(&format!("__d{i}")).and_then(|c| c.as_materialized_series().str().cloned()))
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
